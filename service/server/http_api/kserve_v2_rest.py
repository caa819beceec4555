"""Open Inference Protocol (KServe V2) over REST, with Triton's binary tensor extension.

Thin, like the gRPC adapter: JSON (and raw bytes) in, an `InferenceRequest` for the core, the
result back as JSON or as JSON plus raw bytes. It accepts what the gRPC API accepts (the one
input `pixels`, FP32 or UINT8, shape [N, 784] or [N, 28, 28]) through the same `validation`.

Binary tensors (https://github.com/triton-inference-server/server/blob/main/docs/protocol/
extension_binary_data.md): the header `Inference-Header-Content-Length` says how much of the
body is JSON; an input with `parameters.binary_data_size` takes that many bytes of what follows,
in input order. An output asked for with `parameters.binary_data: true` (or every output when the
request sets `parameters.binary_data_output: true`) comes back the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson

from service.server.core_types import InferenceRequest, InferenceResult, Pending
from service.server.errors import InferenceError, InvalidInput, NotReady
from service.server.http_api.connection import Response, json_response
from service.server.v2 import protocol
from service.server.v2.model_config import model_config
from service.server.v2.protocol import WHAT
from service.server.v2.repository_index import refuse_control, repository_index
from service.server.v2.statistics import model_statistics
from service.server.validation import pixels_from_bytes, pixels_from_values

if TYPE_CHECKING:
    from service.server.core import InferenceCore

API = "kserve_v2_rest"
HEADER_LENGTH = b"inference-header-content-length"
OCTET_STREAM = b"application/octet-stream"
ALL_STATS = "/v2/models/stats"                 # every model's statistics (not a model named "stats")
REPOSITORY_INDEX = "/v2/repository/index"
REPOSITORY_CONTROL = re.compile(r"/v2/repository/models/([^/]+)/(load|unload)")
HEADER_CACHE = 256    # distinct binary request headers remembered; real clients send a handful
MAX_LENGTH_DIGITS = 20  # Inference-Header-Content-Length: no body is 10**20 bytes; int() of more digits raises


# The Content-Types real clients send with an infer body; any other is surely not one (415).
# tritonclient.http sends none; tritonclient.http.aio application/octet-stream (aiohttp's default
# for bytes, JSON bodies included); the load tester and the page application/json or
# application/octet-stream; `curl -d` application/x-www-form-urlencoded; fetch() with a string
# body text/plain. Parameters (`; charset=utf-8`) and case do not matter.
INFER_CONTENT_TYPES = frozenset((b"application/json", OCTET_STREAM, b"application/x-www-form-urlencoded",
                                 b"text/plain"))


class UnsupportedMediaType(InferenceError):
    status = "INVALID_ARGUMENT"
    http_status = 415


def check_content_type(content_type: bytes | None) -> None:
    """Refuses a body declared as something no infer request is (an image, a form upload, XML).
    The usual exact values cost one set lookup."""
    if not content_type or content_type in INFER_CONTENT_TYPES:
        return
    if content_type.partition(b";")[0].strip().lower() not in INFER_CONTENT_TYPES:
        raise UnsupportedMediaType(f"Content-Type {content_type[:60].decode('latin-1')!r} is not an infer "
                                   "request; send application/json, or application/octet-stream with "
                                   "Inference-Header-Content-Length")


def _field(document: dict, key: str, kind: type, what: str, default: Any = None) -> Any:
    """`document[key]` if it has the JSON type `kind` (true/false is not an integer), else `default`
    when absent; anything else is the client's error."""
    value = document.get(key, default)
    if value is not default and (not isinstance(value, kind) or type(value) is bool and kind is not bool):
        raise InvalidInput(f"{what} '{key}' must be {_JSON_NAMES[kind]}, got {_shown(value)}")
    return value


def _shown(value: object) -> str:
    """The start of `value` as JSON, for a message; orjson writes at most 255 levels of nesting
    (its parser reads 1024), so a deeper value is named instead of shown."""
    try:
        return orjson.dumps(value)[:60].decode(errors="replace")
    except orjson.JSONEncodeError:
        return "an array or object nested too deep to show"


_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer", bool: "true or false"}


def json_length(body: bytes, header_length: bytes | None) -> int:
    """How many bytes of the body are JSON: all, or what Inference-Header-Content-Length says."""
    if header_length is None:
        return len(body)
    if len(header_length) > MAX_LENGTH_DIGITS or not header_length.isdigit():  # bytes: ASCII digits only
        raise InvalidInput(f"Inference-Header-Content-Length must be a byte count, got {header_length[:40]!r}")
    length = int(header_length)
    if length > len(body):
        raise InvalidInput(f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes")
    return length


def parse_document(text: bytes) -> dict:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object with 'inputs'")
    return document


@dataclass(frozen=True, slots=True)
class InferHeader:
    """Everything an infer request's JSON says but the tensor data, validated. Binary requests
    of one shape repeat the very same JSON header, so `KServeV2Rest` keeps these by header bytes
    and a repeated header costs a dictionary lookup instead of a parse and its checks."""

    request_id: str
    datatype: str
    shape: list[int]
    images: int
    binary_size: int | None              # the input's parameters.binary_data_size
    outputs: tuple[str, ...] | None      # None: every output, as the specification says
    binary_outputs: tuple[bool, ...]     # for listed outputs
    binary_default: bool                 # parameters.binary_data_output


def read_header(document: dict) -> InferHeader:
    inputs = _field(document, "inputs", list, "request") or []
    if not all(isinstance(tensor, dict) for tensor in inputs):
        raise InvalidInput("each input must be a JSON object")
    protocol.check_input_names([_field(tensor, "name", str, "input") for tensor in inputs])
    tensor = inputs[0]
    datatype = _field(tensor, "datatype", str, WHAT)
    protocol.dtype_of(datatype)
    shape = _field(tensor, "shape", list, WHAT)
    if shape is None or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"{WHAT} needs 'shape', an array of integers")
    images = protocol.images_of(shape)
    parameters = _field(tensor, "parameters", dict, WHAT, {})
    size = _field(parameters, "binary_data_size", int, f"{WHAT} parameter")
    if size is not None and "data" in tensor:
        raise InvalidInput(f"{WHAT} has both 'data' and binary_data_size; send one")
    request_parameters = _field(document, "parameters", dict, "request", {})
    binary_default = _field(request_parameters, "binary_data_output", bool, "request parameter", False)
    outputs, binary = _requested_outputs(document, binary_default)
    return InferHeader(_field(document, "id", str, "request", ""), datatype, shape, images, size, outputs,
                       binary, binary_default)


def decode_pixels(header: InferHeader, document: dict | None, text: bytes, binary: memoryview) -> np.ndarray:
    """The validated [N, 784] pixels: from the bytes after the JSON `text`, or from its `data`
    (then `document` is `text` parsed)."""
    dtype, size = protocol.DATATYPES[header.datatype], header.binary_size
    if size is not None:
        if size < 0 or size > len(binary):
            raise InvalidInput(f"{WHAT} declares binary_data_size {size} but {len(binary)} bytes of binary data "
                               "follow the JSON header")
        if size != len(binary):
            raise InvalidInput(f"{len(binary) - size} bytes of binary data follow {WHAT}'s {size}; "
                               "binary_data_size must account for every byte after the JSON header")
        pixels = pixels_from_bytes(binary, dtype, WHAT)
    else:
        if len(binary):
            raise InvalidInput(f"{len(binary)} bytes of binary data follow the JSON header but no input "
                               "declares binary_data_size")
        document = cast(dict, document)   # parsed whenever there is no binary part
        pixels = _pixels_from_json(document["inputs"][0].get("data"), header.datatype, dtype,
                                   may_hold_booleans=b"true" in text or b"false" in text)
    protocol.check_image_count(header.shape, header.images, len(pixels))
    return pixels


def _pixels_from_json(data: object, datatype: str, dtype: str, may_hold_booleans: bool) -> np.ndarray:
    """`data` as pixels. NumPy turns [true, 0.5] into [1.0, 0.5], so when the JSON text holds a
    true or false anywhere, the values are checked for them one by one (otherwise they are not)."""
    if not isinstance(data, list):
        raise InvalidInput(f"{WHAT} needs 'data' (an array of numbers) or parameters.binary_data_size")
    if may_hold_booleans and _holds_booleans(data):
        raise InvalidInput(f"{WHAT} 'data' holds true or false; send numbers")
    try:
        values = np.array(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"{WHAT} 'data' must be a flat or evenly nested array of numbers") from None
    kind = values.dtype.kind
    if dtype == "uint8":
        if kind not in "iu" and not (kind == "f" and values.size == 0):
            raise InvalidInput(f"{WHAT} is UINT8, so 'data' must hold integers within 0..255")
        if values.size and (values.min() < 0 or values.max() > 255):
            raise InvalidInput(f"{WHAT}: UINT8 values must be within 0..255")
        values = values.astype(np.uint8)
    else:
        if kind not in "iuf":
            raise InvalidInput(f"{WHAT} is {datatype}, so 'data' must hold numbers")
        values = values.astype(np.float32)
    return pixels_from_values(values.reshape(-1), f"{WHAT} data")


def _holds_booleans(values: list) -> bool:
    """Whether `values` or an array nested in it holds true or false. A loop over a stack, not
    recursion: orjson reads JSON nested up to 1024 deep, far past Python's recursion limit (a
    RecursionError was a 500). Data nested deeper than NumPy's 64 dimensions is then refused by
    `np.array` as not an evenly nested array."""
    stack = [values]
    while stack:
        current = stack.pop()
        kinds = set(map(type, current))
        if bool in kinds:
            return True
        if list in kinds:
            stack.extend(v for v in current if type(v) is list)
    return False


def _requested_outputs(document: dict, binary_default: bool) -> tuple[tuple[str, ...] | None, tuple[bool, ...]]:
    """The outputs listed (None when none are) and whether each comes back binary."""
    outputs = _field(document, "outputs", list, "request", [])
    if not outputs:
        return None, ()
    names, binary = [], []
    for output in outputs:
        if not isinstance(output, dict):
            raise InvalidInput("each requested output must be a JSON object with a 'name'")
        names.append(_field(output, "name", str, "output") or "")
        output_parameters = _field(output, "parameters", dict, "output", {})
        if output_parameters.get("classification"):
            raise InvalidInput("the classification extension is not supported; ask for 'probabilities'")
        binary.append(_field(output_parameters, "binary_data", bool, "output parameter", binary_default))
    return tuple(names), tuple(binary)


@lru_cache(maxsize=256)
def _binary_header(name: str, version: str, outputs: tuple[tuple[str, int, int, bool], ...]) -> bytes:
    """The JSON header of an all-binary answer without an id: the same for every request of one shape."""
    return orjson.dumps(_document(name, version, "", outputs, None))


def _document(name: str, version: str, request_id: str, outputs: tuple[tuple[str, int, int, bool], ...],
              arrays: dict[str, np.ndarray] | None) -> dict:
    tensors = []
    values = cast("dict[str, np.ndarray]", arrays)   # None only when every output is binary
    for output, rows, width, binary in outputs:
        tensor: dict[str, object] = {"name": output, "datatype": "FP32", "shape": [rows, width]}
        if binary:
            tensor["parameters"] = {"binary_data_size": rows * width * 4}
        else:
            tensor["data"] = values[output].ravel()  # float32, written by orjson in its shortest form
        tensors.append(tensor)
    document: dict[str, object] = {"model_name": name, "model_version": version}
    if request_id:
        document["id"] = request_id
    document["outputs"] = tensors
    return document


def encode_result(result: InferenceResult, request_id: str, binary: tuple[bool, ...]) -> Response:
    arrays = result.outputs
    shapes = tuple((name, *array.shape, wanted) for (name, array), wanted in zip(arrays.items(), binary))
    model = result.model
    if not any(binary):
        return json_response(_document(model.name, model.version, request_id, shapes, arrays))
    if request_id or not all(binary):
        header = orjson.dumps(_document(model.name, model.version, request_id, shapes, arrays),
                              option=orjson.OPT_SERIALIZE_NUMPY)
    else:
        header = _binary_header(model.name, model.version, shapes)
    parts = [header] + [array.tobytes() for array, wanted in zip(arrays.values(), binary) if wanted]
    return Response(200, b"".join(parts), OCTET_STREAM, ((b"Inference-Header-Content-Length", b"%d" % len(header)),))


class KServeV2Rest:
    def __init__(self, core: InferenceCore, is_serving: Callable[[], bool]) -> None:
        self._core = core
        self._is_serving = is_serving
        self._headers: dict[bytes, InferHeader] = {}   # binary requests' JSON headers, already read
        self._metadata = json_response(protocol.server_metadata(("binary_tensor_data",)))

    def server_metadata(self) -> Response:
        return self._metadata

    def model_metadata(self, name: str, version: str) -> Response:
        return json_response(protocol.model_metadata(self._core.find_model(name, version)))

    def model_ready(self, name: str, version: str) -> Response:
        """200 while the model is ready; 503 (with its name and version) while it is not."""
        ready = protocol.model_ready(self._core.find_model(name, version), self._is_serving())
        if not ready["ready"]:
            raise NotReady(f"model {ready['name']} version {ready['version']} is not ready "
                           "(the server is starting or shutting down)")
        return json_response(ready)

    # -- Triton's extensions: service.server.v2 answers, in Triton's JSON -------------------------
    def model_config(self, name: str, version: str) -> Response:
        return json_response(model_config(self._core, name, version))

    def model_statistics(self, name: str, version: str) -> Response:
        return json_response(model_statistics(self._core, name, version))

    def repository_index(self, body: bytes) -> Response:
        """POST /v2/repository/index: the body is empty or {"ready": true|false}."""
        document: object = {}
        if body.strip():
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidInput("the repository index request body must be empty or a JSON object "
                               'such as {"ready": true}')
        ready = _field(document, "ready", bool, "request", False)
        return json_response(repository_index(self._core, "", ready))

    def repository_control(self, path: str) -> Response:
        """POST /v2/repository/models/{name}/load or /unload: refused (501), saying how models load."""
        # any other path under /v2/repository/ raises AttributeError here, as it always has
        name, action = cast("re.Match[str]", REPOSITORY_CONTROL.fullmatch(path)).groups()
        refuse_control(self._core, action, name)

    def infer(self, name: str, version: str, body: bytes, header_length: bytes | None) -> Pending:
        model = self._core.find_model(name, version)
        length = json_length(body, header_length)
        text = body if length == len(body) else body[:length]   # a copy only of a binary request's header
        binary = memoryview(body)[length:]
        header, document = self._read(text, binary_form=header_length is not None)
        pixels = decode_pixels(header, document, text, binary)
        outputs, binary_outputs = protocol.outputs_of(header.outputs, model), header.binary_outputs
        if header.outputs is None:
            binary_outputs = (header.binary_default,) * len(outputs)
        request_id = header.request_id
        return Pending(InferenceRequest(pixels, outputs),
                       lambda result: encode_result(result, request_id, binary_outputs))

    def _read(self, text: bytes, binary_form: bool) -> tuple[InferHeader, dict | None]:
        """The request's header, and its parsed JSON when it was read now. A binary request's
        header holds no tensor data, so it is kept by its bytes and read once."""
        header = self._headers.get(text) if binary_form else None
        if header is not None:
            return header, None
        document = parse_document(text)
        header = read_header(document)
        if binary_form and header.binary_size is not None:
            if len(self._headers) >= HEADER_CACHE:
                self._headers.clear()
            self._headers[text] = header
        return header, document

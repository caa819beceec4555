"""What the REST API must answer to a (possibly hostile) infer request, worked out without the server's code.

The rules are the ones the Open Inference Protocol REST API, Triton's binary tensor extension and this
project's README state, read here field by field from the bytes a client sends:

- the body over the server's size limit: 413 before anything else;
- the path names a model or version this server does not serve: 404 (checked before the body);
- anything wrong with the body: 400. Inference-Header-Content-Length, when present, must be a decimal
  byte count no larger than the body; the JSON part must be UTF-8 JSON (Python's NaN/Infinity
  literals parse) nested no deeper than a parser can take, and an object; `id` a string; exactly one
  input, an object, named `pixels`, datatype FP32 or UINT8, shape [N, 784] or [N, 28, 28] of JSON
  integers (true/false are not integers) with N >= 1; its pixels either JSON `data` (a flat or
  evenly nested array of numbers: UINT8 ones integers 0..255, FP32 ones finite and within [0, 1]
  as float32) or `parameters.binary_data_size` bytes that are exactly everything after the JSON
  part (never both, and no stray binary bytes without it); N images of data; N <= the maximum batch;
  `parameters` objects, `binary_data_output` / `binary_data` true or false, `outputs` an array of
  objects naming known outputs at most once each, and no classification asked for;
- otherwise 200, computed on exactly the pixels sent.

`judge` returns the status and, for a request that must succeed, what the answer must contain
(the pixels, the outputs in order, which come back binary, the id), so an OK answer on the wrong data
or in the wrong form cannot pass. `parse_answer` reads an answer, JSON or binary, with this module's
own code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np

from tests.server.hostile_oracle import FEATURES, INPUT, MAX_BATCH, MESSAGE_LIMIT, MODEL
from tests.support.messages import ALL_OUTPUTS, WIDTHS

DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype(np.uint8)}
INFER_SUFFIX = "/infer"


@dataclass
class Verdict:
    """The status a request must get; for 200 also what the answer must hold."""

    status: int
    problem: str = ""
    pixels: np.ndarray | None = None           # [N, 784] uint8 or float32, as sent
    outputs: tuple[str, ...] = ()               # in the order the answer must list them
    binary: tuple[bool, ...] = ()               # per output: comes back as binary data
    request_id: str = ""


def model_problem(path: str, served_version: str) -> str | None:
    """Why `path` does not designate this server's model's infer endpoint, or None if it does.
    Segments are percent-decoded (RFC 3986: %5F and _ are the same character)."""
    prefix = "/v2/models/"
    if not path.startswith(prefix) or not path.endswith(INFER_SUFFIX):
        return f"not an infer path: {path!r}"
    segments = path[len(prefix):-len(INFER_SUFFIX)].split("/")
    if len(segments) == 1:
        name, version = segments[0], None
    elif len(segments) == 3 and segments[1] == "versions":
        name, version = segments[0], segments[2]
    else:
        return f"not an infer path: {path!r}"
    if unquote(name) != MODEL:
        return f"unknown model {unquote(name)!r}"
    if version is not None and unquote(version) != served_version:
        return f"unknown version {unquote(version)!r}"
    return None


def judge(path: str, header_length: bytes | None, body: bytes, served_version: str = "1",
          limit: int = MESSAGE_LIMIT, max_batch: int = MAX_BATCH) -> Verdict:
    if len(body) > limit:
        return Verdict(413, f"body of {len(body)} bytes over the limit {limit}")
    problem = model_problem(path, served_version)
    if problem:
        return Verdict(404, problem)
    try:
        return _judge_body(header_length, body, max_batch)
    except _Refused as refused:
        return Verdict(400, str(refused))


class _Refused(Exception):
    """A rule the request breaks (a 400)."""


def _is_int(value: object) -> bool:
    return type(value) is int  # JSON true/false parse to bool, which is not a JSON integer


def _judge_body(header_length: bytes | None, body: bytes, max_batch: int) -> Verdict:
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length or any(not 0x30 <= b <= 0x39 for b in header_length):
            raise _Refused(f"Inference-Header-Content-Length {header_length!r} is not a byte count")
        length = int(header_length)
        if length > len(body):
            raise _Refused(f"Inference-Header-Content-Length {length} > body of {len(body)}")
        json_part, binary = body[:length], body[length:]
    try:
        document = json.loads(json_part.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Refused("JSON part is not UTF-8") from None
    except (ValueError, RecursionError):
        raise _Refused("JSON part is not JSON (or nested too deeply to parse)") from None
    if not isinstance(document, dict):
        raise _Refused("body is not a JSON object")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise _Refused("id is not a string")
    pixels = _judge_input(document, binary)
    outputs, binary_outputs = _judge_outputs(document)
    if len(pixels) > max_batch:
        raise _Refused(f"batch of {len(pixels)} > {max_batch}")
    return Verdict(200, pixels=pixels, outputs=outputs, binary=binary_outputs, request_id=request_id)


def _judge_input(document: dict, binary: bytes) -> np.ndarray:
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise _Refused("inputs is not an array of exactly one input")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise _Refused("input is not an object")
    if tensor.get("name") != INPUT or not isinstance(tensor.get("name"), str):
        raise _Refused(f"input name {tensor.get('name')!r}")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise _Refused(f"datatype {datatype!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise _Refused(f"shape {shape!r} is not an array of integers")
    if not (len(shape) == 2 and shape[1] == FEATURES or len(shape) == 3 and shape[1:] == [28, 28]) \
            or shape[0] < 1:
        raise _Refused(f"shape {shape}")
    images = shape[0]
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _Refused("input parameters is not an object")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not _is_int(size):
            raise _Refused(f"binary_data_size {size!r} is not an integer")
        if "data" in tensor:
            raise _Refused("both data and binary_data_size")
        if size != len(binary):
            raise _Refused(f"binary_data_size {size} but {len(binary)} binary bytes")
        pixels = _packed_pixels(binary, datatype)
    else:
        if binary:
            raise _Refused(f"{len(binary)} binary bytes but no binary_data_size")
        pixels = _json_pixels(tensor.get("data"), datatype)
    if len(pixels) != images:
        raise _Refused(f"shape says {images} images, data holds {len(pixels)}")
    return pixels


def _packed_pixels(data: bytes, datatype: str) -> np.ndarray:
    dtype = DATATYPES[datatype]
    image = FEATURES * dtype.itemsize
    if not data or len(data) % image:
        raise _Refused(f"{len(data)} binary bytes are not whole {datatype} images")
    pixels = np.frombuffer(data, dtype=dtype).reshape(-1, FEATURES)
    if datatype == "FP32" and not np.all((pixels >= 0) & (pixels <= 1)):
        raise _Refused("a binary FP32 pixel outside [0, 1]")
    return pixels


def _leaves(data: object) -> list:
    """The scalars of an evenly nested array, row-major; refused if it is ragged or mixes arrays
    and scalars at one level."""
    if not isinstance(data, list):
        raise _Refused("data is not an array")
    if not data or not any(isinstance(item, list) for item in data):
        return list(data)
    if not all(isinstance(item, list) for item in data):
        raise _Refused("data mixes arrays and scalars")
    rows = [_leaves(item) for item in data]
    shapes = {_shape(item) for item in data}
    if len(shapes) != 1:
        raise _Refused("data is not evenly nested")
    return [leaf for row in rows for leaf in row]


def _shape(data: object) -> tuple[int, ...]:
    return (len(data), *_shape(data[0])) if isinstance(data, list) and data else \
        ((0,) if isinstance(data, list) else ())


def _json_pixels(data: object, datatype: str) -> np.ndarray:
    leaves = _leaves(data)
    if not leaves or len(leaves) % FEATURES:
        raise _Refused(f"{len(leaves)} data values are not whole images")
    if datatype == "UINT8":
        if not all(_is_int(v) and 0 <= v <= 255 for v in leaves):
            raise _Refused("a UINT8 value that is not an integer within 0..255")
        return np.array(leaves, dtype=np.uint8).reshape(-1, FEATURES)
    if not all(_is_int(v) and v in (0, 1) or type(v) is float and not math.isinf(v) and abs(v) <= 1e30
               for v in leaves):
        raise _Refused("an FP32 value that is not a number within [0, 1]")
    values = np.array(leaves, dtype=np.float64).astype(np.float32)  # what FP32 means: the float32 value
    if not np.all((values >= 0) & (values <= 1)):
        raise _Refused("an FP32 value outside [0, 1] (or NaN)")
    return values.reshape(-1, FEATURES)


def _judge_outputs(document: dict) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _Refused("request parameters is not an object")
    binary_default = parameters.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise _Refused("binary_data_output is not true/false")
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list):
        raise _Refused("outputs is not an array")
    if not outputs:
        return ALL_OUTPUTS, (binary_default,) * len(ALL_OUTPUTS)
    names, binary = [], []
    for output in outputs:
        if not isinstance(output, dict):
            raise _Refused("an output is not an object")
        name = output.get("name")
        if not isinstance(name, str) or name not in ALL_OUTPUTS:
            raise _Refused(f"unknown output {name!r}")
        output_parameters = output.get("parameters", {})
        if not isinstance(output_parameters, dict):
            raise _Refused("output parameters is not an object")
        if output_parameters.get("classification") not in (None, 0, False):
            raise _Refused("classification asked for")
        wanted = output_parameters.get("binary_data", binary_default)
        if type(wanted) is not bool:
            raise _Refused("binary_data is not true/false")
        names.append(name)
        binary.append(wanted)
    if len(set(names)) != len(names):
        raise _Refused(f"outputs asked for twice: {names}")
    return tuple(names), tuple(binary)


# ----------------------------------------------------------------------------- answers


@dataclass
class Answer:
    """A 200 answer read back: its JSON document and each output's array, with the form it came in."""

    document: dict
    arrays: dict[str, np.ndarray]
    binary: dict[str, bool]


def parse_answer(content_type: str, header_length: str | None, body: bytes) -> Answer:
    """Reads an infer answer: JSON, or (Inference-Header-Content-Length present) a JSON header then
    each binary output's bytes in output order, which must account for the whole body."""
    if header_length is None:
        assert content_type.startswith("application/json"), content_type
        json_part, rest = body, b""
    else:
        assert content_type == "application/octet-stream", content_type
        assert header_length.isdigit() and int(header_length) <= len(body), header_length
        json_part, rest = body[:int(header_length)], body[int(header_length):]
    document = json.loads(json_part)
    arrays, binary = {}, {}
    offset = 0
    for tensor in document["outputs"]:
        name, shape = tensor["name"], tensor["shape"]
        assert tensor["datatype"] == "FP32", tensor
        assert name not in arrays, f"output {name} twice"
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            assert "data" not in tensor, tensor.keys()
            assert size == math.prod(shape) * 4, (size, shape)
            arrays[name] = np.frombuffer(rest[offset:offset + size], dtype="<f4").reshape(shape)
            offset += size
            binary[name] = True
        else:
            arrays[name] = np.array(tensor["data"], dtype=np.float32).reshape(shape)
            binary[name] = False
    assert offset == len(rest), f"{len(rest) - offset} binary bytes not accounted for by any output"
    assert (header_length is None) == (not any(binary.values())), "binary outputs need the header, and only they"
    return Answer(document, arrays, binary)


def check_answer(verdict: Verdict, answer: Answer, offline, served_version: str) -> None:
    """An answer to a request `judge` said must succeed: the model, the id, the outputs asked for in
    order and in the form asked for, each [N, width] and equal to the model run offline on the pixels sent."""
    document = answer.document
    assert document["model_name"] == MODEL and document["model_version"] == served_version, document
    assert document.get("id", "") == verdict.request_id
    assert ("id" in document) == bool(verdict.request_id)
    assert tuple(answer.arrays) == verdict.outputs
    assert tuple(answer.binary[name] for name in verdict.outputs) == verdict.binary
    want = offline(verdict.pixels, verdict.outputs)
    for name in verdict.outputs:
        assert answer.arrays[name].shape == (len(verdict.pixels), WIDTHS[name])
        np.testing.assert_allclose(answer.arrays[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def check_error_body(content_type: str, body: bytes) -> str:
    """An error answer is `{"error": "<what is wrong>"}` as JSON; returns the message."""
    assert content_type.startswith("application/json"), content_type
    document = json.loads(body)
    assert isinstance(document, dict) and set(document) == {"error"}, document
    assert isinstance(document["error"], str) and document["error"], document
    return document["error"]

"""Hypothesis strategies for hostile REST infer requests, each with the faults its generator put in.

A request is drawn well-formed (JSON or binary pixels, FP32 or UINT8, [N, 784] or [N, 28, 28], flat or
nested data, an output selection, binary outputs or not, optional id and unknown fields) and then,
with some probability per aspect, broken: the path's model or version, the JSON text (truncated,
garbage, not an object, invalid UTF-8, nested beyond any parser's depth), every field's type, the
input's name, datatype and shape, the data's values, count and nesting, the binary part and the
Inference-Header-Content-Length header. Each break is recorded as (kind, what), and only when it
really holds for what is sent, so `RestCase.expected` is the status the server must answer:
404 for a "model" fault, else 400 for any other fault, else 200 (the body never exceeds the server's
limit here; transport limits have tests of their own). Draws shrink towards the well-formed request.

Pixels are built with NumPy from a drawn seed (hypothesis is slow at drawing megabytes value by value).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np
from hypothesis import strategies as st

from tests.server.hostile_oracle import FEATURES, MAX_BATCH, MODEL
from tests.server.hostile_requests import batch_sizes, pixel_array, sometimes
from tests.support.messages import ALL_OUTPUTS

NOT_FOUND, INVALID, OK = 404, 400, 200
BAD_MARK = "\x01BAD-UTF-8\x01"  # replaced in the encoded JSON by bytes that are not UTF-8
INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\xf8\x88\x80\x80\x80")
# float pixels the server must refuse, and odd ones it must accept (as JSON numbers and as float32 bytes)
POISON = (float("nan"), float("inf"), float("-inf"), -1e-3, 1.5, 2.0, -1.0, 3.4e38, 1e300)
ODD_BUT_VALID = (-0.0, 1e-45, 1.0, 0.0)
BAD_UINT8 = {"-1": -1, "256": 256, "2**64": 2**64, "0.5": 0.5, "1.0": 1.0, '"1"': "1", "null": None,
             "true": True, "false": False, "NaN": float("nan"), "[0]": [0]}
BAD_FP32 = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf"), "-0.001": -0.001, "1.5": 1.5,
            '"0.5"': "0.5", "null": None, "true": True, "false": False, "[0.5]": [0.5], "2": 2, "1e400": 1e400}
# values that break a field expecting something else: every JSON type but the right one is drawn
JSON_VALUES = {
    "string": st.sampled_from(["", "1", "784", "pixels", "FP32", "[1, 784]", "true"]),
    "integer": st.sampled_from([0, 1, -1, 784, 3136, 2**40]),
    "float": st.sampled_from([1.0, 784.0, 0.5, float("nan")]),
    "boolean": st.booleans(),
    "null": st.none(),
    "array": st.sampled_from([[], [1], ["pixels"], [[1, 784]]]),
    "object": st.sampled_from([{}, {"name": "pixels"}, {"0": 1}]),
}


def json_values_except(*kinds: str) -> st.SearchStrategy[object]:
    """A JSON value of any type but `kinds` (e.g. everything that is not an array, for a field that must be one)."""
    return st.one_of(*(strategy for kind, strategy in JSON_VALUES.items() if kind not in kinds))


@dataclass
class RestCase:
    """An HTTP request (path, headers, body) and the faults its generator put in, each (kind, what)."""

    path: str
    body: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    faults: list[tuple[str, str]] = field(default_factory=list)

    def fault(self, kind: str, what: str) -> None:
        self.faults.append((kind, what))

    @property
    def expected(self) -> int:
        kinds = {kind for kind, _ in self.faults}
        return NOT_FOUND if "model" in kinds else INVALID if kinds else OK

    @property
    def header_length(self) -> bytes | None:
        return self.headers.get("Inference-Header-Content-Length")


@st.composite
def infer_paths(draw, served_version: str) -> tuple[str, str | None]:
    """An infer path and, if it names something this server does not serve, why."""
    name, problem = MODEL, None
    if sometimes(draw, 1):
        name = draw(st.one_of(st.sampled_from(["MNIST_MLP", "resnet", "mnist", "mnist_mlp2", "mnist_mlp%20",
                                               "%00", "..", "mnist%2Fmlp"]),
                              st.text(min_size=1, max_size=10).map(lambda t: quote(t, safe=""))))
        problem = None if name == MODEL else f"unknown model {name!r}"
    elif sometimes(draw, 2):  # the same name, percent-encoded (RFC 3986: equivalent)
        name = draw(st.sampled_from(["mnist%5Fmlp", "%6D%6E%69%73%74_mlp"]))
    encoded = "".join(f"%{byte:02X}" for byte in served_version.encode())  # percent-encoded, still the same
    version = draw(st.sampled_from([None, served_version, encoded]))
    if sometimes(draw, 1):
        version = draw(st.sampled_from(["0", "2", "01", "latest", "v1", "1.0", "-1", "%20", ""]))
        problem = problem or f"unknown version {version!r}"
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/infer"
    return path, problem


def nest(values: list, images: int, form: str) -> list:
    """`values` (images × 784) as a flat array or nested [N][784] / [N][28][28]."""
    if form == "flat":
        return values
    rows = [values[i * FEATURES:(i + 1) * FEATURES] for i in range(images)]
    if form == "2d":
        return rows
    return [[row[r * 28:(r + 1) * 28] for r in range(28)] for row in rows]


@st.composite
def rest_cases(draw, served_version: str = "1") -> RestCase:
    """A REST infer request that is well-formed except for whatever was drawn broken, and those faults."""
    path, model_problem = draw(infer_paths(served_version))
    case = RestCase(path, b"")
    if model_problem:
        case.fault("model", model_problem)
    count = draw(batch_sizes())
    datatype = draw(st.sampled_from(["FP32", "UINT8"]))
    binary_input = draw(st.booleans())
    if count > 64 and datatype == "FP32":
        binary_input = True  # a thousand FP32 images as JSON text would approach the body limit
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = pixel_array(seed, count, np.dtype(np.uint8) if datatype == "UINT8" else np.dtype("<f4"))
    if datatype == "FP32" and sometimes(draw, 3):
        value = draw(st.sampled_from(POISON + ODD_BUT_VALID))
        with np.errstate(over="ignore"):  # 1e300 as float32 is +inf, as meant
            pixels.reshape(-1)[draw(st.integers(0, pixels.size - 1))] = value
        if value in POISON or value != value:
            case.fault("pixels", f"float pixel {value}")
    shape: object = [count, FEATURES] if draw(st.booleans()) else [count, 28, 28]
    tensor: dict[str, object] = {"name": "pixels", "datatype": datatype, "shape": shape}
    document: dict[str, object] = {}
    if draw(st.booleans()):
        document["id"] = draw(st.text(max_size=16))
    document["inputs"] = [tensor]
    if sometimes(draw, 1):  # fields nobody defined are ignored
        document["x-unknown"] = draw(st.sampled_from([1, "a", [None], {"b": 2}]))
        tensor["x-unknown"] = True

    binary = b""
    recount = False  # the data holds another number of values than the shape says
    if binary_input:
        binary = pixels.tobytes()
        if datatype == "UINT8" and sometimes(draw, 1):  # the bytes of another datatype
            binary = pixels.astype("<f4").tobytes()
            case.fault("pixels", "FP32 bytes declared UINT8 (4N images)")
            recount = True
        tensor["parameters"] = {"binary_data_size": len(binary)}
    else:
        values: list = pixels.ravel().tolist()
        if datatype == "FP32" and sometimes(draw, 1):  # ints, as a client writing 0 and 1 would
            values = [int(v) if v in (0.0, 1.0) and not str(v).startswith("-") else v for v in values]
        if datatype == "UINT8" and sometimes(draw, 1):
            values = (pixels.ravel() / 255).tolist()
            if any(type(v) is float for v in values):
                case.fault("pixels", "floats as UINT8 data")
        if sometimes(draw, 1):
            position = draw(st.integers(0, len(values) - 1))
            bad = draw(st.sampled_from(sorted(BAD_UINT8 if datatype == "UINT8" else BAD_FP32)))
            values[position] = (BAD_UINT8 if datatype == "UINT8" else BAD_FP32)[bad]
            case.fault("pixels", f"data value {bad}")
        if sometimes(draw, 1):
            change = draw(st.sampled_from([-FEATURES, -1, 1, FEATURES]))
            values = values[:change] if change < 0 else values + values[:change]
            case.fault("pixels", f"{len(values)} data values for {count} images")
            recount = True
        form = draw(st.sampled_from(["flat", "2d" if len(shape) == 2 else "3d"]))
        nested = form != "flat" and len(values) == count * FEATURES
        tensor["data"] = nest(values, count, form) if nested else values
        if nested and sometimes(draw, 1):
            rows = tensor["data"]
            rows[-1] = rows[-1][:-1] if draw(st.booleans()) else rows[-1] + [rows[-1][0]]
            case.fault("pixels", "ragged (or short) data")
    _break_input(draw, case, tensor, count, binary_input, recount)
    _outputs(draw, case, document)
    if count > MAX_BATCH:
        case.fault("request", f"batch of {count}")
    _break_document(draw, case, document)
    case.body, case.headers = _encode(draw, case, document, binary, binary_input)
    return case


def _break_input(draw, case: RestCase, tensor: dict, count: int, binary_input: bool, recount: bool) -> None:
    """The input's fields: missing, of the wrong JSON type, or with a wrong value. A wrong N is not
    drawn when the data's count is already wrong: the two could cancel out."""
    if sometimes(draw, 1):
        how = draw(st.sampled_from(["missing", "type", "value"]))
        if how == "missing":
            del tensor["name"]
        else:
            tensor["name"] = (draw(json_values_except("string")) if how == "type"
                              else draw(st.sampled_from(["", "image", "Pixels", "pixels ", "input_0"])))
        case.fault("pixels", f"input name {how}")
    if sometimes(draw, 1):
        how = draw(st.sampled_from(["missing", "type", "value"]))
        if how == "missing":
            del tensor["datatype"]
        else:
            tensor["datatype"] = (draw(json_values_except("string")) if how == "type" else
                                  draw(st.sampled_from(["FP64", "FP16", "INT8", "UINT32", "BYTES", "BOOL", "", "fp32",
                                                        "uint8", "FP32 "])))
        case.fault("pixels", f"datatype {how}")
    if sometimes(draw, 2):
        shape = tensor["shape"]
        how = draw(st.sampled_from(["missing", "type", "element type", "value"] + ([] if recount else ["N"])))
        if how == "missing":
            del tensor["shape"]
        elif how == "type":
            tensor["shape"] = draw(json_values_except("array"))
        elif how == "element type":
            shape[draw(st.integers(0, len(shape) - 1))] = draw(json_values_except("integer") | st.just(True) |
                                                               st.just(784.0))
        elif how == "value":
            tensor["shape"] = draw(st.sampled_from([[count, 783], [count, 28, 29], [0, FEATURES], [-count, FEATURES],
                                                    [count], [], [count, FEATURES, 1], [count * FEATURES],
                                                    [count, 1, FEATURES], [1, count, FEATURES]]))
        else:
            shape[0] = count + draw(st.sampled_from([-1, 1, 2, 2**62]))
        case.fault("pixels", f"shape {how}")
    if sometimes(draw, 1):
        how = draw(st.sampled_from(["parameters type", "size type", "size value", "data too", "no data"]))
        parameters = tensor.setdefault("parameters", {})
        if how == "parameters type":
            tensor["parameters"] = draw(json_values_except("object", "null"))
        elif how == "size type":
            size = parameters.get("binary_data_size", 0)
            parameters["binary_data_size"] = draw(st.sampled_from([str(size), float(size), True, False, [size]]))
        elif how == "size value":
            size = parameters.get("binary_data_size", 0)
            parameters["binary_data_size"] = size + draw(st.sampled_from([-1, 1, -size - 1, 2**40]))
        elif how == "data too" and binary_input:
            tensor["data"] = draw(st.sampled_from([[0] * FEATURES, [], None]))
        elif binary_input:  # "no data" in binary form: take its parameter away, the bytes stay
            del parameters["binary_data_size"]
        else:
            tensor["data"] = draw(json_values_except("array"))
            if draw(st.booleans()):
                del tensor["data"]
        if tensor.get("parameters") == {}:
            del tensor["parameters"]
        case.fault("pixels", how)


def _outputs(draw, case: RestCase, document: dict) -> None:
    """An output selection (none, some, all; each binary or not) and maybe faults in it."""
    if draw(st.booleans()):
        document["parameters"] = {"binary_data_output": draw(st.booleans())}
    if draw(st.booleans()):
        return
    names = draw(st.lists(st.sampled_from(ALL_OUTPUTS), max_size=4, unique=True))
    outputs: list[object] = []
    for name in names:
        output: dict[str, object] = {"name": name}
        if sometimes(draw, 3):
            output["parameters"] = {"binary_data": draw(st.booleans())}
        if sometimes(draw, 1):
            output.setdefault("parameters", {})["classification"] = draw(st.sampled_from([0, False]))
        outputs.append(output)
    document["outputs"] = outputs
    if not sometimes(draw, 2):
        return
    how = draw(st.sampled_from(["unknown", "duplicate", "name type", "not object", "outputs type",
                                "parameters type", "binary_data type", "classification", "request parameters type",
                                "binary_data_output type"]))
    if how == "unknown":
        outputs.append({"name": draw(st.sampled_from(["scores", "", "activation_3", "Probabilities", "logits "]))})
    elif how == "duplicate":
        outputs.append({"name": draw(st.sampled_from(names or ["logits"]))})
        if not names:
            outputs.append({"name": "logits"})
    elif how == "name type":
        outputs.append({"name": draw(json_values_except("string"))})
    elif how == "not object":
        outputs.append(draw(json_values_except("object")))
    elif how == "outputs type":
        document["outputs"] = draw(json_values_except("array"))
    elif how == "parameters type":
        if not outputs:
            outputs.append({"name": "logits"})
        outputs[0]["parameters"] = draw(json_values_except("object", "null"))
    elif how == "binary_data type":
        if not outputs:
            outputs.append({"name": "logits"})
        outputs[0]["parameters"] = {"binary_data": draw(st.sampled_from([1, 0, "true", [True]]))}
    elif how == "classification":
        if not outputs:
            outputs.append({"name": "probabilities"})
        outputs[0]["parameters"] = {"classification": draw(st.sampled_from([1, 3, True]))}
    elif how == "request parameters type":
        document["parameters"] = draw(json_values_except("object", "null"))
    else:
        document["parameters"] = {"binary_data_output": draw(st.sampled_from([1, 0, "false", [False]]))}
    case.fault("request", f"outputs: {how}")


def _break_document(draw, case: RestCase, document: dict) -> None:
    """The document's own fields: id, inputs."""
    if sometimes(draw, 1):
        document["id"] = draw(json_values_except("string"))
        case.fault("request", "id type")
    if sometimes(draw, 1):
        inputs = document["inputs"]
        how = draw(st.sampled_from(["missing", "type", "empty", "two", "not object"]))
        if how == "missing":
            del document["inputs"]
        elif how == "type":
            document["inputs"] = draw(json_values_except("array"))
        elif how == "empty":
            document["inputs"] = []
        elif how == "two":
            inputs.append({**inputs[0], "name": draw(st.sampled_from(["pixels", "labels"]))})
        else:
            inputs[0] = draw(json_values_except("object"))
        case.fault("pixels", f"inputs {how}")


def _encode(draw, case: RestCase, document: dict, binary: bytes, binary_input: bool) -> tuple[bytes, dict]:
    """The body and headers: JSON text (maybe broken as text), the binary part, the length header."""
    text_fault = sometimes(draw, 1)
    if text_fault and draw(st.booleans()):
        document["x-note"] = BAD_MARK
    text = json.dumps(document, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")]))).encode()
    mark = json.dumps(BAD_MARK).encode()[1:-1]  # as json.dumps escapes it
    if mark in text:
        text = text.replace(mark, draw(st.sampled_from(INVALID_UTF8)))
        case.fault("json", "invalid UTF-8 in a string")
    elif text_fault:
        how = draw(st.sampled_from(["truncated", "garbage", "not an object", "deep", "deep field", "empty"]))
        if how == "truncated":
            text = text[:draw(st.integers(0, len(text) - 1))]
        elif how == "garbage":
            text = draw(st.binary(max_size=64))
        elif how == "not an object":
            text = json.dumps(draw(st.sampled_from([[document], "inputs", 1, None, True, []]))).encode()
        elif how == "deep":  # valid JSON by the grammar, nested deeper than any parser goes
            depth = draw(st.sampled_from([2_000, 100_000]))
            text = b"[" * depth + b"]" * depth
        elif how == "deep field":
            depth = draw(st.sampled_from([3_000, 50_000]))
            text = text.replace(b'"inputs"', b'"x-deep":' + b"[" * depth + b"0" + b"]" * depth + b',"inputs"', 1)
            if b'"x-deep"' not in text:
                text = b'{"x-deep":' + b"[" * depth + b"]" * depth + b"}"
        else:
            text = b""
        case.fault("json", how)
    headers: dict[str, bytes] = {"Content-Type": b"application/octet-stream" if binary_input else b"application/json"}
    with_header = binary_input or sometimes(draw, 2)  # a JSON-only body may say its length too
    if binary_input and sometimes(draw, 1):
        with_header = False
        case.fault("binary", "binary data without Inference-Header-Content-Length")
    body = text + binary
    if with_header:
        length = str(len(text)).encode()
        if sometimes(draw, 1):
            how = draw(st.sampled_from(["non-numeric", "beyond body", "shorter", "longer"]))
            if how == "non-numeric":
                length = draw(st.sampled_from([b"abc", b"-1", b"+" + length, length + b".0", b"0x10", b"",
                                               "\u0661".encode(), b"1e3"]))
            elif how == "beyond body":
                length = str(len(body) + draw(st.integers(1, 10**12))).encode()
            elif how == "shorter":
                length = str(draw(st.integers(0, max(len(text) - 1, 0)))).encode()
            elif binary:  # "longer": part of the binary counted as JSON
                length = str(len(text) + draw(st.integers(1, len(binary)))).encode()
            else:
                length = str(len(body) + 1).encode()
            case.fault("binary", f"Inference-Header-Content-Length {how}: {length[:20]!r}")
        headers["Inference-Header-Content-Length"] = length
    if sometimes(draw, 1):  # bytes left over after what the JSON accounts for (not only JSON whitespace,
        body += draw(st.binary(min_size=1, max_size=32).filter(lambda b: b.strip(b" \t\r\n")))  # which is legal)
        case.fault("binary", "bytes left over")
    return body, headers

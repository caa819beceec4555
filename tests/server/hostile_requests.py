"""Hypothesis strategies for hostile requests to both APIs, each with the faults its generator put in.

Each strategy draws a mostly well-formed request and then, with some probability per aspect, breaks
one or more aspects of it (name, datatype, shape, payload length, dtype, NaN/Inf, raw-input count,
typed field, repeated inputs or outputs, batch size, model name/version), and records each fault it
introduced as (kind, what): a `Case`. A fault is recorded only if it holds for what was actually
sent (a payload truncated to a whole number of valid images is no fault; a random datatype that
happens to be valid is never drawn), so `Case.expected` is the status the server must answer,
derived from the generator's own choices (see hostile_oracle.py). Draws shrink towards the
well-formed request, so a failure is reported as the smallest deviation that triggers it.

Pixel payloads are built with NumPy from a drawn seed rather than with `st.binary`, because a
1 000-image float32 payload is 3 MB and hypothesis is slow at drawing megabytes byte by byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf.message import Message
from hypothesis import strategies as st

from service.generated.digits.v1 import digits_pb2 as dpb
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from tests.server.hostile_oracle import (DIGITS_FORMATS, FEATURES, FIELD_OF, INPUT, MAX_BATCH, MODEL, TYPED_FIELDS,
                                         VALID_DATATYPES, expected_from_faults, image_bytes, outputs_fault,
                                         packed_problem, shape_images, typed_problem)
from tests.support.messages import ALL_OUTPUTS

OTHER_DATATYPES = ("FP64", "FP16", "INT8", "INT32", "UINT32", "BYTES", "BOOL", "", "fp32", "uint8", "FP32 ")
# float pixels the server must refuse (NaN, ±Inf, out of [0, 1]) and odd ones it must accept
POISON = (float("nan"), float("inf"), float("-inf"), -1e-7, 1.0000001, 2.0, -1.0, 3.4e38)
ODD_BUT_VALID = (-0.0, 1e-45, 1.0, 0.0)
INT64 = st.integers(-(2**63), 2**63 - 1)


def unseen_versions(versions: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Version strings this server does not serve."""
    return st.one_of(st.sampled_from(["0", "99", "latest", "v1", " 1", "1.0"]),
                     st.text(max_size=12)).filter(lambda v: v not in versions)


@dataclass
class Case:
    """A request and the faults its generator put in, each (kind, what); kinds are "model" (the
    server must answer NOT_FOUND), "pixels" (the decoder must refuse them) and "request" (outputs
    or batch size: INVALID_ARGUMENT after decoding)."""

    request: Message
    faults: list[tuple[str, str]] = field(default_factory=list)

    def fault(self, kind: str, what: str) -> None:
        self.faults.append((kind, what))

    @property
    def expected(self) -> grpc.StatusCode:
        return expected_from_faults(self.faults)

    @property
    def pixels_valid(self) -> bool:
        return not any(kind == "pixels" for kind, _ in self.faults)


def sometimes(draw, chance_in_ten: int) -> bool:
    """True with probability chance/10; shrinks to False, i.e. towards the well-formed request."""
    return draw(st.integers(0, 9)) >= 10 - chance_in_ten


@st.composite
def batch_sizes(draw) -> int:
    """Mostly tiny batches; sometimes medium ones; one in ten around the server's maximum."""
    kind = draw(st.integers(0, 9))
    if kind < 7:
        return draw(st.integers(1, 3))
    return draw(st.integers(4, 64)) if kind < 9 else draw(st.integers(MAX_BATCH - 2, MAX_BATCH + 40))


def pixel_array(seed: int, count: int, dtype: np.dtype) -> np.ndarray:
    """`count` random valid images: uint8 0..255 or float32 0..1."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(count, FEATURES), dtype=np.uint8)
    return raw if dtype == np.uint8 else (raw / np.float32(255)).astype("<f4")


@st.composite
def float_values(draw, count: int) -> np.ndarray:
    """`count` images of float32 pixels, possibly with a poisoned or odd-but-valid value."""
    pixels = pixel_array(draw(st.integers(0, 2**32 - 1)), count, np.dtype("<f4"))
    if sometimes(draw, 3):
        value = draw(st.sampled_from(POISON + ODD_BUT_VALID))
        pixels.reshape(-1)[draw(st.integers(0, pixels.size - 1))] = value
    return pixels


@st.composite
def mangled(draw, payload: bytes) -> bytes:
    """The payload, or it truncated, extended, emptied or replaced by random bytes."""
    how = draw(st.sampled_from(["as is"] * 6 + ["truncate", "extend", "empty", "random"]))
    if how == "truncate" and payload:
        return payload[:draw(st.integers(0, len(payload) - 1))]
    if how == "extend":
        return payload + draw(st.binary(min_size=1, max_size=64))
    if how == "empty":
        return b""
    if how == "random":
        return draw(st.binary(max_size=4 * FEATURES))
    return payload


@st.composite
def v2_shapes(draw, count: int) -> list[int]:
    """[N, 784] or [N, 28, 28], or a shape that lies: wrong N, negative, huge, wrong rank."""
    good = [count, FEATURES] if draw(st.booleans()) else [count, 28, 28]
    if not sometimes(draw, 2):
        return good
    if draw(st.booleans()):  # half the lies: an N the data does not have
        return [count + draw(st.sampled_from([-1, 1, 2, 1000]))] + good[1:]
    return draw(st.one_of(
        st.just([-count, FEATURES]), st.just([0, FEATURES]), st.just([2**62, FEATURES]),
        st.just([-(2**63), FEATURES]), st.just([count, FEATURES, 1]), st.just([count * FEATURES]),
        st.just([count, 783]), st.just([count, 28, 29]), st.just([]),
        st.lists(INT64, max_size=5)))


@st.composite
def v2_cases(draw, versions: tuple[str, ...] = ("", "1")) -> Case:
    """A ModelInferRequest that is well-formed except for whatever was drawn broken, and those faults."""
    count = draw(batch_sizes())
    datatype = draw(st.sampled_from(VALID_DATATYPES))
    payload_type = datatype if not sometimes(draw, 1) else draw(st.sampled_from(VALID_DATATYPES))
    declared = datatype
    if sometimes(draw, 1):
        declared = draw(st.one_of(st.sampled_from(OTHER_DATATYPES), st.text(max_size=8))
                        .filter(lambda d: d not in VALID_DATATYPES))
    pixels = (draw(float_values(count)) if payload_type == "FP32"
              else pixel_array(draw(st.integers(0, 2**32 - 1)), count, np.dtype(np.uint8)))
    name = INPUT if not sometimes(draw, 1) else draw(st.sampled_from(["", "image", "Pixels", "input_0"]))
    model = MODEL if not sometimes(draw, 1) else draw(st.sampled_from(["", "MNIST_MLP", "resnet"]))
    version = draw(st.sampled_from(versions)) if not sometimes(draw, 1) else draw(unseen_versions(versions))
    case = Case(vpb.ModelInferRequest(model_name=model, model_version=version, id=draw(st.text(max_size=16))))
    request = case.request
    if model != MODEL:
        case.fault("model", f"unknown model {model!r}")
    if version not in versions:
        case.fault("model", f"unknown version {version!r}")
    shape = draw(v2_shapes(count))
    tensor = request.inputs.add(name=name, datatype=declared, shape=shape)
    if name != INPUT:
        case.fault("pixels", f"unknown input {name!r}")
    if declared not in VALID_DATATYPES:
        case.fault("pixels", f"unsupported datatype {declared!r}")
    if shape_images(shape) is None:
        case.fault("pixels", f"shape {shape}")
    raw = draw(st.booleans())
    copies = 0
    if raw:
        copies = 1 if not sometimes(draw, 1) else draw(st.sampled_from([0, 2, 3]))
        payload = draw(mangled(pixels.tobytes()))
        request.raw_input_contents.extend([payload] * copies)
    typed: list = []
    field_name = FIELD_OF[payload_type]
    if not raw or sometimes(draw, 1):  # typed contents (or, broken: typed and raw together)
        field_name = FIELD_OF[payload_type] if not sometimes(draw, 1) else draw(st.sampled_from(TYPED_FIELDS))
        values = pixels.ravel()
        if sometimes(draw, 1):
            values = values[:draw(st.integers(0, values.size))]
        if field_name == "uint_contents" and payload_type == "UINT8" and values.size and sometimes(draw, 1):
            values = values.astype(np.int64)  # a value no UINT8 pixel can have
            values[draw(st.integers(0, values.size - 1))] = draw(st.integers(256, 2**32 - 1))
        typed = typed_list(field_name, values)
        if typed:  # (extending by nothing would leave it unclear whether `contents` is present)
            getattr(tensor.contents, field_name).extend(typed)
    if copies > 1:
        case.fault("pixels", f"{copies} raw_input_contents for one input")
    elif copies == 1 and typed:
        case.fault("pixels", "typed contents and raw_input_contents")
    elif declared in VALID_DATATYPES:  # the data itself, as the declared datatype, against the shape
        if copies == 1:
            problem = packed_problem(payload, declared)
            images = len(payload) // image_bytes(declared)
        elif typed and field_name != FIELD_OF[declared]:
            problem = f"{declared} values in {field_name}"
        else:
            problem, images = typed_problem(typed, declared), len(typed) // FEATURES
        if problem:
            case.fault("pixels", problem)
        elif images != shape_images(shape) and shape_images(shape) is not None:
            case.fault("pixels", f"shape {shape} for {images} images of data")
        elif images > MAX_BATCH:
            case.fault("request", f"batch of {images} images")
    if sometimes(draw, 1):  # repeated input names, or a second, unknown input
        extra = request.inputs.add()
        extra.CopyFrom(tensor)
        extra.name = draw(st.sampled_from(["pixels", "pixels", "labels"]))
        case.fault("pixels", "two inputs")
    outputs = draw(st.lists(st.sampled_from(ALL_OUTPUTS), max_size=4, unique=True))
    if sometimes(draw, 1):
        outputs += draw(st.lists(st.sampled_from(["probabilities", "scores", "", "activation_3"]),
                                 min_size=1, max_size=2))
    if outputs_fault(outputs):
        case.fault("request", f"outputs {outputs}")
    request.outputs.extend(vpb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs)
    if sometimes(draw, 2):
        request.parameters["binary_data_output"].bool_param = draw(st.booleans())
    return case


def typed_list(field: str, values: np.ndarray) -> list:
    """`values` converted to what the InferTensorContents field accepts."""
    if field in ("fp32_contents", "fp64_contents"):
        return values.astype(np.float64).tolist()
    if field == "bool_contents":
        return (values != 0).tolist()
    if field == "bytes_contents":
        return [bytes([b]) for b in values.tobytes()[:64]]
    wide = np.nan_to_num(values.astype(np.float64))  # float64: float32 cannot hold 2**32 - 1 exactly
    if field in ("uint_contents", "uint64_contents"):
        return np.clip(wide, 0, 2**32 - 1).astype(np.int64).tolist()
    return np.clip(wide, -(2**31), 2**31 - 1).astype(np.int64).tolist()


@st.composite
def digits_cases(draw, versions: tuple[str, ...] = ("", "1")) -> Case:
    """A ClassifyRequest that is well-formed except for whatever was drawn broken, and those faults."""
    count = draw(batch_sizes())
    version = draw(st.sampled_from(versions)) if not sometimes(draw, 1) else draw(unseen_versions(versions))
    case = Case(dpb.ClassifyRequest(request_id=draw(st.text(max_size=16)), include_activations=draw(st.booleans()),
                                    model_version=version))
    request = case.request
    if version not in versions:
        case.fault("model", f"unknown version {version!r}")
    form = draw(st.sampled_from(["uint8", "float32", "values"]))
    values: list = []
    if form == "values" or sometimes(draw, 1):  # the convenience form (or, broken: both forms)
        array = draw(float_values(count)).ravel()
        if sometimes(draw, 1):
            array = array[:draw(st.integers(0, array.size))]
        values = array.astype(np.float64).tolist()
        request.pixel_values.extend(values)
    if form != "values":
        payload_form = form if not sometimes(draw, 1) else draw(st.sampled_from(["uint8", "float32"]))
        pixels = (draw(float_values(count)) if payload_form == "float32"
                  else pixel_array(draw(st.integers(0, 2**32 - 1)), count, np.dtype(np.uint8)))
        request.pixels = draw(mangled(pixels.tobytes()))
        formats = {"uint8": dpb.PIXEL_FORMAT_UINT8, "float32": dpb.PIXEL_FORMAT_FLOAT32}
        request.pixel_format = formats[form] if not sometimes(draw, 1) else draw(
            st.one_of(st.sampled_from([dpb.PIXEL_FORMAT_UNSPECIFIED, 3, 7, -1]), st.integers(-(2**31), 2**31 - 1)))
    if values and request.pixels:
        case.fault("pixels", "both pixels and pixel_values")
        return case
    if values:
        problem, images = typed_problem(values, "FP32"), len(values) // FEATURES
    elif request.pixel_format not in DIGITS_FORMATS:
        case.fault("pixels", f"pixel_format {request.pixel_format}")
        return case
    else:
        datatype = DIGITS_FORMATS[request.pixel_format]
        problem = packed_problem(request.pixels, datatype)
        images = len(request.pixels) // image_bytes(datatype)
    if problem:
        case.fault("pixels", problem)
    elif images > MAX_BATCH:
        case.fault("request", f"batch of {images} images")
    return case


def v2_requests(versions: tuple[str, ...] = ("", "1")) -> st.SearchStrategy[vpb.ModelInferRequest]:
    return v2_cases(versions).map(lambda case: case.request)


def digits_requests(versions: tuple[str, ...] = ("", "1")) -> st.SearchStrategy[dpb.ClassifyRequest]:
    return digits_cases(versions).map(lambda case: case.request)


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def unknown_fields(draw, first_unknown: int = 16) -> bytes:
    """Well-formed protobuf fields with numbers the message does not declare (readers must skip them)."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 4))):
        number = draw(st.one_of(st.integers(first_unknown, 18999), st.integers(20000, 2**29 - 1)))
        wire = draw(st.sampled_from([0, 1, 2, 5]))
        out += varint(number << 3 | wire)
        if wire == 0:
            out += varint(draw(st.integers(0, 2**64 - 1)))
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        else:
            body = draw(st.binary(max_size=64))
            out += varint(len(body)) + body
    return bytes(out)


@st.composite
def garbled(draw, valid: st.SearchStrategy) -> bytes:
    """Bytes that may or may not be a valid message: random, or a valid one truncated or bit-flipped."""
    how = draw(st.sampled_from(["random", "truncate", "flip", "splice"]))
    if how == "random":
        return draw(st.binary(max_size=256))
    data = bytearray(draw(valid).SerializeToString())
    if how == "truncate" or not data:
        return bytes(data[:draw(st.integers(0, max(len(data) - 1, 0)))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=16)) + bytes(data[at:])

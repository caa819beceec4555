"""What the server must answer to a (possibly hostile) request, worked out without the server's code.

Two derivations, both independent of `service.server`:

- the generators in hostile_requests.py record every fault they introduce (a wrong model name, a
  NaN pixel, a shape that lies...); `expected_from_faults` turns those into the status;
- `v2_status` / `digits_status` read any parsed message, field by field, against the rules the
  README and the .proto comments state. They judge bytes no generator controlled (garbled or
  bit-flipped messages that still parse), and on generated requests they must agree with the
  generator's faults, which checks both.

When a request has several faults the model is checked first (NOT_FOUND), then everything else
(INVALID_ARGUMENT). The pixels an OK answer was computed on are re-derived from the request here
too, so an OK answer on the wrong data cannot pass.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from service.generated.digits.v1 import digits_pb2 as dpb
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from tests.support.messages import ALL_OUTPUTS

OK, INVALID, NOT_FOUND = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ALLOWED = frozenset({OK, INVALID, NOT_FOUND, EXHAUSTED})  # never UNKNOWN, INTERNAL, DEADLINE_EXCEEDED...
MESSAGE_LIMIT = 16 * 1024 * 1024  # the server's default --max-receive-message-bytes
FEATURES = 784
MAX_BATCH = 1024  # the server's default --max-batch-size
MODEL = "mnist_mlp"
INPUT = "pixels"
VALID_DATATYPES = ("FP32", "UINT8")
FIELD_OF = {"FP32": "fp32_contents", "UINT8": "uint_contents"}
NUMPY_OF = {"FP32": np.dtype("<f4"), "UINT8": np.dtype(np.uint8)}
TYPED_FIELDS = ("fp32_contents", "uint_contents", "int_contents", "int64_contents", "uint64_contents",
                "fp64_contents", "bool_contents", "bytes_contents")
DIGITS_FORMATS = {dpb.PIXEL_FORMAT_UINT8: "UINT8", dpb.PIXEL_FORMAT_FLOAT32: "FP32"}

# A fault's kind decides the status it causes on its own: the model is checked first.
STATUS_OF_KIND = {"model": NOT_FOUND, "pixels": INVALID, "request": INVALID}


def expected_from_faults(faults: list[tuple[str, str]]) -> grpc.StatusCode:
    kinds = {kind for kind, _ in faults}
    if "model" in kinds:
        return NOT_FOUND
    return INVALID if kinds else OK


# ----------------------------------------------------------------------------- pixel rules


def in_unit_range(values: np.ndarray) -> bool:
    """Float pixels must be finite and within [0, 1] (NaN fails both comparisons; -0.0 passes)."""
    return bool(np.all((values >= 0.0) & (values <= 1.0)))


def image_bytes(datatype: str) -> int:
    return FEATURES * NUMPY_OF[datatype].itemsize


def packed_problem(data: bytes, datatype: str) -> str | None:
    """What is wrong with packed little-endian pixels of `datatype`, or None if they are valid."""
    if not data:
        return "no pixels"
    if len(data) % image_bytes(datatype):
        return f"{len(data)} bytes: not whole {datatype} images"
    if datatype == "FP32" and not in_unit_range(np.frombuffer(data, "<f4")):
        return "a float pixel outside [0, 1]"
    return None


def packed_images(data: bytes, datatype: str) -> int | None:
    """Images in packed pixels of `datatype`, or None if they are not valid pixels."""
    return None if packed_problem(data, datatype) else len(data) // image_bytes(datatype)


def typed_problem(values: list, datatype: str) -> str | None:
    """What is wrong with typed pixel values (as the protobuf field holds them), or None."""
    if not values:
        return "no pixels"
    if len(values) % FEATURES:
        return f"{len(values)} values: not whole images"
    if datatype == "UINT8":
        if min(values) < 0 or max(values) > 255:
            return "a UINT8 value outside 0..255"
    elif not in_unit_range(np.asarray(values, dtype=np.float32)):
        return "a float pixel outside [0, 1]"
    return None


def typed_images(values: list, datatype: str) -> int | None:
    """Images in typed values, or None if they are not valid pixels."""
    return None if typed_problem(values, datatype) else len(values) // FEATURES


def shape_images(shape: list[int]) -> int | None:
    """N of a declared shape [N, 784] or [N, 28, 28] with N >= 1; None for any other shape."""
    if len(shape) == 2 and shape[1] == FEATURES or len(shape) == 3 and shape[1:] == [28, 28]:
        return shape[0] if shape[0] >= 1 else None
    return None


def outputs_fault(names: list[str]) -> bool:
    """Requested outputs must each be known and asked for once (none listed: all of them)."""
    return any(name not in ALL_OUTPUTS for name in names) or len(set(names)) != len(names)


# ----------------------------------------------------------------------------- any parsed message


def v2_images(request: vpb.ModelInferRequest) -> int | None:
    """The number of images a ModelInferRequest validly carries, or None if its pixels are invalid."""
    if len(request.inputs) != 1:
        return None
    tensor = request.inputs[0]
    if tensor.name != INPUT or tensor.datatype not in VALID_DATATYPES:
        return None
    declared = shape_images(list(tensor.shape))
    if declared is None:
        return None
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            return None
        images = packed_images(request.raw_input_contents[0], tensor.datatype)
    else:
        own = FIELD_OF[tensor.datatype]
        if any(len(getattr(tensor.contents, field)) for field in TYPED_FIELDS if field != own):
            return None
        images = typed_images(list(getattr(tensor.contents, own)), tensor.datatype)
    return images if images == declared else None


def v2_status(request: vpb.ModelInferRequest, served_version: str) -> grpc.StatusCode:
    if request.model_name != MODEL or request.model_version not in ("", served_version):
        return NOT_FOUND
    images = v2_images(request)
    if images is None or outputs_fault([o.name for o in request.outputs]) or images > MAX_BATCH:
        return INVALID
    return OK


def digits_images(request: dpb.ClassifyRequest) -> int | None:
    """The number of images a ClassifyRequest validly carries, or None if its pixels are invalid."""
    if request.pixels and request.pixel_values:
        return None
    if request.pixel_values:
        return typed_images(list(request.pixel_values), "FP32")
    if request.pixel_format not in DIGITS_FORMATS:
        return None
    return packed_images(request.pixels, DIGITS_FORMATS[request.pixel_format])


def digits_status(request: dpb.ClassifyRequest, served_version: str) -> grpc.StatusCode:
    if request.model_version not in ("", served_version):
        return NOT_FOUND
    images = digits_images(request)
    return INVALID if images is None or images > MAX_BATCH else OK


# ----------------------------------------------------------------------------- what an OK answer saw


def sent_pixels_v2(request: vpb.ModelInferRequest) -> np.ndarray:
    """The [N, 784] pixels a request that was answered OK carried (uint8 or float32)."""
    tensor = request.inputs[0]
    if request.raw_input_contents:
        flat = np.frombuffer(request.raw_input_contents[0], dtype=NUMPY_OF[tensor.datatype])
    elif tensor.datatype == "UINT8":
        flat = np.asarray(tensor.contents.uint_contents, dtype=np.uint8)
    else:
        flat = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
    return flat.reshape(-1, FEATURES)


def sent_pixels_digits(request: dpb.ClassifyRequest) -> np.ndarray:
    if request.pixel_values:
        return np.asarray(request.pixel_values, dtype=np.float32).reshape(-1, FEATURES)
    dtype = np.uint8 if request.pixel_format == dpb.PIXEL_FORMAT_UINT8 else np.dtype("<f4")
    return np.frombuffer(request.pixels, dtype=dtype).reshape(-1, FEATURES)


class StatusTally:
    """Counts the statuses seen, per test, for the issue note ("cases fuzzed and statuses seen")."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {}

    def record(self, test: str, status: grpc.StatusCode | str, times: int = 1) -> None:
        name = status.name if isinstance(status, grpc.StatusCode) else status
        self.counts.setdefault(test, Counter())[name] += times

    def table(self) -> str:
        lines = ["hostile input: cases and statuses seen"]
        total: Counter = Counter()
        for test, counts in self.counts.items():
            total.update(counts)
            lines.append(f"  {test:<44} {sum(counts.values()):>6}  " +
                         ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        lines.append(f"  {'TOTAL':<44} {sum(total.values()):>6}  " +
                     ", ".join(f"{k}={v}" for k, v in sorted(total.items())))
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({t: dict(c) for t, c in self.counts.items()}, indent=2, sort_keys=True))

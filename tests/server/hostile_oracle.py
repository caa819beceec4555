"""What the server must answer to a (possibly hostile) request, and a tally of what it did answer.

The expected status is computed in-process, in the order the servicers check things (model, then
the request's pixels, then outputs and batch size), so the over-the-wire tests prove that every
case gets the *precise* status the in-process decoders predict, not merely "some error". The pixels
an OK answer must have been computed on are re-derived here independently of `service.server.validation`,
so an OK answer on the wrong data cannot pass.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from service.server.errors import InvalidInput
from service.generated.digits.v1 import digits_pb2 as dpb
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from service.server.grpc_api import digits_v1, kserve_v2
from tests.service.hostile_requests import FEATURES, MAX_BATCH, MODEL, NUMPY_OF

OK, INVALID, NOT_FOUND = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ALLOWED = frozenset({OK, INVALID, NOT_FOUND, EXHAUSTED})  # never UNKNOWN, INTERNAL, DEADLINE_EXCEEDED...
ALL_OUTPUTS = ("probabilities", "logits", "activation_1", "activation_2")
MESSAGE_LIMIT = 16 * 1024 * 1024  # the server's default --max-receive-message-bytes


def expected_v2(request: vpb.ModelInferRequest, served_version: str) -> grpc.StatusCode:
    if request.model_name != MODEL or request.model_version not in ("", served_version):
        return NOT_FOUND
    try:
        pixels = kserve_v2.decode_pixels(request)
    except InvalidInput:
        return INVALID
    outputs = [o.name for o in request.outputs] or list(ALL_OUTPUTS)
    if len(set(outputs)) != len(outputs) or not set(outputs) <= set(ALL_OUTPUTS) or len(pixels) > MAX_BATCH:
        return INVALID
    return OK


def expected_digits(request: dpb.ClassifyRequest, served_version: str) -> grpc.StatusCode:
    if request.model_version not in ("", served_version):
        return NOT_FOUND
    try:
        pixels = digits_v1.decode_pixels(request)
    except InvalidInput:
        return INVALID
    return INVALID if len(pixels) > MAX_BATCH else OK


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


def v2_output_arrays(response: vpb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Each output of a response as an array of its declared shape, whether sent raw or typed."""
    arrays = {}
    for i, tensor in enumerate(response.outputs):
        assert tensor.datatype == "FP32", tensor.datatype
        flat = (np.frombuffer(response.raw_output_contents[i], dtype="<f4") if response.raw_output_contents
                else np.asarray(tensor.contents.fp32_contents, dtype=np.float32))
        arrays[tensor.name] = flat.reshape(list(tensor.shape))
    return arrays


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

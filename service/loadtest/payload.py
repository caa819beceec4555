"""Request messages, built once per client slot and reused for every call.

Building the protobuf once keeps the client's per-request work down to what gRPC itself does
(serialise and send), so the load tester measures the server, not its own Python.
"""

from __future__ import annotations

import numpy as np

from service.contract import FEATURES, INPUT_NAME, LOGITS, PROBABILITIES, activation_name
from service.generated.digits.v1 import digits_pb2
from service.generated.inference import grpc_predict_v2_pb2 as v2

KSERVE_OUTPUTS = (PROBABILITIES,)
KSERVE_ACTIVATION_OUTPUTS = (activation_name(1), activation_name(2), LOGITS)  # the shipped network's layers


def synthetic_images(count: int = 1000, seed: int = 0) -> np.ndarray:
    """Stand-in uint8 images (same size as MNIST) for when no MNIST copy is at hand."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, FEATURES), dtype=np.uint8)


def batch_pixels(images: np.ndarray, batch_size: int, offset: int, dtype: str) -> bytes:
    """`batch_size` consecutive images (wrapping) starting at `offset`, packed little-endian."""
    rows = images[(offset + np.arange(batch_size)) % len(images)]
    if dtype == "uint8":
        return rows.astype(np.uint8, copy=False).tobytes()
    return (rows.astype("<f4") / np.float32(255.0)).astype("<f4", copy=False).tobytes()


def kserve_request(pixels: bytes, batch_size: int, dtype: str, activations: bool,
                   model_name: str, request_id: str = "") -> v2.ModelInferRequest:
    """An Open Inference Protocol ModelInfer request carrying the batch in raw_input_contents."""
    outputs = KSERVE_OUTPUTS + (KSERVE_ACTIVATION_OUTPUTS if activations else ())
    return v2.ModelInferRequest(
        model_name=model_name,
        id=request_id,
        inputs=[v2.ModelInferRequest.InferInputTensor(
            name=INPUT_NAME, datatype="UINT8" if dtype == "uint8" else "FP32",
            shape=[batch_size, FEATURES])],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
        raw_input_contents=[pixels],
    )


def digits_request(pixels: bytes, dtype: str, activations: bool,
                   request_id: str = "") -> digits_pb2.ClassifyRequest:
    """A digits.v1 ClassifyRequest with the batch packed in `pixels`."""
    return digits_pb2.ClassifyRequest(
        request_id=request_id,
        pixel_format=digits_pb2.PIXEL_FORMAT_UINT8 if dtype == "uint8" else digits_pb2.PIXEL_FORMAT_FLOAT32,
        pixels=pixels,
        include_activations=activations,
    )


def build_requests(images: np.ndarray, count: int, first_offset: int, *, api: str, batch_size: int,
                   dtype: str, activations: bool, model_name: str) -> list:
    """`count` requests with distinct images and request ids "0".."count-1" (the stream's slots)."""
    requests = []
    for slot in range(count):
        pixels = batch_pixels(images, batch_size, first_offset + slot * batch_size, dtype)
        if api == "kserve_v2":
            requests.append(kserve_request(pixels, batch_size, dtype, activations, model_name, str(slot)))
        else:
            requests.append(digits_request(pixels, dtype, activations, str(slot)))
    return requests

"""gRPC checks against the running container: health, one real MNIST classification, one bad call.

The classification is compared with onnxruntime run in this process on the very model file the
image was built from: the container must return the same probabilities (so the right model, the
right preprocessing and the V2 encoding all survived packaging), and the digit must be the
MNIST label.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from service.generated.grpc.health.v1 import health_pb2, health_pb2_grpc
from service.generated.inference import grpc_predict_v2_pb2 as v2
from service.generated.inference import grpc_predict_v2_pb2_grpc as v2_grpc

HEALTH_SERVICES = ("", "digits.v1.DigitClassifier", "inference.GRPCInferenceService")
MODEL_NAME = "mnist_mlp"


@dataclass(frozen=True)
class Classification:
    label: int
    digit: int
    max_abs_diff: float  # between the container's and the local onnxruntime's probabilities


def mnist_test_image(data_dir: Path, index: int) -> tuple[np.ndarray, int]:
    """(uint8 [784], label) of one MNIST test image, read straight from the IDX files."""
    images = np.frombuffer(gzip.decompress((data_dir / "t10k-images-idx3-ubyte.gz").read_bytes()),
                           np.uint8, offset=16).reshape(-1, 784)
    labels = np.frombuffer(gzip.decompress((data_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()),
                           np.uint8, offset=8)
    return images[index].copy(), int(labels[index])


def wait_serving(target: str, timeout: float, still_alive: Callable[[], None]) -> float:
    """Polls grpc.health.v1 until every service is SERVING; returns the seconds it took.

    `still_alive` raises if the container died, so a crash fails in seconds, not at the timeout.
    """
    start = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            still_alive()
            try:
                statuses = [stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=1.0).status
                            for s in HEALTH_SERVICES]
                if all(s == health_pb2.HealthCheckResponse.SERVING for s in statuses):
                    return time.monotonic() - start
            except grpc.RpcError:
                pass  # not listening yet, or NOT_SERVING while the model loads
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{target} not SERVING on {HEALTH_SERVICES} after {timeout:.0f} s")
            time.sleep(0.25)


def _infer_request(pixels: np.ndarray) -> v2.ModelInferRequest:
    tensor = v2.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8", shape=[1, 784])
    request = v2.ModelInferRequest(
        model_name=MODEL_NAME, id="deploy-ci", inputs=[tensor],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")])
    request.raw_input_contents.append(pixels.astype(np.uint8).tobytes())
    return request


def _probabilities(response: v2.ModelInferResponse) -> np.ndarray:
    (tensor,) = response.outputs
    if tensor.name != "probabilities" or tensor.datatype != "FP32":
        raise AssertionError(f"unexpected output tensor {tensor.name} {tensor.datatype}")
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[0], "<f4")
    else:
        values = np.asarray(tensor.contents.fp32_contents, np.float32)
    return values.reshape(tuple(tensor.shape))


def classify(target: str, pixels: np.ndarray, label: int, model_file: Path) -> Classification:
    """Classifies one image through the V2 API and checks it against local onnxruntime."""
    with grpc.insecure_channel(target) as channel:
        response = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_infer_request(pixels), timeout=10)
    served = _probabilities(response)
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["probabilities"], {"pixels": pixels.reshape(1, 784).astype(np.float32) / 255})
    diff = float(np.max(np.abs(served - expected)))
    result = Classification(label=label, digit=int(served.argmax()), max_abs_diff=diff)
    if diff > 1e-5:
        raise AssertionError(f"container and local onnxruntime disagree by {diff:g}")
    if result.digit != label:
        raise AssertionError(f"classified MNIST test image as {result.digit}, label is {label}")
    return result


def send_invalid(target: str) -> grpc.StatusCode:
    """A request with the wrong shape must be refused with INVALID_ARGUMENT (and be counted)."""
    tensor = v2.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8", shape=[1, 783])
    request = v2.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])
    request.raw_input_contents.append(bytes(783))
    with grpc.insecure_channel(target) as channel:
        try:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    raise AssertionError("a [1, 783] input was accepted")


def keep_busy(target: str, pixels: np.ndarray, seconds: float) -> int:
    """A bounded trickle of real requests (so Prometheus sees counters move); returns the count."""
    deadline = time.monotonic() + seconds
    sent = 0
    with grpc.insecure_channel(target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        request = _infer_request(pixels)
        while time.monotonic() < deadline:
            stub.ModelInfer(request, timeout=10)
            sent += 1
            time.sleep(0.05)
    return sent

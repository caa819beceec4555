"""A small Python client for the `digits.v1.DigitClassifier` gRPC API.

Why a library and not just the generated stub: callers think in NumPy arrays, while the wire
format is packed bytes plus a pixel-format enum, and the answer is repeated floats. This module
does that packing/unpacking in one place (one `tobytes()` per batch, one `np.asarray` per
field) so the CLI, notebooks and load tools all send exactly what the server expects.

gRPC failures are not translated: a failed call raises the original `grpc.RpcError`, so
`err.code()` and `err.details()` tell the caller exactly what the server said.

    with DigitClient("127.0.0.1:8001") as client:
        predictions = client.classify(images)          # images: [N, 784] or [N, 28, 28]
        print(predictions[0].digit, predictions[0].confidence)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from service.contract import DEFAULT_TARGET, FEATURES, IMAGE_SHAPE
from service.generated.digits.v1 import digits_pb2, digits_pb2_grpc


@dataclass(frozen=True)
class Prediction:
    """One image's answer. `activations` is empty unless activations were requested."""

    digit: int
    confidence: float
    probabilities: np.ndarray                      # float32 [10]
    activations: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32 [units]


@dataclass(frozen=True)
class BatchError:
    """A streamed request that the server rejected; the stream itself carried on."""

    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class ClassifyResult:
    """One response: which model version answered, and one prediction per image in order."""

    request_id: str
    model_name: str
    model_version: str
    predictions: list[Prediction]
    error: BatchError | None = None                # only ever set on streamed responses


@dataclass(frozen=True)
class ModelInfo:
    """What `GetModelInfo` reports about the served model."""

    name: str
    version: str
    available_versions: tuple[str, ...]
    layer_sizes: tuple[int, ...]
    hidden_activation: str
    parameter_count: int
    test_accuracy: float
    sha256: str
    input_name: str
    output_names: tuple[str, ...]
    metadata: dict[str, str]


def encode_images(images: np.ndarray) -> tuple[digits_pb2.PixelFormat, bytes]:
    """Packs a batch as (pixel_format, bytes): uint8 stays 1 byte a pixel, floats become
    float32 little-endian. Accepts [N, 784] or [N, 28, 28]; raises ValueError/TypeError on
    anything else so a shape mistake is caught before it costs a round trip."""
    array = np.asarray(images)
    if array.ndim == 3 and array.shape[1:] == IMAGE_SHAPE:
        array = array.reshape(array.shape[0], FEATURES)
    elif not (array.ndim == 2 and array.shape[1] == FEATURES):
        raise ValueError(f"images must have shape [N, 784] or [N, 28, 28], got {list(array.shape)}"
                         " (for a single image use images[None])")
    if array.dtype == np.uint8:
        return digits_pb2.PIXEL_FORMAT_UINT8, np.ascontiguousarray(array).tobytes()
    if np.issubdtype(array.dtype, np.floating):
        return digits_pb2.PIXEL_FORMAT_FLOAT32, np.ascontiguousarray(array, dtype="<f4").tobytes()
    raise TypeError(f"images must be uint8 (0-255) or float32 (0.0-1.0), got {array.dtype}")


def build_request(images: np.ndarray, *, include_activations: bool = False,
                  request_id: str = "", model_version: str = "") -> digits_pb2.ClassifyRequest:
    """The ClassifyRequest for a batch; exposed so other tools (load tests) reuse the packing."""
    pixel_format, pixels = encode_images(images)
    return digits_pb2.ClassifyRequest(
        request_id=request_id, model_version=model_version, pixel_format=pixel_format,
        pixels=pixels, include_activations=include_activations)


def decode_response(response: digits_pb2.ClassifyResponse) -> ClassifyResult:
    """Turns the repeated-float fields into NumPy arrays."""
    error = None
    if response.HasField("error"):
        error = BatchError(_status_code(response.error.code), response.error.message)
    predictions = [
        Prediction(
            digit=int(p.digit),
            confidence=float(p.confidence),
            probabilities=np.asarray(p.probabilities, dtype=np.float32),
            activations={a.name: np.asarray(a.values, dtype=np.float32) for a in p.activations},
        )
        for p in response.predictions
    ]
    return ClassifyResult(response.request_id, response.model_name, response.model_version,
                          predictions, error)


class DigitClient:
    """A channel to one server plus typed calls. Use as a context manager to close the channel.

    `timeout` is the deadline in seconds of each unary call (None: no deadline).
    `credentials` switches to a TLS channel (e.g. `grpc.ssl_channel_credentials(...)`, composed
    with call credentials for a token); `metadata` goes with every call (the way to send a token over
    plaintext, where gRPC refuses call credentials; see service.client.security.grpc_credentials);
    `options` are passed to the channel unchanged (e.g. `("grpc.max_receive_message_length", n)`).
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float | None = 10.0,
                 model_version: str = "",
                 credentials: grpc.ChannelCredentials | None = None,
                 metadata: Sequence[tuple[str, str]] = (),
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self.timeout = timeout
        self.model_version = model_version
        self._metadata = tuple(metadata) or None
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(target, credentials, options=list(options))
        self._stub = digits_pb2_grpc.DigitClassifierStub(self._channel)

    def __enter__(self) -> DigitClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_until_ready(self, timeout: float) -> None:
        """Blocks until the channel is connected; raises grpc.FutureTimeoutError otherwise."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def classify(self, images: np.ndarray, include_activations: bool = False) -> list[Prediction]:
        """Classifies a batch ([N, 784] or [N, 28, 28], uint8 or float32) in one request."""
        return self.classify_batch(images, include_activations=include_activations).predictions

    def classify_batch(self, images: np.ndarray, *, include_activations: bool = False,
                       request_id: str = "") -> ClassifyResult:
        """Like `classify`, but also returns which model name and version answered."""
        request = build_request(images, include_activations=include_activations,
                                request_id=request_id, model_version=self.model_version)
        return decode_response(self._stub.Classify(request, timeout=self.timeout, metadata=self._metadata))

    def classify_stream(self, batches: Iterable[np.ndarray], *, include_activations: bool = False,
                        timeout: float | None = None) -> Iterator[ClassifyResult]:
        """Sends each batch as one request on a single bidirectional stream.

        The i-th batch gets request_id str(i); results may arrive in any order, so match them
        by `request_id`. A batch the server rejects comes back with `error` set while the
        others go on. A batch that cannot even be packed (bad shape or dtype) ends the stream
        and its ValueError/TypeError is raised after the answers to earlier batches.
        `timeout` bounds the whole stream (default: none, streams may be long-lived).
        """
        packing_error: list[Exception] = []

        def requests() -> Iterator[digits_pb2.ClassifyRequest]:
            # gRPC reads this generator on its own thread and would turn an exception raised
            # here into a bare CANCELLED; keep it and end the stream cleanly instead.
            for index, images in enumerate(batches):
                try:
                    request = build_request(images, include_activations=include_activations,
                                            request_id=str(index), model_version=self.model_version)
                except (ValueError, TypeError) as exc:
                    packing_error.append(exc)
                    return
                yield request

        for response in self._stub.ClassifyStream(requests(), timeout=timeout, metadata=self._metadata):
            yield decode_response(response)
        if packing_error:
            raise packing_error[0]

    def model_info(self, version: str | None = None) -> ModelInfo:
        """Describes the served model (default: the client's `model_version`, else the server's)."""
        request = digits_pb2.GetModelInfoRequest(
            model_version=self.model_version if version is None else version)
        info = self._stub.GetModelInfo(request, timeout=self.timeout, metadata=self._metadata)
        return ModelInfo(
            name=info.name, version=info.version,
            available_versions=tuple(info.available_versions),
            layer_sizes=tuple(int(n) for n in info.layer_sizes),
            hidden_activation=info.hidden_activation,
            parameter_count=int(info.parameter_count),
            test_accuracy=float(info.test_accuracy),
            sha256=info.sha256, input_name=info.input_name,
            output_names=tuple(info.output_names), metadata=dict(info.metadata))


def _status_code(value: int) -> grpc.StatusCode:
    """grpc.StatusCode for its integer value (the enum's values are (int, name) pairs)."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN

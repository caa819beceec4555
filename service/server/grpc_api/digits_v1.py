"""`digits.v1.DigitClassifier`: the product's own API, as methods over the inference core.

Activations are requested from onnxruntime only when the client asks for them, so a plain
classification neither computes nor serialises them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import numpy as np

from service.contract import INPUT_NAME, PROBABILITIES
from service.generated.digits.v1 import digits_pb2 as pb
from service.server.core_types import InferenceRequest, InferenceResult, Pending
from service.server.errors import InvalidInput
from service.server.grpc_api.methods import Kind, Method, method_path
from service.server.grpc_api.status import parse
from service.server.validation import pixels_from_bytes, pixels_from_typed

if TYPE_CHECKING:
    from service.server.core import InferenceCore

API = "digits_v1"
SERVICE = pb.DESCRIPTOR.services_by_name["DigitClassifier"].full_name
FORMATS = {pb.PIXEL_FORMAT_UINT8: "uint8", pb.PIXEL_FORMAT_FLOAT32: "float32"}


def decode_pixels(request: pb.ClassifyRequest) -> np.ndarray:
    if request.pixels and request.pixel_values:
        raise InvalidInput("set either pixels or pixel_values, not both")
    if request.pixel_values:
        return pixels_from_typed(request.pixel_values, "float32", "pixel_values")
    if request.pixel_format not in FORMATS:
        given = request.pixel_format
        name = pb.PixelFormat.Name(given) if given in pb.PixelFormat.values() else str(given)
        raise InvalidInput("pixel_format must be PIXEL_FORMAT_UINT8 or PIXEL_FORMAT_FLOAT32 when pixels are set, "
                           f"got {name}")
    return pixels_from_bytes(request.pixels, FORMATS[request.pixel_format], "pixels")


def encode_response(request: pb.ClassifyRequest, result: InferenceResult, outputs: tuple[str, ...]) -> bytes:
    probabilities = result.outputs[PROBABILITIES]
    digits = probabilities.argmax(axis=1)
    confidences = probabilities[np.arange(len(digits)), digits]
    predictions = [pb.Prediction(digit=d, confidence=c, probabilities=p)
                   for d, c, p in zip(digits.tolist(), confidences.tolist(), probabilities.tolist())]
    if request.include_activations:
        layers = [(name, result.outputs[name].tolist()) for name in outputs[1:]]
        for i, prediction in enumerate(predictions):
            prediction.activations.extend(pb.LayerActivation(name=name, values=values[i]) for name, values in layers)
    return pb.ClassifyResponse(request_id=request.request_id, model_name=result.model.name,
                               model_version=result.model.version, predictions=predictions).SerializeToString()


class DigitsV1:
    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    def classify(self, data: bytes, deadline: float | None) -> Pending:
        request = parse(pb.ClassifyRequest, data)
        model = self._core.find_model(self._core.model.name, request.model_version)
        pixels = decode_pixels(request)
        outputs = model.with_activations if request.include_activations else (PROBABILITIES,)
        return Pending(InferenceRequest(pixels, outputs, deadline),
                       lambda result: encode_response(request, result, outputs))

    @staticmethod
    def stream_error(data: bytes, code: str, message: str) -> bytes:
        """One ClassifyStream message's failure travels in its response; the stream carries on."""
        try:
            request_id = pb.ClassifyRequest.FromString(data).request_id
        except Exception:  # noqa: BLE001 - undecodable: there is no id to echo
            request_id = ""
        return pb.ClassifyResponse(request_id=request_id, error=pb.Error(
            code=grpc.StatusCode[code].value[0], message=message)).SerializeToString()

    def model_info(self, data: bytes, deadline: float | None) -> bytes:
        request = parse(pb.GetModelInfoRequest, data)
        model = self._core.find_model(self._core.model.name, request.model_version)
        return pb.ModelInfo(
            name=model.name, version=model.version, available_versions=self._core.available_versions,
            layer_sizes=model.layer_sizes, hidden_activation=model.hidden_activation,
            parameter_count=model.parameter_count, test_accuracy=model.test_accuracy,
            sha256=model.sha256, input_name=INPUT_NAME, output_names=model.output_names,
            metadata=model.metadata).SerializeToString()

    def methods(self) -> list[Method]:
        return [
            Method(method_path(SERVICE, "Classify"), Kind.UNARY, self.classify,
                   observed=(API, "Classify"), protected=True),
            Method(method_path(SERVICE, "ClassifyStream"), Kind.STREAM, self.classify,
                   stream_error=self.stream_error, observed=(API, "ClassifyStream"), protected=True),
            Method(method_path(SERVICE, "GetModelInfo"), Kind.UNARY, self.model_info,
                   observed=(API, "GetModelInfo"), protected=True),
        ]

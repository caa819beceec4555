"""`digits.v1.DigitClassifier`: the product's own API, over the inference core.

Activations are requested from onnxruntime only when the client asks for them, so a plain
classification neither computes nor serialises them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc
import numpy as np

from service.contract import INPUT_NAME, PROBABILITIES
from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from service.server import metrics
from service.server.core_types import InferenceRequest
from service.server.errors import InvalidInput
from service.server.grpc_api.status import MalformedRequest, add_service, admit, deadline_of, observed, status_of
from service.server.validation import pixels_from_bytes, pixels_from_typed

if TYPE_CHECKING:
    from service.server.core import InferenceCore

API = "digits_v1"
FORMATS = {pb.PIXEL_FORMAT_UINT8: "uint8", pb.PIXEL_FORMAT_FLOAT32: "float32"}
STREAM_WINDOW = 64  # requests of one stream computed concurrently; more wait to be read


def decode_pixels(request: pb.ClassifyRequest) -> np.ndarray:
    if request.pixels and request.pixel_values:
        raise InvalidInput("set either pixels or pixel_values, not both")
    if request.pixel_values:
        return pixels_from_typed(request.pixel_values, "float32", "pixel_values")
    if request.pixel_format not in FORMATS:
        given = request.pixel_format
        name = pb.PixelFormat.Name(given) if given in pb.PixelFormat.values() else str(given)
        raise InvalidInput(f"pixel_format must be PIXEL_FORMAT_UINT8 or PIXEL_FORMAT_FLOAT32 when pixels are set, got {name}")
    return pixels_from_bytes(request.pixels, FORMATS[request.pixel_format], "pixels")


class DigitsV1Servicer(pb_grpc.DigitClassifierServicer):
    def __init__(self, core: InferenceCore) -> None:
        self._core = core
        self._stream_observer = metrics.RequestObserver(API, "ClassifyStream")

    async def _classify(self, request: pb.ClassifyRequest, deadline: float | None) -> pb.ClassifyResponse:
        if isinstance(request, MalformedRequest):
            raise request.refusal()
        model = self._core.find_model(self._core.model.name, request.model_version)
        pixels = decode_pixels(request)
        outputs = model.with_activations if request.include_activations else (PROBABILITIES,)
        result = await self._core.infer(InferenceRequest(pixels, outputs, deadline))
        probabilities = result.outputs[PROBABILITIES]
        digits = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(len(digits)), digits]
        predictions = [pb.Prediction(digit=d, confidence=c, probabilities=p)
                       for d, c, p in zip(digits.tolist(), confidences.tolist(), probabilities.tolist())]
        if request.include_activations:
            layers = [(name, result.outputs[name].tolist()) for name in outputs[1:]]
            for i, prediction in enumerate(predictions):
                prediction.activations.extend(pb.LayerActivation(name=name, values=values[i])
                                              for name, values in layers)
        return pb.ClassifyResponse(request_id=request.request_id, model_name=model.name,
                                   model_version=model.version, predictions=predictions)

    @observed(API, "Classify")
    async def Classify(self, request, context):
        return await self._classify(request, deadline_of(context))

    async def ClassifyStream(self, request_iterator, context):
        """Reads ahead up to STREAM_WINDOW requests; each answer is sent as soon as it is ready."""
        deadline = deadline_of(context)
        answers: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def answer(request: pb.ClassifyRequest) -> None:
            start = time.perf_counter()
            metrics.request_started()
            try:
                admit()
                response = await self._classify(request, deadline)
                code = "OK"
            except Exception as exc:  # noqa: BLE001 - becomes this message's error, not the stream's
                status, message = status_of(exc)
                code = status.name
                response = pb.ClassifyResponse(request_id=request.request_id,
                                               error=pb.Error(code=status.value[0], message=message))
            finally:
                metrics.request_finished()
                window.release()
            self._stream_observer(code, time.perf_counter() - start)
            answers.put_nowait(response)

        async def read_all() -> None:
            tasks: set[asyncio.Task] = set()
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read_all())
        try:
            while (response := await answers.get()) is not None:
                yield response
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()

    @observed(API, "GetModelInfo")
    async def GetModelInfo(self, request, context):
        model = self._core.find_model(self._core.model.name, request.model_version)
        return pb.ModelInfo(
            name=model.name, version=model.version,
            available_versions=self._core.available_versions,
            layer_sizes=model.layer_sizes, hidden_activation=model.hidden_activation,
            parameter_count=model.parameter_count, test_accuracy=model.test_accuracy,
            sha256=model.sha256, input_name=INPUT_NAME, output_names=model.output_names,
            metadata=model.metadata)


def add_to_server(core: InferenceCore, server: grpc.aio.Server) -> str:
    return add_service(server, DigitsV1Servicer(core), pb.DESCRIPTOR.services_by_name["DigitClassifier"])

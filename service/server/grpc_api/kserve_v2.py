"""Open Inference Protocol (KServe V2) `inference.GRPCInferenceService` over the inference core.

Accepts the one input `pixels` as FP32 or UINT8, shape [N, 784] or [N, 28, 28], either typed
(`contents`) or raw (`raw_input_contents`). Outputs come back raw when the request sent raw
inputs or set the parameter `binary_data_output`, typed `fp32_contents` otherwise; with no
`outputs` listed, all outputs come back, as the specification says.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf.json_format import ParseDict

from service.generated.inference import grpc_predict_v2_pb2 as pb
from service.generated.inference import model_config_pb2 as config_pb
from service.server.core_types import InferenceRequest, InferenceResult, Pending
from service.server.errors import InvalidInput
from service.server.grpc_api.methods import Kind, Method, method_path
from service.server.grpc_api.status import parse
from service.server.v2 import protocol
from service.server.v2.model_config import model_config
from service.server.v2.protocol import WHAT
from service.server.v2.repository_index import refuse_control, repository_index
from service.server.v2.statistics import model_statistics
from service.server.validation import pixels_from_bytes, pixels_from_typed
from service.wire import length_delimited

if TYPE_CHECKING:
    from service.server.core import InferenceCore

API = "kserve_v2"
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# V2 datatype -> the InferTensorContents field that carries it typed
TYPED_FIELDS = {"FP32": "fp32_contents", "UINT8": "uint_contents"}


OTHER_FIELDS = ("fp32_contents", "uint_contents", "int_contents", "int64_contents",
                "uint64_contents", "fp64_contents", "bool_contents", "bytes_contents")


def decode_pixels(request: pb.ModelInferRequest) -> np.ndarray:
    """The validated [N, 784] pixels of a ModelInferRequest.

    Every protobuf attribute access builds a Python object, so each field is read once."""
    inputs = request.inputs
    protocol.check_input_names([t.name for t in inputs])
    tensor = inputs[0]
    datatype = tensor.datatype
    dtype, field = protocol.dtype_of(datatype), TYPED_FIELDS[datatype]
    shape = list(tensor.shape)
    images = protocol.images_of(shape)
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise InvalidInput(f"raw_input_contents has {len(raw)} entries for 1 input; send exactly one")
        if tensor.HasField("contents"):
            raise InvalidInput(f"{WHAT} has both typed contents and raw_input_contents; send one")
        pixels = pixels_from_bytes(raw[0], dtype, WHAT)
    else:
        contents = tensor.contents
        for other in OTHER_FIELDS:
            if other != field and len(getattr(contents, other)):
                raise InvalidInput(f"{WHAT} is {datatype}, so its data belongs in "
                                   f"contents.{field}, not contents.{other}")
        pixels = pixels_from_typed(getattr(contents, field), dtype, f"{WHAT} contents")
    protocol.check_image_count(shape, images, len(pixels))
    return pixels


def wants_raw_output(request: pb.ModelInferRequest) -> bool:
    if request.raw_input_contents:
        return True
    param = request.parameters.get("binary_data_output")
    return param is not None and param.bool_param


@lru_cache(maxsize=256)
def _raw_response_head(name: str, version: str, outputs: tuple[tuple[str, int, int], ...]) -> bytes:
    """Everything of a raw-output response but the request id and the output bytes."""
    return pb.ModelInferResponse(
        model_name=name, model_version=version,
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=n, datatype="FP32", shape=[rows, width])
                 for n, rows, width in outputs]).SerializeToString()


def encode_response(request: pb.ModelInferRequest, result: InferenceResult, raw: bool) -> bytes:
    """The serialised ModelInferResponse. Raw outputs are a cached head plus one field per output, so
    the common case builds no message at all."""
    if raw:
        arrays = result.outputs
        head = _raw_response_head(result.model.name, result.model.version,
                                  tuple((n, *a.shape) for n, a in arrays.items()))
        request_id = request.id
        parts = [head, length_delimited(3, request_id.encode())] if request_id else [head]
        parts += [length_delimited(6, a.tobytes()) for a in arrays.values()]
        return b"".join(parts)
    response = pb.ModelInferResponse(model_name=result.model.name, model_version=result.model.version,
                                     id=request.id)
    for name, array in result.outputs.items():
        tensor = response.outputs.add(name=name, datatype="FP32", shape=array.shape)
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return response.SerializeToString()


class KServeV2:
    def __init__(self, core: InferenceCore, is_serving: Callable[[], bool]) -> None:
        self._core = core
        self._is_serving = is_serving
        self._live = pb.ServerLiveResponse(live=True).SerializeToString()
        self._metadata = ParseDict(protocol.server_metadata(), pb.ServerMetadataResponse()).SerializeToString()

    def server_live(self, data: bytes, deadline: float | None) -> bytes:
        return self._live

    def server_ready(self, data: bytes, deadline: float | None) -> bytes:
        return pb.ServerReadyResponse(ready=self._is_serving()).SerializeToString()

    def server_metadata(self, data: bytes, deadline: float | None) -> bytes:
        return self._metadata

    def model_ready(self, data: bytes, deadline: float | None) -> bytes:
        request = parse(pb.ModelReadyRequest, data)
        ready = protocol.model_ready(self._core.find_model(request.name, request.version), self._is_serving())
        return pb.ModelReadyResponse(ready=ready["ready"]).SerializeToString()

    def model_metadata(self, data: bytes, deadline: float | None) -> bytes:
        request = parse(pb.ModelMetadataRequest, data)
        model = self._core.find_model(request.name, request.version)
        return ParseDict(protocol.model_metadata(model), pb.ModelMetadataResponse()).SerializeToString()

    # -- Triton's extensions: service.server.v2 answers, in Triton's field names, which are ours
    def model_config(self, data: bytes, deadline: float | None) -> bytes:
        request = parse(pb.ModelConfigRequest, data)
        config = ParseDict(model_config(self._core, request.name, request.version), config_pb.ModelConfig())
        return pb.ModelConfigResponse(config=config).SerializeToString()

    def model_statistics(self, data: bytes, deadline: float | None) -> bytes:
        request = parse(pb.ModelStatisticsRequest, data)
        return ParseDict(model_statistics(self._core, request.name, request.version),
                         pb.ModelStatisticsResponse()).SerializeToString()

    def repository_index(self, data: bytes, deadline: float | None) -> bytes:
        request = parse(pb.RepositoryIndexRequest, data)
        models = repository_index(self._core, request.repository_name, request.ready)
        return ParseDict({"models": models}, pb.RepositoryIndexResponse()).SerializeToString()

    def repository_model_load(self, data: bytes, deadline: float | None) -> bytes:
        refuse_control(self._core, "load", parse(pb.RepositoryModelLoadRequest, data).model_name)

    def repository_model_unload(self, data: bytes, deadline: float | None) -> bytes:
        refuse_control(self._core, "unload", parse(pb.RepositoryModelUnloadRequest, data).model_name)

    def model_infer(self, data: bytes, deadline: float | None) -> Pending:
        request = parse(pb.ModelInferRequest, data)
        model = self._core.find_model(request.model_name, request.model_version)
        pixels = decode_pixels(request)
        outputs = protocol.outputs_of(tuple(o.name for o in request.outputs), model)
        raw = wants_raw_output(request)
        return Pending(InferenceRequest(pixels, outputs, deadline),
                       lambda result: encode_response(request, result, raw))

    def stream_infer(self, data: bytes, deadline: float | None) -> Pending:
        """ModelStreamInfer: the same inference, its response wrapped as `infer_response` (field 2)."""
        pending = self.model_infer(data, deadline)
        encode = pending.encode
        return Pending(pending.request, lambda result: length_delimited(2, encode(result)))

    @staticmethod
    def stream_error(data: bytes, code: str, message: str) -> bytes:
        """One ModelStreamInfer request's failure: Triton puts it in `error_message`, with the id."""
        try:
            request_id = pb.ModelInferRequest.FromString(data).id
        except Exception:  # noqa: BLE001 - undecodable: there is no id to echo
            request_id = ""
        return pb.ModelStreamInferResponse(error_message=message,
                                           infer_response=pb.ModelInferResponse(id=request_id)).SerializeToString()

    def methods(self) -> list[Method]:
        def path(name: str) -> str:
            return method_path(SERVICE, name)

        return [
            Method(path("ServerLive"), Kind.UNARY, self.server_live, protected=True),
            Method(path("ServerReady"), Kind.UNARY, self.server_ready, protected=True),
            Method(path("ServerMetadata"), Kind.UNARY, self.server_metadata, protected=True),
            Method(path("ModelReady"), Kind.UNARY, self.model_ready, observed=(API, "ModelReady"), protected=True),
            Method(path("ModelMetadata"), Kind.UNARY, self.model_metadata, observed=(API, "ModelMetadata"),
                   protected=True),
            Method(path("ModelInfer"), Kind.UNARY, self.model_infer, observed=(API, "ModelInfer"), protected=True),
            Method(path("ModelStreamInfer"), Kind.STREAM, self.stream_infer, stream_error=self.stream_error,
                   observed=(API, "ModelStreamInfer"), protected=True),
            Method(path("ModelConfig"), Kind.UNARY, self.model_config, observed=(API, "ModelConfig"), protected=True),
            Method(path("ModelStatistics"), Kind.UNARY, self.model_statistics, observed=(API, "ModelStatistics"),
                   protected=True),
            Method(path("RepositoryIndex"), Kind.UNARY, self.repository_index, observed=(API, "RepositoryIndex"),
                   protected=True),
            Method(path("RepositoryModelLoad"), Kind.UNARY, self.repository_model_load, protected=True),
            Method(path("RepositoryModelUnload"), Kind.UNARY, self.repository_model_unload, protected=True),
        ]

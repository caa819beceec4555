"""Open Inference Protocol (KServe V2) `inference.GRPCInferenceService` over the inference core.

Accepts the one input `pixels` as FP32 or UINT8, shape [N, 784] or [N, 28, 28], either typed
(`contents`) or raw (`raw_input_contents`). Outputs come back raw when the request sent raw
inputs or set the parameter `binary_data_output`, typed `fp32_contents` otherwise; with no
`outputs` listed, all outputs come back, as the specification says.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import grpc
import numpy as np

from service.core import InferenceCore, InferenceRequest, InferenceResult
from service.errors import InvalidInput
from service.generated.inference import grpc_predict_v2_pb2 as pb
from service.generated.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.runtime import FEATURES, INPUT_NAME, ModelDescription
from service.status import add_service, deadline_of, observed
from service.validation import pixels_from_bytes, pixels_from_values

API = "kserve_v2"
SERVER_NAME = "digit-serving"
PLATFORM = "onnxruntime_onnx"
# V2 datatype -> (our dtype name, the InferTensorContents field that carries it typed)
DATATYPES = {"FP32": ("float32", "fp32_contents"), "UINT8": ("uint8", "uint_contents")}

try:
    SERVER_VERSION = version("digit-serving")
except PackageNotFoundError:  # running from a source tree that was not installed
    SERVER_VERSION = "0+unknown"


def decode_pixels(request: pb.ModelInferRequest) -> np.ndarray:
    """The validated [N, 784] pixels of a ModelInferRequest."""
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InvalidInput(f"expected exactly one input '{INPUT_NAME}', got {len(names)}: {names}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidInput(f"unknown input '{tensor.name}'; this model's only input is '{INPUT_NAME}'")
    if tensor.datatype not in DATATYPES:
        raise InvalidInput(f"unsupported datatype '{tensor.datatype}' for input '{INPUT_NAME}'; "
                           f"expected one of {', '.join(DATATYPES)}")
    dtype, field = DATATYPES[tensor.datatype]
    shape = list(tensor.shape)
    if not (len(shape) == 2 and shape[1] == FEATURES or len(shape) == 3 and shape[1:] == [28, 28]) \
            or shape[0] < 1:
        raise InvalidInput(f"input '{INPUT_NAME}' has shape {shape}; expected [N, 784] or [N, 28, 28] with N ≥ 1")
    what = f"input '{INPUT_NAME}'"
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"raw_input_contents has {len(request.raw_input_contents)} entries "
                               "for 1 input; send exactly one")
        if tensor.HasField("contents"):
            raise InvalidInput(f"{what} has both typed contents and raw_input_contents; send one")
        pixels = pixels_from_bytes(request.raw_input_contents[0], dtype, what)
    else:
        values = getattr(tensor.contents, field)
        for other in ("fp32_contents", "uint_contents", "int_contents", "int64_contents",
                      "uint64_contents", "fp64_contents", "bool_contents", "bytes_contents"):
            if other != field and len(getattr(tensor.contents, other)):
                raise InvalidInput(f"{what} is {tensor.datatype}, so its data belongs in "
                                   f"contents.{field}, not contents.{other}")
        array = np.array(values, dtype=np.float32 if dtype == "float32" else np.int64)
        if dtype == "uint8" and array.size and (array.min() < 0 or array.max() > 255):
            raise InvalidInput(f"{what}: UINT8 values must be within 0..255")
        pixels = pixels_from_values(array.astype(np.uint8) if dtype == "uint8" else array, f"{what} contents")
    if len(pixels) != shape[0]:
        raise InvalidInput(f"{what} declares shape {shape} ({shape[0]} images) but its data holds "
                           f"{len(pixels)} images")
    return pixels


def requested_outputs(request: pb.ModelInferRequest, model: ModelDescription) -> tuple[str, ...]:
    if not request.outputs:
        return model.output_names
    return tuple(o.name for o in request.outputs)


def wants_raw_output(request: pb.ModelInferRequest) -> bool:
    param = request.parameters.get("binary_data_output")
    return bool(request.raw_input_contents) or (param is not None and param.bool_param)


def encode_response(request: pb.ModelInferRequest, result: InferenceResult, raw: bool) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=result.model.name, model_version=result.model.version,
                                     id=request.id)
    for name, array in result.outputs.items():
        tensor = response.outputs.add(name=name, datatype="FP32", shape=array.shape)
        if raw:
            response.raw_output_contents.append(array.tobytes())
        else:
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return response


def tensor_metadata(model: ModelDescription) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=model.name, versions=[model.version], platform=PLATFORM,
        inputs=[pb.ModelMetadataResponse.TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, FEATURES])],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(name=n, datatype="FP32", shape=[-1, model.output_widths[n]])
                 for n in model.output_names])


class KServeV2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore, is_serving: Callable[[], bool]) -> None:
        self._core = core
        self._is_serving = is_serving

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._is_serving())

    @observed(API, "ModelReady")
    async def ModelReady(self, request, context):
        self._core.find_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._is_serving())

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    @observed(API, "ModelMetadata")
    async def ModelMetadata(self, request, context):
        return tensor_metadata(self._core.find_model(request.name, request.version))

    @observed(API, "ModelInfer")
    async def ModelInfer(self, request, context):
        model = self._core.find_model(request.model_name, request.model_version)
        pixels = decode_pixels(request)
        outputs = requested_outputs(request, model)
        result = await self._core.infer(InferenceRequest(pixels, outputs, deadline_of(context)))
        return encode_response(request, result, wants_raw_output(request))


def add_to_server(core: InferenceCore, is_serving: Callable[[], bool], server: grpc.aio.Server) -> str:
    return add_service(server, KServeV2Servicer(core, is_serving), pb.DESCRIPTOR.services_by_name["GRPCInferenceService"])

"""The Open Inference Protocol's meaning, written once for both of its bindings (gRPC and REST).

What the server says about itself and its model (server and model metadata, readiness), and what
it accepts (exactly one input `pixels`, FP32 or UINT8, [N, 784] or [N, 28, 28]; the outputs asked
for, or all of them): each answer is plain data in the protocol's field names and each refusal one
`InvalidInput` with one message, so the gRPC adapter (`grpc_api/kserve_v2.py`) and the REST adapter
(`http_api/kserve_v2_rest.py`) only move bytes in and out and cannot drift apart.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from service.contract import FEATURES, INPUT_NAME
from service.server.core_types import ModelDescription
from service.server.errors import InvalidInput
from service.server.validation import check_tensor_shape

SERVER_NAME = "digit-serving"
PLATFORM = "onnxruntime_onnx"
# V2 datatype -> the dtype name `validation` decodes
DATATYPES = {"FP32": "float32", "UINT8": "uint8"}
# Triton's extensions served over both bindings (service/server/v2), as server metadata lists them.
# The model repository extension is served in part (the index; load and unload are refused), so
# it is not claimed.
EXTENSIONS = ("model_configuration", "statistics")
WHAT = f"input '{INPUT_NAME}'"

try:
    SERVER_VERSION = version("digit-serving")
except PackageNotFoundError:  # running from a source tree that was not installed
    SERVER_VERSION = "0+unknown"


def server_metadata(binding_extensions: tuple[str, ...] = ()) -> dict:
    """The server's name, version and extensions (a binding adds its own: REST's binary tensors)."""
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": [*binding_extensions, *EXTENSIONS]}


def model_metadata(model: ModelDescription) -> dict:
    return {"name": model.name, "versions": [model.version], "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, FEATURES]}],
            "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, model.output_widths[n]]}
                        for n in model.output_names]}


def model_ready(model: ModelDescription, serving: bool) -> dict:
    """A model found (else the core raised ModelNotFound) is ready while the server serves: not
    before its warm-up ends, nor once it drains. gRPC says `ready: false`; REST answers 503."""
    return {"name": model.name, "version": model.version, "ready": serving}


def check_input_names(names: list[str]) -> None:
    """Exactly one input, `pixels`."""
    if len(names) != 1:
        raise InvalidInput(f"expected exactly one input '{INPUT_NAME}', got {len(names)}: {names[:10]}")
    if names[0] != INPUT_NAME:
        raise InvalidInput(f"unknown input '{names[0]}'; this model's only input is '{INPUT_NAME}'")


def dtype_of(datatype: str) -> str:
    """The dtype `validation` decodes for a V2 datatype, or the refusal."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"unsupported datatype '{datatype}' for {WHAT}; expected one of {', '.join(DATATYPES)}")
    return dtype


def images_of(shape: list[int]) -> int:
    """The images a shape declares ([N, 784] or [N, 28, 28], N ≥ 1), or the refusal."""
    return check_tensor_shape(shape, WHAT)


def check_image_count(shape: list[int], images: int, decoded: int) -> None:
    if decoded != images:
        raise InvalidInput(f"{WHAT} declares shape {shape} ({images} images) but its data holds {decoded} images")


def outputs_of(requested: tuple[str, ...] | None, model: ModelDescription) -> tuple[str, ...]:
    """The outputs a request asked for (the core checks each name), or, when it asked for none, all."""
    return requested if requested else model.output_names

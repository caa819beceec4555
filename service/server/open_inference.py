"""What both Open Inference Protocol (KServe V2) adapters share: the server's identity, the
tensor datatypes accepted and the extensions served, so gRPC and REST describe and accept the same
things. Triton's extensions themselves are answered by `service.server.v2`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SERVER_NAME = "digit-serving"
PLATFORM = "onnxruntime_onnx"
# V2 datatype -> the dtype name `validation` decodes
DATATYPES = {"FP32": "float32", "UINT8": "uint8"}
# Triton's extensions served over both bindings (service/server/v2), as server metadata lists them.
# The model repository extension is served in part (the index; load and unload are refused), so
# it is not claimed.
EXTENSIONS = ("model_configuration", "statistics")

try:
    SERVER_VERSION = version("digit-serving")
except PackageNotFoundError:  # running from a source tree that was not installed
    SERVER_VERSION = "0+unknown"

"""What both Open Inference Protocol (KServe V2) adapters share: the server's identity and the
tensor datatypes accepted, so gRPC and REST describe and accept the same things."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SERVER_NAME = "digit-serving"
PLATFORM = "onnxruntime_onnx"
# V2 datatype -> the dtype name `validation` decodes
DATATYPES = {"FP32": "float32", "UINT8": "uint8"}

try:
    SERVER_VERSION = version("digit-serving")
except PackageNotFoundError:  # running from a source tree that was not installed
    SERVER_VERSION = "0+unknown"

"""The service's contract beyond the .proto files: names, sizes and defaults both sides agree on.

The generated stubs say what a message looks like; this module says what goes in it: the model's
one input, the image size, the output names and where a server listens by default. The server,
the client library and the load tester all read these values from here, so a change to the
model's interface is one edit. `model_export` writes the same names into the ONNX file it
exports; the server checks them when it loads a model, which is where a mismatch would surface.
"""

from __future__ import annotations

import re

INPUT_NAME = "pixels"                      # the model's one input: float32 [N, FEATURES]
IMAGE_SIDE = 28
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE)
FEATURES = IMAGE_SIDE * IMAGE_SIDE         # 784 pixels an image, row-major
NUM_CLASSES = 10

PROBABILITIES = "probabilities"            # softmax output, always present
LOGITS = "logits"                          # the last layer before softmax
ACTIVATION_PATTERN = re.compile(r"activation_(\d+)$")  # hidden layer k's output: activation_k


def activation_name(layer: int) -> str:
    """The output name of hidden layer `layer` (1-based)."""
    return f"activation_{layer}"


DEFAULT_MODEL_NAME = "mnist_mlp"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 8001                   # Triton's gRPC port, so V2 clients find us where they expect
DEFAULT_HTTP_PORT = 8000                   # Triton's HTTP port
DEFAULT_METRICS_PORT = 8002
DEFAULT_TARGET = f"{DEFAULT_HOST}:{DEFAULT_GRPC_PORT}"

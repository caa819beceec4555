"""The first layer's weights of a served model, for the page's picture of what each neuron looks for.

Page-only work, so it happens beside the page and only when the page asks (`GET /v1/weights`):
read from the ONNX file's initializers, the weight matrix of the Gemm node that takes the model's
input, once a version (a server without HTTP never parses them). onnxruntime does not expose
initializers, hence `onnx` here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from service.contract import INPUT_NAME
from service.server.core_types import ModelDescription


class FirstLayers:
    """The first layer of each version the page asked about, by the model file's digest."""

    def __init__(self) -> None:
        self._by_digest: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def of(self, model: ModelDescription) -> tuple[np.ndarray, np.ndarray] | None:
        if model.sha256 not in self._by_digest:
            self._by_digest = {model.sha256: first_layer(model.source.read_bytes())}  # the served one only
        return self._by_digest[model.sha256]


def first_layer(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(weights [neurons, inputs], biases [neurons]) of the layer fed by the input, or None when
    the model does not start with a Gemm on it (the page then shows no weight images)."""
    graph = onnx.load_model_from_string(data).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type != "Gemm" or not node.input or node.input[0] != INPUT_NAME or len(node.input) < 3:
            continue
        if node.input[1] not in initializers or node.input[2] not in initializers:
            return None
        weights = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        biases = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float32).reshape(-1)
        return (weights if transposed else weights.T), biases
    return None

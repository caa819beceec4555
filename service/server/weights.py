"""The first layer's weights of a loaded model, for the page's picture of what each neuron looks for.

Read once when a version loads, from the ONNX file's initializers: the weight matrix of the Gemm
node that takes the model's input. onnxruntime does not expose initializers, hence `onnx` here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from service.contract import INPUT_NAME


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

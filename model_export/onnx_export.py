"""Export a network to ONNX: the one artefact the serving side (ours, Triton, ...) loads.

The graph is built node by node with `onnx.helper` so that every name in it is chosen here
and is part of the contract:

* input  `pixels`        float32 [batch, n_in], values 0..1, dynamic batch dimension;
* output `probabilities` float32 [batch, n_out], softmax of the logits;
* output `logits`        float32 [batch, n_out];
* outputs `activation_1 .. activation_{L-1}` float32 [batch, n_l], the hidden layers, so a
  client can look inside the network (the lesson's "what is each layer doing").

Each layer is one `Gemm(transB=1)` - y = x W^T + b with W stored (n_out, n_in) exactly as in
the parameters file - followed by Sigmoid, Relu or Tanh. Opset 17 with IR version 8 keeps
the file loadable by every onnxruntime released since 2022, not just the newest.
`metadata_props` records what the model is and where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from model_export.files import atomic_write
from model_export.network import MLP, bias_name, weight_name

OPSET = 17
IR_VERSION = 8
INPUT_NAME = "pixels"
PROBABILITIES = "probabilities"
LOGITS = "logits"
BATCH_DIM = "batch"
PRODUCER = "digit-serving.model_export"
ONNX_ACTIVATION = {"sigmoid": "Sigmoid", "relu": "Relu", "tanh": "Tanh"}

# metadata_props keys (the ones every consumer may rely on).
META_LAYER_SIZES = "layer_sizes"
META_ACTIVATION = "hidden_activation"
META_OUTPUT_ACTIVATION = "output_activation"
META_PARAMETER_COUNT = "parameter_count"
META_TEST_ACCURACY = "test_accuracy"
META_DATASET_SHA256 = "dataset_sha256"
META_SEED = "seed"
TRAINING_PREFIX = "training."


def activation_output_name(layer: int) -> str:
    """ONNX output name of hidden layer `layer` (1-based)."""
    return f"activation_{layer}"


def output_names(mlp: MLP) -> list[str]:
    """All output names of the exported model, in graph order."""
    return [PROBABILITIES, LOGITS] + [activation_output_name(i) for i in range(1, mlp.num_layers)]


def _producer_version() -> str:
    try:
        return importlib_metadata.version("digit-serving")
    except importlib_metadata.PackageNotFoundError:
        return "0"


def model_metadata(
    mlp: MLP,
    *,
    test_accuracy: float | None = None,
    dataset_sha256: str | None = None,
    seed: int | str | None = None,
    training: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The metadata_props for `mlp`: what it is (always) and its provenance (when known).

    Training settings go under `training.<name>`; settings that already have a top-level key
    (layer sizes, activation, seed) are not repeated.
    """
    meta = {
        META_LAYER_SIZES: ",".join(str(s) for s in mlp.layer_sizes),
        META_ACTIVATION: mlp.hidden_activation,
        META_OUTPUT_ACTIVATION: "softmax",
        META_PARAMETER_COUNT: str(mlp.parameter_count),
        "input": f"{INPUT_NAME}: float32 [batch, {mlp.layer_sizes[0]}], pixel intensities scaled to 0..1",
    }
    if test_accuracy is not None:
        meta[META_TEST_ACCURACY] = f"{test_accuracy:.4f}"
    if dataset_sha256 is not None:
        meta[META_DATASET_SHA256] = dataset_sha256
    if seed is not None:
        meta[META_SEED] = str(seed)
    for key, value in sorted((training or {}).items()):  # sorted: same bytes whatever the source
        if key not in (META_LAYER_SIZES, META_ACTIVATION, META_SEED, "hidden_activation"):
            meta[TRAINING_PREFIX + key] = str(value)
    return meta


def build_model(mlp: MLP, metadata: Mapping[str, str] | None = None, opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX model computing `mlp.forward`, in float32, with every layer's output exposed."""
    if opset < OPSET:
        raise ValueError(f"opset must be >= {OPSET}, got {opset}")
    sizes = mlp.layer_sizes
    op = ONNX_ACTIVATION[mlp.hidden_activation]
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    outputs = [
        helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [BATCH_DIM, sizes[-1]]),
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [BATCH_DIM, sizes[-1]]),
    ]
    current = INPUT_NAME
    for layer in range(1, mlp.num_layers + 1):
        w, b = weight_name(layer), bias_name(layer)
        initializers.append(numpy_helper.from_array(mlp.weights[layer - 1].astype(np.float32), w))
        initializers.append(numpy_helper.from_array(mlp.biases[layer - 1].astype(np.float32), b))
        last = layer == mlp.num_layers
        z = LOGITS if last else f"z_{layer}"
        nodes.append(helper.make_node("Gemm", [current, w, b], [z], name=f"dense_{layer}", transB=1))
        if not last:
            current = activation_output_name(layer)
            nodes.append(helper.make_node(op, [z], [current], name=f"{mlp.hidden_activation}_{layer}"))
            outputs.append(helper.make_tensor_value_info(current, TensorProto.FLOAT, [BATCH_DIM, sizes[layer]]))
    nodes.append(helper.make_node("Softmax", [LOGITS], [PROBABILITIES], name="softmax", axis=-1))

    graph = helper.make_graph(
        nodes,
        "mnist_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, sizes[0]])],
        outputs,
        initializer=initializers,
        doc_string=(
            f"MLP {'-'.join(str(s) for s in sizes)}, {mlp.hidden_activation} hidden layers, softmax output; "
            f"{mlp.parameter_count} parameters"
        ),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name=PRODUCER,
        producer_version=_producer_version(),
        ir_version=IR_VERSION,
        doc_string="Handwritten digit classifier trained in NumPy (digit-serving).",
    )
    helper.set_model_props(model, dict(metadata) if metadata is not None else model_metadata(mlp))
    return model


def check(model: onnx.ModelProto) -> None:
    """The full ONNX checker, including strict shape inference; raises on any problem."""
    onnx.checker.check_model(model, full_check=True)


def export_onnx(mlp: MLP, path: Path | str, metadata: Mapping[str, str] | None = None, opset: int = OPSET) -> Path:
    """Build, fully check and atomically write the ONNX model for `mlp` to `path`."""
    model = build_model(mlp, metadata, opset)
    check(model)
    data = model.SerializeToString()
    return atomic_write(path, lambda handle: handle.write(data))


def read_metadata(model: onnx.ModelProto | Path | str) -> dict[str, str]:
    """metadata_props of a model (or model file) as a dict."""
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except DecodeError as exc:
            raise ValueError(f"{model}: not an ONNX model ({exc})") from None
    return {prop.key: prop.value for prop in model.metadata_props}

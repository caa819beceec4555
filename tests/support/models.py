"""Model repositories for tests: the shipped model copied, versions added atomically, a model with
the wrong signature, and a modified copy of the shipped model whose answers differ from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tests.support import MODEL_NAME, MODELS

SHIPPED_MODEL = MODELS / MODEL_NAME / "1" / "model.onnx"
# The permuted model's class k is the shipped model's class PERMUTATION[k]: its probabilities are
# the shipped model's, columns reordered, so every answer it gives differs from the original's.
PERMUTATION = np.roll(np.arange(10), -1)


def repository_with(root: Path, model_bytes: bytes | None, version: str = "1") -> Path:
    """<root>/repo/mnist_mlp/<version>/model.onnx holding `model_bytes` (None: an empty folder)."""
    folder = root / "repo" / MODEL_NAME / version
    folder.mkdir(parents=True)
    if model_bytes is not None:
        (folder / "model.onnx").write_bytes(model_bytes)
    return root / "repo"


def add_version(repository: Path, version: str, model_bytes: bytes, staging: Path) -> None:
    """Writes a version the way the README says to: built in another folder, renamed into place."""
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(model_bytes)
    staging.rename(repository / MODEL_NAME / version)


def shipped_repository(root: Path) -> Path:
    """A copy of the shipped repository (version 1 only) under `root`."""
    shutil.copytree(SHIPPED_MODEL.parent, root / MODEL_NAME / "1")
    return root


def wrong_signature_model() -> bytes:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["probabilities"])], "wrong",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 784])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 784])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def permuted_model(source: Path = SHIPPED_MODEL) -> bytes:
    """The shipped network with its output layer's rows (W3, b3) reordered by PERMUTATION: same
    signature and metadata, different answers (logits[:, k] = original logits[:, PERMUTATION[k]])."""
    model = onnx.load(str(source))
    last = [node for node in model.graph.node if node.op_type == "Gemm"][-1]
    assert last.output[0] == "logits", last
    initializers = {init.name: init for init in model.graph.initializer}
    for name in last.input[1:]:
        values = numpy_helper.to_array(initializers[name])
        initializers[name].CopyFrom(numpy_helper.from_array(values[PERMUTATION], name))
    return model.SerializeToString()


def offline_model(model: Path | bytes):
    """Runs a model in-process with onnxruntime: `run(pixels, outputs)` -> {name: array}."""
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"])

    def run(pixels: np.ndarray, outputs=("probabilities",)) -> dict[str, np.ndarray]:
        floats = pixels.astype(np.float32) / np.float32(255) if pixels.dtype == np.uint8 else pixels
        return dict(zip(outputs, session.run(list(outputs), {"pixels": floats.reshape(-1, 784)})))

    return run

"""ONNX export: structure, checker, metadata, and parity with NumPy on real MNIST images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from model_export.network import ACTIVATIONS, MLP, initialise
from model_export.onnx_export import (
    OPSET,
    build_model,
    check,
    export_onnx,
    model_metadata,
    output_names,
    read_metadata,
)
from model_export.train import TrainConfig, train

LAYER_LISTS = [(784, 16, 16, 10), (784, 10), (784, 7, 10), (784, 33, 5, 9, 10), (784, 64, 3)]


def trained_looking(sizes: tuple[int, ...], activation: str, seed: int) -> MLP:
    """Initialised weights at 1.5x the usual scale, with non-zero biases, so every term of
    every layer contributes and the hidden units are neither all saturated nor all off."""
    rng = np.random.default_rng(seed)
    mlp = initialise(sizes, activation, rng)
    for w, b in zip(mlp.weights, mlp.biases):
        w *= 1.5
        b[:] = rng.normal(0, 0.5, b.shape)
    return mlp


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("sizes", LAYER_LISTS, ids=lambda s: "-".join(map(str, s)))
def test_onnxruntime_matches_numpy_at_batch_1_and_1000(tmp_path: Path, mnist_test, sizes, activation) -> None:
    mlp = trained_looking(sizes, activation, seed=len(sizes) * 10 + ACTIVATIONS.index(activation))
    path = export_onnx(mlp, tmp_path / "m.onnx")
    sess = session(path)
    names = output_names(mlp)
    assert [o.name for o in sess.get_outputs()] == names
    for batch in (mnist_test.images[:1], mnist_test.images[1000:2000]):
        got = dict(zip(names, sess.run(names, {"pixels": batch})))
        want = mlp.forward(batch)
        expected = {"probabilities": want.probabilities, "logits": want.logits}
        expected.update({f"activation_{i}": h for i, h in enumerate(want.hidden, start=1)})
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name].shape == value.shape == (len(batch), value.shape[1]), name
            assert got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
        # The outputs are not degenerate: the comparison above could have failed.
        assert np.ptp(got["logits"]) > 1.0


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_parity_on_trained_networks(tmp_path: Path, mnist_train, mnist_test, activation: str) -> None:
    # Trained weights are structured rather than random; parity must hold for them too.
    config = TrainConfig(
        layer_sizes=(784, 48, 24, 10),
        hidden_activation=activation,
        epochs=2,
        train_limit=4000,
        validation_size=500,
        seed=1,
    )
    mlp = train(mnist_train.images, mnist_train.labels, config).mlp
    sess = session(export_onnx(mlp, tmp_path / "trained.onnx"))
    x = mnist_test.images[:1000]
    got = sess.run(output_names(mlp), {"pixels": x})
    want = mlp.forward(x)
    assert np.ptp(want.logits) > 2  # a network that learned something, not a constant
    for name, g, w in zip(output_names(mlp), got, [want.probabilities, want.logits, *want.hidden]):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5, err_msg=name)


def test_hand_checked_network_runs_in_onnxruntime(tmp_path: Path) -> None:
    # The 3-input network of test_network: activations [0.5, 0.75], probabilities [0.25, 0.75].
    ln3 = math.log(3.0)
    mlp = MLP(
        [np.array([[1, -1, 1 / 3], [1, 1, -1]], np.float32), np.array([[2, 0], [0, 4]], np.float32)],
        [np.array([0, ln3], np.float32), np.array([0, ln3 - 2], np.float32)],
        "sigmoid",
    )
    sess = session(export_onnx(mlp, tmp_path / "hand.onnx"))
    probabilities, logits, hidden = sess.run(None, {"pixels": np.array([[1, 2, 3]], np.float32)})
    np.testing.assert_allclose(hidden, [[0.5, 0.75]], atol=1e-6)
    np.testing.assert_allclose(logits, [[1, 1 + ln3]], atol=1e-6)
    np.testing.assert_allclose(probabilities, [[0.25, 0.75]], atol=1e-6)


def test_graph_interface_is_the_contract() -> None:
    model = build_model(initialise((784, 16, 16, 10)))
    graph = model.graph
    assert [i.name for i in graph.input] == ["pixels"]
    assert [o.name for o in graph.output] == ["probabilities", "logits", "activation_1", "activation_2"]

    def dims(value_info: onnx.ValueInfoProto) -> list[object]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    assert dims(graph.input[0]) == ["batch", 784]
    assert [dims(o) for o in graph.output] == [["batch", 10], ["batch", 10], ["batch", 16], ["batch", 16]]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*graph.input, *graph.output])
    assert {o.domain: o.version for o in model.opset_import}[""] >= 17
    assert [n.op_type for n in graph.node] == ["Gemm", "Sigmoid", "Gemm", "Sigmoid", "Gemm", "Softmax"]
    assert sorted(t.name for t in graph.initializer) == ["W1", "W2", "W3", "b1", "b2", "b3"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_full_checker_passes(activation: str) -> None:
    check(build_model(initialise((784, 12, 10), activation)))


def test_checker_is_really_run_and_can_fail() -> None:
    model = build_model(initialise((784, 12, 10)))
    model.graph.node[0].input[1] = "no_such_tensor"
    with pytest.raises(onnx.checker.ValidationError):
        check(model)


def test_export_rejects_old_opsets() -> None:
    with pytest.raises(ValueError, match=f">= {OPSET}"):
        build_model(initialise((784, 10)), opset=13)


def test_metadata_records_what_the_model_is_and_where_it_came_from(tmp_path: Path) -> None:
    mlp = initialise((784, 16, 16, 10))
    meta = model_metadata(
        mlp, test_accuracy=0.96789, dataset_sha256="ab" * 32, seed=3, training={"epochs": "80", "seed": "3"}
    )
    path = export_onnx(mlp, tmp_path / "m.onnx", meta)
    props = read_metadata(path)
    assert props["layer_sizes"] == "784,16,16,10"
    assert props["hidden_activation"] == "sigmoid"
    assert props["parameter_count"] == "13002"
    assert props["test_accuracy"] == "0.9679"
    assert props["dataset_sha256"] == "ab" * 32
    assert props["seed"] == "3"
    assert props["training.epochs"] == "80"
    assert "training.seed" not in props  # not repeated under training.
    assert read_metadata(onnx.load(str(path))) == props


def test_export_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    mlp = initialise((784, 16, 10), "tanh", np.random.default_rng(4))
    a = export_onnx(mlp, tmp_path / "a.onnx").read_bytes()
    b = export_onnx(mlp, tmp_path / "b.onnx").read_bytes()
    assert a == b


def test_float64_networks_export_as_float32(tmp_path: Path, mnist_test) -> None:
    mlp = initialise((784, 16, 10), "relu", np.random.default_rng(5), np.float64)
    sess = session(export_onnx(mlp, tmp_path / "m.onnx"))
    got = sess.run(["probabilities"], {"pixels": mnist_test.images[:100]})[0]
    np.testing.assert_allclose(got, mlp.forward(mnist_test.images[:100].astype(np.float64)).probabilities, atol=1e-5)

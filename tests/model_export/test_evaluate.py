"""Evaluation through onnxruntime: accuracy, per-digit accuracy, confusion matrix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_export.evaluate import (
    confusion_matrix,
    evaluate_onnx,
    format_json,
    format_report,
    open_session,
    predict_probabilities,
    summarise,
)
from model_export.network import initialise
from model_export.onnx_export import export_onnx
from model_export.train import TrainConfig, train


def test_confusion_matrix_by_hand() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 0, 2])
    np.testing.assert_array_equal(
        confusion_matrix(labels, predictions, 3),
        [[1, 1, 0], [0, 1, 0], [1, 0, 2]],
    )


def test_summary_by_hand() -> None:
    ev = summarise(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), num_classes=4)
    assert ev.accuracy == pytest.approx(4 / 6)
    np.testing.assert_allclose(ev.per_class_accuracy[:3], [0.5, 1.0, 2 / 3])
    assert math.isnan(ev.per_class_accuracy[3])  # no examples of class 3
    assert ev.count == 6
    assert json.loads(format_json(ev))["per_digit_accuracy"]["3"] is None


@pytest.mark.parametrize(
    ("labels", "predictions", "message"),
    [
        ([0, 1], [0], "2 labels but 1 predictions"),
        ([0, 3], [0, 1], "label must lie"),
        ([0, 1], [0, -1], "prediction must lie"),
    ],
)
def test_confusion_matrix_rejects_bad_input(labels, predictions, message) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(labels), np.array(predictions), 3)


def test_evaluate_onnx_agrees_with_numpy(tmp_path: Path, mnist_train, mnist_test) -> None:
    config = TrainConfig(layer_sizes=(784, 16, 10), epochs=2, train_limit=3000, validation_size=300, seed=4)
    mlp = train(mnist_train.images, mnist_train.labels, config).mlp
    path = export_onnx(mlp, tmp_path / "m.onnx")
    x, y = mnist_test.images[:2000], mnist_test.labels[:2000]
    ev = evaluate_onnx(path, x, y, batch_size=300)  # batches that do not divide 2000
    numpy_predictions = mlp.predict(x)
    assert ev.accuracy == pytest.approx(np.mean(numpy_predictions == y))
    np.testing.assert_array_equal(ev.confusion, confusion_matrix(y, numpy_predictions, 10))
    assert ev.count == 2000 and ev.accuracy > 0.6

    report = format_report(ev, "MNIST test set")
    assert f"accuracy: {ev.accuracy:.4f}" in report
    assert "per-digit accuracy:" in report and "confusion matrix" in report
    for digit in range(10):
        assert f"  {digit}: {ev.per_class_accuracy[digit]:.4f}" in report


def test_a_model_without_the_contract_names_is_rejected(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 784])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(ValueError, match="must have input 'pixels' and output 'probabilities'"):
        predict_probabilities(open_session(path), np.zeros((1, 784), np.float32))


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    path = export_onnx(initialise((784, 10)), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="batch size"):
        predict_probabilities(open_session(path), np.zeros((1, 784), np.float32), batch_size=0)

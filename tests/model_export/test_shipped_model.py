"""The shipped default model in models/mnist_mlp/1: what it claims, it is."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from model_export.evaluate import evaluate_onnx
from model_export.mnist import dataset_sha256
from model_export.onnx_export import check, output_names, read_metadata
from model_export.params import load_params
from model_export.paths import DEFAULT_MODEL_DIR
from tests.model_export.helpers import run_digits

MODEL = DEFAULT_MODEL_DIR / "model.onnx"
PARAMS = DEFAULT_MODEL_DIR / "params.npz"
CARD = DEFAULT_MODEL_DIR / "MODEL_CARD.md"
BAR = 0.96


@pytest.fixture(scope="module")
def metadata() -> dict[str, str]:
    return read_metadata(MODEL)


def test_model_repository_layout() -> None:
    assert MODEL.is_file() and PARAMS.is_file() and CARD.is_file()


def test_metadata_describes_the_default_network(metadata: dict[str, str]) -> None:
    assert metadata["layer_sizes"] == "784,16,16,10"
    assert metadata["hidden_activation"] == "sigmoid"
    assert metadata["output_activation"] == "softmax"
    assert metadata["parameter_count"] == "13002"
    assert float(metadata["test_accuracy"]) >= BAR
    assert metadata["dataset_sha256"] == dataset_sha256()
    assert metadata["seed"].isdigit()
    for setting in ("epochs", "batch_size", "learning_rate", "optimizer", "validation_size"):
        assert metadata[f"training.{setting}"], setting
    assert metadata.get("training.train_limit", "") == ""  # trained on the full training set


def test_model_passes_the_full_checker_and_has_the_contract_interface() -> None:
    model = onnx.load(str(MODEL))
    check(model)
    assert {o.domain: o.version for o in model.opset_import}[""] >= 17
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["probabilities", "logits", "activation_1", "activation_2"]


def test_accuracy_measured_by_evaluate_meets_the_bar(metadata: dict[str, str], mnist_test) -> None:
    evaluation = evaluate_onnx(MODEL, mnist_test.images, mnist_test.labels)
    assert evaluation.count == 10_000
    assert evaluation.accuracy >= BAR
    assert f"{evaluation.accuracy:.4f}" == metadata["test_accuracy"]
    assert np.all(evaluation.per_class_accuracy > 0.9)


def test_digits_evaluate_on_the_shipped_model() -> None:
    done = run_digits("evaluate", "--model", str(MODEL), "--json", "--min-accuracy", str(BAR))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] >= BAR


def test_params_and_onnx_are_the_same_network(mnist_test) -> None:
    params = load_params(PARAMS)
    assert params.mlp.parameter_count == 13_002
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    names = output_names(params.mlp)
    for batch in (mnist_test.images[:1], mnist_test.images[:1000]):
        got = session.run(names, {"pixels": batch})
        want = params.mlp.forward(batch)
        for name, g, w in zip(names, got, [want.probabilities, want.logits, *want.hidden]):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5, err_msg=name)


def test_card_matches_the_files(metadata: dict[str, str]) -> None:
    card = CARD.read_text()
    for path in (MODEL, PARAMS):
        assert hashlib.sha256(path.read_bytes()).hexdigest() in card, f"card lists a stale SHA-256 for {path.name}"
    assert f"**{metadata['test_accuracy']}**" in card
    assert "--out-dir models/mnist_mlp/1" in card
    assert "CC BY-SA 3.0" in card

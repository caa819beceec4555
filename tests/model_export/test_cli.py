"""`digits train`, `digits export`, `digits evaluate` end to end, as a user runs them."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from model_export.mnist import dataset_sha256
from model_export.onnx_export import read_metadata
from model_export.params import load_params, save_params
from tests.model_export.helpers import run_digits
from tests.support import MODELS

TINY = ["--layers", "784,12,10", "--epochs", "2", "--train-limit", "3000", "--validation-size", "500", "--seed", "3"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """One short real training run through the CLI; returns (out dir, stdout)."""
    out = tmp_path_factory.mktemp("run") / "model"
    done = run_digits("train", *TINY, "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_train_writes_the_three_files_and_reports_progress(trained) -> None:
    out, stdout = trained
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "model.onnx", "params.npz"]
    assert re.search(r"epoch +1/2 .*loss \d\.\d{4} .*val_acc 0\.\d{4} .*\d+\.\ds", stdout)
    assert re.search(r"epoch +2/2 ", stdout)
    assert re.search(r"test accuracy 0\.\d{4} \(onnxruntime", stdout)

    params = load_params(out / "params.npz")
    assert params.mlp.layer_sizes == (784, 12, 10)
    meta = read_metadata(out / "model.onnx")
    assert meta["layer_sizes"] == "784,12,10"
    assert meta["seed"] == "3"
    assert meta["dataset_sha256"] == dataset_sha256()
    assert meta["training.epochs"] == "2" and meta["training.train_limit"] == "3000"
    assert float(meta["test_accuracy"]) > 0.5
    assert params.metadata["test_accuracy"] == meta["test_accuracy"]

    card = (out / "MODEL_CARD.md").read_text()
    assert "784-12-10" in card and f"`{sha(out / 'model.onnx')}`" in card
    assert "| 9 | 1,009 |" in card  # per-digit table with the test-set support


def test_the_card_command_reproduces_the_model_exactly(trained) -> None:
    out, _ = trained
    card = (out / "MODEL_CARD.md").read_text()
    command = card.split("```\n", 2)[1].strip().splitlines()[0]
    argv = shlex.split(command)
    assert argv[:2] == [".venv/bin/digits", "train"] and "--seed" in argv
    before = {name: sha(out / name) for name in ("params.npz", "model.onnx")}
    done = run_digits(*argv[1:])
    assert done.returncode == 0, done.stderr
    assert {name: sha(out / name) for name in before} == before


def test_export_recreates_the_same_onnx_from_params(trained, tmp_path: Path) -> None:
    out, _ = trained
    done = run_digits("export", "--params", str(out / "params.npz"), "--out", str(tmp_path / "again.onnx"))
    assert done.returncode == 0, done.stderr
    assert "784,12,10 sigmoid, 9550 parameters" in done.stdout
    assert (tmp_path / "again.onnx").read_bytes() == (out / "model.onnx").read_bytes()


def test_export_of_bare_params_measures_accuracy(tmp_path: Path) -> None:
    params = load_params(MODELS / "mnist_mlp" / "1" / "params.npz")
    bare = save_params(tmp_path / "bare.npz", params.mlp)  # no provenance metadata at all
    done = run_digits("export", "--params", str(bare), "--out", str(tmp_path / "m.onnx"))
    assert done.returncode == 0, done.stderr
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["test_accuracy"] == params.metadata["test_accuracy"]
    assert meta["dataset_sha256"] == dataset_sha256()
    assert "seed" not in meta


def test_evaluate_prints_accuracy_per_digit_and_confusion(trained) -> None:
    out, _ = trained
    done = run_digits("evaluate", "--model", str(out / "model.onnx"))
    assert done.returncode == 0, done.stderr
    meta = read_metadata(out / "model.onnx")
    assert f"accuracy: {meta['test_accuracy']}" in done.stdout
    assert "per-digit accuracy:" in done.stdout
    rows = re.findall(r"^ +(\d)((?: +\d+){10})$", done.stdout, flags=re.M)
    assert [int(r[0]) for r in rows] == list(range(10))
    assert sum(int(c) for r in rows for c in r[1].split()) == 10_000


def test_evaluate_json_and_accuracy_gate(trained) -> None:
    out, _ = trained
    done = run_digits("evaluate", "--model", str(out / "model.onnx"), "--json", "--min-accuracy", "0.999")
    assert done.returncode == 1
    assert "below --min-accuracy" in done.stderr
    result = json.loads(done.stdout)
    assert result["count"] == 10_000
    assert np.array(result["confusion_matrix"]).shape == (10, 10)
    assert set(result["per_digit_accuracy"]) == {str(d) for d in range(10)}
    assert result["metadata"]["layer_sizes"] == "784,12,10"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "--layers", "784,x,10"], 2, "comma-separated integers"),
        (["train", "--activation", "gelu"], 2, "invalid choice"),
        (["train", "--epochs", "0"], 2, "must be >= 1"),
        (["train", "--layers", "30,5,10"], 1, "square images"),
        (["evaluate", "--model", "/nonexistent/model.onnx"], 1, "model file not found"),
        (["export", "--params", "/nonexistent/p.npz", "--out", "/tmp/never.onnx"], 1, "parameters file not found"),
    ],
)
def test_bad_input_fails_with_a_one_line_reason(args: list[str], code: int, message: str) -> None:
    done = run_digits(*args)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_data_fails_clearly(tmp_path: Path) -> None:
    done = run_digits("train", *TINY, "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "checksum file not found" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_onnx_fails_evaluate_clearly(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00garbage, not a protobuf\xff" * 10)
    done = run_digits("evaluate", "--model", str(path))
    assert done.returncode == 1
    assert str(path) in done.stderr and "Traceback" not in done.stderr


def test_corrupt_params_fail_export_naming_the_array(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, W1=np.zeros((10, 784), np.float32), b1=np.zeros(9, np.float32), hidden_activation=np.array("relu"))
    done = run_digits("export", "--params", str(path), "--out", str(tmp_path / "m.onnx"))
    assert done.returncode == 1
    assert "b1 has length 9 but W1 has 10 rows" in done.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_help_lists_the_model_commands() -> None:
    done = run_digits("--help")
    assert done.returncode == 0
    for command in ("train", "export", "evaluate"):
        assert command in done.stdout

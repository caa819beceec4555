"""`digits classify` end to end: real PNGs, the real server, the real `digits` entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.client.digit_client import DigitClient
from tests.support import REPO, closed_port
from tests.support.mnist import disguise, mnist_digits, mnist_test_labels


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return mnist_digits(), mnist_test_labels()


@pytest.fixture(scope="module")
def known_good(server, mnist: tuple[np.ndarray, np.ndarray]) -> list[int]:
    """Ten test indices the served model gets right as plain MNIST images."""
    images, labels = mnist
    with DigitClient(server.address) as client:
        digits = np.array([p.digit for p in client.classify(images[:60])])
    good = np.flatnonzero(digits == labels[:60])[:10]
    assert len(good) == 10
    return [int(i) for i in good]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["classify", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_off_centre_pngs_are_recognised(server, mnist, known_good, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = mnist
    rng = np.random.default_rng(11)
    paths = []
    for index in known_good:
        scale = int(rng.integers(2, 6))
        offset = (int(rng.integers(0, 400 - 28 * scale)), int(rng.integers(0, 300 - 28 * scale)))
        path = tmp_path / f"test_{index}.png"
        disguise(images[index], scale=scale, offset=offset, canvas=(400, 300)).save(path)
        paths.append(str(path))

    code, out, err = run(capsys, *paths, "--target", server.address, "--json")

    assert code == 0, err
    document = json.loads(out)
    assert document["model_name"] == "mnist_mlp" and document["model_version"]
    results = document["results"]
    assert [r["source"] for r in results] == paths
    for result in results:
        assert len(result["probabilities"]) == 10
        assert result["digit"] == int(np.argmax(result["probabilities"]))
        assert sum(result["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert "activations" not in result
    correct = sum(r["digit"] == labels[i] for r, i in zip(results, known_good))
    assert correct >= 9, [(r["digit"], int(labels[i])) for r, i in zip(results, known_good)]


def test_mnist_index_text_output(server, mnist, known_good,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    labels = mnist[1]
    indices = known_good[:3]
    code, out, err = run(capsys, *[f"--mnist-index={i}" for i in indices], "--target", server.address)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2 * len(indices)                  # a summary and a probabilities line each
    for index, (summary, probs) in zip(indices, zip(lines[::2], lines[1::2])):
        match = re.fullmatch(rf"mnist-test\[{index}\]: digit (\d)  confidence ([\d.]+)  label (\d)",
                             summary)
        assert match, summary
        assert int(match.group(1)) == int(match.group(3)) == labels[index]
        pairs = re.findall(r"(\d):([\d.]+)", probs)
        assert [int(d) for d, _ in pairs] == list(range(10))
        values = [float(p) for _, p in pairs]
        assert sum(values) == pytest.approx(1.0, abs=1e-3)
        assert max(values) == pytest.approx(float(match.group(2)), abs=1e-4)


def test_activations(server, known_good, capsys: pytest.CaptureFixture[str]) -> None:
    index = str(known_good[0])
    code, out, _ = run(capsys, "--mnist-index", index, "--activations", "--target", server.address)
    assert code == 0
    layers = {m.group(1): (int(m.group(2)), m.group(3).split())
              for m in re.finditer(r"^  (activation_\d+|logits)\s+\[(\d+)\] (.+)$", out, re.M)}
    assert set(layers) == {"activation_1", "activation_2", "logits"}
    for size, values in layers.values():
        assert len(values) == size
        [float(v) for v in values]

    code, out, _ = run(capsys, "--mnist-index", index, "--activations", "--json",
                       "--target", server.address)
    (result,) = json.loads(out)["results"]
    assert {k: len(v) for k, v in result["activations"].items()} == \
        {name: size for name, (size, _) in layers.items()}


def test_target_from_environment(server, known_good, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DIGITS_TARGET", server.address)
    code, out, err = run(capsys, "--mnist-index", str(known_good[0]), "--json")
    assert code == 0, err
    assert json.loads(out)["target"] == server.address


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    target = f"127.0.0.1:{closed_port()}"           # never reached: inputs are checked first
    for args, fragment in [
        ([str(tmp_path / "notes.png")], "not an image"),
        ([str(tmp_path / "missing.png")], "No such file"),
        ([str(tmp_path / "blank.png")], "blank"),
        (["--mnist-index", "10000"], "out of range"),
        ([], "at least one IMAGE"),
    ]:
        code, out, err = run(capsys, *args, "--target", target)
        assert code == 2, (args, err)
        assert out == "" and err.count("\n") == 1 and fragment in err, err


def test_rpc_errors_exit_1_with_the_status(server, known_good,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{closed_port()}"
    code, out, err = run(capsys, "--mnist-index", "0", "--target", target, "--timeout", "5")
    assert code == 1 and out == ""
    assert err.startswith(f"digits classify: error: {target}: UNAVAILABLE") and err.count("\n") == 1

    code, out, err = run(capsys, "--mnist-index", "0", "--target", server.address,
                         "--model-version", "999")
    assert code == 1 and out == ""
    assert "NOT_FOUND" in err and "999" in err and err.count("\n") == 1


def test_batches_are_split(server, known_good, capsys: pytest.CaptureFixture[str]) -> None:
    args = [f"--mnist-index={i}" for i in known_good[:5]]
    code, out, _ = run(capsys, *args, "--batch-size", "2", "--json", "--target", server.address)
    assert code == 0
    assert [r["source"] for r in json.loads(out)["results"]] == \
        [f"mnist-test[{i}]" for i in known_good[:5]]


def test_raw_28x28_file(server, mnist, known_good, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = mnist
    index = known_good[0]
    Image.fromarray(images[index]).save(tmp_path / "raw.png")
    code, out, _ = run(capsys, str(tmp_path / "raw.png"), "--raw", "--json", "--target", server.address)
    assert code == 0 and json.loads(out)["results"][0]["digit"] == labels[index]
    Image.new("L", (30, 28)).save(tmp_path / "wide.png")
    code, _, err = run(capsys, str(tmp_path / "wide.png"), "--raw", "--target", server.address)
    assert code == 2 and "28x28" in err


def test_console_script_in_a_subprocess(server, known_good) -> None:
    index = known_good[0]
    done = subprocess.run([sys.executable, "-m", "service.cli", "classify", "--mnist-index", str(index),
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DIGITS_TARGET": server.address})
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert result["digit"] == result["label"]

"""Installed, not only cloned: `pip install .` (as the container image does) puts the packages in
site-packages, away from the source tree's data/ and models/ folders; the defaults must then work
or say how to point at the data, and `digits serve` serves the model the package carries. The
install goes to a temporary folder that alone is on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from service.client.digit_client import DigitClient
from tests.support import MNIST_DIR, REPO
from tests.support.mnist import mnist_test_images, mnist_test_labels
from tests.support.server import RunningServer

PARAMS = REPO / "models" / "mnist_mlp" / "1" / "params.npz"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    return target


def digits(installed, cwd, *args, env=None):
    environ = {k: v for k, v in os.environ.items() if k != "DIGITS_MNIST_DIR"}
    environ.update(PYTHONPATH=str(installed), **(env or {}))
    return subprocess.run([sys.executable, "-c", "import sys, service.cli, model_export; "
                           "assert model_export.__file__.startswith(sys.argv[1]), model_export.__file__; "
                           "sys.exit(service.cli.main(sys.argv[2:]))", str(installed), *args],
                          cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def test_export_without_the_source_tree_says_how_to_name_the_data(installed, tmp_path):
    done = digits(installed, tmp_path, "export", "--params", str(PARAMS), "--out", str(tmp_path / "m.onnx"))
    assert done.returncode == 1, done.stderr
    assert "MNIST folder not found" in done.stderr and "DIGITS_MNIST_DIR" in done.stderr and "--data-dir" in done.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_export_finds_the_data_by_environment_or_current_folder(installed, tmp_path):
    by_env = digits(installed, tmp_path, "export", "--params", str(PARAMS), "--out", str(tmp_path / "a.onnx"),
                    env={"DIGITS_MNIST_DIR": str(MNIST_DIR)})
    assert by_env.returncode == 0, by_env.stderr
    assert "test accuracy 0.9678" in by_env.stdout and (tmp_path / "a.onnx").stat().st_size > 0
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist").symlink_to(MNIST_DIR, target_is_directory=True)
    by_cwd = digits(installed, tmp_path, "export", "--params", str(PARAMS), "--out", str(tmp_path / "b.onnx"))
    assert by_cwd.returncode == 0, by_cwd.stderr
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_serve_from_an_empty_folder_serves_the_packaged_model_and_says_so(installed, tmp_path):
    server = RunningServer("--workers", "1", cwd=tmp_path, env={"PYTHONPATH": str(installed)})
    try:
        packaged = installed / "service" / "models"
        assert f"repository={packaged}" in server.log, server.log
        assert (packaged / "mnist_mlp" / "1" / "MODEL_CARD.md").is_file()
        with DigitClient(server.address) as client:
            (prediction,) = client.classify(mnist_test_images()[:1])
        assert prediction.digit == mnist_test_labels()[0] == 7
    finally:
        assert server.stop() == 0, server.log


def test_serve_with_neither_models_folder_nor_packaged_model_names_the_flag(installed, tmp_path):
    bare = tmp_path / "site-packages"  # the install without the model it carries
    shutil.copytree(installed, bare, ignore=lambda folder, names: ["models"] if folder.endswith("service") else [])
    empty = tmp_path / "empty"
    empty.mkdir()
    server = RunningServer("--workers", "1", cwd=empty, env={"PYTHONPATH": str(bare)}, wait=False)
    assert server.wait_exit(60) == 2
    (line,) = [line for line in server.log.splitlines() if "cannot start" in line]
    assert "no model versions under models/mnist_mlp" in line and "--model-repository" in line, line

"""Fixtures: the real server on an ephemeral 127.0.0.1 port, and channels to it."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from tests.service.server_process import REPO, RunningServer


@pytest.fixture(scope="session")
def server():
    """One shared single-worker server on the shipped model, for tests that do not stop it."""
    running = RunningServer("--workers", "1")
    yield running
    assert running.stop() == 0, running.log


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server.address) as chan:
        yield chan


@pytest.fixture(scope="session")
def model_path():
    """The model file the `server` fixture serves: the shipped default unless DIGITS_MODEL_REPOSITORY says."""
    return Path(os.environ.get("DIGITS_MODEL_REPOSITORY", REPO / "models")) / "mnist_mlp" / "1" / "model.onnx"


@pytest.fixture(scope="session")
def offline(model_path):
    """Runs the served model in-process with onnxruntime: the oracle the server must match."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def run(pixels: np.ndarray, outputs=("probabilities",)) -> dict[str, np.ndarray]:
        floats = pixels.astype(np.float32) / np.float32(255) if pixels.dtype == np.uint8 else pixels
        return dict(zip(outputs, session.run(list(outputs), {"pixels": floats.reshape(-1, 784)})))

    return run

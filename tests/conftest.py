"""Fixtures for every test package: the real server on an ephemeral 127.0.0.1 port, a channel to it,
and the model it serves run offline as the oracle its answers must match."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from tests.support import MODEL_NAME, MODELS
from tests.support.models import offline_model
from tests.support.secured import SecuredServers
from tests.support.server import RunningServer


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
def model_path() -> Path:
    """The model file the `server` fixture serves: the shipped default unless DIGITS_MODEL_REPOSITORY says."""
    return Path(os.environ.get("DIGITS_MODEL_REPOSITORY", MODELS)) / MODEL_NAME / "1" / "model.onnx"


@pytest.fixture(scope="session")
def offline(model_path):
    """The served model run offline: the oracle the server must match."""
    return offline_model(model_path)


@pytest.fixture(scope="session")
def secured(tmp_path_factory):
    """Servers wanting TLS, mutual TLS or a token, and the files a client needs for them
    (tests/support/secured.py); each starts on first use."""
    servers = SecuredServers(tmp_path_factory.mktemp("secured"))
    yield servers
    exits = servers.stop()
    assert set(exits.values()) <= {0}, exits

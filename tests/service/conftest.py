"""Fixtures: the real server on an ephemeral 127.0.0.1 port, and channels to it."""

from __future__ import annotations

import grpc
import pytest

from tests.service.server_process import RunningServer


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

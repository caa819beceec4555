"""What the tests share, each defined once: paths, polling and free ports (this module); MNIST test
digits (`mnist`); the requests sent and answers read back (`messages`); the real server in a child
process and what it exposes (`server`); `digits serve` with its model held busy by an event
(`held_serve`); model repositories and modified models (`models`); test certificates
(`certificates`); client threads under steady load (`steady_load`); protobuf field layouts
(`descriptor_shape`). The fixtures built on them live in tests/conftest.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MNIST_DIR = REPO / "data" / "mnist"
MODELS = REPO / "models"
MODEL_NAME = "mnist_mlp"


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.02) -> bool:
    """Polls `condition` until it holds (True) or `timeout` seconds pass (False). Callers assert
    the result: a wait whose outcome is ignored checks nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound once by us, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

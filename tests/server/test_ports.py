"""A port another server listens on is refused (exit 2, one line), never shared through SO_REUSEPORT,
while the workers of one server still share theirs; the first server keeps answering."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from service.client.digit_client import DigitClient
from tests.support.mnist import mnist_test_images, mnist_test_labels
from tests.support.server import RunningServer


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/")[0]


def second_serve(*args: str) -> subprocess.CompletedProcess:
    """`digits serve` expected to give up at once. In a session of its own, so that if it serves
    after all (the bug), it is stopped with its workers rather than left running."""
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
               "--metrics-port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the second server did not exit: {stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def first():
    running = RunningServer("--workers", "2")
    yield running
    assert running.stop() == 0, running.log


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("flag, what, url", [("--port", "gRPC", "address"), ("--http-port", "HTTP", "http_url"),
                                             ("--metrics-port", "metrics", "metrics_url")])
def test_a_second_server_on_a_taken_port_exits_2_in_one_line(first, workers, flag, what, url):
    port = port_of(getattr(first, url))
    done = second_serve("--workers", workers, flag, port)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.endswith(f"cannot start: {what} port 127.0.0.1:{port} is in use by another process"), line


def test_the_first_server_keeps_answering(first):
    second_serve("--workers", "2", "--port", port_of(first.address))
    with DigitClient(first.address) as client:
        predictions = client.classify(mnist_test_images()[:16])
    assert [p.digit for p in predictions] == mnist_test_labels()[:16].tolist()
    assert first.process.poll() is None and "ERROR" not in first.sync_log()

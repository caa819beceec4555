"""Our pins leave room for current clients: one environment holds the server and the newest
tritonclient (`pip install '.[server]' 'tritonclient[all]'`, issue 18), and the generated code runs
on both protobuf majors our pin allows (tritonclient's 6 and the newest, 7).

These install from the package index (pip's cache makes a rerun quick): one venv for the module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.client.digit_client import DigitClient
from service.generated.grpc.health.v1 import health_pb2, health_pb2_grpc
from tests.support import REPO
from tests.support.mnist import mnist_test_images, mnist_test_labels
from tests.support.server import RunningServer

INSTALL_TIMEOUT = 900
TRITON_CALLS = """
import json, sys
import numpy as np
import tritonclient.grpc as over_grpc
import tritonclient.http as over_http
grpc_address, http_address, pixels_file = sys.argv[1:]
pixels = np.load(pixels_file)
digits = {}
for name, module, address in (("grpc", over_grpc, grpc_address), ("http", over_http, http_address)):
    client = module.InferenceServerClient(address)
    tensor = module.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer("mnist_mlp", [tensor], outputs=[module.InferRequestedOutput("probabilities")])
    digits[name] = result.as_numpy("probabilities").argmax(axis=1).tolist()
print(json.dumps(digits))
"""


def run(*command: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done


class ServerInVenv(RunningServer):
    """`digits serve` as the venv installed it (run from a folder without models/ or the sources)."""

    def __init__(self, python: Path, *args: str, cwd: Path) -> None:
        self.command = [str(python), "-m", "service.cli"]
        super().__init__(*args, cwd=cwd)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A venv with `pip install '<repo>[server]' 'tritonclient[all]'`; its python."""
    root = tmp_path_factory.mktemp("venv-with-tritonclient")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", f"{REPO}[server]", "tritonclient[all]", timeout=INSTALL_TIMEOUT)
    return python


def installed_version(python: Path, package: str) -> str:
    shown = run(python, "-m", "pip", "show", package).stdout
    return re.search(r"^Version: (\S+)$", shown, re.M).group(1)


@pytest.mark.timeout(INSTALL_TIMEOUT + 300)
def test_server_and_the_newest_tritonclient_install_together(client_venv):
    index = run(client_venv, "-m", "pip", "index", "versions", "tritonclient").stdout
    newest = re.match(r"tritonclient \((\S+)\)", index).group(1)
    assert installed_version(client_venv, "tritonclient") == newest
    run(client_venv, "-m", "pip", "check")  # the environment is consistent


@pytest.mark.timeout(INSTALL_TIMEOUT + 300)
def test_the_newest_tritonclient_infers_over_grpc_and_http(client_venv, tmp_path):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, mnist_test_images()[:8])
    server = ServerInVenv(client_venv, "--workers", "1", cwd=tmp_path)
    try:
        http_address = server.http_url.removeprefix("http://")
        done = run(client_venv, "-c", TRITON_CALLS, server.address, http_address, pixels, cwd=tmp_path)
        digits = json.loads(done.stdout)
    finally:
        assert server.stop() == 0, server.log
    labels = mnist_test_labels()[:8].tolist()
    assert digits == {"grpc": labels, "http": labels}


@pytest.mark.timeout(600)
def test_the_generated_code_runs_on_protobuf_7(tmp_path):
    """The test environment holds protobuf 6 (tritonclient's); the newest 7 goes on the path first."""
    overlay = tmp_path / "protobuf7"
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", overlay, "protobuf>=7,<8",
        timeout=300)
    env = {"PYTHONPATH": str(overlay)}
    seen = run(sys.executable, "-c", "import google.protobuf, service.server.grpc_api.server, service.client.digit_client;"
               "print(google.protobuf.__version__, google.protobuf.__file__)", env={**os.environ, **env}, cwd=REPO)
    version, location = seen.stdout.split()
    assert version.startswith("7.") and location.startswith(str(overlay)), seen.stdout
    server = RunningServer("--workers", "1", env=env)
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        with DigitClient(server.address) as client:
            predictions = client.classify(mnist_test_images()[:4])
    finally:
        assert server.stop() == 0, server.log
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert [p.digit for p in predictions] == mnist_test_labels()[:4].tolist()

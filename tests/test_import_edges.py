"""The edges between the packages, as the interpreter sees them: client-side code (the client
library, `digits classify`, `digits loadtest`, the benchmark's no-op floor) loads nothing of the
server nor onnxruntime, so the base install (without the `server` extra) runs it; and importing
the server's modules maps no memory and registers no collector until the lifecycle code asks."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO

CLIENT_SIDE = ("service.client.digit_client", "service.shared.preprocess", "service.shared.mnist_files",
               "service.client.cli", "service.loadtest.cli", "service.loadtest.worker", "service.loadtest.rest",
               "service.contract",
               "service.wire", "service.cpus", "bench.noop_server")


def loaded_after_importing(*modules: str, probe: str = "") -> dict:
    code = ("import importlib, json, sys\n"
            f"for name in {list(modules)!r}: importlib.import_module(name)\n"
            "out = {'modules': sorted(sys.modules)}\n" + probe + "\nprint(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_client_side_loads_nothing_of_the_server():
    modules = loaded_after_importing(*CLIENT_SIDE)["modules"]
    forbidden = [m for m in modules if m.startswith(("service.server", "onnxruntime", "onnx", "model_export",
                                                     "prometheus_client"))]
    assert forbidden == []


def test_importing_the_server_sets_nothing_up():
    probe = ("from prometheus_client import REGISTRY\n"
             "from service.server import metrics\n"
             "out['families'] = [family.name for family in REGISTRY.collect()]\n"
             "out['shared'] = isinstance(metrics._block.memory, __import__('mmap').mmap)")
    seen = loaded_after_importing("service.server.lifecycle", "service.server.workers", "service.cli", probe=probe)
    assert not [name for name in seen["families"] if name.startswith("digits_")], seen["families"]
    assert seen["shared"] is False

"""The public tritonclient[grpc] works against us unchanged (run in its own process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.support import REPO
from tests.support.mnist import mnist_test_images

SCRIPT = Path(__file__).with_name("tritonclient_check.py")


def test_tritonclient_metadata_readiness_and_inference(server, offline):
    run = subprocess.run([sys.executable, str(SCRIPT), server.address, str(REPO)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["server_metadata"]["name"] == "digit-serving"
    assert seen["model_metadata"]["name"] == "mnist_mlp"
    assert seen["model_metadata"]["inputs"][0] == {"name": "pixels", "datatype": "FP32", "shape": ["-1", "784"]}
    expected = offline(mnist_test_images()[:50], ("probabilities", "activation_1"))
    for datatype in ("FP32", "UINT8"):
        assert seen[datatype]["outputs"] == ["probabilities", "activation_1"]
        for name in ("probabilities", "activation_1"):
            np.testing.assert_allclose(np.array(seen[datatype][name]), expected[name], atol=1e-5)
    assert seen["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "no_such_model" in seen["unknown_model"]["message"]
    stream = seen["stream"]
    assert sorted(stream["answers"]) == [f"r{i}" for i in range(5)]
    for i in range(5):
        np.testing.assert_allclose(np.array(stream["answers"][f"r{i}"]), expected["probabilities"][i:i + 1],
                                   atol=1e-5)
    assert len(stream["errors"]) == 1 and "shape [1, 783]" in stream["errors"][0], stream["errors"]

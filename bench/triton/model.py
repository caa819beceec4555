"""Triton Python-backend model for the benchmark's Triton peer (see bench/triton_peer.py).

This file is not imported by the project: `triton_peer.py` copies it into a temporary Triton model
repository as `mnist_mlp/1/model.py`, next to a `peer.json` that names the ONNX file and the
cached venv's site-packages. It runs inside Triton's `triton_python_backend_stub`, an embedded
interpreter that does not know about that venv, so the venv's site-packages go on sys.path before
numpy and onnxruntime are imported.

It serves the ONNX model the way our own service does: one onnxruntime session per instance with
one intra-op thread, and everything Triton's dynamic batcher hands to one `execute` call goes
through a single `session.run`, so the peer gets the same batching advantage we could.
"""

import json
import sys
from pathlib import Path


def _load_peer_settings() -> dict:
    """Read peer.json and put the venv's site-packages first on sys.path (why: see module doc)."""
    settings = json.loads(Path(__file__).with_name("peer.json").read_text())
    for entry in reversed(settings["site_packages"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return settings


_PEER = _load_peer_settings()

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One onnxruntime session per Triton model instance."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_PEER.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(_PEER["onnx_path"], options, providers=["CPUExecutionProvider"])

    def _wanted(self, request) -> list:
        """The outputs a request asked for (all of them when it named none), in config order."""
        names = set(request.requested_output_names() or ())
        return [name for name in self.output_names if not names or name in names]

    def execute(self, requests: list) -> list:
        """Run every request of this dynamic batch through one session.run and split the results."""
        try:
            arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
            wanted = [self._wanted(r) for r in requests]
            union = [name for name in self.output_names if any(name in w for w in wanted)]
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            results = dict(zip(union, self.session.run(union, {self.input_name: batch}), strict=True))
        except Exception as error:  # noqa: BLE001 - one bad request must not take the instance down
            failure = pb_utils.TritonError(f"mnist_mlp: {error}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=failure) for _ in requests]

        responses = []
        start = 0
        for array, names in zip(arrays, wanted, strict=True):
            stop = start + array.shape[0]
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(results[name][start:stop])) for name in names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses

    def finalize(self) -> None:
        self.session = None

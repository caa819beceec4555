"""Runs NVIDIA's `tritonclient.http` against our REST API in a process of its own and prints what it got.

    python triton_http_client.py HOST:PORT MODEL IMAGES.npy

One JSON line: health, metadata and, for each of (binary | JSON) × (UINT8 | FP32), every output
as lists (and the probabilities of gzip- and deflate-compressed requests), so the test compares them with onnxruntime without importing tritonclient itself.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

OUTPUTS = ("probabilities", "logits", "activation_1", "activation_2")


def main(address: str, model: str, images_file: str) -> None:
    images = np.load(images_file)
    client = httpclient.InferenceServerClient(address)
    report: dict[str, object] = {
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model), "metadata": client.get_model_metadata(model),
        "server": client.get_server_metadata()}
    for binary in (True, False):
        for datatype, pixels in (("UINT8", images), ("FP32", images.astype(np.float32) / np.float32(255))):
            tensor = httpclient.InferInput("pixels", list(pixels.shape), datatype)
            tensor.set_data_from_numpy(pixels, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
            result = client.infer(model, [tensor], outputs=outputs, request_id=f"{datatype}-{binary}")
            report[f"{datatype}-{'binary' if binary else 'json'}"] = {
                "id": result.get_response()["id"],
                **{name: result.as_numpy(name).tolist() for name in OUTPUTS}}
    for algorithm in ("gzip", "deflate"):  # a compressed request body, as tritonclient sends it
        tensor = httpclient.InferInput("pixels", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=True)
        result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("probabilities")],
                              request_compression_algorithm=algorithm)
        report[f"compressed-{algorithm}"] = result.as_numpy("probabilities").tolist()
    try:
        client.infer("no_such_model", [tensor])
    except InferenceServerException as exc:
        report["unknown_model"] = {"status": exc.status(), "message": exc.message()}
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])

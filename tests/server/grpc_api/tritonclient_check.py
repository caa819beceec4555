"""Drives the server with the public tritonclient package; prints what it saw as JSON.

Runs in its own process: tritonclient's generated modules and ours both define protobuf package
`inference`, and one Python process cannot hold both.
"""

from __future__ import annotations

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

sys.path.insert(0, sys.argv[2])
from tests.support.mnist import mnist_test_images  # noqa: E402


def main(address: str) -> dict:
    client = triton.InferenceServerClient(address)
    images = mnist_test_images()[:50]
    seen: dict = {
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mnist_mlp"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata("mnist_mlp", as_json=True),
    }
    for datatype, pixels in (("FP32", images.astype(np.float32) / 255), ("UINT8", images)):
        tensor = triton.InferInput("pixels", list(pixels.shape), datatype)
        tensor.set_data_from_numpy(pixels)
        wanted = [triton.InferRequestedOutput(n) for n in ("probabilities", "activation_1")]
        result = client.infer("mnist_mlp", [tensor], outputs=wanted)
        seen[datatype] = {n: result.as_numpy(n).tolist() for n in ("probabilities", "activation_1")}
        seen[datatype]["outputs"] = [o["name"] for o in result.get_response(as_json=True)["outputs"]]
    try:
        client.infer("no_such_model", [tensor])
    except InferenceServerException as exc:
        seen["unknown_model"] = {"status": exc.status(), "message": exc.message()}
    seen["stream"] = stream(client, images)
    return seen


def stream(client: triton.InferenceServerClient, images: np.ndarray) -> dict:
    """Triton's ModelStreamInfer through start_stream: one answer per request, errors in-band."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(5):
        tensor = triton.InferInput("pixels", [1, 784], "UINT8")
        tensor.set_data_from_numpy(images[i:i + 1])
        client.async_stream_infer("mnist_mlp", [tensor], request_id=f"r{i}",
                                  outputs=[triton.InferRequestedOutput("probabilities")])
    client.async_stream_infer("mnist_mlp", [triton.InferInput("pixels", [1, 783], "UINT8")
                                            .set_data_from_numpy(images[:1, :783])], request_id="bad")
    seen: dict = {"answers": {}, "errors": []}
    for _ in range(6):
        result, error = answers.get(timeout=30)
        if error is not None:
            seen["errors"].append(str(error))
        else:
            seen["answers"][result.get_response().id] = result.as_numpy("probabilities").tolist()
    client.stop_stream()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))

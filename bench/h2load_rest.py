"""The benchmark's REST cases under h2load: the body and headers it sends, and the one real HTTP
request that vouches for them.

h2load (`--h1`) sends one fixed body with fixed headers; `build_rest_payload` makes them those of
the Python load tester's first REST request (`service.loadtest.rest_payload`), so both clients
send the same bytes. h2load counts HTTP statuses, and for REST those are the verdict (an infer
error is a 4xx or 5xx, not a 200), but a 200 could still carry the wrong answer: `probe` sends the
same bytes once with urllib and checks the reply's outputs, shapes and probabilities.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.h2load_client import compare_probabilities
from service.contract import FEATURES, NUM_CLASSES, PROBABILITIES
from service.loadtest.config import REST_API
from service.loadtest.payload import batch_pixels, synthetic_images
from service.loadtest.rest_payload import INFERENCE_HEADER, binary_reply_problem, rest_payload
from service.shared.mnist_files import load_test_images


@dataclass(frozen=True)
class RestPayload:
    """One REST request exactly as both load generators send it (shaped like h2load_client.Payload)."""

    batch_size: int
    dtype: str
    activations: bool
    binary: bool
    pixels: bytes
    path: str
    header_fields: tuple[tuple[str, str], ...]
    request_body: bytes
    outputs: tuple[str, ...]

    api = REST_API
    h1 = True  # HTTP/1.1: one request at a time on a connection

    @property
    def headers(self) -> tuple[str, ...]:
        """h2load's -H values (it adds Host and Content-Length itself)."""
        return tuple(f"{name}: {value}" for name, value in self.header_fields)

    def body(self) -> bytes:
        return self.request_body

    def float_pixels(self) -> np.ndarray:
        if self.dtype == "uint8":
            return np.frombuffer(self.pixels, np.uint8).reshape(-1, FEATURES).astype(np.float32) / np.float32(255.0)
        return np.frombuffer(self.pixels, "<f4").reshape(-1, FEATURES)


def build_rest_payload(batch_size: int, dtype: str, activations: bool, binary: bool, model_name: str,
                       mnist_dir: Path) -> RestPayload:
    """The Python load tester's first REST request (process 0, slot 0: image offset 0, id "0")."""
    images = load_test_images(mnist_dir)
    if images is None:
        images = synthetic_images()
    pixels = batch_pixels(images, batch_size, 0, dtype)
    made = rest_payload(pixels, batch_size, dtype, activations, model_name, binary, "0")
    return RestPayload(batch_size, dtype, activations, binary, pixels, made.path, tuple(made.headers.items()),
                       made.body, made.outputs)


def probe(http_url: str, payload: RestPayload, expected: np.ndarray | None, timeout_s: float = 10.0) -> list[str]:
    """Sends the payload once (urllib, never via a proxy); what is wrong with the reply (empty: nothing)."""
    if not http_url.startswith("http://127.0.0.1:"):
        return [f"{http_url}: the benchmark only probes the local servers it started"]
    request = urllib.request.Request(http_url + payload.path, data=payload.request_body, method="POST",
                                     headers=dict(payload.header_fields))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as reply:
            headers = {name.lower(): value for name, value in reply.headers.items()}
            body = reply.read()
    except urllib.error.HTTPError as exc:
        return [f"HTTP {exc.code}: {exc.read()[:200]!r}"]
    except OSError as exc:
        return [f"no reply: {exc}"]
    try:
        outputs = _binary_outputs(headers, body, payload) if payload.binary else _json_outputs(body)
    except (ValueError, KeyError, TypeError) as exc:
        return [f"reply does not decode: {exc!r}"]
    if isinstance(outputs, str):
        return [outputs]
    problems = [] if sorted(outputs) == sorted(payload.outputs) else [
        f"outputs {sorted(outputs)}, asked for {list(payload.outputs)}"]
    probabilities = outputs.get(PROBABILITIES)
    if probabilities is not None:
        if probabilities.shape != (payload.batch_size, NUM_CLASSES):
            problems.append(f"probabilities shape {probabilities.shape}")
        else:
            problems += compare_probabilities(probabilities, expected)
    return problems


def _binary_outputs(headers: dict[str, str], body: bytes, payload: RestPayload) -> dict[str, np.ndarray] | str:
    problem = binary_reply_problem(headers, body, len(payload.outputs))
    if problem is not None:
        return problem
    length = int(headers[INFERENCE_HEADER.lower()])
    outputs, offset = {}, length
    for output in json.loads(body[:length])["outputs"]:
        size = output["parameters"]["binary_data_size"]
        if output["datatype"] != "FP32":
            return f"output {output['name']}: {output['datatype']}"
        outputs[output["name"]] = np.frombuffer(body[offset:offset + size], "<f4").reshape(output["shape"])
        offset += size
    return outputs


def _json_outputs(body: bytes) -> dict[str, np.ndarray]:
    return {output["name"]: np.asarray(output["data"], np.float32).reshape(output["shape"])
            for output in json.loads(body)["outputs"]}

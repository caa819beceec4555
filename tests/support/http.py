"""Plain HTTP/1.1 requests to the server under test, with http.client (never through a proxy)."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

TIMEOUT = 15.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]      # lower-case names
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def connect(url: str, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", url  # only ever the local server under test
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=TIMEOUT, context=context)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)


def call(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None) -> Reply:
    """One request on its own connection."""
    connection = connect(url, context)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def binary_infer_body(pixels: np.ndarray, outputs: tuple[str, ...] = ("probabilities",),
                      request_id: str = "") -> tuple[bytes, dict[str, str]]:
    """A binary-tensor infer request (Triton's extension) and its headers, written from the
    extension's documentation, not from the server's code."""
    datatype = {"uint8": "UINT8", "float32": "FP32"}[pixels.dtype.name]
    data = pixels.tobytes()
    document: dict[str, object] = {
        "inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": datatype,
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs]}
    if request_id:
        document["id"] = request_id
    header = json.dumps(document).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header)),
                           "Content-Type": "application/octet-stream"}


def binary_outputs(reply: Reply) -> dict[str, np.ndarray]:
    """The outputs of a binary answer: the JSON header says each one's shape and byte count."""
    length = int(reply.headers["inference-header-content-length"])
    document = json.loads(reply.body[:length])
    arrays, offset = {}, length
    for tensor in document["outputs"]:
        size = tensor["parameters"]["binary_data_size"]
        arrays[tensor["name"]] = np.frombuffer(reply.body[offset:offset + size], "<f4").reshape(tensor["shape"])
        offset += size
    assert offset == len(reply.body), "bytes left over after the declared outputs"
    return arrays


def json_outputs(reply: Reply) -> dict[str, np.ndarray]:
    return {t["name"]: np.array(t["data"], np.float32).reshape(t["shape"]) for t in reply.json()["outputs"]}

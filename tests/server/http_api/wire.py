"""HTTP/1.1 at the byte level, for tests that must send what no polite client library would (half a
header, a lying Content-Length, garbage, a hundred pipelined requests) and read each response as it
comes, 1xx interim answers included. Only 127.0.0.1; every read has a timeout, so a server that
never answers fails the test instead of hanging it."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from tests.support import MODEL_NAME

INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"


def address(url: str) -> tuple[str, int]:
    """(host, port) of "http://127.0.0.1:PORT"; anything but loopback is refused."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", url
    return parts.hostname, parts.port


def request_bytes(body: bytes, path: str = INFER_PATH, headers: dict[str, str | bytes] | None = None,
                  content_length: int | None = None) -> bytes:
    """A POST with `body`; Content-Length is the body's unless told (a lie, for truncation tests)."""
    head = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        head.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    head.append(b"Content-Length: %d" % (len(body) if content_length is None else content_length))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def json_infer_body(pixels: np.ndarray, request_id: str = "", outputs: tuple[str, ...] = ()) -> bytes:
    """A valid JSON infer request for uint8 `pixels` [N, 784]."""
    document: dict[str, object] = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape),
                                               "data": pixels.ravel().tolist()}]}
    if request_id:
        document["id"] = request_id
    if outputs:
        document["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(document).encode()


def binary_infer_body(pixels: np.ndarray, outputs: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
    """A valid binary infer request for uint8 `pixels` [N, 784]: the body and its length header."""
    document: dict[str, object] = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape),
                                               "parameters": {"binary_data_size": pixels.size}}]}
    if outputs:
        document["outputs"] = [{"name": name} for name in outputs]
    header = json.dumps(document).encode()
    return header + pixels.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                       "Content-Type": "application/octet-stream"}


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]   # names lower-case
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class RawClient:
    """One TCP connection to the server and a buffer of what it has sent back."""

    def __init__(self, url: str, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(address(url), timeout=timeout)
        self.timeout = timeout
        self._buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Sends everything; False if the server closed the connection (reset or broken pipe) first."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _fill(self) -> bool:
        """Reads more; False at end of stream (a reset after the server's last bytes counts as one)."""
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            return False
        self._buffer += chunk
        return bool(chunk)

    def read_response(self) -> RawResponse:
        """The next response (interim 1xx ones included); its body is delimited by Content-Length."""
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed before a response; got {self._buffer[:200]!r}")
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if int(status) < 200 else int(headers["content-length"])
        while len(self._buffer) < length:
            if not self._fill():
                raise ConnectionError(f"connection closed {length - len(self._buffer)} bytes into a body")
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return RawResponse(int(status), headers, body)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (end of stream or reset) with nothing
        more to read; False if it stays open for `timeout` seconds or sends more bytes."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.1)
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = self.sock.recv(1 << 16)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    return not self._buffer
                if not chunk:
                    return not self._buffer
                self._buffer += chunk
                return False
            return False
        finally:
            self.sock.settimeout(self.timeout)

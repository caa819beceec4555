"""A real HTTP/1.1 server on 127.0.0.1 port 0 (stdlib http.server, a thread per connection) for the
load tester's HTTP client and REST load: a few fixed routes that answer with Content-Length, chunked,
close-delimited and deliberately broken responses, and a stand-in Open Inference Protocol
`POST /v2/models/{model}/infer` that checks the request's framing the way a V2 server must and
answers with fixed probabilities, JSON or binary as asked. It counts connections and requests so a
test can hold the client's counts against the server's.
"""

from __future__ import annotations

import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "mnist_mlp"
INFERENCE_HEADER = "Inference-Header-Content-Length"
PROBABILITIES = [0.1] * 10


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a route says otherwise
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms wait for the client's ACK
    server: "HttpPeer"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: a test reads counts, not logs

    def do_GET(self) -> None:
        self._route(b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._route(body)

    def _route(self, body: bytes) -> None:
        with self.server.lock:
            self.server.requests[self.path] = self.server.requests.get(self.path, 0) + 1
        route = ROUTES.get(self.path)
        if route is not None:
            route(self, body)
        elif self.path.startswith("/v2/models/") and self.path.endswith("/infer"):
            self._infer(self.path.split("/")[3], body)
        else:
            self._send(404, b"no such route")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.server.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(body) // 2
            for piece in (body[:half], body[half:]):
                if piece:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _raw(self, data: bytes) -> None:
        """Writes `data` as the whole response and closes: for responses http.server would not send."""
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def _infer(self, model: str, body: bytes) -> None:
        """Checks the framing the way a V2 server must (400 if wrong), then answers like one."""
        if model != MODEL:
            self._send(404, json.dumps({"error": f"unknown model {model}"}).encode(), {"Content-Type": "application/json"})
            return
        header_length = self.headers.get(INFERENCE_HEADER)
        try:
            length = int(header_length) if header_length is not None else len(body)
            request = json.loads(body[:length])
            (tensor,) = request["inputs"]
            count = tensor["shape"][0] * tensor["shape"][1]
            width = 1 if tensor["datatype"] == "UINT8" else 4
            if header_length is not None:
                assert self.headers["Content-Type"] == "application/octet-stream"
                assert tensor["parameters"]["binary_data_size"] == count * width == len(body) - length
            else:
                assert self.headers["Content-Type"] == "application/json" and len(tensor["data"]) == count
            outputs = [output["name"] for output in request["outputs"]]
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            self._send(400, json.dumps({"error": repr(exc)}).encode())
            return
        with self.server.lock:
            self.server.inferences += 1
        batch = tensor["shape"][0]
        if header_length is None:
            reply = {"id": request.get("id", ""), "model_name": MODEL, "outputs": [
                {"name": name, "datatype": "FP32", "shape": [batch, 10], "data": PROBABILITIES * batch} for name in outputs]}
            self._send(200, json.dumps(reply).encode(), {"Content-Type": "application/json"})
            return
        size = 40 * batch + (1 if self.server.lie_about_sizes else 0)
        reply = {"id": request.get("id", ""), "model_name": MODEL, "outputs": [
            {"name": name, "datatype": "FP32", "shape": [batch, 10], "parameters": {"binary_data_size": size}}
            for name in outputs]}
        head = json.dumps(reply).encode()
        self._send(200, head + struct.pack(f"<{10 * batch}f", *PROBABILITIES * batch) * len(outputs),
                   {INFERENCE_HEADER: str(len(head)), "Content-Type": "application/octet-stream"})


def _hello(handler: _Handler, body: bytes) -> None:
    handler._send(200, b"hello " + body)


def _no_content(handler: _Handler, body: bytes) -> None:
    handler.send_response(204)
    handler.end_headers()


def _close_after(handler: _Handler, body: bytes) -> None:
    handler._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nclose")


def _until_close(handler: _Handler, body: bytes) -> None:
    handler._raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body runs to the end")


def _many_chunks(handler: _Handler, body: bytes) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\nchunked wo\r\n3\r\nrld\r\n0\r\nX-Trailer: yes\r\n\r\n")


def _interim(handler: _Handler, body: bytes) -> None:
    handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def _truncated(handler: _Handler, body: bytes) -> None:
    handler._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")


def _bad_status(handler: _Handler, body: bytes) -> None:
    handler._raw(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")


def _bad_chunk(handler: _Handler, body: bytes) -> None:
    handler._raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")


def _both_lengths(handler: _Handler, body: bytes) -> None:
    handler._raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n")


def _too_much(handler: _Handler, body: bytes) -> None:
    handler._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")


def _held(handler: _Handler, body: bytes) -> None:
    """Answers only once the test releases it (after the client has given up)."""
    handler.server.held.wait(30)
    handler._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")


def _too_many(handler: _Handler, body: bytes) -> None:
    handler._send(429, b"slow down")


ROUTES = {"/hello": _hello, "/no-content": _no_content, "/close-after": _close_after, "/until-close": _until_close,
          "/many-chunks": _many_chunks, "/interim": _interim, "/truncated": _truncated, "/bad-status": _bad_status,
          "/bad-chunk": _bad_chunk, "/both-lengths": _both_lengths, "/too-much": _too_much, "/held": _held,
          "/too-many": _too_many}


class HttpPeer(ThreadingHTTPServer):
    """The server, serving from a daemon thread once started; `chunked` makes every routed reply chunked."""

    daemon_threads = True

    def __init__(self, *, chunked: bool = False, lie_about_sizes: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.chunked, self.lie_about_sizes = chunked, lie_about_sizes
        self.lock = threading.Lock()
        self.connections = 0
        self.inferences = 0
        self.requests: dict[str, int] = {}
        self.held = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "HttpPeer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.held.set()
        self.shutdown()
        self.server_close()
        self._thread.join(10)

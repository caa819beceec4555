"""One HTTP/1.1 connection: bytes in, requests to the application, responses out in order.

The parsing is httptools' (llhttp, in C); this module adds what a server owes its clients on top:
keep-alive and pipelining (responses leave in request order even when a later request is
answered first), limits on header and body sizes (431, 413), `Expect: 100-continue`, the read
and idle timeouts that keep slow or silent clients from holding a connection (408), reading
paused while the client does not read its answers, and the cancellation of requests whose
client went away. Only progress on a request counts as activity: bytes the parser skips (blank
lines between requests) do not keep a connection open. It refuses what llhttp would pass on but
we do not speak (transfer codings other than chunked, request lines that are not HTTP/1.x) and,
past `max_connections`, new connections. It knows nothing of inference: the application gets an
`HttpRequest` and an `Exchange` to answer, now or later.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import cast

import httptools
import orjson

from service.server.errors import bounded

MAX_HEADER_BYTES = 64 * 1024     # request line and headers of one request
MAX_HEADERS = 100
PIPELINE_DEPTH = 64              # requests of one connection answered concurrently; more wait to be read
JSON = b"application/json"
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Response:
    """A whole response: status, body, its content type and any further headers."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes, content_type: bytes = JSON,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers

    def encode(self, close: bool, head_only: bool = False) -> bytes:
        """The bytes on the wire; `head_only` answers a HEAD request: the same headers, no body."""
        head = [_STATUS_LINES[self.status], b"Content-Type: ", self.content_type,
                b"\r\nContent-Length: ", b"%d" % len(self.body), b"\r\n"]
        for name, value in self.headers:
            head += [name, b": ", value, b"\r\n"]
        if close:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        if not head_only:
            head.append(self.body)
        return b"".join(head)


def json_response(document: object, status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    """A JSON answer; NumPy arrays in `document` are written by orjson itself, float32 in its
    shortest form that reads back exactly."""
    return Response(status, orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), JSON, headers)


def error_response(status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    """`{"error": "..."}`, what Triton and KServe answer and what tritonclient reads. Every error
    answer is made here, so this is the one place its size is bounded: messages quote what the
    client sent (a shape of 100,001 dimensions made a 300 KB answer), and are cut by
    `errors.bounded`."""
    message = bounded(message)
    return json_response({"error": message}, status, headers)


class HttpRequest:
    """One parsed request. Header names are lower-case bytes; `started` is when its first byte
    arrived (time.perf_counter()), so latency includes reading a slow upload."""

    __slots__ = ("method", "url", "headers", "body", "started")

    def __init__(self, method: bytes, url: bytes, headers: dict[bytes, bytes], body: bytes, started: float) -> None:
        self.method, self.url, self.headers, self.body, self.started = method, url, headers, body, started


class Exchange:
    """A request's place in its connection's queue of answers. The application calls `respond`
    once; `on_abort` (set by the application) runs if the client leaves before that."""

    __slots__ = ("_connection", "response", "keep_alive", "head_only", "on_abort")

    def __init__(self, connection: HttpConnection, keep_alive: bool, head_only: bool = False) -> None:
        self._connection = connection
        self.response: Response | None = None
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.on_abort: Callable[[], None] | None = None

    def respond(self, response: Response) -> None:
        if self.response is None:
            self.response = response
            self._connection.flush()


Application = Callable[[HttpRequest, Exchange], None]


class ConnectionSettings:
    """What every connection of one front end shares, the refusal of one too many included
    (encoded once: a flood of connections costs no formatting)."""

    def __init__(self, application: Application, max_body_bytes: int, read_timeout: float,
                 idle_timeout: float, max_connections: int) -> None:
        self.application = application
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: set[HttpConnection] = set()
        self.draining = False   # answer what is in flight, then close each connection
        self.too_many = error_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"server has its limit of {max_connections} connections open (--max-connections); "
            "retry later or elsewhere", ((b"Retry-After", b"1"),)).encode(close=True)


class HttpConnection(asyncio.Protocol):
    def __init__(self, settings: ConnectionSettings) -> None:
        self._settings = settings
        self._parser = httptools.HttpRequestParser(self)
        # None until connection_made, asyncio's first call: every other method runs after it
        self._transport = cast(asyncio.Transport, None)
        self._queue: deque[Exchange] = deque()
        self._closing = False
        self._refused = False              # a request could not be read: nothing more is read
        self._reading_paused = False
        self._writing_paused = False
        self._last_activity = time.monotonic()   # a request begun or the last answer written
        self._closed_at = 0.0              # time.monotonic() of close(): its unsent answer gets a deadline
        # the request being read
        self._in_message = False
        self._message_began = 0.0          # time.monotonic() of its first byte
        self._started = 0.0                # time.perf_counter() of its first byte
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0             # bytes fed since the last request's headers ended
        self._parsed_header_bytes = 0      # request line and headers as parsed
        self._hosts = 0                    # Host headers seen (RFC 9112 3.2: exactly one)
        self._headers_done = False
        self._body: list[bytes] = []
        self._body_bytes = 0

    # -- asyncio ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Past --max-connections the connection is answered 503 and closed at once, before any
        of its bytes are read: descriptors stay bounded however many clients connect."""
        # a stream server's BaseTransport is a Transport
        self._transport = transport = cast(asyncio.Transport, transport)
        settings = self._settings
        if len(settings.connections) >= settings.max_connections:
            self._closing = True
            transport.write(settings.too_many)
            transport.close()
            return
        settings.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._settings.connections.discard(self)
        self._closing = True
        for exchange in self._queue:
            if exchange.response is None and exchange.on_abort is not None:
                exchange.on_abort()
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._refused:
            return
        if not self._headers_done:
            self._header_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(HTTPStatus.NOT_IMPLEMENTED, "protocol upgrades are not supported; speak HTTP/1.1")
        except httptools.HttpParserError as exc:
            if not self._refused:
                self._refuse(HTTPStatus.BAD_REQUEST, f"malformed HTTP request: {exc}")
        if not self._headers_done and self._header_bytes > MAX_HEADER_BYTES and not self._refused:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                         f"request line and headers exceed {MAX_HEADER_BYTES} bytes")

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its questions."""
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_message = True
        self._message_began = self._last_activity = time.monotonic()
        self._started = time.perf_counter()
        self._url = b""
        self._headers = {}
        self._parsed_header_bytes = 0
        self._hosts = 0
        self._headers_done = False
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= MAX_HEADERS:
            raise httptools.HttpParserError(f"more than {MAX_HEADERS} headers")
        self._count_header_bytes(len(name) + len(value) + 4)
        name = name.lower()
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            # llhttp undoes chunked only, and passes `gzip, chunked` on as if it were plain: a
            # coding we do not apply is refused (RFC 9112 6.1), checked per header since the
            # dictionary keeps only the last of repeated ones
            self._refuse(HTTPStatus.NOT_IMPLEMENTED,
                         f"Transfer-Encoding {value[:40].decode('latin-1')!r} is not supported; send the "
                         "body with Content-Length or 'Transfer-Encoding: chunked' (compress it with "
                         "Content-Encoding: gzip)")
            raise httptools.HttpParserError("unsupported transfer coding")
        if name == b"host":
            self._hosts += 1
        self._headers[name] = value

    def _count_header_bytes(self, size: int) -> None:
        """The parsed request line and headers, however the reads cut them (data_received's own
        count catches a client that streams an endless header before the parser gives it here)."""
        self._parsed_header_bytes += size
        if self._parsed_header_bytes > MAX_HEADER_BYTES:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                         f"request line and headers exceed {MAX_HEADER_BYTES} bytes")
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._header_bytes = 0
        version = self._parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._refuse_version(version)
        if self._hosts > 1 or (self._hosts == 0 and version == "1.1"):
            self._refuse(HTTPStatus.BAD_REQUEST, f"an HTTP/1.1 request needs exactly one Host header "
                                                 f"(RFC 9112 3.2), this one has {self._hosts}")
            raise httptools.HttpParserError("Host header missing or repeated")
        if version == "1.0" and b"transfer-encoding" in self._headers:
            self._refuse(HTTPStatus.BAD_REQUEST, "an HTTP/1.0 request cannot be chunked (RFC 9112 6.1); "
                                                 "send Content-Length")
            raise httptools.HttpParserError("HTTP/1.0 with Transfer-Encoding")
        declared = self._headers.get(b"content-length")
        limit = self._settings.max_body_bytes
        # llhttp has checked the digits and that the value fits 64 bits, but not leading zeros: a
        # few thousand of them would make int() raise
        if declared is not None and declared.isdigit() and (size := int(declared.lstrip(b"0") or b"0")) > limit:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"request body of {size} bytes exceeds the server's limit of {limit} "
                         "(--max-receive-message-bytes); send fewer images per request")
            raise httptools.HttpParserError("body too large")  # stop parsing this connection
        if self._headers.get(b"expect", b"").lower() == b"100-continue" and not self._queue:
            self._transport.write(_CONTINUE)

    def _refuse_version(self, version: str) -> None:
        """llhttp reads a request line without a version (`GET /path`, HTTP/0.9) and `HTTP/2.0`
        as requests like any other; neither is HTTP/1.x."""
        if version == "0.9":
            self._refuse(HTTPStatus.BAD_REQUEST, "request line lacks 'HTTP/1.1' (HTTP/0.9 is not supported)")
        else:
            self._refuse(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                         f"HTTP/{version} is not supported in an HTTP/1.1 request line; speak HTTP/1.1")
        raise httptools.HttpParserError("unsupported HTTP version")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._settings.max_body_bytes:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"request body exceeds the server's limit of {self._settings.max_body_bytes} bytes "
                         "(--max-receive-message-bytes); send fewer images per request")
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._headers_done = False
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        method = self._parser.get_method()
        head_only = method == b"HEAD"  # answered as GET, without the body
        exchange = Exchange(self, self._parser.should_keep_alive(), head_only)
        self._queue.append(exchange)
        request = HttpRequest(b"GET" if head_only else method, self._url, self._headers, body, self._started)
        self._update_reading()
        self._settings.application(request, exchange)

    # -- answers ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Writes every answer at the head of the queue that is ready, in request order."""
        queue = self._queue
        while queue and queue[0].response is not None and not self._closing:
            exchange = queue.popleft()
            close = not exchange.keep_alive or self._settings.draining
            self._transport.write(cast(Response, exchange.response).encode(close, exchange.head_only))  # checked above
            if close:
                self._close()
                return
            if not queue:  # the idle timeout runs from the last answer, however long it took
                self._last_activity = time.monotonic()
        self._update_reading()

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """A request that cannot be read on: answered (after those before it) and the connection closed."""
        self._refused = True
        self._in_message = False
        exchange = Exchange(self, keep_alive=False)
        self._queue.append(exchange)
        exchange.respond(error_response(status, message))
        if not self._closing:  # earlier answers pending: stop reading, close once they are out
            self._pause()

    def _close(self) -> None:
        self._closing = True
        self._closed_at = time.monotonic()
        self._transport.close()

    def _update_reading(self) -> None:
        if self._closing or self._refused:
            return
        should_pause = self._writing_paused or len(self._queue) >= PIPELINE_DEPTH
        if should_pause and not self._reading_paused:
            self._pause()
        elif not should_pause and self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    def _pause(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    # -- the front end's periodic sweep ----------------------------------------------------
    def check_timeouts(self, now: float) -> None:
        """408 for a request still being read after `read_timeout`; close a connection idle (no
        request being read or answered) for `idle_timeout`. Idle is measured from the last request
        begun or answer written, never from other bytes: a client sending only blank lines (which
        the parser skips) is idle. A closed connection whose client does not read its last answer
        would stay open until the kernel took it (close() waits for the buffer to drain): after
        `read_timeout` more it is aborted."""
        settings = self._settings
        if self._closing:
            if self._transport is not None and now - self._closed_at > settings.read_timeout:
                self._transport.abort()
            return
        if self._refused:
            return
        if self._in_message:
            if now - self._message_began > settings.read_timeout:
                self._refuse(HTTPStatus.REQUEST_TIMEOUT,
                             f"request not received within {settings.read_timeout:g} s")
        elif not self._queue and now - self._last_activity > settings.idle_timeout:
            self._close()

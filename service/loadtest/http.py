"""A small keep-alive HTTP/1.1 client on an asyncio Protocol, for the REST load.

Why not aiohttp or httpx: the load tester must spend as little CPU per request as it can, and it
needs a fraction of what those do: one connection per in-flight request (HTTP/1.1 has no
multiplexing), a request that is already bytes (built once, see `rest`), and a response read
with Content-Length or chunked framing. Everything here is per connection and allocation-light:
bytes in, a `Response` out; no header objects, no redirects, no cookies, no proxies. TLS (https://)
is asyncio's own, with an `ssl.SSLContext` the caller builds (service/client/security.py): the
handshake happens once a connection, so it costs the load nothing per request.

Problems are raised as `HttpClientError` subclasses, each with a short `code` the tally counts
(`CLIENT_TIMEOUT`, `CLIENT_PROTOCOL_ERROR`, ...), and a message that says what was wrong.
A connection that saw a problem is closed; the next request opens a fresh one.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024  # status line + headers; a longer head is not a V2 server's
_CRLF, _HEAD_END = b"\r\n", b"\r\n\r\n"
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE = range(6)
_NO_BODY = frozenset((204, 304))


class HttpClientError(Exception):
    """A request that got no usable response; `code` is what the load test counts it as."""

    code = "CLIENT_HTTP_ERROR"


class ProtocolError(HttpClientError):
    """The server's bytes are not a well-formed HTTP/1.1 response."""

    code = "CLIENT_PROTOCOL_ERROR"


class ConnectionClosed(HttpClientError):
    """The server closed the connection before the response was complete."""

    code = "CLIENT_CONNECTION_CLOSED"


class ConnectFailed(HttpClientError):
    """The TCP connection could not be opened (refused, unreachable, name unknown)."""

    code = "CLIENT_CONNECT_FAILED"


class TlsFailed(HttpClientError):
    """The TLS handshake failed: the server's certificate is not trusted or not for this name, or
    the server refused ours."""

    code = "CLIENT_TLS_FAILED"


class RequestTimeout(HttpClientError):
    """No complete response within the request's deadline."""

    code = "CLIENT_TIMEOUT"


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response: status, headers (names lower-cased, last one wins) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class HttpTarget:
    """Where requests go: a host and port, whether over TLS, and the Host header value they carry."""

    host: str
    port: int
    tls: bool = False

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}"


def parse_target(target: str, tls: bool = False) -> HttpTarget:
    """`http://HOST:PORT` or `https://HOST:PORT` (a trailing `/` allowed) or a bare `HOST:PORT`, which
    means https when `tls` (TLS options were given) and http otherwise. Paths, other schemes and
    http:// with TLS options are refused rather than silently ignored, since the load would then not
    go where the user meant."""
    text = target.strip()
    url = urlsplit(text if "://" in text else f"{'https' if tls else 'http'}://{text}")
    if url.scheme not in ("http", "https"):
        raise ValueError(f"REST target {target!r}: only http:// and https:// are supported")
    if url.scheme == "http" and tls:
        raise ValueError(f"REST target {target!r} is http:// but TLS options are given: write https://")
    if url.path not in ("", "/") or url.query or url.fragment or url.username or url.password:
        raise ValueError(f"REST target {target!r}: give the server's address only, e.g. http://127.0.0.1:8000")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"REST target {target!r}: {exc}") from None
    if not url.hostname:
        raise ValueError(f"REST target {target!r}: no host")
    return HttpTarget(url.hostname, port, url.scheme == "https")


def build_request(method: str, path: str, target: HttpTarget, headers: dict[str, str], body: bytes) -> bytes:
    """The complete request, head and body, ready to be written as it is for every send."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.authority}", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class _ResponseReader(asyncio.Protocol):
    """One TCP connection: writes a request, parses the one response to it into a future."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._state = _HEAD
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._remaining = 0
        self._keep_alive = True

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio passes a BaseTransport; a stream connection's is a Transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server may not speak first
            self.fail(ProtocolError(f"{len(data)} bytes from the server with no request outstanding"))
            return
        self._buffer += data
        try:
            self._parse()
        except ProtocolError as exc:
            self.fail(exc)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._state == _UNTIL_CLOSE:
                body = bytes(self._buffer)
                self._buffer.clear()
                self._finish(body)
            else:
                where = "before the response" if self._state == _HEAD and not self._buffer else "mid-response"
                self._waiter.set_exception(ConnectionClosed(f"server closed the connection {where}"
                                                            + (f": {exc}" if exc else "")))

    # -- what the connection uses ----------------------------------------------------------------

    def send(self, request: bytes, waiter: asyncio.Future) -> None:
        self._waiter = waiter
        self._state, self._status, self._headers = _HEAD, 0, {}
        self._body.clear()
        self.transport.write(request)  # type: ignore[union-attr]  # connected before any request is sent

    def waiting_on(self, waiter: asyncio.Future) -> bool:
        return self._waiter is waiter

    def fail(self, exc: HttpClientError) -> None:
        """Ends the connection; the outstanding request (if any) fails with `exc`."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- parsing ---------------------------------------------------------------------------------

    def _parse(self) -> None:
        while self._waiter is not None:  # None once the response is complete
            state = self._state
            if state == _HEAD:
                end = self._buffer.find(_HEAD_END)
                if end < 0:
                    if len(self._buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes")
                    return
                head = bytes(self._buffer[:end])
                del self._buffer[:end + 4]
                self._read_head(head)
            elif state == _LENGTH:
                if len(self._buffer) < self._remaining:
                    return
                body = bytes(self._buffer[:self._remaining])
                del self._buffer[:self._remaining]
                self._finish(body)
                return
            elif state == _CHUNK_SIZE:
                end = self._buffer.find(_CRLF)
                if end < 0:
                    if len(self._buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError("chunk-size line too long")
                    return
                line = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
                del self._buffer[:end + 2]
                try:
                    size = int(line, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
                if size < 0:
                    raise ProtocolError(f"bad chunk size {line[:40]!r}")
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_DATA:
                if len(self._buffer) < self._remaining + 2:
                    return
                if self._buffer[self._remaining:self._remaining + 2] != _CRLF:
                    raise ProtocolError("chunk data not followed by CRLF")
                self._body += self._buffer[:self._remaining]
                del self._buffer[:self._remaining + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = self._buffer.find(_CRLF)
                if end < 0:
                    if len(self._buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError("trailer section too long")
                    return
                del self._buffer[:end + 2]
                if end == 0:  # the empty line ends the trailers (which we do not need)
                    self._finish(bytes(self._body))
                    return
            else:  # _UNTIL_CLOSE: connection_lost completes the body
                return

    def _read_head(self, head: bytes) -> None:
        lines = head.split(_CRLF)
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise ProtocolError(f"bad header line {line[:80]!r}")
            headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
            return
        self._status, self._headers = status, headers
        connection = headers.get("connection", "").lower()
        self._keep_alive = "close" not in connection and (parts[0] == b"HTTP/1.1" or "keep-alive" in connection)
        encoding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if encoding is not None:
            if length is not None:
                raise ProtocolError("both Transfer-Encoding and Content-Length in the response")
            if encoding.lower() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {encoding!r}")
            self._state = _CHUNK_SIZE
        elif status in _NO_BODY:
            self._finish(b"")
        elif length is not None:
            if not length.isdigit():
                raise ProtocolError(f"bad Content-Length {length[:40]!r}")
            self._remaining = int(length)
            self._state = _LENGTH
        else:  # no framing: the body runs to the end of the connection
            self._keep_alive = False
            self._state = _UNTIL_CLOSE

    def _finish(self, body: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        self._state = _HEAD
        if not self._keep_alive or self._buffer:
            # a server that closes after this response, or bytes beyond it (nothing else was asked)
            extra = bool(self._buffer)
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            if extra:
                if waiter is not None and not waiter.done():
                    waiter.set_exception(ProtocolError(f"{len(self._buffer)} bytes after the response"))
                return
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._headers, body))


class HttpConnection:
    """One keep-alive connection to `target`, one request at a time, reopened after any problem.

    An https target needs `tls`, the context that says which certificates to trust and which to show.
    """

    def __init__(self, target: HttpTarget, tls: ssl.SSLContext | None = None) -> None:
        if target.tls and tls is None:
            raise ValueError(f"{target.url} needs an ssl.SSLContext")
        self.target = target
        self.tls = tls if target.tls else None
        self.opened = 0  # TCP connections opened so far (tests check that keep-alive reuses one)
        self._reader: _ResponseReader | None = None

    async def connect(self) -> None:
        """Opens the connection (and does the TLS handshake) now; it is opened on first use otherwise."""
        if self._reader is None or self._reader.closed:
            loop = asyncio.get_running_loop()
            tls: dict[str, Any] = {} if self.tls is None else {"ssl": self.tls, "server_hostname": self.target.host}
            try:
                _, self._reader = await loop.create_connection(_ResponseReader, self.target.host, self.target.port,
                                                               **tls)
            except ssl.SSLError as exc:
                detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
                raise TlsFailed(f"TLS handshake with {self.target.authority} failed: {detail}") from None
            except OSError as exc:  # asyncio's own text repeats the address: say what the errno means
                detail = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
                raise ConnectFailed(f"cannot connect to {self.target.authority}: {detail}") from None
            self.opened += 1

    async def request(self, request: bytes, timeout: float) -> Response:
        """Sends the prebuilt `request` and returns its response, or raises an HttpClientError.

        The deadline covers connecting too. On a timeout the connection is aborted: a late answer
        would otherwise be read as the next request's.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._reader is None or self._reader.closed:
            try:
                await asyncio.wait_for(self.connect(), timeout)
            except TimeoutError:
                raise RequestTimeout(f"not connected within {timeout:g} s") from None
        waiter = loop.create_future()
        timer = loop.call_at(deadline, self._expire, waiter, timeout)
        try:
            self._reader.send(request, waiter)  # type: ignore[union-attr]  # opened above, or this raised
            return await waiter
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future, timeout: float) -> None:
        if waiter.done():
            return
        error = RequestTimeout(f"no complete response within {timeout:g} s")
        if self._reader is not None and self._reader.waiting_on(waiter):
            self._reader.fail(error)
        else:
            waiter.set_exception(error)

    def close(self) -> None:
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.close()
        self._reader = None

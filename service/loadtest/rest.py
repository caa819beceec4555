"""The REST side of a client process: HTTP/1.1 connections to the target and what each reply counts as.

HTTP/1.1 carries one request at a time on a connection, so a closed loop gives every slot a
connection of its own, and the open loop keeps a pool: a request takes an idle connection or
opens one (the in-flight cap bounds how many). A reply counts as "OK" when it is a 200 (and,
for binary tensors, its declared sizes add up); any other status by its number ("429", "503");
a request that got no usable reply by the client-side problem (`CLIENT_TIMEOUT`, ...).

An https target gets TLS, and a token goes into every request as `Authorization: Bearer`; both come
from the same options as the gRPC side's (service/client/security.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from service.client.security import ClientSecurity, authorization, ssl_context
from service.loadtest.http import HttpClientError, HttpConnection, build_request, parse_target
from service.loadtest.rest_payload import RestPayload, binary_reply_problem

INVALID_REPLY = "CLIENT_INVALID_RESPONSE"
PROBE_PATH = "/v2"  # the protocol's server metadata: every V2 server has it, and a token guards it
REFUSED = (401, 403)


class RestClient:
    """Sends prebuilt infer requests to one target; every call returns the code to count."""

    def __init__(self, target: str, payloads: list[RestPayload], timeout_s: float,
                 security: ClientSecurity = ClientSecurity()) -> None:
        self.target = parse_target(target, tls=security.tls)
        self.tls = ssl_context(security) if self.target.tls else None
        headers = authorization(security)
        self.payloads = payloads
        self.requests = [build_request("POST", p.path, self.target, {**p.headers, **headers}, p.body)
                         for p in payloads]
        self.probe_request = build_request("GET", PROBE_PATH, self.target, headers, b"")
        self.timeout_s = timeout_s
        self._idle: list[HttpConnection] = []
        self._all: list[HttpConnection] = []

    def _new_connection(self) -> HttpConnection:
        connection = HttpConnection(self.target, self.tls)
        self._all.append(connection)
        return connection

    async def connect(self, count: int, timeout_s: float) -> None:
        """Opens `count` connections at once before the load starts, waiting at most `timeout_s`;
        one that fails is retried by its first request, so an unreachable target shows up as errors."""
        connections = [self._new_connection() for _ in range(count)]

        async def open_one(connection: HttpConnection) -> None:
            try:
                await asyncio.wait_for(connection.connect(), timeout_s)
            except (TimeoutError, HttpClientError):
                connection.close()

        await asyncio.gather(*(open_one(connection) for connection in connections))
        self._idle.extend(connections)

    async def probe(self, timeout_s: float) -> str | None:
        """Asks for the server metadata (`GET /v2`) once, on a connection the load then reuses: why
        the target cannot be load-tested (no connection, no TLS, no answer, the token refused), or
        None. Any other answer, even an error status, is the load's to count."""
        connection = self._idle.pop() if self._idle else self._new_connection()
        try:
            response = await connection.request(self.probe_request, timeout_s)
        except HttpClientError as exc:
            return f"GET {PROBE_PATH}: {exc}"
        finally:
            self._idle.append(connection)
        if response.status in REFUSED:
            return f"GET {PROBE_PATH} refused: HTTP {response.status} {_error_text(response.body)}".rstrip()
        return None

    def slot(self, index: int) -> Callable[[], Awaitable[str]]:
        """Closed loop: slot `index`'s send, on a connection of its own (one taken from `connect`'s if any)."""
        connection = self._idle.pop() if self._idle else self._new_connection()
        payload, request = self.payloads[index % len(self.payloads)], self.requests[index % len(self.requests)]

        def send() -> Awaitable[str]:
            return self._exchange(connection, payload, request)

        return send

    async def call(self, n: int) -> str:
        """Open loop: the n-th request, on an idle connection or a new one."""
        connection = self._idle.pop() if self._idle else self._new_connection()
        try:
            return await self._exchange(connection, self.payloads[n % len(self.payloads)],
                                        self.requests[n % len(self.requests)])
        finally:
            self._idle.append(connection)

    async def _exchange(self, connection: HttpConnection, payload: RestPayload, request: bytes) -> str:
        try:
            response = await connection.request(request, self.timeout_s)
        except HttpClientError as exc:
            return exc.code
        if response.status != 200:
            return str(response.status)
        if payload.binary and binary_reply_problem(response.headers, response.body, len(payload.outputs)):
            return INVALID_REPLY
        return "OK"

    def close(self) -> None:
        for connection in self._all:
            connection.close()


def _error_text(body: bytes) -> str:
    """A V2 error reply's `error` (`{"error": "..."}`), else the start of the body, on one line."""
    try:
        text = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace")
    return " ".join(text.split())

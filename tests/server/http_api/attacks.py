"""Hostile HTTP clients, one round of each, for the test that holds the server to its bars under
sustained attack (test_hostile_transport_http.py): memory, a bystander, the log, the metrics.

A round opens its own connection(s), does its harm, checks what the server answered and returns
an `Outcome` per answer: the status seen and the metrics `code` the server must count it under
(None for what must not be counted: health, the page's endpoints, and everything the connection
refuses before a request reaches the application). Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.server.http_api.wire import INFER_PATH, RawClient, address, json_infer_body, request_bytes
from tests.support.mnist import mnist_test_images

LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
PATIENCE = 10.0   # seconds a round waits for the server to act on a timeout before failing


@dataclass(frozen=True)
class Target:
    """The server under attack: its HTTP(S) URL, the limits it was started with, and for HTTPS a
    client context that trusts it and the token it wants."""

    url: str
    idle_timeout: float
    read_timeout: float
    context: ssl.SSLContext | None = None
    token: str = ""


@dataclass(frozen=True)
class Outcome:
    status: str
    counted: str | None   # the metrics `code` this answer must be counted under, or None


REFUSED = Outcome("503 past --max-connections", None)


def _answer(client: RawClient, request: bytes, expected: int, counted: str | None) -> Outcome:
    """Sends `request` and reads its answer, which must be `expected` (or the connection limit's 503)."""
    client.send(request)
    response = client.read_response()
    if response.status == 503 and b"--max-connections" in response.body:
        return REFUSED
    assert response.status == expected, (expected, response.status, response.body[:300])
    assert len(response.body) <= 1200, len(response.body)   # error messages are cut to 1,024 characters
    return Outcome(str(response.status), counted)


def _repeat(target: Target, request: bytes, expected: int, counted: str | None, closes: bool = False) -> list[Outcome]:
    """`request` sent five times on one keep-alive connection, or once when its answer closes it."""
    outcomes: list[Outcome] = []
    with RawClient(target.url, timeout=PATIENCE) as client:
        for _ in range(1 if closes else 5):
            outcomes.append(_answer(client, request, expected, counted))
            if outcomes[-1] is REFUSED:
                break
        if closes and outcomes[-1] is not REFUSED:
            assert client.closed_by_server()
    return outcomes


def _until_closed(client: RawClient, send: bytes, interval: float, limit: float) -> bool:
    for _ in range(int(limit / interval) + 1):
        if not client.send(send) or client.closed_by_server(timeout=interval):
            return True
    return False


# ----------------------------------------------------------------------------- the rounds


def blank_lines(target: Target) -> list[Outcome]:
    """A request, then a CRLF every 0.1 s: closed after the idle timeout."""
    with RawClient(target.url, timeout=PATIENCE) as client:
        first = _answer(client, LIVE, 200, None)
        if first is REFUSED:
            return [first]
        assert _until_closed(client, b"\r\n", 0.1, target.idle_timeout + PATIENCE), "blank lines kept it open"
    return [first, Outcome("closed idle", None)]


def trickle(target: Target) -> list[Outcome]:
    """An infer request a byte every 0.1 s: 408 at the read timeout."""
    request = request_bytes(json_infer_body(mnist_test_images()[:1]))
    with RawClient(target.url, timeout=PATIENCE) as client:
        for byte in request[:int((target.read_timeout + PATIENCE) / 0.1)]:
            if not client.send(bytes([byte])) or select.select([client.sock], [], [], 0.1)[0]:
                break
        response = client.read_response()
        if response.status == 503:
            return [REFUSED]
        assert response.status == 408, response
    return [Outcome("408", None)]


def flood(target: Target) -> list[Outcome]:
    """30 connections opened at once and held half a second: those past the limit get 503."""
    clients = [RawClient(target.url, timeout=PATIENCE) for _ in range(30)]
    try:
        time.sleep(0.5)  # holding them is the attack
        outcomes = []
        for client in clients:
            if select.select([client.sock], [], [], 0)[0]:
                response = client.read_response()
                assert response.status == 503, response
                outcomes.append(REFUSED)
            else:
                outcomes.append(Outcome("held", None))
        return outcomes
    finally:
        for client in clients:
            client.close()


def _infer_document(data: bytes, shape: bytes = b"[1,784]") -> bytes:
    return (b'{"inputs":[{"name":"pixels","datatype":"UINT8","shape":' + shape + b',"data":' + data + b'}],'
            b'"parameters":{"binary_data_output":true}}')


DEEP = request_bytes(_infer_document(b"[" * 330 + b"0" + b"]" * 330))
HUGE_SHAPE = request_bytes(_infer_document(b"[0]", json.dumps([1] * 100_001).encode()))
BAD_INDEX = b"GET /v1/samples/random?index=%C2%B2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
GZIP_CHUNKED = (f"POST {INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                "2\r\n{}\r\n0\r\n\r\n").encode()
NO_VERSION = b"GET /v2/health/live\r\n\r\n"
AN_IMAGE = request_bytes(json_infer_body(mnist_test_images()[:1]), headers={"Content-Type": "image/png"})


def deep_json(target: Target) -> list[Outcome]:
    return _repeat(target, DEEP, 400, "INVALID_ARGUMENT")


def huge_shape(target: Target) -> list[Outcome]:
    return _repeat(target, HUGE_SHAPE, 400, "INVALID_ARGUMENT")


def bad_index(target: Target) -> list[Outcome]:
    return _repeat(target, BAD_INDEX, 400, None)


def transfer_coding(target: Target) -> list[Outcome]:
    return _repeat(target, GZIP_CHUNKED, 501, None, closes=True)


def no_version(target: Target) -> list[Outcome]:
    return _repeat(target, NO_VERSION, 400, None, closes=True)


def wrong_content_type(target: Target) -> list[Outcome]:
    return _repeat(target, AN_IMAGE, 415, "INVALID_ARGUMENT")


def handshake_stall(target: Target) -> list[Outcome]:
    """TCP to the HTTPS port, a few bytes of a ClientHello, then nothing: closed at the read timeout."""
    with socket.create_connection(address(target.url.replace("https", "http")), timeout=PATIENCE) as sock:
        sock.sendall(bytes.fromhex("160301"))
        sock.settimeout(target.read_timeout + PATIENCE)
        try:
            assert sock.recv(1 << 16) == b""
        except ConnectionResetError:
            pass
    return [Outcome("closed in handshake", None)]


def non_utf8_authorization(target: Target) -> list[Outcome]:
    """Infer over HTTPS with `Authorization: Bearer \\xff\\xfe`: 401, never counted."""
    host, port = address(target.url.replace("https", "http"))
    connection = http.client.HTTPSConnection(host, port, timeout=PATIENCE, context=target.context)
    outcomes = []
    try:
        for _ in range(5):
            connection.request("POST", INFER_PATH, json_infer_body(mnist_test_images()[:1]),
                               {"Content-Type": "application/json", "Authorization": b"Bearer \xff\xfe"})  # type: ignore[dict-item]
            response = connection.getresponse()
            response.read()
            assert response.status == 401, response.status
            outcomes.append(Outcome("401", None))
    finally:
        connection.close()
    return outcomes


PLAIN: dict[str, Callable[[Target], list[Outcome]]] = {
    "blank lines": blank_lines, "trickle": trickle, "connection flood": flood, "deep JSON": deep_json,
    "huge shape": huge_shape, "bad sample index": bad_index, "gzip, chunked": transfer_coding,
    "no HTTP version": no_version, "wrong Content-Type": wrong_content_type,
}
OVER_TLS: dict[str, Callable[[Target], list[Outcome]]] = {
    "TLS handshake stall": handshake_stall, "non-UTF-8 Authorization": non_utf8_authorization,
}

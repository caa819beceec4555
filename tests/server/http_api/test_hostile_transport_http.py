"""Hostile clients of the HTTP transport itself, over raw sockets against the real `digits serve`:
connections that only send blank lines, requests trickled a byte at a time, more connections than
`--max-connections`, TLS handshakes never finished, transfer codings and request lines the server
does not speak. Each defence is documented in docs/security.md ("What is defended over HTTP").

The timing tests assert the timeouts' own semantics (closed after the idle timeout, 408 at the
read timeout) with a margin for a loaded machine, never how fast anything is served.
"""

from __future__ import annotations

import gzip
import re
import select
import socket
import ssl
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.server.http_api.rest_oracle import check_error_body
from tests.server.http_api.wire import INFER_PATH, RawClient, address, json_infer_body, request_bytes
from tests.support import wait_for
from tests.support.certificates import CertificateAuthority
from tests.support.http import call
from tests.support.mnist import mnist_test_images
from tests.support.server import RunningServer, connections_by_process, health_status

BAD_LOG = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")
IDLE_TIMEOUT = 1.5      # --http-idle-timeout of the `guarded` server
READ_TIMEOUT = 1.5      # --http-read-timeout of the `guarded` server
MAX_CONNECTIONS = 20    # --max-connections of the `guarded` server
SWEEP = 0.5             # how often the front end looks at timeouts (front_end.SWEEP_INTERVAL)
LATE = 1.0              # what a loaded machine may add to a timer
TOKEN = "transport-s3cret"
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def guarded() -> Iterator[RunningServer]:
    """One worker with short timeouts and a small connection limit, so the defences act within seconds."""
    running = RunningServer("--workers", "1", "--http-idle-timeout", str(IDLE_TIMEOUT),
                            "--http-read-timeout", str(READ_TIMEOUT), "--max-connections", str(MAX_CONNECTIONS))
    yield running
    assert running.stop() == 0, running.log[-4000:]
    assert not BAD_LOG.search(running.log), running.log[-6000:]


@pytest.fixture(scope="module")
def crowded() -> Iterator[RunningServer]:
    """One worker allowed 20 HTTP connections, with the default (long) timeouts, so that the
    connections it holds stay open while a test looks at them."""
    running = RunningServer("--workers", "1", "--max-connections", str(MAX_CONNECTIONS))
    yield running
    assert running.stop() == 0, running.log[-4000:]
    assert not BAD_LOG.search(running.log), running.log[-6000:]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[RunningServer, ssl.SSLContext]]:
    """One worker serving HTTPS with a bearer token and a short read timeout, and a client
    context that trusts its certificate."""
    folder = tmp_path_factory.mktemp("pki")
    authority = CertificateAuthority(folder)
    issued = authority.issue("server", server=True)
    (folder / "token").write_text(TOKEN)
    running = RunningServer("--workers", "1", "--tls-cert", str(issued.cert), "--tls-key", str(issued.key),
                            "--auth-token-file", str(folder / "token"), "--http-read-timeout", str(READ_TIMEOUT))
    yield running, ssl.create_default_context(cafile=str(authority.issued.cert))
    assert running.stop() == 0, running.log[-4000:]
    assert not BAD_LOG.search(running.log), running.log[-6000:]


def client_hello() -> bytes:
    """The first flight of a real TLS client, made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    handshake = context.wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    return outgoing.read()


def held_connections(running: RunningServer) -> int:
    """HTTP connections the server's worker holds, as the kernel sees them."""
    [worker] = running.worker_pids()
    return len(connections_by_process([worker], address(running.http_url)[1])[worker])


def readable(client: RawClient) -> bool:
    return bool(select.select([client.sock], [], [], 0)[0])


def live_answered(url: str) -> bool:
    """A bystander on a connection of its own gets `/v2/health/live` answered 200."""
    with RawClient(url, timeout=10) as client:
        client.send(LIVE)
        return client.read_response().status == 200


def seconds_until_closed(client: RawClient, send: bytes, interval: float, limit: float) -> float | None:
    """Sends `send` every `interval` seconds until the server closes the connection; the seconds
    that took, or None if it was still open after `limit` seconds."""
    started = time.monotonic()
    for _ in range(int(limit / interval) + 1):
        if not client.send(send) or client.closed_by_server(timeout=interval):
            return time.monotonic() - started
    return None


# ----------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("when", ["after a request", "before any request"])
def test_a_connection_sending_only_blank_lines_is_closed_after_the_idle_timeout(guarded, when):
    """The parser skips CRLFs between requests, so they are no progress on a request: a client
    that sends one every 0.3 s is idle, and closed after --http-idle-timeout like a silent one."""
    with RawClient(guarded.http_url, timeout=10) as client:
        if when == "after a request":
            client.send(LIVE)
            assert client.read_response().status == 200
        closed_after = seconds_until_closed(client, b"\r\n", 0.3, IDLE_TIMEOUT + SWEEP + LATE + 5)
    assert closed_after is not None, "a client sending only CRLFs kept its connection open"
    assert IDLE_TIMEOUT - 0.1 <= closed_after <= IDLE_TIMEOUT + SWEEP + LATE, closed_after
    assert live_answered(guarded.http_url)


def test_a_request_trickled_a_byte_at_a_time_gets_408_at_the_read_timeout(guarded):
    """Bytes of a request keep arriving, one every 0.2 s, but the request is not whole within
    --http-read-timeout: 408, and the connection closes."""
    request = request_bytes(json_infer_body(mnist_test_images()[:1]))
    with RawClient(guarded.http_url, timeout=10) as client:
        started = time.monotonic()
        for byte in request[:int((READ_TIMEOUT + SWEEP + LATE + 5) / 0.2)]:
            if not client.send(bytes([byte])) or select.select([client.sock], [], [], 0.2)[0]:
                break
        elapsed = time.monotonic() - started
        response = client.read_response()
        assert response.status == 408, response
        check_error_body(response.headers["content-type"], response.body)
        assert client.closed_by_server()
    assert READ_TIMEOUT - 0.1 <= elapsed <= READ_TIMEOUT + SWEEP + LATE, elapsed


# ----------------------------------------------------------------------------- connections


def test_connections_past_max_connections_are_refused_503_and_bystanders_are_served(crowded):
    """40 connections to a worker allowed 20: the last 20 are answered 503 (`Connection: close`,
    a one-line JSON error) and closed before they send anything; the first 20 are held and each
    still answered; once five close, a new connection is served; gRPC health is unaffected."""
    assert wait_for(lambda: held_connections(crowded) == 0, timeout=10)
    clients = [RawClient(crowded.http_url, timeout=10) for _ in range(2 * MAX_CONNECTIONS)]
    try:
        held, surplus = clients[:MAX_CONNECTIONS], clients[MAX_CONNECTIONS:]  # accepted in connect order
        assert wait_for(lambda: all(readable(c) for c in surplus), timeout=10), "the surplus was not refused"
        for client in surplus:
            response = client.read_response()
            assert response.status == 503, response
            assert response.headers["connection"] == "close" and response.headers["retry-after"] == "1"
            assert "--max-connections" in check_error_body(response.headers["content-type"], response.body)
            assert client.closed_by_server()
        assert not any(readable(c) for c in held), "a connection within the limit was refused"
        assert held_connections(crowded) == MAX_CONNECTIONS
        images = mnist_test_images()[:2]
        for i, client in enumerate(held):  # each held connection is still served, a REST infer on one
            client.send(request_bytes(json_infer_body(images, "held")) if i == 0 else LIVE)
            response = client.read_response()
            assert response.status == 200, response
        for client in held[:5]:
            client.close()
        assert wait_for(lambda: held_connections(crowded) == MAX_CONNECTIONS - 5, timeout=10)
        assert live_answered(crowded.http_url)
        with grpc.insecure_channel(crowded.address) as channel:
            assert health_status(channel) == "SERVING"
    finally:
        for client in clients:
            client.close()


# ----------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("sent", ["nothing", "half a ClientHello"])
def test_a_tls_handshake_never_finished_is_closed_at_the_read_timeout(tls_server, sent):
    """A TCP connection to the HTTPS port that never completes its handshake holds a descriptor
    only until --http-read-timeout (uvloop's own default would be 60 s)."""
    running, context = tls_server
    hello = client_hello()
    assert hello[0] == 0x16  # a TLS handshake record
    with socket.create_connection(address(running.http_url.replace("https", "http")), timeout=10) as sock:
        if sent != "nothing":
            sock.sendall(hello[:len(hello) // 2])
        started = time.monotonic()
        sock.settimeout(READ_TIMEOUT + LATE + 5)
        try:
            leftover = sock.recv(1 << 16)
        except TimeoutError:
            pytest.fail("the server kept a TLS connection whose handshake never finished")
        except ConnectionResetError:
            leftover = b""
        elapsed = time.monotonic() - started
    assert leftover == b"", leftover
    assert READ_TIMEOUT - 0.1 <= elapsed <= READ_TIMEOUT + LATE, elapsed
    assert call(running.http_url, "GET", "/v2/health/live", context=context).status == 200


@pytest.mark.parametrize("authorization", [b"Bearer \xff\xfe", b"\xff\xfe", b"Bearer " + TOKEN.encode() + b"\xff",
                                           b"Bearer \xc3\xa9t\xc3\xa9"])
def test_an_authorization_header_that_is_not_utf8_is_401_without_a_traceback(tls_server, authorization):
    running, context = tls_server
    before = len(running.log_lines)
    refused = call(running.http_url, "POST", INFER_PATH, json_infer_body(mnist_test_images()[:1]),
                   {"Content-Type": "application/json", "Authorization": authorization}, context=context)  # type: ignore[dict-item]
    assert refused.status == 401, refused
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "bearer token" in check_error_body(refused.headers["content-type"], refused.body)
    assert call(running.http_url, "GET", "/v2/health/live", context=context).status == 200  # health stays open
    accepted = call(running.http_url, "POST", INFER_PATH, json_infer_body(mnist_test_images()[:1]),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}, context=context)
    assert accepted.status == 200, accepted
    assert "Traceback" not in "".join(running.sync_log() and running.log_lines[before:])


# ----------------------------------------------------------------------------- what is not HTTP/1.1


def chunked_request(body: bytes, coding: bytes = b"chunked", version: bytes = b"HTTP/1.1",
                    extra: bytes = b"") -> bytes:
    head = (b"POST " + INFER_PATH.encode() + b" " + version + b"\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + extra + b"Transfer-Encoding: " + coding + b"\r\n\r\n")
    return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


NOT_SPOKEN = {
    # RFC 9112 6.1: a transfer coding the server does not understand is 501; llhttp undid only
    # the chunking of `gzip, chunked` and passed the gzip bytes on as the body
    "Transfer-Encoding: gzip, chunked": (chunked_request(gzip.compress(b'{"inputs": []}'), b"gzip, chunked"), 501),
    "Transfer-Encoding: gzip": (chunked_request(b"{}", b"gzip"), 501),
    "Transfer-Encoding: deflate, chunked": (chunked_request(b"{}", b"deflate, chunked"), 501),
    "gzip, then chunked in another header": (chunked_request(b"{}", extra=b"Transfer-Encoding: gzip\r\n"), 501),
    "Transfer-Encoding: identity": (chunked_request(b"{}", b"identity"), 501),
    # RFC 9112 6.1: framing an HTTP/1.0 request by Transfer-Encoding is faulty (a valid infer body here)
    "HTTP/1.0 and Transfer-Encoding": (chunked_request(json_infer_body(mnist_test_images()[:1]), version=b"HTTP/1.0"),
                                       400),
    # a request line without a version (HTTP/0.9) was answered 200
    "no version": (b"GET /v2/health/live\r\n\r\n", 400),
    "HTTP/0.9": (b"GET /v2/health/live HTTP/0.9\r\n\r\n", 400),
    "HTTP/2.0 in a request line": (b"GET /v2/health/live HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
}


@pytest.mark.parametrize("name", NOT_SPOKEN)
def test_transfer_codings_and_versions_the_server_does_not_speak_are_refused(guarded, name):
    request, expected = NOT_SPOKEN[name]
    before = len(guarded.log_lines)
    with RawClient(guarded.http_url) as client:
        client.send(request)
        response = client.read_response()
        assert response.status == expected, response
        assert response.headers["connection"] == "close"
        message = check_error_body(response.headers["content-type"], response.body)
        assert "\n" not in message
        assert client.closed_by_server()
    assert live_answered(guarded.http_url)
    assert not BAD_LOG.search("".join(guarded.sync_log() and guarded.log_lines[before:]))


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b" chunked "])
def test_a_chunked_body_is_still_served(guarded, coding):
    images = mnist_test_images()[:2]
    with RawClient(guarded.http_url) as client:
        client.send(chunked_request(json_infer_body(images, "chunked"), coding))
        response = client.read_response()
        assert response.status == 200, response
        assert response.json()["id"] == "chunked"

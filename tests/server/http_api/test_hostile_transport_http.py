"""Hostile clients of the HTTP transport itself, over raw sockets against the real `digits serve`:
connections that only send blank lines, requests trickled a byte at a time, more connections than
`--max-connections`, TLS handshakes never finished, transfer codings and request lines the server
does not speak. Each defence is documented in docs/security.md ("What is defended over HTTP").

Then the bars, under each attack of attacks.py sustained for a few seconds from several threads:
the worker's memory grows by at most 50 MB, a bystander's keep-alive requests are each answered
within a second, its descriptors stay within --max-connections, nothing is logged as an error,
and /metrics counts exactly the infer requests that reached the application, by the status
their clients saw.

The timing tests assert the timeouts' own semantics (closed after the idle timeout, 408 at the
read timeout) with a margin for a loaded machine, never how fast anything is served.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import pytest

from tests.server.http_api.attacks import OVER_TLS, PLAIN, Outcome, Target
from tests.server.http_api.rest_oracle import check_error_body
from tests.server.http_api.wire import INFER_PATH, RawClient, address, json_infer_body, request_bytes
from tests.support import wait_for
from tests.support.certificates import CertificateAuthority
from tests.support.http import call
from tests.support.mnist import mnist_test_images
from tests.support.server import RunningServer, connections_by_process, health_status, rss_mb

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
def tls_server(tmp_path_factory) -> Iterator[tuple[RunningServer, ssl.SSLContext, bytes]]:
    """One worker serving HTTPS (and gRPC over TLS) with a bearer token and a short read timeout,
    a client context that trusts its certificate, and the CA certificate."""
    folder = tmp_path_factory.mktemp("pki")
    authority = CertificateAuthority(folder)
    issued = authority.issue("server", server=True)
    (folder / "token").write_text(TOKEN)
    running = RunningServer("--workers", "1", "--tls-cert", str(issued.cert), "--tls-key", str(issued.key),
                            "--auth-token-file", str(folder / "token"), "--http-read-timeout", str(READ_TIMEOUT))
    yield running, ssl.create_default_context(cafile=str(authority.issued.cert)), authority.issued.cert.read_bytes()
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


def logged_since(running: RunningServer, line: int) -> str:
    """What the server has logged from its `line`-th line on, once the log reader has all of it."""
    running.sync_log()
    return "".join(running.log_lines[line:])


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


def test_a_connection_whose_client_never_reads_its_answers_is_let_go(guarded):
    """300 requests for 147 KB answers, none read: the server stops reading, writes what the
    buffers take, and once idle closes the connection; close() would wait for the unread answers
    for ever, so read_timeout later the connection is aborted and its descriptor freed."""
    weights = b"GET /v1/weights HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert wait_for(lambda: held_connections(guarded) == 0, timeout=10)
    with socket.create_connection(address(guarded.http_url), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.setblocking(False)
        pending = weights * 300
        for _ in range(1000):  # send what the server reads; it stops reading, so this stalls
            try:
                pending = pending[sock.send(pending):]
            except BlockingIOError:
                break
            if not pending:
                break
        assert wait_for(lambda: held_connections(guarded) == 1, timeout=10)  # accepted
        let_go = IDLE_TIMEOUT + READ_TIMEOUT + 2 * SWEEP + LATE + 5
        assert wait_for(lambda: held_connections(guarded) == 0, timeout=let_go), \
            "the server kept a connection whose client never reads"
    assert live_answered(guarded.http_url)


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
    running, context, _ = tls_server
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
    running, context, _ = tls_server
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
    assert "Traceback" not in logged_since(running, before)


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
    assert not BAD_LOG.search(logged_since(guarded, before))


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b" chunked "])
def test_a_chunked_body_is_still_served(guarded, coding):
    images = mnist_test_images()[:2]
    with RawClient(guarded.http_url) as client:
        client.send(chunked_request(json_infer_body(images, "chunked"), coding))
        response = client.read_response()
        assert response.status == 200, response
        assert response.json()["id"] == "chunked"


# ----------------------------------------------------------------------------- the bars, under attack

ATTACK_SECONDS = 2.5      # each attack; the bars were set for 10 s, shortened to keep CI fast
ATTACK_THREADS = 4
MAX_ROUNDS = 10_000       # per thread: the loop is bounded in count as well as in time
BYSTANDER_DEADLINE = 1.0  # seconds for each of the bystander's answers
BYSTANDER_PAUSE = 0.2
RSS_GROWTH_MB = 50
INFER_COUNT = re.compile(r'^digits_requests_total\{api="kserve_v2_rest",code="(\w+)",method="ModelInfer"\} (\S+)$',
                         re.MULTILINE)


def infer_counts(running: RunningServer) -> Counter[str]:
    """The REST infer calls the server has counted, by `code`."""
    return Counter({code: int(float(value)) for code, value in INFER_COUNT.findall(running.metrics_text())})


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Bystander:
    """A well-behaved client on a keep-alive connection opened before the attack: one REST infer
    every 0.2 s, each of which must be answered correctly within a second."""

    def __init__(self, target: Target) -> None:
        host, port = address(target.url.replace("https", "http"))
        self._connection = (http.client.HTTPSConnection(host, port, timeout=BYSTANDER_DEADLINE, context=target.context)
                            if target.context else http.client.HTTPConnection(host, port, timeout=BYSTANDER_DEADLINE))
        self._headers = {"Content-Type": "application/json"}
        if target.token:
            self._headers["Authorization"] = f"Bearer {target.token}"
        self._body = json_infer_body(mnist_test_images()[:1], "bystander")
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.call()  # connected and served before the attack begins, so it is within any limit
        assert not self.errors, self.errors

    def call(self) -> None:
        started = time.monotonic()
        try:
            self._connection.request("POST", INFER_PATH, self._body, self._headers)
            response = self._connection.getresponse()
            body = response.read()
        except OSError as exc:
            self.errors.append(f"bystander not answered within {BYSTANDER_DEADLINE} s: {exc!r}")
            return
        self.latencies.append(time.monotonic() - started)
        if response.status != 200 or b'"bystander"' not in body:
            self.errors.append(f"bystander got {response.status}: {body[:200]!r}")

    def run(self, deadline: float) -> None:
        for _ in range(MAX_ROUNDS):
            if time.monotonic() >= deadline or self.errors:
                break
            self.call()
            time.sleep(BYSTANDER_PAUSE)

    def close(self) -> None:
        self._connection.close()


def sustain(attack: Callable[[Target], list[Outcome]], target: Target, deadline: float,
            outcomes: list[Outcome], errors: list[str], lock: threading.Lock) -> None:
    """Rounds of `attack` back to back until `deadline`; what it finds wrong goes to `errors`."""
    for _ in range(MAX_ROUNDS):
        if time.monotonic() >= deadline:
            return
        try:
            seen = attack(target)
        except Exception as exc:  # noqa: BLE001 - reported by the test, in its own thread
            with lock:
                errors.append(f"{attack.__name__}: {exc!r}")
            return
        with lock:
            outcomes.extend(seen)


@pytest.mark.parametrize("name", [*PLAIN, *OVER_TLS])
def test_under_each_attack_memory_a_bystander_the_log_and_the_metrics_hold(request, name):
    if name in PLAIN:
        attack, running = PLAIN[name], request.getfixturevalue("guarded")
        target, limit, authority = Target(running.http_url, IDLE_TIMEOUT, READ_TIMEOUT), MAX_CONNECTIONS, b""
    else:
        attack, (running, context, authority) = OVER_TLS[name], request.getfixturevalue("tls_server")
        target, limit = Target(running.http_url, 75.0, READ_TIMEOUT, context, TOKEN), 400
    [worker] = running.worker_pids()
    assert wait_for(lambda: held_connections(running) == 0, timeout=10)
    counts_before, log_before = infer_counts(running), len(running.log_lines)
    bystander = Bystander(target)
    rss_before, fds_before = rss_mb(worker), open_descriptors(worker)
    outcomes: list[Outcome] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + ATTACK_SECONDS
    threads = [threading.Thread(target=sustain, args=(attack, target, deadline, outcomes, errors, lock), daemon=True)
               for _ in range(ATTACK_THREADS)]
    threads.append(threading.Thread(target=bystander.run, args=(deadline,), daemon=True))
    for thread in threads:
        thread.start()
    fds_peak = fds_before
    for _ in range(int((ATTACK_SECONDS + 2 * ATTACK_SECONDS + IDLE_TIMEOUT + 10) / 0.05)):
        fds_peak = max(fds_peak, open_descriptors(worker))
        if not any(thread.is_alive() for thread in threads):
            break
        time.sleep(0.05)
    bystander.close()
    assert not any(thread.is_alive() for thread in threads), "an attack thread did not stop"
    assert not errors, errors[:5]
    assert not bystander.errors, bystander.errors
    assert outcomes and bystander.latencies
    assert max(bystander.latencies) <= BYSTANDER_DEADLINE, max(bystander.latencies)
    assert wait_for(lambda: held_connections(running) == 0, timeout=10)
    grown = rss_mb(worker) - rss_before
    counted = Counter(o.counted for o in outcomes if o.counted) + Counter(OK=len(bystander.latencies))
    statuses = Counter(o.status for o in outcomes)
    print(f"\n{name}: {dict(statuses)}; bystander {len(bystander.latencies)} answers, slowest "
          f"{max(bystander.latencies):.3f} s; RSS {rss_before:.1f} MB {grown:+.1f} MB; "
          f"descriptors {fds_before} -> peak {fds_peak}")
    assert grown <= RSS_GROWTH_MB, f"worker RSS grew {grown:.1f} MB under {name}"
    assert fds_peak <= fds_before + limit + ATTACK_THREADS, (fds_before, fds_peak)
    assert infer_counts(running) - counts_before == counted
    logged = logged_since(running, log_before)
    assert not BAD_LOG.search(logged), logged[:4000]
    with (grpc.secure_channel(running.address, grpc.ssl_channel_credentials(authority)) if target.context
          else grpc.insecure_channel(running.address)) as channel:
        assert health_status(channel) == "SERVING"

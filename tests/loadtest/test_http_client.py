"""The load tester's HTTP/1.1 client (service/loadtest/http.py) against a real stdlib HTTP server on
127.0.0.1 (tests/support/http_peer.py): framing, keep-alive, and a precise error for every problem."""

from __future__ import annotations

import asyncio

import pytest

from service.loadtest import http
from service.loadtest.http import HttpConnection, build_request, parse_target
from tests.support import closed_port
from tests.support.http_peer import HttpPeer


@pytest.fixture(scope="module")
def peer():
    with HttpPeer() as server:
        yield server


@pytest.fixture(scope="module")
def chunked_peer():
    with HttpPeer(chunked=True) as server:
        yield server


def exchange(url: str, *paths: str, body: bytes = b"", timeout: float = 5.0) -> tuple[list, HttpConnection]:
    """Sends a request for each path in turn on one HttpConnection; the responses or the errors raised."""
    target = parse_target(url)

    async def run() -> list:
        connection = HttpConnection(target)
        outcomes = []
        for path in paths:
            try:
                outcomes.append(await connection.request(build_request("POST", path, target, {}, body), timeout))
            except http.HttpClientError as exc:
                outcomes.append(exc)
        connection.close()
        return outcomes, connection

    return asyncio.run(run())


def test_keep_alive_sends_every_request_on_one_connection(peer):
    before = peer.connections
    outcomes, connection = exchange(peer.url, "/hello", "/hello", "/hello", body=b"there")
    assert [(r.status, r.body) for r in outcomes] == [(200, b"hello there")] * 3
    assert outcomes[0].headers["content-length"] == "11"
    assert connection.opened == 1 and peer.connections - before == 1


def test_chunked_bodies_are_joined_and_the_connection_kept(chunked_peer):
    before = chunked_peer.connections
    outcomes, connection = exchange(chunked_peer.url, "/hello", "/many-chunks", "/hello", body=b"x")
    assert [r.body for r in outcomes] == [b"hello x", b"hello chunked world", b"hello x"]
    assert outcomes[0].headers["transfer-encoding"] == "chunked"
    assert connection.opened == 1 and chunked_peer.connections - before == 1


def test_no_body_interim_and_close_delimited_responses(peer):
    outcomes, connection = exchange(peer.url, "/no-content", "/interim", "/until-close", "/hello")
    assert [(r.status, r.body) for r in outcomes] == [(204, b""), (200, b"ok"), (200, b"the body runs to the end"),
                                                      (200, b"hello ")]
    assert connection.opened == 2  # the close-delimited body ended its connection


def test_a_server_that_closes_after_answering_is_reconnected(peer):
    outcomes, connection = exchange(peer.url, "/close-after", "/hello")
    assert [r.body for r in outcomes] == [b"close", b"hello "] and connection.opened == 2


def test_an_error_status_is_a_response_not_an_exception(peer):
    (response,), _ = exchange(peer.url, "/too-many")
    assert response.status == 429 and response.body == b"slow down"


@pytest.mark.parametrize("path, error, message", [
    ("/bad-status", http.ProtocolError, "bad status line b'HTTP/1.1 2OO OK'"),
    ("/bad-chunk", http.ProtocolError, "bad chunk size b'zz'"),
    ("/both-lengths", http.ProtocolError, "both Transfer-Encoding and Content-Length"),
    ("/too-much", http.ProtocolError, "5 bytes after the response"),
    ("/truncated", http.ConnectionClosed, "server closed the connection mid-response"),
])
def test_protocol_problems_are_precise_and_the_next_request_reconnects(peer, path, error, message):
    (problem, after), connection = exchange(peer.url, path, "/hello")
    assert type(problem) is error and message in str(problem), problem
    assert problem.code == error.code and error.code.startswith("CLIENT_")
    assert after.status == 200 and connection.opened == 2


def test_a_late_answer_is_a_timeout_and_never_read_as_the_next_one(peer):
    peer.held.clear()
    try:
        (late, after), connection = exchange(peer.url, "/held", "/hello", timeout=0.2)
    finally:
        peer.held.set()
    assert isinstance(late, http.RequestTimeout) and late.code == "CLIENT_TIMEOUT"
    assert after.body == b"hello " and connection.opened == 2


def test_a_refused_connection_is_connect_failed():
    (problem,), _ = exchange(f"http://127.0.0.1:{closed_port()}", "/hello")
    assert isinstance(problem, http.ConnectFailed) and problem.code == "CLIENT_CONNECT_FAILED"
    assert "cannot connect to 127.0.0.1:" in str(problem)


def test_the_request_is_one_prebuilt_buffer():
    request = build_request("POST", "/v2/models/m/infer", parse_target("127.0.0.1:8000"),
                            {"Content-Type": "application/json"}, b"{}")
    assert request == (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Length: 2\r\n"
                       b"Content-Type: application/json\r\n\r\n{}")


@pytest.mark.parametrize("text, tls_options, host, port, tls", [
    ("http://127.0.0.1:8000", False, "127.0.0.1", 8000, False),
    ("http://127.0.0.1:8000/", False, "127.0.0.1", 8000, False),
    ("127.0.0.2:9", False, "127.0.0.2", 9, False), ("http://localhost", False, "localhost", 80, False),
    ("https://127.0.0.1:8443", False, "127.0.0.1", 8443, True), ("https://localhost", False, "localhost", 443, True),
    ("127.0.0.1:8443", True, "127.0.0.1", 8443, True),  # TLS options make a bare HOST:PORT https
])
def test_targets_are_urls_or_host_port(text, tls_options, host, port, tls):
    assert parse_target(text, tls=tls_options) == http.HttpTarget(host, port, tls)


@pytest.mark.parametrize("text, tls_options, complaint", [
    ("ftp://127.0.0.1:8443", False, "only http:// and https://"),
    ("http://127.0.0.1:8000", True, "write https://"),  # TLS asked for, plaintext named: refuse, do not guess
    ("http://127.0.0.1:8000/v2", False, "address only"),
    ("http://127.0.0.1:99999", False, "REST target"), ("http://:80", False, "no host"),
])
def test_targets_that_would_not_go_where_meant_are_refused(text, tls_options, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_target(text, tls=tls_options)


def test_an_https_target_needs_a_tls_context():
    with pytest.raises(ValueError, match="needs an ssl.SSLContext"):
        HttpConnection(parse_target("https://127.0.0.1:8443"))

"""Hostile clients of the REST API: whatever arrives on --http-port, the server answers precisely and stays well.

Property-based, like the gRPC suite (tests/server/test_hostile_input.py): every generated infer request
carries the faults its generator put in, and so the status it must get (hostile_rest.py); the rules
are also read field by field from the bytes sent (rest_oracle.py), and the two must agree. Neither
uses the server's code. Each request goes over a real keep-alive HTTP/1.1 connection to the real
`digits serve` and must get exactly that status (only 200, 400, 404, never 500, never a hang: every
request has a timeout), errors as `{"error": "..."}`, and 200s the outputs asked for, in the form
asked for, equal to onnxruntime run here on the pixels sent. Afterwards the server has logged no
traceback or ERROR and still answers.

Then the transport, each its own test: bodies over the limit (declared or chunked) get 413 and the
connection closes; truncated bodies do no harm; slow clients get 408 on time; garbage gets 400;
oversized headers 431; a hundred pipelined requests come back in order; a client that never reads
cannot make the server buffer without bound; `Expect: 100-continue` is honoured; and a few thousand
mixed requests leave the worker's memory where it was.

Set HOSTILE_SCALE=10 for a ten times longer property run; `-s` shows the tally of statuses.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.hostile_oracle import FEATURES, StatusTally
from tests.server.http_api.hostile_rest import rest_cases
from tests.server.http_api.rest_oracle import check_answer, check_error_body, judge, parse_answer
from tests.server.http_api.wire import (INFER_PATH, RawClient, address, binary_infer_body, json_infer_body,
                                        request_bytes)
from tests.support import MODEL_NAME
from tests.support.messages import ALL_OUTPUTS
from tests.support.mnist import mnist_test_images
from tests.support.server import RunningServer, rss_mb

SCALE = float(os.environ.get("HOSTILE_SCALE", "1"))
TIMEOUT = 15.0  # seconds; an answer that takes longer counts as a hang
BAD_LOG = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")
SMALL_LIMIT = 100_000  # --max-receive-message-bytes of the `limited` server
READ_TIMEOUT = 1.0     # --http-read-timeout of the `limited` server
TALLY = StatusTally()


def examples(count: int) -> int:
    return max(1, int(count * SCALE))


OVER_THE_WIRE = settings(max_examples=examples(250), deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.function_scoped_fixture])


class Client:
    """A keep-alive http.client connection that is replaced after any failure, so one broken
    exchange cannot make the next example fail for the wrong reason."""

    def __init__(self, url: str) -> None:
        self._address = address(url)
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str | bytes] | None = None) -> tuple[int, dict[str, str], bytes]:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(*self._address, timeout=TIMEOUT)
        try:
            self._connection.request(method, path, body=body, headers=headers or {})
            response = self._connection.getresponse()
            answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        except BaseException:
            self.close()
            raise
        return answer

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def valid_answer(url: str, offline, images: np.ndarray) -> None:
    """The server still answers a plain valid request, correctly."""
    client = Client(url)
    try:
        status, headers, body = client.request("POST", INFER_PATH, json_infer_body(images, "still-fine"))
    finally:
        client.close()
    assert status == 200, body[:500]
    answer = parse_answer(headers["content-type"], headers.get("inference-header-content-length"), body)
    assert answer.document["id"] == "still-fine"
    np.testing.assert_allclose(answer.arrays["probabilities"], offline(images)["probabilities"], rtol=1e-4, atol=1e-5)


def assert_clean_log(running: RunningServer, since: int = 0) -> None:
    running.sync_log()  # the log is read by a thread: wait until it has everything written so far
    new_log = "".join(running.log_lines[since:])
    assert not BAD_LOG.search(new_log), f"server logged an error for client input:\n{new_log[:6000]}"


@pytest.fixture(scope="module", autouse=True)
def status_summary(tmp_path_factory):
    yield
    print("\n" + TALLY.table())
    TALLY.write(tmp_path_factory.getbasetemp() / "hostile_http_statuses.json")


@pytest.fixture(scope="module")
def served_version(server) -> str:
    """The version the server answers with, as its own metadata says (and it lists every output)."""
    client = Client(server.http_url)
    try:
        status, _, body = client.request("GET", f"/v2/models/{MODEL_NAME}")
    finally:
        client.close()
    assert status == 200, body
    metadata = json.loads(body)
    assert tuple(o["name"] for o in metadata["outputs"]) == ALL_OUTPUTS
    return metadata["versions"][0]


@pytest.fixture(scope="module")
def rest(server) -> Iterator[Client]:
    client = Client(server.http_url)
    yield client
    client.close()


@pytest.fixture
def leaves_server_clean(server, offline):
    """After the test: no traceback/ERROR logged for any of it, and the server still answers correctly."""
    before = len(server.log_lines)
    yield
    valid_answer(server.http_url, offline, mnist_test_images()[:3])
    assert_clean_log(server, before)


def _own_server(*args: str) -> Iterator[RunningServer]:
    running = RunningServer("--workers", "1", *args)
    yield running
    assert running.stop() == 0, running.log[-4000:]
    assert not BAD_LOG.search(running.log), running.log[-6000:]


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningServer]:
    """A server with a small body limit and a short read timeout, for the transport's limits."""
    yield from _own_server("--max-receive-message-bytes", str(SMALL_LIMIT), "--http-read-timeout", str(READ_TIMEOUT))


@pytest.fixture(scope="module")
def quiet() -> Iterator[RunningServer]:
    """A single-worker server nobody else uses, so its memory reflects only what a test sends."""
    yield from _own_server()


def describe(case, status: int, body: bytes) -> str:
    """The request and the answer, precisely enough to replay it."""
    return (f"got {status}, expected {case.expected}; faults {case.faults}\n"
            f"POST {case.path}\nheaders {case.headers}\nbody ({len(case.body)} bytes) {case.body[:600]!r}\n"
            f"answer {body[:400]!r}")


# ----------------------------------------------------------------------------- property: precise statuses


@OVER_THE_WIRE
@given(data=st.data())
def test_rest_infer_requests_get_the_precise_status(rest, offline, served_version, leaves_server_clean, data):
    case = data.draw(rest_cases(served_version))
    verdict = judge(case.path, case.header_length, case.body, served_version)
    assert verdict.status == case.expected, (verdict.problem, case.faults)  # the two derivations agree
    status, headers, body = rest.request("POST", case.path, case.body, case.headers)
    TALLY.record("wire REST infer", str(status))
    assert status == case.expected, describe(case, status, body)
    if status == 200:
        answer = parse_answer(headers["content-type"], headers.get("inference-header-content-length"), body)
        check_answer(verdict, answer, offline, served_version)
    else:
        check_error_body(headers["content-type"], body)


# ----------------------------------------------------------------------------- inputs that once made a 500


def deep(depth: int, leaf: bytes = b"0") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def infer_document(data: bytes = b"[0]", request_id: bytes = b'"x"', extra: bytes = b"") -> bytes:
    """An infer request's JSON with `data` and `id` spliced in as raw JSON text."""
    return (b'{"id":' + request_id + b',"inputs":[{"name":"pixels","datatype":"UINT8","shape":[1,784],"data":'
            + data + b'}]' + extra + b'}')


NESTED_TOO_DEEP = {
    # _holds_booleans recursed once per level: 330 levels were a RecursionError (500)
    "data 330 deep holding true": (infer_document(deep(330, b"true")), "holds true or false"),
    "data 330 deep, a true elsewhere": (infer_document(deep(330), extra=b',"parameters":{"binary_data_output":true}'),
                                        "evenly nested"),
    "data 1000 deep": (infer_document(deep(1000)), "evenly nested"),
    # orjson writes at most 255 levels: showing the wrong value in the message raised (500)
    "id 300 deep": (infer_document(request_id=deep(300)), "'id' must be a string"),
    "binary_data_output 300 deep": (infer_document(extra=b',"parameters":{"binary_data_output":' + deep(300) + b"}"),
                                    "'binary_data_output' must be true or false"),
}


@pytest.mark.parametrize("name", NESTED_TOO_DEEP)
def test_json_nested_hundreds_deep_is_400_with_a_one_line_message(rest, leaves_server_clean, name):
    body, expected = NESTED_TOO_DEEP[name]
    status, headers, answer = rest.request("POST", INFER_PATH, body, {"Content-Type": "application/json"})
    assert status == 400, answer[:300]
    message = check_error_body(headers["content-type"], answer)
    assert expected in message and "\n" not in message, message
    TALLY.record("wire REST deep JSON", str(status))


@pytest.mark.parametrize("index", ["9" * 4301, "%C2%B2", "%D9%A1", "1" * 10, "-1", "1e2", "%201", "500"])
def test_a_sample_index_that_is_not_a_small_ascii_number_is_400(rest, leaves_server_clean, index):
    """int() raised on 4,301 digits and on '²' (str.isdigit() is true of it): both were 500s."""
    status, headers, answer = rest.request("GET", f"/v1/samples/random?index={index}")
    assert status == 400, answer[:300]
    assert "index must be an integer within 0..499" in check_error_body(headers["content-type"], answer)
    status, _, answer = rest.request("GET", "/v1/samples/random?index=0007")
    assert status == 200 and json.loads(answer)["index"] == 7


@pytest.mark.parametrize("length", ["0" * 5000 + "1", "9" * 4301, "\u0661", "1" * 21])
def test_an_inference_header_length_of_thousands_of_digits_is_400(rest, leaves_server_clean, length):
    body, headers = binary_infer_body(mnist_test_images()[:1])
    status, answer_headers, answer = rest.request("POST", INFER_PATH, body, {
        **headers, "Inference-Header-Content-Length": length.encode()})
    assert status == 400, answer[:300]
    assert "must be a byte count" in check_error_body(answer_headers["content-type"], answer)


def test_a_content_length_with_thousands_of_leading_zeros_is_read_as_its_value(rest, leaves_server_clean):
    body = json_infer_body(mnist_test_images()[:1], "zeros")
    status, _, answer = rest.request("POST", INFER_PATH, body, {
        "Content-Type": "application/json", "Content-Length": "0" * 5000 + str(len(body))})
    assert status == 200 and json.loads(answer)["id"] == "zeros", answer[:300]


def huge_shape() -> bytes:
    return json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1] * 100_001,
                                   "data": [0] * FEATURES}]}).encode()


def huge_output_name() -> bytes:
    document = json.loads(json_infer_body(mnist_test_images()[:1]))
    document["outputs"] = [{"name": "x" * 200_000}]
    return json.dumps(document).encode()


@pytest.mark.parametrize("body", [huge_shape, huge_output_name])
def test_an_error_quoting_huge_input_is_cut_to_1024_characters(rest, leaves_server_clean, body):
    """Messages quote the input (the shape, an unknown output's name): a 100,001-dimension shape
    made a 300 KB answer. The message is cut at 1,024 characters, ending with an ellipsis."""
    sent = body()
    status, headers, answer = rest.request("POST", INFER_PATH, sent, {"Content-Type": "application/json"})
    assert status == 400, answer[:300]
    message = check_error_body(headers["content-type"], answer)
    assert len(message) == 1024 and message.endswith("…"), (len(message), message[:100])
    assert len(answer) < 1200 < len(sent) // 100


# what tritonclient.http (none), tritonclient.http.aio (octet-stream, JSON too), the load tester and
# the page (json, octet-stream), `curl -d` (form) and fetch() with a string body (text/plain) send
SENT_BY_CLIENTS = [None, "application/json", "application/json; charset=utf-8", "Application/JSON",
                   "application/octet-stream", "application/x-www-form-urlencoded", "text/plain;charset=UTF-8", ""]
NOT_AN_INFER_REQUEST = ["multipart/form-data; boundary=xyz", "image/png", "text/html", "application/xml",
                        "application/x-protobuf", "application/jsonl", "json"]


@pytest.mark.parametrize("content_type", SENT_BY_CLIENTS + NOT_AN_INFER_REQUEST)
def test_an_infer_body_declared_as_something_else_is_415(server, rest, leaves_server_clean, content_type):
    """Content-Types real clients send are served; a body declared as an image, a form upload or
    XML is 415 with a one-line message, counted like any other refused infer call."""
    body = json_infer_body(mnist_test_images()[:1], "typed")
    counted = 'api="kserve_v2_rest",code="INVALID_ARGUMENT",method="ModelInfer"'
    before = server.metric("digits_requests_total", counted)
    status, headers, answer = rest.request("POST", INFER_PATH, body,
                                           {} if content_type is None else {"Content-Type": content_type})
    if content_type in NOT_AN_INFER_REQUEST:
        assert status == 415, answer[:300]
        message = check_error_body(headers["content-type"], answer)
        assert "application/json" in message and "\n" not in message, message
        assert server.metric("digits_requests_total", counted) == before + 1
    else:
        assert status == 200 and json.loads(answer)["id"] == "typed", answer[:300]


# ----------------------------------------------------------------------------- transport


def padded_binary_body(total: int) -> tuple[bytes, dict[str, str]]:
    """A valid binary request of exactly `total` bytes: as many UINT8 images as fit, the JSON part
    padded with trailing spaces (which JSON allows)."""
    images = (total - 200) // FEATURES
    body, headers = binary_infer_body(mnist_test_images()[:images])
    json_length = int(headers["Inference-Header-Content-Length"])
    padding = total - len(body)
    body = body[:json_length] + b" " * padding + body[json_length:]
    headers["Inference-Header-Content-Length"] = str(json_length + padding)
    assert len(body) == total
    return body, headers


def test_a_body_at_the_limit_is_served_and_one_byte_more_is_413(limited, offline):
    """The limit is exact: --max-receive-message-bytes bytes are served, one more is refused."""
    for total, expected in ((SMALL_LIMIT, 200), (SMALL_LIMIT + 1, 413)):
        body, headers = padded_binary_body(total)
        with RawClient(limited.http_url) as client:
            client.send(request_bytes(body, headers=headers))
            response = client.read_response()
            assert response.status == expected, (total, response.body[:300])
            TALLY.record("wire REST body size", str(response.status))
            if expected == 413:
                check_error_body(response.headers["content-type"], response.body)
                assert client.closed_by_server()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_413_and_the_connection_closes(limited, offline, framing):
    """Refused while it arrives, whether its size is declared up front or only known as chunks
    add up; the server then closes the connection instead of reading the rest."""
    body = json_infer_body(mnist_test_images()[:60])  # about 130 KB of JSON: over the 100 000-byte limit
    assert len(body) > SMALL_LIMIT
    with RawClient(limited.http_url) as client:
        if framing == "content-length":
            client.send(request_bytes(body))
        else:
            head = (f"POST {INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n").encode()
            client.send(head)
            for start in range(0, len(body), 8192):
                chunk = body[start:start + 8192]
                if not client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk)):
                    break  # the server refused and closed: the answer is waiting
            client.send(b"0\r\n\r\n")
        response = client.read_response()
        assert response.status == 413, response
        assert "limit" in check_error_body(response.headers["content-type"], response.body)
        assert response.headers.get("connection") == "close"
        assert client.closed_by_server()
    TALLY.record(f"wire REST over the limit ({framing})", "413")
    valid_answer(limited.http_url, offline, mnist_test_images()[:2])


def test_a_truncated_body_does_no_harm(limited, offline):
    """A request answered, then one whose Content-Length promises more than ever comes before the
    client hangs up: the first is answered, the second costs nothing, the server carries on."""
    images = mnist_test_images()[:2]
    with RawClient(limited.http_url) as client:
        client.send(request_bytes(json_infer_body(images, "first")) +
                    request_bytes(json_infer_body(images)[:100], content_length=5000))
        response = client.read_response()
        assert response.status == 200 and response.json()["id"] == "first"
    for _ in range(3):  # also cut off inside the headers, and right after them
        with RawClient(limited.http_url) as client:
            client.send(request_bytes(b"{}", content_length=9999)[:40])
        with RawClient(limited.http_url) as client:
            client.send(request_bytes(b"", content_length=9999))
    valid_answer(limited.http_url, offline, images)


@pytest.mark.parametrize("stall", ["in the headers", "in the body"])
def test_a_slow_client_gets_408_within_the_read_timeout(limited, stall):
    """A request not fully received within --http-read-timeout is answered 408 and its connection
    closed, so slow or stalled clients cannot hold connections for ever."""
    whole = request_bytes(json_infer_body(mnist_test_images()[:1]))
    cut = whole.index(b"\r\n") + 20 if stall == "in the headers" else whole.index(b"\r\n\r\n") + 50
    with RawClient(limited.http_url, timeout=10) as client:
        client.send(whole[:cut])
        started = time.monotonic()
        response = client.read_response()
        elapsed = time.monotonic() - started
        assert response.status == 408, response
        check_error_body(response.headers["content-type"], response.body)
        assert READ_TIMEOUT - 0.1 <= elapsed <= 3 * READ_TIMEOUT, elapsed
        assert client.closed_by_server()
    TALLY.record("wire REST slow client", "408")


GARBAGE = {
    "TLS ClientHello": bytes.fromhex("160301020001000000fc0303") + bytes(range(32)) + b"\r\n\r\n",
    "binary noise": bytes(range(256)) + b"\r\n\r\n",
    "words": b"HELLO THERE, SERVER\r\n\r\n",
    "header without colon": f"POST {INFER_PATH} HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".encode(),
    "non-numeric Content-Length": f"POST {INFER_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n".encode(),
    "bad chunk size": f"POST {INFER_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
    "bad HTTP version": f"POST {INFER_PATH} HTTP/7.Q\r\nHost: x\r\n\r\n".encode(),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # request smuggling: two framings, or two lengths (RFC 9112 6.3: an unrecoverable error)
    "Content-Length and chunked": f"POST {INFER_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".encode(),
    "two Content-Lengths": f"POST {INFER_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                           "Content-Length: 5\r\n\r\n{}abc".encode(),
}


@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_instead_of_http_is_400_and_closes(limited, offline, name):
    with RawClient(limited.http_url) as client:
        client.send(GARBAGE[name])
        response = client.read_response()
        assert response.status == 400, response
        check_error_body(response.headers["content-type"], response.body)
        assert client.closed_by_server()
    TALLY.record("wire REST garbage", "400")
    valid_answer(limited.http_url, offline, mnist_test_images()[:1])


@pytest.mark.parametrize("shape", ["one huge header", "many large headers", "sent in 1 KiB pieces",
                                   "a request line over 64 KiB"])
def test_headers_over_64_kib_are_431(limited, offline, shape):
    """The request line and headers of one request may take 64 KiB, however they arrive; beyond
    that the server answers 431 (414 for a long request line is as good) and closes."""
    head = f"POST {INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    if shape == "a request line over 64 KiB":
        head = f"POST {INFER_PATH}?x={'a' * 70_000} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    elif shape == "one huge header":
        head += b"X-Big: " + b"a" * 70_000 + b"\r\n"
    else:
        head += b"".join(b"X-Header-%d: %s\r\n" % (i, b"b" * 1000) for i in range(80))
    request = head + b"Content-Length: 2\r\n\r\n{}"
    with RawClient(limited.http_url) as client:
        pieces = [request] if shape != "sent in 1 KiB pieces" else [request[i:i + 1024]
                                                                      for i in range(0, len(request), 1024)]
        for piece in pieces:
            if not client.send(piece):
                break
            if len(pieces) > 1:
                time.sleep(0.002)  # pacing, as a slow client sends: most pieces arrive in reads of their own
        response = client.read_response()
        assert response.status in ((414, 431) if shape.startswith("a request line") else (431,)), response
        check_error_body(response.headers["content-type"], response.body)
        assert client.closed_by_server()
    TALLY.record("wire REST huge headers", "431")
    valid_answer(limited.http_url, offline, mnist_test_images()[:1])


def test_a_hundred_pipelined_requests_come_back_in_request_order(server, offline, leaves_server_clean):
    """Written in one go (more than the server answers concurrently), answered in the order sent:
    each answer carries its request's id, the invalid ones sit where they were sent."""
    images = mnist_test_images()
    sent: list[tuple[str, np.ndarray | None]] = []
    stream = b""
    for i in range(100):
        pixels = images[i:i + 1 + i % 4]
        if i % 10 == 3:  # invalid: its 400 must come back in its place
            body = json.dumps({"id": f"r{i}", "inputs": [{"name": "pixels", "datatype": "FP64",
                                                         "shape": [1, FEATURES], "data": [0] * FEATURES}]}).encode()
            sent.append((f"r{i}", None))
            stream += request_bytes(body)
        elif i % 2:
            document = json.loads(json_infer_body(pixels, f"r{i}"))
            document["parameters"] = {"binary_data_output": True}
            sent.append((f"r{i}", pixels))
            stream += request_bytes(json.dumps(document).encode())
        else:
            sent.append((f"r{i}", pixels))
            stream += request_bytes(json_infer_body(pixels, f"r{i}", ("probabilities", "logits")))
    with RawClient(server.http_url) as client:
        writer = threading.Thread(target=client.send, args=(stream,), daemon=True)
        writer.start()  # write while reading: the server stops reading while answers pile up unread
        responses = [client.read_response() for _ in sent]
        writer.join(TIMEOUT)
    for (request_id, pixels), response in zip(sent, responses):
        if pixels is None:
            assert response.status == 400, (request_id, response)
            check_error_body(response.headers["content-type"], response.body)
            continue
        assert response.status == 200, (request_id, response)
        answer = parse_answer(response.headers["content-type"],
                              response.headers.get("inference-header-content-length"), response.body)
        assert answer.document["id"] == request_id
        np.testing.assert_allclose(answer.arrays["probabilities"], offline(pixels)["probabilities"],
                                   rtol=1e-4, atol=1e-5)
    TALLY.record("wire REST pipelined", "200", sum(r.status == 200 for r in responses))


def kernel_buffer_bytes() -> int:
    """The most a loopback connection's two socket buffers can hold (client send + server receive,
    both autotuned up to these sysctl maxima): what a client can push with nobody reading."""
    send = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2])
    receive = int(open("/proc/sys/net/ipv4/tcp_rmem").read().split()[2])
    return send + receive


def test_a_client_that_never_reads_cannot_grow_server_memory(quiet, offline):
    """Requests pushed without reading a single answer: the server must stop reading them (it
    answers a bounded number of pipelined requests and pauses while answers are unread), so the
    client stalls once the kernel's buffers are full plus a bounded amount, and the worker's memory
    stays within a bound. Without that back-pressure every pushed request's answer (larger than the
    request) would pile up in the worker's memory and the client would never stall."""
    [worker] = quiet.worker_pids()
    pixels = mnist_test_images()[:16]
    body, headers = binary_infer_body(pixels)  # all four outputs as JSON: ~17 KB of answer for 13 KB asked
    one = request_bytes(body, headers=headers)
    warm = Client(quiet.http_url)
    for _ in range(30):
        assert warm.request("POST", INFER_PATH, body, headers)[0] == 200
    warm.close()
    before = rss_mb(worker)
    bound = kernel_buffer_bytes() + 16 * 2**20  # what the server itself may hold: a few MiB
    push_limit = bound + 64 * 2**20
    stream = one * 64
    pushed, stalled = 0, False
    deadline = time.monotonic() + 60
    with socket.create_connection(address(quiet.http_url)) as sock:
        sock.setblocking(False)
        last_progress = time.monotonic()
        while pushed < push_limit and time.monotonic() < deadline:
            _, writable, _ = select.select([], [sock], [], 0.2)
            if not writable:
                stalled = time.monotonic() - last_progress > 2.0
                if stalled:
                    break
                continue
            try:
                pushed += sock.send(stream[pushed % len(stream):])
            except BlockingIOError:
                continue
            last_progress = time.monotonic()
        grown = rss_mb(worker) - before
    TALLY.record("wire REST never-reading client",
                 f"stalled={stalled} after {pushed / 2**20:.1f} MiB, RSS +{grown:.1f} MB")
    assert stalled, f"the server kept reading ({pushed / 2**20:.1f} MiB) though nobody read its answers"
    assert pushed < bound, f"{pushed / 2**20:.1f} MiB accepted before the client stalled"
    assert grown < 48, f"worker RSS grew {grown:.1f} MB for a client that never reads"
    valid_answer(quiet.http_url, offline, mnist_test_images()[:2])


def test_expect_100_continue_is_answered_before_the_body_is_sent(limited, offline):
    """A client that asks first gets `100 Continue` and then its answer; one that announces too
    large a body gets 413 instead of an invitation to send it."""
    images = mnist_test_images()[:2]
    body = json_infer_body(images, "asked-first")
    with RawClient(limited.http_url) as client:
        client.send(request_bytes(b"", headers={"Expect": "100-continue"}, content_length=len(body)))
        interim = client.read_response()
        assert interim.status == 100, interim
        client.send(body)
        response = client.read_response()
        assert response.status == 200, response
        assert response.json()["id"] == "asked-first"
    with RawClient(limited.http_url) as client:
        client.send(request_bytes(b"", headers={"Expect": "100-continue"}, content_length=SMALL_LIMIT + 1))
        response = client.read_response()
        assert response.status == 413, response
        assert client.closed_by_server()
    TALLY.record("wire REST Expect: 100-continue", "100 then 200")


# ----------------------------------------------------------------------------- memory


def mixed_requests() -> list[tuple[str, dict[str, str], bytes, int]]:
    """Valid and invalid requests of many kinds (path, headers, body, the status `judge` says)."""
    images = mnist_test_images()
    floats = (images[:2] / np.float32(255)).astype("<f4")
    binary, binary_headers = binary_infer_body(images[:3], ("logits", "probabilities"))
    requests: list[tuple[str, dict[str, str], bytes]] = [
        (INFER_PATH, {}, json_infer_body(images[:1], "a")),
        (INFER_PATH, {}, json_infer_body(images[:4])),
        (INFER_PATH, binary_headers, binary),
        (f"/v2/models/{MODEL_NAME}/versions/1/infer", {}, json.dumps(
            {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 28, 28],
                         "data": floats.reshape(2, 28, 28).tolist()}],
             "outputs": [{"name": "activation_1", "parameters": {"binary_data": True}}]}).encode()),
        (INFER_PATH, {}, b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 784], "data": [1, 2'),
        (INFER_PATH, {}, b"\xff\xfe not json"),
        (INFER_PATH, {}, b"[1, 2, 3]"),
        (INFER_PATH, {}, json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 784],
                                                 "data": [float("nan")] * FEATURES}]}).encode()),
        (INFER_PATH, {}, json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [2, 784],
                                                 "data": images[:1].ravel().tolist()}]}).encode()),
        (INFER_PATH, {}, json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 784],
                                                 "data": images[:1].ravel().tolist()}]}).encode()),
        (INFER_PATH, {}, json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 784],
                                                 "data": images[:1].ravel().tolist()}],
                                     "outputs": [{"name": "scores"}]}).encode()),
        (INFER_PATH, {"Inference-Header-Content-Length": "x12"}, binary),
        (INFER_PATH, {"Inference-Header-Content-Length": binary_headers["Inference-Header-Content-Length"]},
         binary + b"extra"),
        ("/v2/models/resnet/infer", {}, json_infer_body(images[:1])),
        (f"/v2/models/{MODEL_NAME}/versions/7/infer", {}, json_infer_body(images[:1])),
    ]
    return [(path, headers, body, judge(path, headers.get("Inference-Header-Content-Length", "").encode() or None,
                                        body).status) for path, headers, body in requests]


def test_worker_memory_stays_flat_over_thousands_of_mixed_requests(quiet):
    """2 000 mixed requests after a warm-up of 2 000 like them: the worker's RSS grows by less than
    20 MB, so neither answers nor refusals (nor connections: every 100th request opens a new one) leak."""
    [worker] = quiet.worker_pids()
    requests = mixed_requests()
    assert {status for *_, status in requests} == {200, 400, 404}

    def run(count: int) -> None:
        client = Client(quiet.http_url)
        try:
            for i in range(count):
                path, headers, body, expected = requests[i % len(requests)]
                status, _, answer = client.request("POST", path, body, headers)
                assert status == expected, (path, headers, body[:200], answer[:300])
                if i % 100 == 99:
                    client.close()
        finally:
            client.close()

    run(2000)
    before = rss_mb(worker)
    run(2000)
    grown = rss_mb(worker) - before
    TALLY.record("wire REST 4000 mixed requests", f"RSS {before:.1f} MB +{grown:.1f} MB")
    assert grown < 20, f"worker RSS grew {grown:.1f} MB over 2 000 requests"

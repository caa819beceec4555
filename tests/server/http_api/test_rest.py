"""The Open Inference Protocol over REST, against the real `digits serve`: tritonclient in its own
process, every documented status with its JSON error, metrics under their own `api` label, TLS and
the token, overload, draining, hot reload, --no-http and two workers."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from service.shared.preprocess import preprocess_float32
from tests.support import MODEL_NAME, wait_for
from tests.support.certificates import CertificateAuthority
from tests.support.http import Reply, binary_infer_body, binary_outputs, call, json_outputs
from tests.support.mnist import mnist_test_images, mnist_test_labels
from tests.support.models import SHIPPED_MODEL, add_version, offline_model, permuted_model, shipped_repository
from tests.support.server import HeldServer, RunningServer

INFER = f"/v2/models/{MODEL_NAME}/infer"
ALL = ("probabilities", "logits", "activation_1", "activation_2")
TOKEN = "rest-s3cret"


def infer_json(url: str, pixels: np.ndarray, outputs=("probabilities",), headers=None, context=None) -> Reply:
    datatype = "UINT8" if pixels.dtype == np.uint8 else "FP32"
    body = json.dumps({"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": datatype,
                                   "data": pixels.ravel().tolist()}],
                       "outputs": [{"name": n} for n in outputs]}).encode()
    return call(url, "POST", INFER, body, {"Content-Type": "application/json", **(headers or {})}, context)


def error_of(reply: Reply) -> str:
    assert reply.headers["content-type"] == "application/json", reply
    document = reply.json()
    assert set(document) == {"error"} and isinstance(document["error"], str), document
    return document["error"]


def test_tritonclient_http_in_its_own_process_gets_the_model_s_answers(server, offline, tmp_path):
    images = mnist_test_images()[:5]
    np.save(tmp_path / "images.npy", images)
    address = server.http_url.removeprefix("http://")
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("triton_http_client.py")), address,
                          MODEL_NAME, str(tmp_path / "images.npy")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["metadata"]["name"] == MODEL_NAME and report["metadata"]["inputs"][0]["name"] == "pixels"
    assert "binary_tensor_data" in report["server"]["extensions"]
    expected = offline(images, ALL)
    for key in ("UINT8-binary", "FP32-binary", "UINT8-json", "FP32-json"):
        assert report[key]["id"] == key.replace("-binary", "-True").replace("-json", "-False")
        for name in ALL:
            np.testing.assert_allclose(np.array(report[key][name]), expected[name], atol=1e-6, err_msg=key)
    for algorithm in ("gzip", "deflate"):
        np.testing.assert_allclose(np.array(report[f"compressed-{algorithm}"]), expected["probabilities"], atol=1e-6)
    assert report["unknown_model"]["status"] == "404" or report["unknown_model"]["status"] == 404
    assert "unknown model 'no_such_model'" in report["unknown_model"]["message"]


def test_health_and_metadata(server):
    url = server.http_url
    assert call(url, "GET", "/v2/health/live").status == 200
    assert call(url, "GET", "/v2/health/ready").status == 200
    assert call(url, "GET", "/v2").json()["name"] == "digit-serving"
    for path in (f"/v2/models/{MODEL_NAME}", f"/v2/models/{MODEL_NAME}/versions/1"):
        metadata = call(url, "GET", path).json()
        assert metadata["versions"] == ["1"]
        assert [o["name"] for o in metadata["outputs"]][:1] == ["probabilities"]
        assert {o["name"]: o["shape"] for o in metadata["outputs"]}["activation_1"] == [-1, 16]
    assert call(url, "GET", f"/v2/models/{MODEL_NAME}/ready").json()["ready"] is True


@pytest.mark.parametrize("method, path, body, status, fragment", [
    ("GET", "/v2/models/nope", None, 404, "unknown model 'nope'"),
    ("GET", f"/v2/models/{MODEL_NAME}/versions/7/ready", None, 404, "no loaded version '7'"),
    ("POST", "/v2/models/nope/infer", b"{}", 404, "unknown model 'nope'"),
    ("GET", "/no/such/thing", None, 404, "no such endpoint"),
    ("GET", INFER, None, 405, "takes POST"),
    ("POST", "/v2/health/ready", b"", 405, "takes GET"),
    ("POST", INFER, b"{not json", 400, "not valid JSON"),
    ("POST", INFER, b"[1, 2]", 400, "JSON object"),
    ("POST", INFER, json.dumps({"inputs": [{"name": "pixels", "shape": [1025, 784], "datatype": "UINT8",
                                            "parameters": {"binary_data_size": 0}}]}).encode(), 400,
     "is empty"),
])
def test_errors_are_json_with_the_status_a_client_expects(server, method, path, body, status, fragment):
    reply = call(server.http_url, method, path, body)
    assert reply.status == status, reply
    assert fragment in error_of(reply)


def test_compressed_bodies_are_bounded_and_unknown_encodings_refused(server):
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8",
                                   "data": [0] * 784}]}).encode()
    assert call(server.http_url, "POST", INFER, gzip.compress(body), {"Content-Encoding": "gzip"}).status == 200
    bomb = gzip.compress(b" " * (17 << 20))  # 17 MiB of blanks in ~17 KB: over the 16 MiB limit once inflated
    reply = call(server.http_url, "POST", INFER, bomb, {"Content-Encoding": "gzip"})
    assert reply.status == 413 and "decompresses to more than" in error_of(reply)
    reply = call(server.http_url, "POST", INFER, body, {"Content-Encoding": "br"})
    assert reply.status == 415 and "not supported" in error_of(reply)
    reply = call(server.http_url, "POST", INFER, gzip.compress(body)[:-20], {"Content-Encoding": "gzip"})
    assert reply.status == 400, reply


@pytest.mark.parametrize("method, path, allow", [
    ("GET", INFER, "POST"), ("POST", "/v2/health/ready", "GET, HEAD"), ("PUT", f"/v2/models/{MODEL_NAME}", "GET, HEAD"),
    ("DELETE", "/v2", "GET, HEAD"), ("GET", "/v1/preprocess", "POST"), ("POST", "/v1/weights", "GET, HEAD"),
])
def test_every_405_says_what_is_allowed(server, method, path, allow):
    reply = call(server.http_url, method, path, b"" if method != "GET" else None)
    assert reply.status == 405 and reply.headers["allow"] == allow, reply


@pytest.mark.parametrize("hosts", [[], ["a", "b"]], ids=["none", "two"])
def test_an_http_1_1_request_needs_exactly_one_host(server, hosts):
    port = int(server.http_url.rsplit(":", 1)[1])
    head = "GET /v2/health/live HTTP/1.1\r\n" + "".join(f"Host: {h}\r\n" for h in hosts) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"exactly one Host header" in answer, answer[:300]


def test_head_answers_like_get_without_the_body(server):
    page, head = call(server.http_url, "GET", "/"), call(server.http_url, "HEAD", "/")
    assert head.status == page.status == 200 and head.body == b""
    assert head.headers["content-length"] == page.headers["content-length"] == str(len(page.body))
    assert call(server.http_url, "HEAD", "/v2/health/ready").status == 200


def test_a_batch_beyond_the_limit_is_a_400_naming_it(server):
    reply = infer_json(server.http_url, np.zeros((1025, 784), np.uint8))
    assert reply.status == 400 and "exceeds the server's maximum of 1024" in error_of(reply)


def test_json_and_binary_answers_equal_the_model_and_are_counted_under_their_own_api_label(server, offline):
    def ok_count() -> float:
        return server.metric("digits_requests_total", 'api="kserve_v2_rest",code="OK",method="ModelInfer"')

    def bad_count() -> float:
        return server.metric("digits_requests_total",
                             'api="kserve_v2_rest",code="INVALID_ARGUMENT",method="ModelInfer"')

    before, bad_before = ok_count(), bad_count()
    images = mnist_test_images()[10:13]
    expected = offline(images, ALL)
    got = json_outputs(infer_json(server.http_url, images, ALL))
    body, headers = binary_infer_body(images.astype(np.float32) / np.float32(255), ALL, request_id="r-1")
    reply = call(server.http_url, "POST", INFER, body, headers)
    assert reply.status == 200 and reply.headers["content-type"] == "application/octet-stream"
    binary = binary_outputs(reply)
    for name in ALL:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6)
        np.testing.assert_allclose(binary[name], expected[name], atol=1e-6)
    assert infer_json(server.http_url, np.full((1, 784), 2.0, np.float32)).status == 400
    assert wait_for(lambda: ok_count() == before + 2 and bad_count() == bad_before + 1, timeout=10), \
        (ok_count(), before, bad_count(), bad_before)


def test_page_endpoints_give_the_sample_the_weights_and_the_one_preprocessing(server, model_path, tmp_path):
    url = server.http_url
    sample = call(url, "GET", "/v1/samples/random?index=3").json()
    assert sample["label"] == int(mnist_test_labels()[3])
    assert np.array_equal(np.array(sample["pixels"], np.uint8), mnist_test_images()[3])
    assert 0 <= call(url, "GET", "/v1/samples/random").json()["index"] < 500
    assert call(url, "GET", "/v1/samples/random?index=500").status == 400
    weights = call(url, "GET", "/v1/weights").json()
    graph = onnx.load(str(model_path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    first = next(n for n in graph.node if n.op_type == "Gemm" and n.input[0] == "pixels")
    expected = initializers[first.input[1]]  # [16, 784]: the exporter writes transB=1
    assert weights["shape"] == [16, 28, 28]
    np.testing.assert_allclose(np.array(weights["weights"]).reshape(16, 784), expected, rtol=1e-6)
    np.testing.assert_allclose(weights["biases"], initializers[first.input[2]], rtol=1e-6)
    drawing = np.full((200, 160), 255, np.uint8)
    drawing[30:170, 70:90] = 0  # a dark "1" on white paper
    Image.fromarray(drawing).save(tmp_path / "one.png")
    png = (tmp_path / "one.png").read_bytes()
    reply = call(url, "POST", "/v1/preprocess", png, {"Content-Type": "image/png"})
    np.testing.assert_array_equal(np.array(reply.json()["pixels"], np.float32).reshape(28, 28),
                                  preprocess_float32(png).reshape(28, 28))
    Image.fromarray(np.full((50, 50), 255, np.uint8)).save(tmp_path / "blank.png")
    blank = call(url, "POST", "/v1/preprocess", (tmp_path / "blank.png").read_bytes())
    assert blank.status == 400 and "ink" in error_of(blank)
    assert call(url, "POST", "/v1/preprocess", b"not an image").status == 400


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    return {"ca": ca, "server": ca.issue("server", server=True), "client": ca.issue("client", server=False)}


def test_tls_mutual_tls_and_the_token_apply_to_http(pki, tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    server = RunningServer("--workers", "1", "--tls-cert", str(pki["server"].cert), "--tls-key",
                           str(pki["server"].key), "--tls-client-ca", str(pki["ca"].issued.cert),
                           "--auth-token-file", str(tmp_path / "token"))
    try:
        assert server.http_url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(pki["ca"].issued.cert))
        context.load_cert_chain(str(pki["client"].cert), str(pki["client"].key))
        one = mnist_test_images()[:1]
        assert call(server.http_url, "GET", "/v2/health/ready", context=context).status == 200  # open, like gRPC health
        refused = infer_json(server.http_url, one, context=context)
        assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in error_of(refused)
        wrong = infer_json(server.http_url, one, headers={"Authorization": "Bearer wrong"}, context=context)
        assert wrong.status == 401
        assert infer_json(server.http_url, one, headers={"Authorization": f"Bearer {TOKEN}"},
                          context=context).status == 200
        assert call(server.http_url, "GET", "/v1/weights", context=context).status == 401
        no_client_cert = ssl.create_default_context(cafile=str(pki["ca"].issued.cert))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            call(server.http_url, "GET", "/v2/health/live", context=no_client_cert)
        with pytest.raises((ConnectionError, OSError)):
            call(server.http_url.replace("https", "http"), "GET", "/v2/health/live")
    finally:
        assert server.stop() == 0
    assert TOKEN not in server.log


def test_beyond_the_admission_limit_requests_get_429_with_retry_after():
    """Two requests are held in the queue by the test (not by a clock), so they hold both
    admission slots whatever the machine's load: every request after them gets 429 at once."""
    server = HeldServer("--workers", "1", "--max-concurrent-rpcs", "2")
    try:
        held: list[Reply] = []
        one = mnist_test_images()[:1]
        threads = [threading.Thread(target=lambda: held.append(infer_json(server.http_url, one))) for _ in range(2)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: server.metric("digits_inflight_requests") == 2, timeout=10)
        refused = [infer_json(server.http_url, one) for _ in range(6)]
        assert [r.status for r in refused] == [429] * 6
        assert refused[0].headers["retry-after"] == "1" and "--max-concurrent-rpcs" in error_of(refused[0])
        server.release()
        for thread in threads:
            thread.join(30)
        assert [r.status for r in held] == [200, 200]
        assert server.metric("digits_requests_total", 'api="kserve_v2_rest",code="RESOURCE_EXHAUSTED",method="ModelInfer"') == 6
    finally:
        server.release()
        assert server.stop() == 0


def test_draining_finishes_what_is_in_flight_answers_503_and_flips_ready():
    server = HeldServer("--workers", "1", "--grace-period", "60")
    held: list[Reply] = []
    one = mnist_test_images()[:1]
    try:
        slow = threading.Thread(target=lambda: held.append(infer_json(server.http_url, one)))
        slow.start()
        assert wait_for(lambda: server.metric("digits_inflight_requests") == 1, timeout=10)
        server.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "draining" in server.log, timeout=10)
        ready = call(server.http_url, "GET", "/v2/health/ready")
        refused = infer_json(server.http_url, one)
        assert not held   # still held when the drain refused the others
        server.release()
        slow.join(30)
        assert server.wait_exit(30) == 0
    finally:
        server.release()
        server.stop()
    assert ready.status == 503 and "not ready" in error_of(ready)
    assert refused.status == 503 and refused.headers["connection"] == "close"
    assert "shutting down" in error_of(refused) and refused.headers["retry-after"] == "1"
    assert [r.status for r in held] == [200]


def test_hot_reload_reaches_the_http_front_end(tmp_path):
    """Version 2 answers differently (its output rows are permuted), so the answers prove which
    version computed them, not only the version field."""
    repository = shipped_repository(tmp_path / "models")
    server = RunningServer("--workers", "1", "--model-repository", str(repository), "--model-poll-interval", "0.2")
    try:
        one = mnist_test_images()[:1]
        first = infer_json(server.http_url, one)
        assert first.json()["model_version"] == "1"
        np.testing.assert_allclose(json_outputs(first)["probabilities"], offline_model(SHIPPED_MODEL)(one)["probabilities"],
                                   atol=1e-6)
        permuted = permuted_model()
        add_version(repository, "2", permuted, tmp_path / "staging")
        assert wait_for(lambda: infer_json(server.http_url, one).json()["model_version"] == "2", timeout=20)
        second = json_outputs(infer_json(server.http_url, one))["probabilities"]
        np.testing.assert_allclose(second, offline_model(permuted)(one)["probabilities"], atol=1e-6)
        assert not np.allclose(second, json_outputs(first)["probabilities"], atol=1e-3)
        assert call(server.http_url, "GET", "/v1/weights").json()["model_version"] == "2"
    finally:
        assert server.stop() == 0


def test_no_http_serves_grpc_only():
    server = RunningServer("--workers", "1", "--no-http")
    try:
        assert server.http_url == "off"
        assert "serving grpc=127.0.0.1:" in server.log
    finally:
        assert server.stop() == 0


def test_two_workers_share_the_http_port_and_one_metrics_count(offline):
    server = RunningServer("--workers", "2")
    try:
        images = mnist_test_images()[:1]
        replies = [infer_json(server.http_url, images) for _ in range(40)]  # a connection each: both workers
        assert all(r.status == 200 for r in replies)
        np.testing.assert_allclose(json_outputs(replies[-1])["probabilities"], offline(images)["probabilities"],
                                   atol=1e-6)
        assert wait_for(lambda: server.metric("digits_requests_total",
                                              'api="kserve_v2_rest",code="OK",method="ModelInfer"') == 40)
    finally:
        assert server.stop() == 0
    answered = server.answered_by_worker()   # each worker's own count, logged as it stops
    assert len(answered) == 2 and sum(answered.values()) == 40, answered
    assert all(count > 0 for count in answered.values()), f"one worker answered every request: {answered}"

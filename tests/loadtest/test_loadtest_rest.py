"""`digits loadtest --api kserve_v2_rest` against a real stdlib HTTP server on 127.0.0.1 that stands in
for an Open Inference Protocol REST endpoint (tests/support/http_peer.py): it rejects a request whose
JSON or binary framing is wrong with 400, so a clean run shows the bodies are right, and it counts
what it receives, so every run checks the tester's count of requests sent against the server's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.contract import FEATURES
from service.loadtest.payload import batch_pixels, synthetic_images
from service.loadtest.rest_payload import INFERENCE_HEADER, binary_reply_problem, json_numbers, rest_payload
from tests.loadtest.test_loadtest import SHORT, assert_sane, loadtest, loadtest_refused
from tests.support import closed_port
from tests.support.http_peer import MODEL, HttpPeer
from tests.support.server import RunningServer


@pytest.fixture(scope="module")
def v2_rest():
    with HttpPeer() as server:
        yield server


@pytest.mark.parametrize("binary, dtype, batch, processes, extra", [
    (False, "float32", 1, 1, []),
    (True, "float32", 3, 2, ["--activations"]),
    (True, "uint8", 2, 1, []),
    (False, "uint8", 1, 2, ["--activations"]),
])
def test_closed_loop_rest_counts_match_the_server(v2_rest, tmp_path, binary, dtype, batch, processes, extra):
    before = v2_rest.inferences
    code, doc = loadtest(tmp_path, "--target", v2_rest.url, "--api", "kserve_v2_rest", "--model-name", MODEL,
                         *(["--binary-tensors"] if binary else []), "--dtype", dtype, "--batch-size", str(batch),
                         "--concurrency", "3", "--processes", str(processes), *extra, *SHORT)
    assert code == 0
    (run,) = doc["runs"]
    assert_sane(run, batch)
    assert run["errors"] == {} and run["binary_tensors"] is binary and run["api"] == "kserve_v2_rest"
    assert v2_rest.inferences - before == run["sent_total"]


def test_chunked_replies_are_read_too(tmp_path):
    with HttpPeer(chunked=True) as server:
        code, doc = loadtest(tmp_path, "--target", server.url.removeprefix("http://"), "--api", "kserve_v2_rest",
                             "--binary-tensors", "--model-name", MODEL, "--concurrency", "2", "--processes", "1", *SHORT)
        assert code == 0 and doc["runs"][0]["errors"] == {}
        assert server.inferences == doc["runs"][0]["sent_total"]
        assert server.connections == 2  # one keep-alive connection a slot, for the whole run


def test_open_loop_rest_sends_exactly_the_schedule(v2_rest, tmp_path):
    before = v2_rest.inferences
    code, doc = loadtest(tmp_path, "--target", v2_rest.url, "--api", "kserve_v2_rest", "--binary-tensors",
                         "--model-name", MODEL, "--mode", "open", "--rate", "200", "--processes", "2", *SHORT)
    assert code == 0
    (run,) = doc["runs"]
    assert_sane(run, 1)
    assert abs(run["requests"] - 200 * 0.4) <= 2 and abs(run["sent_total"] - 200 * 0.5) <= 2
    assert v2_rest.inferences - before == run["sent_total"]


def test_http_errors_are_counted_by_status(v2_rest, tmp_path):
    code, doc = loadtest(tmp_path, "--target", v2_rest.url, "--api", "kserve_v2_rest", "--model-name", "no_such_model",
                         "--concurrency", "2", "--processes", "1", *SHORT)
    assert code == 1
    (run,) = doc["runs"]
    assert run["ok"] == 0 and run["errors"] == {"404": run["requests"]} and run["requests"] > 0


def test_binary_replies_whose_sizes_do_not_add_up_are_invalid(tmp_path):
    with HttpPeer(lie_about_sizes=True) as server:
        code, doc = loadtest(tmp_path, "--target", server.url, "--api", "kserve_v2_rest", "--binary-tensors",
                             "--model-name", MODEL, "--concurrency", "1", "--processes", "1", *SHORT)
    assert code == 1
    assert set(doc["runs"][0]["errors"]) == {"CLIENT_INVALID_RESPONSE"}


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_an_unreachable_rest_target_ends_the_command_at_once(capsys, mode):
    """The probe (GET /v2) fails to connect: exit 1 in one line instead of a minute of CLIENT_CONNECT_FAILED."""
    target = f"http://127.0.0.1:{closed_port()}"
    code, err = loadtest_refused(capsys, "--target", target, "--api", "kserve_v2_rest", "--mode", mode,
                                 "--processes", "1", "--warmup", "0", "--duration", "60", "--timeout", "1")
    assert code == 1
    assert err == f"digits loadtest: {target}: GET /v2: cannot connect to {target[7:]}: Connection refused\n"


def test_rest_only_options_are_refused_elsewhere(tmp_path):
    from service.cli import main as digits_main

    assert digits_main(["loadtest", "--api", "kserve_v2", "--binary-tensors"]) == 2
    assert digits_main(["loadtest", "--api", "kserve_v2_rest", "--target", "ftp://127.0.0.1:1"]) == 2


def test_json_and_binary_bodies_carry_the_same_pixels():
    images = synthetic_images(8)
    pixels = batch_pixels(images, 2, 0, "float32")
    as_json = rest_payload(pixels, 2, "float32", False, MODEL, binary=False, request_id="7")
    as_binary = rest_payload(pixels, 2, "float32", False, MODEL, binary=True, request_id="7")
    assert as_json.path == as_binary.path == f"/v2/models/{MODEL}/infer"
    document = json.loads(as_json.body)
    assert document["id"] == "7" and document["inputs"][0]["shape"] == [2, FEATURES]
    sent = np.array(document["inputs"][0]["data"], dtype=np.float32)
    assert np.array_equal(sent, np.frombuffer(pixels, "<f4"))  # the shortest decimals read back exactly
    length = int(as_binary.headers[INFERENCE_HEADER])
    header = json.loads(as_binary.body[:length])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": len(pixels)} and as_binary.body[length:] == pixels
    assert header["outputs"] == [{"name": "probabilities", "parameters": {"binary_data": True}}]
    assert json_numbers(bytes([0, 255, 7]), "uint8") == "[0,255,7]"


def test_binary_reply_checks_read_the_declared_sizes():
    head = json.dumps({"outputs": [{"name": "p", "parameters": {"binary_data_size": 40}}]}).encode()
    headers = {INFERENCE_HEADER.lower(): str(len(head))}
    assert binary_reply_problem(headers, head + bytes(40), 1) is None
    assert "body is" in binary_reply_problem(headers, head + bytes(39), 1)
    assert "asked for 2" in binary_reply_problem(headers, head + bytes(40), 2)
    assert INFERENCE_HEADER in binary_reply_problem({}, head + bytes(40), 1)


def rest_infer_counts(server: RunningServer) -> dict[str, float]:
    """The server's own count of REST ModelInfer calls by code (digits_requests_total, api kserve_v2_rest)."""
    return {sample.labels["code"]: sample.value for sample in server.metrics()["digits_requests"].samples
            if sample.name == "digits_requests_total" and sample.labels.get("api") == "kserve_v2_rest"
            and sample.labels.get("method") == "ModelInfer"}


@pytest.mark.parametrize("binary", [False, True])
def test_rest_load_against_digits_serve_matches_its_metrics(tmp_path, binary):
    """The real `digits serve --http-port 0`: its own count of REST ModelInfer calls answered OK
    (/metrics, api kserve_v2_rest) is the tester's OK count, and nothing else was counted."""
    server = RunningServer("--workers", "1")
    try:
        assert server.http_url.startswith("http://127.0.0.1:"), server.http_url
        before = rest_infer_counts(server)
        code, doc = loadtest(tmp_path, "--target", server.http_url, "--api", "kserve_v2_rest",
                             *(["--binary-tensors"] if binary else []), "--concurrency", "4", "--processes", "1",
                             "--batch-size", "2", "--warmup", "0", "--duration", "0.5", "--timeout", "5")
        assert code == 0
        (run,) = doc["runs"]
        assert_sane(run, 2)
        assert run["errors"] == {} and run["ok"] > 0
        after = rest_infer_counts(server)
        delta = {code: after[code] - before.get(code, 0.0) for code in after if after[code] != before.get(code, 0.0)}
        # no warm-up, so every request sent is a measured one: the server counted each once, as OK
        assert run["sent_total"] == run["ok"]
        assert delta == {"OK": run["ok"]}
    finally:
        assert server.stop() == 0, server.log

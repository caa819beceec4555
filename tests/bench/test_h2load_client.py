"""bench/run.py's h2load client, without servers: the bytes it sends, how it reads h2load, how it checks counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import h2load_client as h2load
from bench import h2load_rest, measure, report
from bench.cases import H2LOAD, PYTHON, SERVICE
from bench.run import parse_args
from service.generated.inference import grpc_predict_v2_pb2 as v2
from service.loadtest.payload import build_requests, synthetic_images
from service.loadtest.rest_payload import build_rest_payloads
from tests.support.http_peer import MODEL, HttpPeer

MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"

SUMMARY = """finished in 3.00s, 7260.00 req/s, 999.59KB/s
requests: 21780 total, 21812 started, 21780 done, 21780 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 21780 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_the_body_is_the_python_testers_first_request_with_the_grpc_prefix(tmp_path):
    payload = h2load.build_payload("kserve_v2", 64, "uint8", False, "mnist_mlp", tmp_path)  # no MNIST there
    first = build_requests(synthetic_images(), 1, 0, api="kserve_v2", batch_size=64, dtype="uint8",
                           activations=False, model_name="mnist_mlp")[0]
    assert payload.message == first.SerializeToString()
    frame = payload.grpc_frame()
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(payload.message) and frame[5:] == payload.message
    assert v2.ModelInferRequest.FromString(frame[5:]).inputs[0].shape == [64, 784]
    assert payload.path == "/inference.GRPCInferenceService/ModelInfer" and payload.float_pixels().shape == (64, 784)


def test_digits_payload_goes_to_classify():
    payload = h2load.build_payload("digits_v1", 1, "float32", True, "mnist_mlp", MNIST)
    assert payload.path == "/digits.v1.DigitClassifier/Classify" and payload.request_id == "0"


@pytest.mark.parametrize("concurrency, most, shape", [(1, 8, (1, 1)), (32, 8, (8, 4)), (32, 4, (4, 8)),
                                                     (8, 8, (8, 1)), (8, 3, (2, 4)), (7, 4, (1, 7))])
def test_connections_times_streams_is_the_concurrency(concurrency, most, shape):
    assert h2load.connection_shape(concurrency, most) == shape


def test_the_command_carries_the_grpc_headers_and_a_millisecond_duration(tmp_path):
    command = h2load.h2load_command("127.0.0.1:1", "/a.B/C", tmp_path / "b", 8, 4, 6.0, tmp_path / "log")
    assert command[:9] == ["h2load", "-c", "8", "-m", "4", "-t", "1", "-D", "6000ms"]
    assert "content-type: application/grpc" in command and "te: trailers" in command
    assert command[-1] == "http://127.0.0.1:1/a.B/C" and f"--log-file={tmp_path / 'log'}" in command


def test_the_summary_is_read_and_a_missing_one_is_an_error():
    summary = h2load.parse_summary(SUMMARY)
    assert summary["started"] == 21812 and summary["done"] == 21780 and summary["2xx"] == 21780
    with pytest.raises(h2load.H2loadError):
        h2load.parse_summary("connect failed")


def test_latency_comes_from_the_http_200_lines_of_the_log(tmp_path):
    log = tmp_path / "log"
    log.write_text("".join(f"1796057295358515\t200\t{us}\n" for us in range(1000, 101000, 1000))
                   + "1796057295358515\t503\t999999\n")
    figures = h2load.latency_ms(log)
    assert figures["p50"] == 50.0 and figures["p99"] == 99.0 and figures["max"] == 100.0
    log.write_text("")
    assert h2load.latency_ms(log)["p50"] is None


def _run(*runs: tuple[int, int, int]) -> dict:
    return {"h2load_runs": [{"started": s, "done": d, "2xx": ok} for s, d, ok in runs]}


def test_the_service_count_matches_when_only_calls_left_in_flight_are_not_ok():
    run = _run((1032, 1000, 1000), (5032, 5000, 5000))  # warm-up and measured, 32 in flight at each end
    before, after = {"OK": 10.0}, {"OK": 10.0 + 6001 + 40, "CANCELLED": 20.0, "INVALID_ARGUMENT": 4.0}
    accounting = measure.service_accounting(run, before, after)
    assert accounting["match"] and accounting["other_codes"] == {"CANCELLED": 20, "INVALID_ARGUMENT": 4}


def test_a_call_h2load_started_but_never_sent_is_no_mismatch():
    accounting = measure.service_accounting(_run((5032, 5000, 5000)), {}, {"OK": 5001.0 + 20, "CANCELLED": 10.0})
    assert accounting["match"] and accounting["never_received"] == 2


def test_a_grpc_error_hidden_in_an_http_200_is_a_mismatch():
    run = _run((5032, 5000, 5000))
    accounting = measure.service_accounting(run, {}, {"OK": 4901.0, "RESOURCE_EXHAUSTED": 132.0})
    assert not accounting["match"] and not accounting["ok_covers_2xx"]
    assert not measure.service_accounting(run, {}, {"OK": 5040.0})["none_beyond_started"]


def test_the_floor_count_lies_between_its_http_200s_and_the_calls_started():
    run = _run((5032, 5000, 5000))
    assert measure.floor_accounting(run, [2500, 2510])["match"]
    assert not measure.floor_accounting(run, [2500, 2400])["match"]


def test_quick_stays_on_python_and_h2load_is_the_default_when_installed(monkeypatch):
    monkeypatch.setattr(h2load, "available", lambda: True)
    assert parse_args([]).client == H2LOAD
    assert parse_args(["--quick"]).client == PYTHON
    assert parse_args([]).h2load_connections == 8
    monkeypatch.setattr(h2load, "available", lambda: False)
    assert parse_args([]).client == PYTHON
    with pytest.raises(SystemExit):
        parse_args(["--client", "h2load"])


def test_a_bar_between_rows_of_different_clients_is_skipped():
    bar = report.Bar("stream", "rps", "1x32_stream", SERVICE, "1x32_v1", SERVICE, ">=", 1.5)
    results = {"1x32_stream": {SERVICE: {"rps": 300.0, "client_kind": PYTHON}},
               "1x32_v1": {SERVICE: {"rps": 100.0, "client_kind": H2LOAD}}}
    check = report.check_bar(bar, results)
    assert check["pass"] is None and "--client python" in check["skip"] and check["value"] == 3.0


# ---------------------------------------------------------------------------------------------
# REST cases: h2load --h1 against a real stdlib HTTP server standing in for a V2 REST endpoint


def test_the_rest_body_is_the_python_testers_first_rest_request(tmp_path):
    payload = h2load_rest.build_rest_payload(1, "float32", True, True, "mnist_mlp", tmp_path)  # no MNIST there
    first = build_rest_payloads(synthetic_images(), 1, 0, batch_size=1, dtype="float32", activations=True,
                                model_name="mnist_mlp", binary=True)[0]
    assert payload.body() == first.body and payload.path == first.path == "/v2/models/mnist_mlp/infer"
    assert payload.headers == tuple(f"{name}: {value}" for name, value in first.headers.items())
    assert payload.headers[0].startswith("Inference-Header-Content-Length: ") and payload.h1
    assert payload.float_pixels().shape == (1, 784)


def test_the_rest_command_is_http_1_1_with_the_payloads_headers(tmp_path):
    payload = h2load_rest.build_rest_payload(1, "float32", False, False, "mnist_mlp", MNIST)
    command = h2load.h2load_command("127.0.0.1:1", payload.path, tmp_path / "b", 32, 1, 2.0, None,
                                    payload.headers, payload.h1)
    assert command[:8] == ["h2load", "--h1", "-c", "32", "-m", "1", "-t", "1"]
    assert "Content-Type: application/json" in command and "te: trailers" not in command
    assert command[-1] == "http://127.0.0.1:1/v2/models/mnist_mlp/infer"


@pytest.mark.skipif(not h2load.available(), reason="no h2load on PATH (apt-get install nghttp2-client)")
@pytest.mark.parametrize("binary", [False, True])
def test_h2load_drives_a_real_http_1_1_server_and_every_request_is_counted(tmp_path, binary):
    payload = h2load_rest.build_rest_payload(2, "float32", False, binary, MODEL, MNIST)
    body = tmp_path / "body"
    body.write_bytes(payload.body())
    with HttpPeer() as server:
        run = h2load.run_h2load(server.url.removeprefix("http://"), payload, body, 2, 1, 0.3, tmp_path / "log")
        assert server.connections == 2  # --h1 -c 2: two keep-alive connections for the whole run
    assert run["ok"] > 0 and run["errors"] == {} and run["latency_ms"]["p50"] > 0
    # every reply a 200 (a badly framed body would be a 400); the server saw at least those and at
    # most what h2load started (the calls it left in flight at its end may or may not have arrived)
    assert run["ok"] <= server.inferences <= run["h2load"]["started"]


def test_the_rest_probe_checks_the_reply_against_the_model(tmp_path):
    payload = h2load_rest.build_rest_payload(1, "float32", False, True, MODEL, MNIST)
    with HttpPeer() as server:  # answers 0.1 for every class
        assert h2load_rest.probe(server.url, payload, None) == []
        assert h2load_rest.probe(server.url, payload, np.full((1, 10), 0.1, np.float32)) == []
        wrong = h2load_rest.probe(server.url, payload, np.eye(1, 10, dtype=np.float32))
        assert len(wrong) == 1 and "probabilities differ" in wrong[0]
        other_model = h2load_rest.build_rest_payload(1, "float32", False, True, "no_such_model", MNIST)
        assert h2load_rest.probe(server.url, other_model, None)[0].startswith("HTTP 404")
    with HttpPeer(lie_about_sizes=True) as server:
        assert "body is" in h2load_rest.probe(server.url, payload, None)[0]

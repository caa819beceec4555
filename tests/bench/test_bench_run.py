"""The benchmark's own logic, without servers: the peers' order per round, what Triton can run, the bars."""

from __future__ import annotations

import sys

import pytest

from bench.cases import CASES, FLOOR, SERVICE, TRITON
from bench.measure import rotated
from bench.peers import SERVING, Peer, Server
from bench.report import BARS, Bar, check_bar

BY_KEY = {case.key: case for case in CASES}


def test_every_peer_goes_first_in_turn():
    peers = [Peer(FLOOR, "a", 1), Peer(SERVICE, "b", 2), Peer(TRITON, "c", 3)]
    firsts = [rotated(peers, index)[0].name for index in range(4)]
    assert firsts == [FLOOR, SERVICE, TRITON, FLOOR]
    assert all(sorted(p.name for p in rotated(peers, index)) == sorted(p.name for p in peers) for index in range(3))


def test_triton_runs_only_v2_float32_cases():
    triton = Peer(TRITON, "t", 3, v2_float32_only=True)
    runnable = [case.key for case in CASES if triton.not_applicable(case) is None]
    assert runnable == ["1x1", "1x32", "64x8_f32", "1x1_act"]
    assert triton.not_applicable(BY_KEY["1x32_v1"]) == "n/a: V2 only"
    assert Peer(SERVICE, "s", 2).not_applicable(BY_KEY["1x32_stream"]) is None
    with_http = Peer(TRITON, "t", 3, v2_float32_only=True, http_url="http://127.0.0.1:1")
    assert [case.key for case in CASES if with_http.not_applicable(case) is None] == [
        "1x1", "1x32", "64x8_f32", "1x1_act", "1x32_rest_bin", "1x32_rest_json", "1x1_rest_bin"]


def test_rest_cases_need_a_peer_with_http():
    rest = [case for case in CASES if case.rest]
    assert [case.key for case in rest] == ["1x32_rest_bin", "1x32_rest_json", "1x1_rest_bin"]
    assert [case.binary for case in rest] == [True, False, True]
    for peer in (Peer(FLOOR, "f", 1), Peer(SERVICE, "s", 2)):
        assert all(peer.not_applicable(case) == "n/a: no HTTP" for case in rest)
    assert all(Peer(SERVICE, "s", 2, http_url="http://127.0.0.1:1").not_applicable(case) is None for case in CASES)


@pytest.mark.parametrize("line, http", [
    ("serving grpc=127.0.0.1:1 http=http://127.0.0.1:2 metrics=http://127.0.0.1:3/metrics workers=2",
     "http://127.0.0.1:2"),
    ("serving grpc=127.0.0.1:1 http=off metrics=http://127.0.0.1:3/metrics workers=2", ""),
])
def test_the_service_start_up_line_is_read_with_http_on_or_off(line, http):
    server = Server("echo", [sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr)"], SERVING, "stderr")
    server.wait_ready(30)
    assert (server.address, server.http_url, server.metrics_url) == ("127.0.0.1:1", http, "http://127.0.0.1:3/metrics")
    assert server.process.wait(30) == 0


def test_the_rest_bar_says_why_our_row_is_missing():
    bar = next(bar for bar in BARS if bar.case == "1x32_rest_bin")
    assert (bar.peer, bar.base_peer, bar.op, bar.limit) == (SERVICE, TRITON, ">=", 1.0)
    results = {"1x32_rest_bin": {TRITON: {"rps": 100.0, "client_kind": "h2load"}}}
    check = check_bar(bar, results, {"1x32_rest_bin": {SERVICE: "n/a: no HTTP", FLOOR: "n/a: no HTTP"}})
    assert check["pass"] is None and check["skip"] == "service n/a: no HTTP in 1x32_rest_bin"
    results["1x32_rest_bin"][SERVICE] = {"rps": 99.0, "client_kind": "h2load"}
    assert check_bar(bar, results)["pass"] is False


@pytest.mark.parametrize("service, triton, verdict", [(300.0, 200.0, True), (200.0, 200.0, False)])
def test_a_ratio_bar_passes_fails_and_shows_its_figures(service, triton, verdict):
    bar = Bar("req/s", "rps", "1x32", SERVICE, "1x32", TRITON, ">=", 1.5)
    check = check_bar(bar, {"1x32": {SERVICE: {"rps": service}, TRITON: {"rps": triton}}})
    assert check["pass"] is verdict and check["value"] == pytest.approx(service / triton)
    assert "service" in check["shown"] and "triton" in check["shown"]


def test_a_bar_without_its_peer_or_case_is_skipped():
    bar = Bar("p50", "p50_ms", "1x1", SERVICE, "1x1", TRITON, "<=", 0.75)
    check = check_bar(bar, {"1x1": {SERVICE: {"p50_ms": 1.0}, FLOOR: {"p50_ms": 1.0}}})
    assert check["pass"] is None and "triton not in this run" in check["skip"]
    assert check_bar(bar, {})["skip"] == "1x1 not run"

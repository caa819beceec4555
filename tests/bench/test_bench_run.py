"""The benchmark's own logic, without servers: the peers' order per round, what Triton can run, the bars."""

from __future__ import annotations

import pytest

from bench.cases import CASES, FLOOR, SERVICE, TRITON
from bench.measure import rotated
from bench.peers import Peer
from bench.report import Bar, check_bar

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

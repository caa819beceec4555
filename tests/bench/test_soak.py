"""The soak (bench/soak.py), bounded: a real 2-worker `digits serve` under 5 windows of closed-loop load.

The short run uses the soak's own code (server start, windows of `run_load`, /proc sampling,
the verdict) and then checks the raw samples itself against the tolerances stated here, so a
bug in the soak's verdict cannot hide growth. About 35 s of wall time; no assertion depends on
how fast anything is, so a loaded machine only makes the windows serve fewer requests.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import soak
from service.loadtest.config import LoadConfig
from tests.support import MNIST_DIR

# The tolerances this test holds the server to (the soak's defaults), per server process, from the
# end of the first (warm-up) window to the end of the last:
RSS_GROWTH_FRACTION = 0.10   # RSS may grow by 10 % ...
RSS_GROWTH_MB = 5.0          # ... or by 5 MB, whichever is larger
FD_GROWTH = 2                # open file descriptors may grow by at most 2
WORKERS = 2
WINDOWS, WINDOW_S, WINDOW_WARMUP_S = 5, 5.0, 0.5

TOLERANCE = soak.Tolerance(rss_fraction=RSS_GROWTH_FRACTION, rss_mb=RSS_GROWTH_MB, fds=FD_GROWTH)


@pytest.fixture(scope="module")
def short_soak() -> dict:
    lines: list[str] = []
    load = LoadConfig(api="kserve_v2", mode="closed", concurrency=8, processes=2, channels=2, timeout_s=10.0,
                      mnist_dir=str(MNIST_DIR))
    plan = soak.SoakPlan(interval_s=WINDOW_S, windows=WINDOWS, warmup_s=WINDOW_WARMUP_S)
    report = soak.soak_started_server(load, plan, TOLERANCE, WORKERS, emit=lines.append)
    report["lines"] = lines
    return report


@pytest.mark.timeout(120)
def test_short_soak_has_no_growth_no_errors_and_serves_every_window(short_soak):
    report, context = short_soak, "\n".join(short_soak["lines"])
    windows = report["windows"]
    assert len(windows) == WINDOWS, context
    assert report["server_exit_code"] == 0, "".join(report["server_log_tail"])
    for window in windows:
        assert window["errors"] == {}, context
        assert window["ok"] > 0 and window["requests"] == window["ok"], context
    # the same processes throughout: one supervisor and its workers, none died or was replaced
    pids = [sorted((p["role"], p["pid"]) for p in window["processes"]) for window in windows]
    assert all(sample == pids[0] for sample in pids), context
    assert [role for role, _ in pids[0]] == ["supervisor"] + ["worker"] * WORKERS, context
    # growth, recomputed here from the raw samples rather than taken from the soak's verdict
    start = {p["pid"]: p for p in windows[0]["processes"]}
    for process in windows[-1]["processes"]:
        first = start[process["pid"]]
        allowed_mb = max(first["rss_mb"] * RSS_GROWTH_FRACTION, RSS_GROWTH_MB)
        assert process["rss_mb"] - first["rss_mb"] <= allowed_mb, context
        assert process["fds"] - first["fds"] <= FD_GROWTH, context
    # every request the load tester sent reached this server and was counted there
    assert report["accounting"]["clients_sent"] == report["accounting"]["server_counted"], report["accounting"]
    assert report["verdict"]["pass"], "\n".join(soak.summary_lines(report))


def test_short_soak_prints_one_line_per_window_and_a_summary(short_soak):
    window_lines = [line for line in short_soak["lines"] if line.startswith("[")]
    assert len(window_lines) == WINDOWS
    for line in window_lines:
        for field in ("req/s", "p50", "p99", "p99.9", "errors none", "sup[", "wor[", "MB/", "fd"):
            assert field in line, line
    summary = "\n".join(soak.summary_lines(short_soak))
    assert summary.count("PASS") >= 2 * (1 + WORKERS) and summary.endswith("PASS"), summary


def _window(number: int, processes: list[tuple[int, str, float, int]], errors: dict | None = None,
            ok: int = 100) -> dict:
    return {"window": number, "elapsed_s": float(number), "rps": 1.0, "requests": ok + sum((errors or {}).values()),
            "ok": ok, "errors": errors or {}, "sent_total": ok,
            "latency_ms": {"p50": 1.0, "p99": 2.0, "p99.9": 3.0},
            "processes": [{"pid": pid, "role": role, "rss_mb": rss, "fds": fds} for pid, role, rss, fds in processes]}


def test_verdict_fails_rss_growth_beyond_the_larger_of_the_two_limits():
    # 100 MB worker: limit 10 MB; 40 MB supervisor: limit 5 MB (the floor)
    start = [(1, "supervisor", 40.0, 10), (2, "worker", 100.0, 30)]
    within = soak.judge([_window(1, start), _window(2, [(1, "supervisor", 44.9, 10), (2, "worker", 109.9, 30)])],
                        TOLERANCE)
    assert within["pass"], within
    beyond = soak.judge([_window(1, start), _window(2, [(1, "supervisor", 45.1, 10), (2, "worker", 110.1, 30)])],
                        TOLERANCE)
    assert not beyond["pass"]
    assert [p["rss_ok"] for p in beyond["processes"]] == [False, False]


def test_verdict_fails_fd_growth_errors_idle_windows_and_replaced_workers():
    start = [(1, "supervisor", 40.0, 10), (2, "worker", 80.0, 30)]
    fds = soak.judge([_window(1, start), _window(2, [(1, "supervisor", 40.0, 10), (2, "worker", 80.0, 33)])],
                     TOLERANCE)
    assert not fds["pass"] and not fds["processes"][1]["fds_ok"]
    errors = soak.judge([_window(1, start), _window(2, start, errors={"UNAVAILABLE": 1})], TOLERANCE)
    assert not errors["pass"] and not errors["checks"]["no errors"]
    idle = soak.judge([_window(1, start), _window(2, start, ok=0)], TOLERANCE)
    assert not idle["pass"] and not idle["checks"]["every window served requests"]
    replaced = soak.judge([_window(1, start), _window(2, [(1, "supervisor", 40.0, 10), (3, "worker", 80.0, 30)])],
                          TOLERANCE)
    assert not replaced["pass"]
    assert {p.get("problem") for p in replaced["processes"]} >= {"gone before the end", "appeared after the warm-up"}


@pytest.mark.parametrize("target", ["10.0.0.1:8001", "192.168.1.2:8001", "8.8.8.8:53", "example.com:8001",
                                    "127.0.0.1", "[2001:db8::1]:8001"])
def test_only_loopback_targets_are_accepted(target):
    with pytest.raises(ValueError):
        soak.loopback_target(target)


@pytest.mark.parametrize("target", ["127.0.0.1:8001", "127.1.2.3:9", "localhost:8001", "[::1]:8001"])
def test_loopback_targets_pass(target):
    assert soak.loopback_target(target) == target


def test_a_process_and_its_children_are_read_from_proc():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in soak.child_pids(os.getpid())
        processes = {p["pid"]: p for p in soak.sample_server(os.getpid())}
        assert processes[os.getpid()]["role"] == "supervisor" and processes[child.pid]["role"] == "worker"
        assert all(p["rss_mb"] > 0 and p["fds"] >= 3 for p in processes.values())
    finally:
        child.kill()
        child.wait()
    assert soak.read_process(child.pid) is None  # gone processes are not sampled

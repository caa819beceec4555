"""`bench/run.py --quick`, as CI runs it, in a child process on a short budget: every stage runs and
reports, the servers it starts exit cleanly, and the service counted every request the load tester
sent. No figure is judged (the bars' PASS/FAIL is the benchmark's business, not a test's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO

CASES = ("1x1", "1x32_v1")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    report = tmp_path_factory.mktemp("bench") / "quick.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", ",".join(CASES), "--warmup", "0.1",
         "--duration", "0.3", "--memory-requests", "300", "--workers", "1", "--processes", "1",
         "--channels", "1", "--json", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(report.read_text())


def test_quick_benchmark_runs_every_stage_and_reports(quick_run):
    out, report = quick_run
    for text in ("(a) onnxruntime in-process", "(b) no-op floor at 127.0.0.1:", "digits serve at 127.0.0.1:",
                 "Results (medians;", "1 × 1 V2 float32", "1 × 32 digits.v1 unary", "RSS per service worker:",
                 "Bars (issue #11;", "service exit code 0, floor exit code 0", "JSON written to"):
        assert text in out, text
    assert report["settings"]["quick"] is True
    assert all(rate > 0 for rate in report["onnxruntime"].values()) and len(report["onnxruntime"]) == 2
    assert set(report["cases"]) == set(CASES)
    for key in CASES:
        for who in ("floor", "service"):
            row = report["cases"][key][who]
            assert row["rps"] > 0 and row["p50_ms"] > 0 and row["errors"] == {}, (key, who, row)
    assert report["exit_codes"] == {"service": 0, "floor": 0}
    verdicts = {check["bar"]: check["pass"] for check in report["bars"]}
    assert set(verdicts.values()) <= {True, False, None} and len(verdicts) == 9
    assert out.count("  [PASS] ") + out.count("  [FAIL] ") + out.count("  [SKIP] ") == len(verdicts)


def test_quick_benchmark_accounts_for_every_request(quick_run):
    out, report = quick_run
    memory = report["memory"]
    assert memory["requests"] == memory["ok"] == 300 and memory["errors"] == {}
    assert len(memory["workers"]) == 1 and memory["workers"][0]["rss_after_mb"] > 0
    accounting = report["request_accounting"]
    sent = sum(run["sent_total"] for runs in report["raw"].values() for run in runs["service"]) + memory["sent_total"]
    assert accounting["clients_sent"] == sent
    assert accounting["service_digits_requests_total"] == sent  # the service's /metrics agrees
    assert f"requests sent to the service by the clients (load tester, h2load, probes): {sent:,}; counted" in out

"""`digits loadtest` against the real `digits serve` (the session's `server`): V2 streaming counted by the
server's own /metrics."""

from __future__ import annotations

import pytest

from tests.loadtest.test_loadtest import assert_sane, loadtest

QUICK = ["--processes", "1", "--warmup", "0", "--duration", "0.5", "--timeout", "5"]


def ok_count(server, method: str, api: str = "kserve_v2") -> float:
    """The server's count of `method` calls (stream messages) answered OK, from /metrics."""
    return sum(sample.value for sample in server.metrics()["digits_requests"].samples
               if sample.name == "digits_requests_total" and sample.labels.get("api") == api
               and sample.labels.get("method") == method and sample.labels.get("code") == "OK")


@pytest.mark.parametrize("mode", [["--concurrency", "8"], ["--mode", "open", "--rate", "200"]])
def test_v2_stream_messages_are_counted_by_the_server(server, tmp_path, mode):
    """--stream --api kserve_v2 drives ModelStreamInfer: every message the tester counts OK is one the
    server counted OK, and no ModelInfer call was made."""
    streamed, unary = ok_count(server, "ModelStreamInfer"), ok_count(server, "ModelInfer")
    code, doc = loadtest(tmp_path, "--target", server.address, "--api", "kserve_v2", "--stream", "--batch-size", "2",
                         *mode, *QUICK)
    assert code == 0
    (run,) = doc["runs"]
    assert_sane(run, 2)
    assert run["errors"] == {} and run["stream"] is True
    assert run["sent_total"] == run["ok"]  # no warm-up: every message sent was measured
    assert ok_count(server, "ModelStreamInfer") - streamed == run["ok"]
    assert ok_count(server, "ModelInfer") == unary


def test_v2_stream_errors_are_counted_per_message(server, tmp_path):
    code, doc = loadtest(tmp_path, "--target", server.address, "--api", "kserve_v2", "--stream",
                         "--model-name", "no_such_model", "--concurrency", "2", *QUICK)
    assert code == 1
    (run,) = doc["runs"]
    assert run["ok"] == 0 and run["requests"] > 0 and run["errors"] == {"ERROR_MESSAGE": run["requests"]}

"""`digits loadtest` against the real `digits serve` (the session's `server`): V2 streaming counted by the
server's own /metrics, the REST target from $DIGITS_HTTP_TARGET, and Ctrl-C in the middle of a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import build_parser
from tests.loadtest.test_loadtest import assert_sane, loadtest
from tests.support import MNIST_DIR, REPO, wait_for

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


def test_rest_target_from_digits_http_target(server, tmp_path, monkeypatch):
    """$DIGITS_TARGET is the gRPC port, $DIGITS_HTTP_TARGET the REST one: --api kserve_v2_rest takes the latter."""
    monkeypatch.setenv("DIGITS_TARGET", server.address)
    for http_target in (server.http_url, server.http_url.removeprefix("http://")):
        monkeypatch.setenv("DIGITS_HTTP_TARGET", http_target)
        code, doc = loadtest(tmp_path, "--api", "kserve_v2_rest", "--concurrency", "2", *QUICK)
        assert code == 0
        (run,) = doc["runs"]
        assert run["target"] == http_target and run["ok"] > 0 and run["errors"] == {}
    code, doc = loadtest(tmp_path, "--concurrency", "2", *QUICK)  # gRPC still goes to $DIGITS_TARGET
    assert code == 0 and doc["runs"][0]["target"] == server.address and doc["runs"][0]["ok"] > 0


@pytest.mark.parametrize("api, method, whole_group", [("kserve_v2", "ModelInfer", True),
                                                      ("kserve_v2_rest", "ModelInfer", False),
                                                      ("digits_v1", "ClassifyStream", True)])
def test_ctrl_c_prints_the_partial_summary_and_exits_130(server, tmp_path, api, method, whole_group):
    """SIGINT once the server has answered measured requests, to the command alone (`kill -INT`) or to
    its whole process group as a terminal's Ctrl-C does (the command runs in a session of its own, so
    that group is the command and nothing else): the same table, marked partial, and exit 130."""
    metrics_api = "kserve_v2_rest" if api == "kserve_v2_rest" else api
    before = ok_count(server, method, metrics_api)
    report = tmp_path / "partial.json"
    target = server.http_url if api == "kserve_v2_rest" else server.address
    stream = ["--stream"] if api == "digits_v1" else []
    command = [sys.executable, "-m", "service.cli", "loadtest", "--target", target, "--api", api, *stream,
               "--concurrency", "4", "--processes", "2", "--warmup", "0", "--duration", "600",
               "--data-dir", str(MNIST_DIR), "--json", str(report)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        measuring = wait_for(lambda: ok_count(server, method, metrics_api) - before >= 50, timeout=60, interval=0.1)
        if whole_group:
            os.killpg(process.pid, signal.SIGINT)  # its own session: the group is this command's alone
        else:
            process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert measuring, err
    assert process.returncode == 130, err
    assert "Traceback" not in err and err == "digits loadtest: interrupted\n"
    assert "    partial: interrupted after " in out and "JSON written to" in out
    (run,) = json.loads(report.read_text())["runs"]
    assert run["partial"] is True and run["processes"] == 2
    assert 0 < run["ok"] <= ok_count(server, method, metrics_api) - before  # the server answered at least those
    assert run["errors"] == {} and run["duration_s"] < 600
    assert f"{run['ok']:,}" in out.splitlines()[3]  # the table row under the header and its rule


def test_loadtest_help_names_rest_and_the_new_options(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loadtest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("REST", "kserve_v2_rest", "--tls-ca", "--tls-cert", "--tls-key", "--token-file",
                     "DIGITS_HTTP_TARGET", "--data-dir", "ModelStreamInfer"):
        assert fragment in text, fragment
    assert "--mnist-dir" not in text
    assert build_parser().parse_args(["loadtest", "--mnist-dir", "x"]).data_dir == Path("x")

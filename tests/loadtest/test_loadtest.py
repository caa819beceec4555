"""`digits loadtest` against the real no-op gRPC server (bench/noop_server.py) on 127.0.0.1.

The no-op server counts what it receives, so every run checks that the load tester's count of
requests sent (warm-up included) equals the server's. No assertion depends on how fast anything is.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from service.cli import main as digits_main
from service.generated.digits.v1 import digits_pb2, digits_pb2_grpc
from service.loadtest.config import LoadConfig
from service.loadtest.histogram import LatencyHistogram
from service.loadtest.runner import run_load, split_plans
from service.loadtest.tally import clock
from tests.support import MNIST_DIR, REPO, closed_port
from tests.support.server import HeldServer
WARMUP_S, DURATION_S = 0.1, 0.4
SHORT = ["--warmup", str(WARMUP_S), "--duration", str(DURATION_S), "--timeout", "5"]


class NoopServer:
    """bench/noop_server.py in a subprocess; counts come from its GetModelInfo metadata."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "noop_server.py"), "--port", "0", "--workers", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.process.kill()
            raise RuntimeError(f"noop server did not start: {line!r} {self.process.stderr.read()}")
        self.address = line.split()[1]
        self._channel = grpc.insecure_channel(self.address)
        self._stub = digits_pb2_grpc.DigitClassifierStub(self._channel)

    def counts(self) -> dict[str, int]:
        metadata = self._stub.GetModelInfo(digits_pb2.GetModelInfoRequest(), timeout=5).metadata
        return {key.removeprefix("requests."): int(value) for key, value in metadata.items()
                if key.startswith("requests.")}

    def stop(self) -> dict:
        self._channel.close()
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=10)
        assert self.process.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def noop():
    server = NoopServer()
    yield server
    server.stop()


def loadtest(tmp_path: Path, *args: str) -> tuple[int, dict]:
    """Runs `digits loadtest ... --json` in-process (its client processes are spawned) and reads the JSON."""
    report = tmp_path / "report.json"
    code = digits_main(["loadtest", "--data-dir", str(MNIST_DIR), *args, "--json", str(report)])
    return code, json.loads(report.read_text())


def loadtest_refused(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Runs `digits loadtest` in-process for a run that must not start; its exit code and stderr."""
    code = digits_main(["loadtest", "--data-dir", str(MNIST_DIR), *args])
    return code, capsys.readouterr().err


def assert_sane(run: dict, batch_size: int) -> None:
    assert run["ok"] > 0 and run["requests"] == run["ok"] + run["failed"]
    assert run["failed"] == sum(run["errors"].values())
    assert run["rps"] > 0 and run["images_per_s"] == pytest.approx(run["rps"] * batch_size)
    latency = run["latency_ms"]
    ordered = [latency[name] for name in ("p50", "p90", "p99", "p99.9", "max")]
    assert all(value > 0 for value in ordered) and ordered == sorted(ordered)
    assert run["sent_total"] >= run["requests"]


@pytest.mark.parametrize("api, dtype, batch, processes, extra", [
    ("kserve_v2", "uint8", 4, 2, ["--activations"]),
    ("digits_v1", "float32", 3, 1, []),
    ("kserve_v2", "float32", 1, 1, ["--lb-policy", "round_robin", "--channels", "2"]),
])
def test_closed_loop_unary_counts_match_the_server(noop, tmp_path, api, dtype, batch, processes, extra):
    counter = "kserve_v2.ModelInfer" if api == "kserve_v2" else "digits_v1.Classify"
    before = noop.counts()[counter]
    target = f"dns:///{noop.address}" if "round_robin" in extra else noop.address
    code, doc = loadtest(tmp_path, "--target", target, "--api", api, "--dtype", dtype,
                         "--batch-size", str(batch), "--concurrency", "3", "--processes", str(processes), *extra, *SHORT)
    assert code == 0
    (run,) = doc["runs"]
    assert_sane(run, batch)
    assert run["errors"] == {} and run["processes"] == processes and run["concurrency"] == 3
    assert noop.counts()[counter] - before == run["sent_total"]
    assert doc["config"]["dtype"] == dtype and doc["config"]["batch_size"] == batch


def test_closed_loop_stream_many_in_flight_on_one_stream(noop, tmp_path):
    before = noop.counts()["digits_v1.ClassifyStream"]
    code, doc = loadtest(tmp_path, "--target", noop.address, "--api", "digits_v1", "--stream",
                         "--concurrency", "16", "--processes", "1", *SHORT)
    assert code == 0
    (run,) = doc["runs"]
    assert_sane(run, 1)
    assert run["errors"] == {} and run["stream"] is True
    assert noop.counts()["digits_v1.ClassifyStream"] - before == run["sent_total"]


@pytest.mark.parametrize("api, stream, processes", [("kserve_v2", False, 2), ("digits_v1", True, 1)])
def test_open_loop_sends_exactly_the_schedule(noop, tmp_path, api, stream, processes):
    """Intended send times are fixed, so the measured request count is rate × duration (±1 a process)."""
    counter = "kserve_v2.ModelInfer" if api == "kserve_v2" else "digits_v1.ClassifyStream"
    before = noop.counts()[counter]
    code, doc = loadtest(tmp_path, "--target", noop.address, "--api", api, *(["--stream"] if stream else []),
                         "--mode", "open", "--rate", "250", "--processes", str(processes), "--batch-size", "2", *SHORT)
    assert code == 0
    (run,) = doc["runs"]
    assert_sane(run, 2)
    assert run["offered_rps"] == 250 and run["concurrency"] is None
    assert abs(run["requests"] - 250 * DURATION_S) <= processes
    assert abs(run["sent_total"] - 250 * (WARMUP_S + DURATION_S)) <= processes
    assert run["send_lag_ms"]["p50"] >= 0
    assert noop.counts()[counter] - before == run["sent_total"]


def test_errors_are_counted_by_status(noop, tmp_path):
    before = noop.counts()["kserve_v2.ModelInfer"]
    code, doc = loadtest(tmp_path, "--target", noop.address, "--model-name", "no_such_model",
                         "--concurrency", "2", "--processes", "1", *SHORT)
    assert code == 1  # nothing succeeded
    (run,) = doc["runs"]
    assert run["ok"] == 0 and run["requests"] > 0
    assert run["errors"] == {"NOT_FOUND": run["requests"]}
    assert run["latency_ms"]["p50"] is None
    assert noop.counts()["kserve_v2.ModelInfer"] - before == run["sent_total"]


@pytest.fixture(scope="module")
def held():
    """`digits serve` whose model computes nothing until released: it answers the probe (ServerLive)
    but no inference request."""
    server = HeldServer("--workers", "1")
    yield server
    server.release()
    assert server.stop() == 0, server.log


@pytest.mark.parametrize("api", ["kserve_v2", "digits_v1"])
def test_unanswered_requests_give_deadlines_and_inflight_limit(held, tmp_path, api):
    """A server that takes requests but never answers them: they hang until their deadline, and the
    open loop's in-flight cap turns the rest into CLIENT_INFLIGHT_LIMIT instead of piling up."""
    stream = ["--stream"] if api == "digits_v1" else []
    code, doc = loadtest(tmp_path, "--target", held.address, "--api", api, *stream, "--mode", "open", "--rate", "100",
                         "--max-inflight", "5", "--processes", "1",
                         "--warmup", "0", "--duration", "0.4", "--timeout", "0.2")
    assert code == 1
    (run,) = doc["runs"]
    assert run["ok"] == 0 and abs(run["requests"] - 40) <= 1  # 100/s for 0.4 s
    assert set(run["errors"]) == {"DEADLINE_EXCEEDED", "CLIENT_INFLIGHT_LIMIT"}
    if not stream:  # a stream's queued requests can time out before they are ever written
        assert run["errors"]["DEADLINE_EXCEEDED"] == run["sent_total"]


def test_a_closed_port_ends_the_command_at_once_in_one_line(capsys):
    """The probe before the load: a minute-long run against a port nobody listens on ends before it
    starts (a failed probe is the only way this test finishes inside its own timeout), exit 1."""
    target = f"127.0.0.1:{closed_port()}"
    code, err = loadtest_refused(capsys, "--target", target, "--processes", "2", "--warmup", "0", "--duration", "60")
    assert code == 1
    assert err.startswith(f"digits loadtest: {target}: ServerLive: UNAVAILABLE: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("api", ["kserve_v2", "digits_v1"])
def test_a_silent_server_ends_the_command_after_the_probe_deadline(capsys, api):
    """A socket that accepts TCP but never speaks HTTP/2 does not answer the probe either."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        code, err = loadtest_refused(capsys, "--target", target, "--api", api, "--processes", "1",
                                     "--warmup", "0", "--duration", "60", "--timeout", "0.5")
    assert code == 1 and err == f"digits loadtest: {target}: no answer to ServerLive within 0.5 s\n"


def test_rate_sweep_writes_json_and_plot(noop, tmp_path):
    plot = tmp_path / "latency.png"
    code, doc = loadtest(tmp_path, "--target", noop.address, "--rates", "100,300", "--processes", "1",
                         "--plot", str(plot), "--warmup", "0", "--duration", "0.3")
    assert code == 0
    assert [run["offered_rps"] for run in doc["runs"]] == [100, 300]
    assert all(run["mode"] == "open" for run in doc["runs"])
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 400
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.01  # something was drawn


def test_histogram_quantiles_match_numpy_within_half_a_bucket():
    samples = np.random.default_rng(1).lognormal(mean=-7, sigma=1.5, size=100_000)
    first, second = LatencyHistogram(), LatencyHistogram()
    for value in samples[:40_000]:
        first.record(float(value))
    for value in samples[40_000:]:
        second.record(float(value))
    first.merge(second)
    assert first.total == samples.size and first.max_s == samples.max()
    for q in (0.5, 0.9, 0.99, 0.999):
        assert first.quantile(q) == pytest.approx(np.quantile(samples, q), rel=0.01)
    assert first.mean() == pytest.approx(samples.mean())


def test_run_load_tells_the_caller_its_measured_window(noop):
    """bench/run.py reads server and client CPU over the measured window alone; run_load says when it is."""
    seen = []

    def on_window(start: float, end: float, pids: list[int]) -> None:
        seen.append((clock(), start, end, pids, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids]))

    run = run_load(LoadConfig(target=noop.address, concurrency=2, processes=2, warmup_s=WARMUP_S,
                              duration_s=DURATION_S, timeout_s=5.0, mnist_dir=str(MNIST_DIR)), on_window=on_window)
    ((called, start, end, pids, cmdlines),) = seen
    assert start - called >= WARMUP_S and end - start == pytest.approx(DURATION_S)
    assert len(pids) == 2 and all(b"service.loadtest.worker" in cmdline for cmdline in cmdlines)
    assert run["ok"] > 0

def test_load_is_split_over_processes():
    plans = split_plans(LoadConfig(concurrency=7, processes=3, max_requests=10))
    assert [plan.concurrency for plan in plans] == [3, 2, 2]
    assert [plan.max_requests for plan in plans] == [4, 3, 3]
    assert len(split_plans(LoadConfig(concurrency=1, processes=4))) == 1
    open_plans = split_plans(LoadConfig(mode="open", rate=300.0, processes=2))
    assert [plan.rate for plan in open_plans] == [150.0, 150.0]


def test_invalid_combinations_are_refused(tmp_path):
    closed = f"127.0.0.1:{closed_port()}"  # never reached: the configuration is refused first
    assert digits_main(["loadtest", "--target", closed, "--api", "kserve_v2_rest", "--stream"]) == 2
    assert digits_main(["loadtest", "--target", closed, "--concurrency", "0"]) == 2

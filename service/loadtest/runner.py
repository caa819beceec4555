"""Runs one load test across several client processes and merges what they measured.

Client processes are fresh interpreters (never forked; see `ipc`), so a caller that already
holds gRPC objects cannot hand a child a broken gRPC runtime. They connect and probe the target
first, then all start on one instant chosen by the parent, so warm-up and measurement windows line
up across processes. A target that fails the probe raises `TargetUnusable` before any load.

The client processes run in a process group of their own, so a terminal's Ctrl-C reaches this
process alone; it then tells each client to stop, gathers what they measured so far and raises
`LoadInterrupted` carrying that partial result (a KeyboardInterrupt, so callers that do not look
for it still stop as they did).
"""

from __future__ import annotations

import math
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from service.loadtest.config import LoadConfig
from service.loadtest.histogram import LatencyHistogram
from service.loadtest.ipc import read_frame, write_frame
from service.loadtest.worker import ProcessPlan, clock

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))
_START_MARGIN_S = 0.05
_CONNECT_GRACE_S = 30.0
_STOP_GRACE_S = 10.0  # for stopped clients to hand over what they measured (they cancel, not drain)
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # where `service` can be imported from

# on_window(measure_start, measure_end, client_pids): the measured window in `clock()` time.
WindowObserver = Callable[[float, float, list[int]], None]


def split_plans(config: LoadConfig) -> list[ProcessPlan]:
    """Divides concurrency (closed), rate (open) and the request quota over the processes."""
    if config.mode == "closed":
        count = min(config.processes, config.concurrency)
        shares = [config.concurrency // count + (i < config.concurrency % count) for i in range(count)]
    else:
        count = config.processes
        shares = [0] * count
    quotas = [0] * count
    if config.max_requests:
        quotas = [config.max_requests // count + (i < config.max_requests % count) for i in range(count)]
    return [ProcessPlan(index=i, concurrency=shares[i], rate=config.rate / count,
                        max_requests=quotas[i], image_offset=i * 997) for i in range(count)]


class LoadTestError(RuntimeError):
    """A client process failed (not the target: its errors are counted, not raised)."""


class TargetUnusable(LoadTestError):
    """The probe before the load found the target down, silent, or refusing our TLS or token."""


class LoadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: `runs` holds the runs finished before it and, if measuring had begun,
    the interrupted one's partial result (`"partial": True`)."""

    def __init__(self, runs: list[dict]) -> None:
        super().__init__("interrupted")
        self.runs = runs


class _Client:
    """One client process and a thread that turns its stdout frames into queue items."""

    def __init__(self, config: LoadConfig, plan: ProcessPlan) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT_ROOT, env.get("PYTHONPATH")]))
        # process_group=0: a group of its own, out of reach of the terminal's SIGINT (see the module)
        self.process = subprocess.Popen([sys.executable, "-m", "service.loadtest.worker"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, process_group=0)
        self.messages: queue.Queue = queue.Queue()
        assert self.process.stdin is not None and self.process.stdout is not None   # both PIPE
        write_frame(self.process.stdin, (config, plan))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None   # PIPE
        try:
            while True:
                self.messages.put(read_frame(self.process.stdout))
        except (EOFError, OSError, ValueError):
            self.messages.put(("died", None, f"exit code {self.process.wait()}"))

    def receive(self, timeout_s: float):
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            raise LoadTestError(f"no word from a client process within {timeout_s:.0f} s") from None

    def send(self, obj) -> None:
        assert self.process.stdin is not None   # PIPE
        write_frame(self.process.stdin, obj)

    def stop(self) -> None:
        """Asks a running client to end now and report what it has (it may have finished already)."""
        try:
            self.send("stop")
        except OSError:
            pass

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        assert self.process.stdin is not None   # PIPE
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)


def run_load(config: LoadConfig, on_window: WindowObserver | None = None) -> dict:
    """Runs `config` to completion and returns the merged result (see `summarise`).

    `on_window`, if given, is called once every client process has been told when to start, with
    the measured window (`clock()` times, after the warm-up) and the client processes' ids. Only
    this function knows where the warm-up ends, so a caller that wants resource use over the
    measured requests alone (server CPU, the clients' own CPU) learns it here. It must return at
    once (start a thread to take readings at those instants): the clients are already running.
    """
    config.validate()
    clients: list[_Client] = []
    results: list[dict] = []
    started = False
    try:
        for plan in split_plans(config):
            clients.append(_Client(config, plan))
        for client in clients:
            message = client.receive(_CONNECT_GRACE_S + config.timeout_s)
            if message[0] == "unusable":
                for other in clients:  # the others would only find the same: do not wait for their probes
                    other.kill()
                raise TargetUnusable(f"{config.target}: {message[2]}")
            if message[0] != "ready":
                raise LoadTestError(f"client process {message[1]} failed while starting:\n{message[2]}")
        measure_start = clock() + _START_MARGIN_S + config.warmup_s
        for client in clients:
            client.send(measure_start)
        started = True
        if on_window is not None:
            on_window(measure_start, measure_start + config.duration_s, [client.process.pid for client in clients])
        limit = config.warmup_s + config.duration_s + 2 * config.timeout_s + _CONNECT_GRACE_S
        for client in clients:
            message = client.receive(limit)
            if message[0] != "result":
                raise LoadTestError(f"client process {message[1]} failed:\n{message[2]}")
            results.append(message[2])
    except KeyboardInterrupt:
        if not started:  # nothing measured yet: the clients are of no further use
            for client in clients:
                client.kill()
            raise LoadInterrupted([]) from None
        partial = _stop_and_gather(clients, results)
        raise LoadInterrupted([summarise(config, partial)] if partial else []) from None
    finally:
        for client in clients:
            client.close()
    return summarise(config, results)


def _stop_and_gather(clients: list[_Client], results: list[dict]) -> list[dict]:
    """Stops the clients that have not reported yet and adds what each measured to `results`.
    A second Ctrl-C gives up on the rest (they are killed)."""
    pending = clients[len(results):]
    for client in pending:
        client.stop()
    try:
        for client in pending:
            message = client.receive(_STOP_GRACE_S)
            if message[0] == "result":
                results.append(message[2])
    except (KeyboardInterrupt, LoadTestError):
        for client in pending:
            client.kill()
    return results


def summarise(config: LoadConfig, results: list[dict]) -> dict:
    """Merges per-process results into the report: counts, rates and latency percentiles (ms)."""
    histogram, send_lag = LatencyHistogram(), LatencyHistogram()
    errors: dict[str, int] = {}
    ok = sent_total = 0
    elapsed = rps = 0.0
    for result in results:
        histogram.merge(LatencyHistogram.from_state(result["histogram"]))
        send_lag.merge(LatencyHistogram.from_state(result["send_lag"]))
        ok += result["ok"]
        sent_total += result["sent_total"]
        elapsed = max(elapsed, result["elapsed_s"])
        if result["elapsed_s"] > 0:  # processes' windows differ slightly: add their own rates
            rps += result["ok"] / result["elapsed_s"]
        for code, count in result["errors"].items():
            errors[code] = errors.get(code, 0) + count
    failed = sum(errors.values())
    latency = {name: _ms(histogram.quantile(q)) for name, q in PERCENTILES}
    latency["max"] = _ms(histogram.max_s if histogram.total else math.nan)
    latency["mean"] = _ms(histogram.mean())
    return {
        "target": config.target,
        "api": config.api,
        "stream": config.stream,
        "binary_tensors": config.binary_tensors,
        "mode": config.mode,
        "concurrency": config.concurrency if config.mode == "closed" else None,
        "offered_rps": config.rate if config.mode == "open" else None,
        "processes": len(results),
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "activations": config.activations,
        "warmup_s": config.warmup_s,
        "duration_s": round(elapsed, 6),
        # stopped by Ctrl-C: the counts and percentiles are over the time measured until then
        "partial": any(result.get("interrupted", False) for result in results),
        "requests": ok + failed,
        "ok": ok,
        "failed": failed,
        "errors": dict(sorted(errors.items())),
        "sent_total": sent_total,
        "rps": rps,
        "images_per_s": rps * config.batch_size,
        "latency_ms": latency,
        # open loop: how late the client itself sent (asyncio timers wake within ~1 ms; a large p99
        # means the client processes were short of CPU: add --processes or lower the rate)
        "send_lag_ms": ({"p50": _ms(send_lag.quantile(0.5)), "p99": _ms(send_lag.quantile(0.99)),
                         "max": _ms(send_lag.max_s)} if config.mode == "open" and send_lag.total else None),
    }


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else seconds * 1000.0


def sweep(config: LoadConfig, rates: list[float]) -> list[dict]:
    """One open-loop run per offered rate, in order (each with its own warm-up). Interrupted, it
    raises LoadInterrupted with the finished runs and the partial one."""
    runs: list[dict] = []
    for rate in rates:
        try:
            runs.append(run_load(replace(config, mode="open", rate=rate)))
        except LoadInterrupted as exc:
            raise LoadInterrupted(runs + exc.runs) from None
    return runs

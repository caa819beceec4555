"""The benchmark: onnxruntime alone, the no-op gRPC floor, our service and optionally Triton, side by side.

    python bench/run.py                 # the issue's protocol: 2 s warm-up + 8 s, 3 interleaved rounds, medians
    python bench/run.py --triton        # the same, plus a real tritonserver (cached venv, installed on first use)
    python bench/run.py --quick         # a smoke run (~1-2 min), no Triton unless asked for

(a) in-process onnxruntime images/s at batch 1 and 256 — what the model itself costs;
(b) the peers, each on a free 127.0.0.1 port: the transport floor (bench/noop_server.py, no work),
    `digits serve`, and with --triton a tritonserver 2.51 running the same ONNX model in its
    Python backend (bench/triton_peer.py; it speaks KServe V2 with FP32 input only, so the
    digits.v1 and uint8 cases are marked not applicable for it).
Every peer is measured by the same client, closed loop, in rounds that rotate which peer goes
first: `--client h2load` (the default when the binary is on PATH; bench/h2load_client.py) drives
the unary cases with nghttp2's compiled HTTP/2 load generator, so the client's own CPU no longer
decides the ratios; `--client python` (the default with --quick, and always for the streaming
case, which h2load cannot drive) uses our Python load tester (`service.loadtest`). Over each run's
measured window only (warm-up excluded) the script reads from /proc the CPU time of the server's
whole process tree and of the client's processes. It prints every figure and which client
measured it, ratios against the floor and against Triton, issue #11's bars with PASS/FAIL/SKIP,
and the RSS of every service worker across a long run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/run.py` from anywhere
    sys.path.insert(0, str(REPO))

from bench import h2load_client as h2load  # noqa: E402
from bench.triton_peer import TritonPeer, process_tree_cpu_seconds  # noqa: E402
from service.contract import DEFAULT_MODEL_NAME  # noqa: E402
from service.cpus import usable_cpus  # noqa: E402
from service.loadtest.config import LoadConfig  # noqa: E402
from service.client.mnist_files import load_test_images  # noqa: E402
from service.loadtest.runner import run_load  # noqa: E402
from service.loadtest.tally import clock  # noqa: E402  (the clock run_load's windows are in)

SERVING = re.compile(r"serving grpc=(\S+) metrics=(\S+) workers=(\d+)")
MB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPUS = usable_cpus()
FLOOR, SERVICE, TRITON = "floor", "service", "triton"
PYTHON, H2LOAD = "python", "h2load"


@dataclass(frozen=True)
class Case:
    """One load configuration, run against every peer that can serve it."""

    key: str
    label: str
    api: str = "kserve_v2"
    stream: bool = False
    batch_size: int = 1
    concurrency: int = 1
    dtype: str = "float32"
    activations: bool = False


CASES = (
    Case("1x1", "1 × 1 V2 float32"),
    Case("1x32", "1 × 32 V2 float32", concurrency=32),
    Case("64x8_f32", "64 × 8 V2 float32", batch_size=64, concurrency=8),
    Case("64x8_u8", "64 × 8 V2 uint8", batch_size=64, concurrency=8, dtype="uint8"),
    Case("1x1_act", "1 × 1 V2 float32 + activations", activations=True),
    Case("1x32_v1", "1 × 32 digits.v1 unary", api="digits_v1", concurrency=32),
    Case("1x32_stream", "1 × 32 digits.v1 stream", api="digits_v1", stream=True, concurrency=32),
)


@dataclass(frozen=True)
class Peer:
    """A server under test: where the load goes, and the root of the process tree its CPU is read from."""

    name: str
    target: str
    pid: int
    v2_float32_only: bool = False  # Triton: KServe V2 only, and the peer's model config takes FP32
    metrics_url: str = ""          # the service's /metrics: its own count of requests by status code

    def not_applicable(self, case: Case) -> str | None:
        """Why this peer cannot run `case`, or None when it can."""
        if not self.v2_float32_only:
            return None
        if case.api != "kserve_v2":
            return "n/a: V2 only"
        if case.dtype != "float32":
            return "n/a: FP32 input only"
        return None


# ---------------------------------------------------------------------------------------------
# (a) onnxruntime in-process


def onnxruntime_images_per_s(model: Path, images, batch: int, seconds: float) -> float:
    """Sequential session.run calls on one thread (the service's default intra-op threads)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    pixels = (images[np.arange(batch) % len(images)].astype(np.float32) / np.float32(255.0))
    feed = {"pixels": pixels}
    for _ in range(50):
        session.run(["probabilities"], feed)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            session.run(["probabilities"], feed)
        calls += 20
    return calls * batch / elapsed


# ---------------------------------------------------------------------------------------------
# servers


class Server:
    """A server child process whose address comes from its start-up line."""

    def __init__(self, name: str, command: list[str], pattern: re.Pattern, stream: str) -> None:
        self.name, self.command = name, command
        self.address = ""
        self.metrics_url = ""
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        for source in (self.process.stdout, self.process.stderr):
            threading.Thread(target=self._drain, args=(source, pattern, source is getattr(self.process, stream)),
                             daemon=True).start()

    def _drain(self, source, pattern: re.Pattern, watch: bool) -> None:
        for line in source:  # always drained, so a chatty server never blocks on a full pipe
            self.lines.append(line)
            if watch and not self._ready.is_set() and (match := pattern.search(line)):
                self.address = match.group(1)
                self.metrics_url = match.group(2) if pattern.groups >= 2 else ""
                self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{''.join(self.lines[-30:])}")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def worker_pids(self) -> list[int]:
        """The processes that serve: the children if it forked workers, else itself."""
        children = _children(self.process.pid)
        return children or [self.process.pid]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


METRIC_CODE = re.compile(r'^digits_requests_total\{.*\bcode="([^"]+)".*\} (\S+)$')


def requests_by_code(metrics_url: str) -> dict[str, float] | None:
    """The service's own count of inference requests by gRPC status (digits_requests_total, all APIs)."""
    import urllib.request

    if not metrics_url.startswith("http://127.0.0.1:"):
        return None  # only ever the local server this script started
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never via a proxy
    with opener.open(metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if match := METRIC_CODE.match(line):
            counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(2))
    return counts


def requests_counted(metrics_url: str) -> float | None:
    """The service's own count of inference requests: the sum of digits_requests_total."""
    counts = requests_by_code(metrics_url)
    return None if counts is None else sum(counts.values())


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        return None
    return None


def start_floor(workers: int) -> Server:
    return Server("no-op floor", [sys.executable, str(REPO / "bench" / "noop_server.py"), "--port", "0",
                                  "--workers", str(workers)], re.compile(r"READY (\S+)"), "stdout")


def start_service(workers: int, model_repository: Path, extra: list[str]) -> Server:
    return Server("digits serve", [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                                   "--port", "0", "--metrics-port", "0", "--workers", str(workers),
                                   "--model-repository", str(model_repository), *extra], SERVING, "stderr")


def triton_version(http_url: str) -> str:
    """The running tritonserver's version from its V2 server metadata (GET /v2), or "?"."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never via a proxy
    try:
        with opener.open(f"{http_url}/v2", timeout=10) as reply:
            return json.loads(reply.read()).get("version", "?")
    except (OSError, ValueError):
        return "?"


# ---------------------------------------------------------------------------------------------
# CPU over a measured window


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads) from /proc, or None once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ")"
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class WindowMeter:
    """CPU of a server's process tree and of the load generator's processes over one measured window.

    `run_load` (or `h2load.run_h2load`) tells `start` when the measured window opens and closes
    (only the client knows where the warm-up ends) and the client processes' ids; a thread reads
    /proc at those two instants, so the warm-up's CPU (connection set-up, first-touch allocations,
    the first model runs) is not charged to the measured requests. The server side is the whole
    tree (supervisor + workers, tritonserver + its Python-backend stubs); the clients are the
    `python -m service.loadtest.worker` children of this process, one per `--processes`, or the
    one h2load process. /proc counts in clock ticks (10 ms): under 1 % of a busy server's CPU over
    a 2 s window.
    """

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self._readings: list[tuple[float, float, float | None]] = []
        self._thread: threading.Thread | None = None

    def start(self, window_start: float, window_end: float, client_pids: list[int]) -> None:
        """run_load's `on_window`: returns at once, the readings are taken by a thread."""
        self._thread = threading.Thread(target=self._read_at, args=((window_start, window_end), client_pids),
                                        daemon=True)
        self._thread.start()

    def _read_at(self, instants: tuple[float, float], client_pids: list[int]) -> None:
        for instant in instants:
            delay = instant - clock()
            if delay > 0:
                time.sleep(delay)
            clients = [process_cpu_seconds(pid) for pid in client_pids]
            self._readings.append((clock(), process_tree_cpu_seconds(self.server_pid),
                                   None if None in clients else sum(clients)))

    def figures(self, rps: float) -> dict:
        """Server CPU µs per request and client CPU as % of the machine's cores, over the window.

        Requests in the window are taken as req/s × its length: in a closed loop the rate is
        steady, whereas counting the requests *started* in it would also take in the tail that
        finishes after the closing reading.
        """
        if self._thread is not None:
            self._thread.join(timeout=15)
        if len(self._readings) < 2:  # the run failed before its window closed
            return {"window_s": None, "server_cpu_s": None, "client_cpu_s": None,
                    "server_cpu_us_per_request": None, "client_cpu_pct": None}
        (start, server_start, client_start), (end, server_end, client_end) = self._readings[:2]
        window, server = end - start, server_end - server_start
        client = None if client_start is None or client_end is None else client_end - client_start
        requests = rps * window
        return {"window_s": window, "server_cpu_s": server, "client_cpu_s": client,
                "server_cpu_us_per_request": server / requests * 1e6 if requests > 0 else None,
                "client_cpu_pct": 100 * client / (window * CPUS) if client is not None and window > 0 else None}


# ---------------------------------------------------------------------------------------------
# measuring


def load_config(case: Case, target: str, args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(target=target, api=case.api, stream=case.stream, mode="closed",
                      concurrency=case.concurrency, processes=args.processes, channels=args.channels,
                      batch_size=case.batch_size, dtype=case.dtype, activations=case.activations,
                      warmup_s=args.warmup, duration_s=args.duration, timeout_s=10.0,
                      mnist_dir=str(REPO / "data" / "mnist"))


def measure(case: Case, peer: Peer, args: argparse.Namespace) -> dict:
    """One Python-load-tester run of `case` against `peer`, plus server and client CPU over its measured window."""
    meter = WindowMeter(peer.pid)
    run = run_load(load_config(case, peer.target, args), on_window=meter.start)
    run.update(meter.figures(run["rps"]))
    run["client"] = PYTHON
    run["client_label"] = f"python {min(args.processes, case.concurrency)} proc × {args.channels} conn"
    return run


PROBES = 1  # real gRPC calls per h2load measurement: they are in the server's counts too


@dataclass(frozen=True)
class H2loadInput:
    """What h2load sends for one case, and what the one real gRPC call must get back; built once a run."""

    payload: h2load.Payload
    body: Path                # the gRPC-framed message, h2load's -d file
    expected: np.ndarray      # onnxruntime's probabilities for the payload's batch


def uses_h2load(case: Case, args: argparse.Namespace) -> bool:
    """h2load drives every unary case when chosen; it cannot drive a gRPC stream."""
    return args.client == H2LOAD and not case.stream


def prepare_h2load(cases: list[Case], model: Path, directory: Path) -> dict[str, H2loadInput]:
    """Payload, body file and expected answer of every case h2load drives (the same bytes for every peer)."""
    inputs = {}
    for case in cases:
        payload = h2load.build_payload(case.api, case.batch_size, case.dtype, case.activations, DEFAULT_MODEL_NAME,
                                       REPO / "data" / "mnist")
        body = directory / f"{case.key}.body"
        body.write_bytes(payload.grpc_frame())
        inputs[case.key] = H2loadInput(payload, body, h2load.reference_probabilities(model, payload))
    return inputs


def measure_h2load(case: Case, peer: Peer, args: argparse.Namespace, given: H2loadInput, log_file: Path) -> dict:
    """One real gRPC call (the probe), an h2load warm-up run, then the measured h2load run with its CPU window.

    The warm-up is an h2load run of its own, not h2load's --warm-up-time, because h2load's summary
    leaves a built-in warm-up's requests out: with two runs every call h2load started is in one of
    the two summaries, so the server's own count can be checked against them. The floor's reply is
    a fixed one, so its probe checks shapes only; real models' also their probabilities.
    """
    connections, streams = h2load.connection_shape(case.concurrency, args.h2load_connections)
    problems = h2load.probe(peer.target, given.payload, None if peer.name == FLOOR else given.expected)
    warm = ([h2load.run_h2load(peer.target, given.payload, given.body, connections, streams, args.warmup)]
            if args.warmup > 0 else [])
    meter = WindowMeter(peer.pid)
    run = h2load.run_h2load(peer.target, given.payload, given.body, connections, streams, args.duration, log_file,
                            on_window=meter.start)
    run.update(meter.figures(run["rps"]))
    run["client_label"] = f"h2load -c {connections} -m {streams}"
    run["probe_problems"] = problems
    run["h2load_runs"] = [each["h2load"] for each in (*warm, run)]  # warm-up first
    run["sent_total"] = PROBES + sum(each["sent_total"] for each in (*warm, run))
    return run


def _h2load_totals(run: dict) -> tuple[int, int, int]:
    """(calls started, HTTP 200s, calls left in flight when h2load stopped) over the warm-up and measured runs."""
    started = sum(each["started"] for each in run["h2load_runs"])
    done = sum(each["done"] for each in run["h2load_runs"])
    return started, sum(each["2xx"] for each in run["h2load_runs"]), started - done


def service_accounting(run: dict, before: dict[str, float], after: dict[str, float]) -> dict:
    """The service's own count (/metrics, by status) over an h2load measurement against h2load's counts.

    h2load sees HTTP statuses only and a gRPC error is HTTP 200, so every HTTP 200 h2load saw (and
    the probe) must be an OK in the service's count. The calls h2load left in flight when its timer
    ended are the only slack: it resets them, and the service records each as OK (it had answered),
    CANCELLED, INVALID_ARGUMENT (the body had not arrived) or not at all (h2load had counted it as
    started but never sent it). So other codes, and the count as a whole, must stay within them;
    a gRPC error hidden behind HTTP 200 can then be at most one of those in-flight calls.
    """
    started, http_ok, in_flight = _h2load_totals(run)
    delta = {code: after.get(code, 0.0) - before.get(code, 0.0) for code in sorted(set(before) | set(after))}
    ok = int(delta.pop("OK", 0.0))
    others = {code: int(count) for code, count in delta.items() if count}
    other = sum(others.values())
    counted = ok + other
    checks = {"ok_covers_2xx": ok >= http_ok + PROBES, "none_beyond_started": counted <= started + PROBES,
              "others_within_in_flight": other <= in_flight}
    shown = (f"/metrics OK +{ok:,} vs h2load HTTP 200 {http_ok:,} + {PROBES} probe; of the {in_flight} calls h2load "
             f"left in flight: {ok - http_ok - PROBES} OK, {other} other{f' {others}' if others else ''}, "
             f"{started + PROBES - counted} never received")
    return {"ok": ok, "other_codes": others, "h2load_started": started, "h2load_2xx": http_ok,
            "left_in_flight": in_flight, "never_received": started + PROBES - counted, "probes": PROBES, **checks,
            "match": all(checks.values()), "shown": shown}


def floor_accounting(run: dict, split: list[int]) -> dict:
    """The floor's count of calls received against h2load's: at least its HTTP 200s, at most what it started.

    (The no-op server counts a call when its handler runs, so a call h2load left in flight may or may not be in.)
    """
    started, http_ok, in_flight = _h2load_totals(run)
    received = sum(split)
    match = http_ok + PROBES <= received <= started + PROBES
    return {"received": received, "h2load_started": started, "h2load_2xx": http_ok, "left_in_flight": in_flight,
            "probes": PROBES, "match": match,
            "shown": f"floor received {received:,} (h2load HTTP 200 {http_ok:,} + {PROBES} probe "
                     f"+ {received - http_ok - PROBES} of the {in_flight} calls h2load left in flight)"}


def floor_worker_counts(address: str) -> list[int]:
    """Requests each no-op worker has served (from its GetModelInfo metadata)."""
    import grpc

    from service.generated.digits.v1 import digits_pb2, digits_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        metadata = digits_pb2_grpc.DigitClassifierStub(channel).GetModelInfo(
            digits_pb2.GetModelInfoRequest(), timeout=10).metadata
    workers = sorted((int(key.split(".")[1]), int(value)) for key, value in metadata.items()
                     if key.startswith("worker."))
    return [count for _, count in workers]


def measure_peer(case: Case, peer: Peer, args: argparse.Namespace, given: H2loadInput | None,
                 log_file: Path) -> dict:
    """One run by the case's client; for the floor how its workers shared it (SO_REUSEPORT spreads
    connections), and for an h2load run the server's own count against h2load's."""
    floor_before = floor_worker_counts(peer.target) if peer.name == FLOOR else None
    codes_before = requests_by_code(peer.metrics_url) if given is not None and peer.metrics_url else None
    run = measure(case, peer, args) if given is None else measure_h2load(case, peer, args, given, log_file)
    if floor_before is not None:
        split = [after - then for then, after in zip(floor_before, floor_worker_counts(peer.target))]
        run["floor_worker_split"] = split
        if given is not None:
            run["accounting"] = floor_accounting(run, split)
    if codes_before is not None:
        run["accounting"] = service_accounting(run, codes_before, requests_by_code(peer.metrics_url) or {})
    return run


def rotated(peers: list[Peer], round_index: int) -> list[Peer]:
    """This round's order: each round starts one peer further on, so no peer always goes first
    (or always runs right after the same neighbour, whose after-effects it would inherit)."""
    shift = round_index % len(peers)
    return peers[shift:] + peers[:shift]


def run_rounds(peers: list[Peer], cases: list[Case], args: argparse.Namespace,
               h2load_inputs: dict[str, H2loadInput], scratch: Path) -> dict[str, dict[str, list[dict]]]:
    """Every applicable (case, peer) once per round, case by case, peers in rotated order."""
    raw: dict[str, dict[str, list[dict]]] = {
        case.key: {peer.name: [] for peer in peers if peer.not_applicable(case) is None} for case in cases}
    for round_index in range(args.rounds):
        for case in cases:
            if round_index == 0 and args.client == H2LOAD and case.stream:
                print(f"  {case.label}: Python load tester (h2load cannot drive a gRPC stream)", flush=True)
            for peer in rotated(peers, round_index):
                if peer.not_applicable(case) is None:
                    run = measure_peer(case, peer, args, h2load_inputs.get(case.key), scratch / "h2load.log")
                    raw[case.key][peer.name].append(run)
                    print_run(f"{round_index + 1}/{args.rounds}", case, peer.name, run)
    return raw


def median_of(runs: list[dict], pick: Callable[[dict], float | None]) -> float | None:
    values = [value for run in runs if (value := pick(run)) is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict]) -> dict:
    """Medians over the rounds of every figure the table shows; errors summed."""
    return {
        "rps": median_of(runs, lambda r: r["rps"]),
        "images_per_s": median_of(runs, lambda r: r["images_per_s"]),
        "p50_ms": median_of(runs, lambda r: r["latency_ms"]["p50"]),
        "p99_ms": median_of(runs, lambda r: r["latency_ms"]["p99"]),
        "server_cpu_us_per_request": median_of(runs, lambda r: r["server_cpu_us_per_request"]),
        "client_cpu_pct": median_of(runs, lambda r: r["client_cpu_pct"]),
        "errors": _sum_errors(runs),
        "rounds": len(runs),
        "client": runs[0]["client_label"] if runs else None,
        "client_kind": runs[0]["client"] if runs else None,
    }


def _sum_errors(runs: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for run in runs:
        for code, count in run["errors"].items():
            total[code] = total.get(code, 0) + count
    return total


def memory_run(service: Server, args: argparse.Namespace) -> dict:
    """RSS per worker before and after `--memory-requests` more requests (1 × 32, V2), sampled each second."""
    pids = service.worker_pids()
    before = {pid: rss_mb(pid) for pid in pids}
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            for pid in pids:
                value = rss_mb(pid)
                if value is not None:
                    peak[pid] = max(peak[pid] or 0.0, value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    config = LoadConfig(target=service.address, api="kserve_v2", mode="closed", concurrency=32,
                        processes=args.processes, channels=args.channels, warmup_s=0.0, duration_s=3600.0,
                        max_requests=args.memory_requests, mnist_dir=str(REPO / "data" / "mnist"))
    result = run_load(config)
    done.set()
    sampler.join()
    after = {pid: rss_mb(pid) for pid in pids}
    workers = []
    for pid in pids:
        if after[pid] is not None:  # the sampler runs once a second: the last reading may be the highest
            peak[pid] = max(peak[pid] or 0.0, after[pid])
        growth = (after[pid] / before[pid] - 1.0) if before[pid] and after[pid] else None
        workers.append({"pid": pid, "rss_before_mb": before[pid], "rss_after_mb": after[pid],
                        "rss_peak_mb": peak[pid], "growth": growth})
    return {"requests": result["requests"], "ok": result["ok"], "errors": result["errors"],
            "sent_total": result["sent_total"], "workers": workers}


# ---------------------------------------------------------------------------------------------
# printing


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def print_run(round_name: str, case: Case, peer: str, run: dict) -> None:
    split = run.get("floor_worker_split")
    shares = "  split " + "/".join(f"{100 * n / max(1, sum(split)):.0f}" for n in split) if split else ""
    print(f"  round {round_name} {case.label:32} {peer:8} {run['rps']:>9,.0f} req/s {run['images_per_s']:>10,.0f} img/s "
          f"p50 {_num(run['latency_ms']['p50'], 3)} ms  server {_num(run['server_cpu_us_per_request'])} µs/req  "
          f"client {_num(run['client_cpu_pct'])} %  [{run['client_label']}]" + shares
          + (f"  errors {run['errors']}" if run["errors"] else ""), flush=True)
    if run["client"] == H2LOAD:
        print("        " + h2load_checks_line(run), flush=True)


def h2load_checks_line(run: dict) -> str:
    """The probe's verdict and, for the floor and the service, the server's count against h2load's."""
    problems = run["probe_problems"]
    line = "gRPC probe ok" if not problems else f"gRPC probe FAILED: {'; '.join(problems)}"
    accounting = run.get("accounting")
    if accounting is not None:
        line += f"; {accounting['shown']}: {'match' if accounting['match'] else 'MISMATCH'}"
    return line


# (heading, summary field, decimals, width, unit); ratios are shown for every column but the last
COLUMNS = (("req/s", "rps", 0, 9, ""), ("images/s", "images_per_s", 0, 11, ""), ("p50 ms", "p50_ms", 3, 8, ""),
           ("p99 ms", "p99_ms", 3, 8, ""), ("server µs/req", "server_cpu_us_per_request", 0, 13, ""),
           ("client CPU", "client_cpu_pct", 0, 10, " %"))
LABEL, WHO = 32, 16


def print_cases(results: dict, cases: list[Case], peers: list[Peer]) -> None:
    """One row per peer per case, then service ÷ floor and service ÷ triton."""
    header = (f"{'configuration':{LABEL}} {'':{WHO}}" + "".join(f" {name:>{width}}" for name, _, _, width, _ in COLUMNS)
              + "  client")
    print(header)
    print("-" * len(header))
    for case in cases:
        rows = results[case.key]
        for index, peer in enumerate(peers):
            label = case.label if index == 0 else ""
            reason = peer.not_applicable(case)
            if reason is not None:
                print(f"{label:{LABEL}} {peer.name:{WHO}} {reason}")
                continue
            row = rows[peer.name]
            print(f"{label:{LABEL}} {peer.name:{WHO}}"
                  + "".join(f" {_num(row[field], digits) + unit:>{width}}" for _, field, digits, width, unit in COLUMNS)
                  + f"  {row['client']}" + (f"   errors {row['errors']}" if row["errors"] else ""))
        for other in (FLOOR, TRITON):
            if other in rows and SERVICE in rows:
                print(f"{'':{LABEL}} {f'service ÷ {other}':{WHO}}"
                      + "".join(f" {_num(_ratio(rows[SERVICE][field], rows[other][field]), 2) + '×':>{width}}"
                                for _, field, _, width, _ in COLUMNS[:-1]))


def h2load_check_summary(raw: dict[str, dict[str, list[dict]]]) -> dict:
    """Every h2load run's probe and count check, tallied: h2load alone cannot tell a gRPC error from an OK."""
    runs = [(key, who, run) for key, by_who in raw.items() for who, of_who in by_who.items() for run in of_who
            if run["client"] == H2LOAD]
    counted = [(key, who, run["accounting"]) for key, who, run in runs if "accounting" in run]
    return {
        "runs": len(runs),
        "probe_failures": [{"case": key, "peer": who, "problems": run["probe_problems"]}
                           for key, who, run in runs if run["probe_problems"]],
        "count_checks": {who: sum(1 for _, w, _ in counted if w == who) for who in (FLOOR, SERVICE)},
        "count_mismatches": [{"case": key, "peer": who, **accounting}
                             for key, who, accounting in counted if not accounting["match"]],
        "service_other_codes": _sum_codes(accounting["other_codes"] for _, who, accounting in counted
                                          if who == SERVICE),
    }


def _sum_codes(many) -> dict[str, int]:
    total: dict[str, int] = {}
    for codes in many:
        for code, count in codes.items():
            total[code] = total.get(code, 0) + count
    return total


def print_h2load_checks(checks: dict) -> None:
    print(f"\nh2load checks: {checks['runs']} h2load runs, each after one real gRPC call with the same bytes: "
          f"{checks['runs'] - len(checks['probe_failures'])} replies as expected"
          + "".join(f"; FAILED {f['case']} {f['peer']}: {'; '.join(f['problems'])}" for f in checks["probe_failures"]))
    matched = {who: n - sum(1 for m in checks["count_mismatches"] if m["peer"] == who)
               for who, n in checks["count_checks"].items()}
    print(f"  server counts against h2load's: service /metrics OK-count check matched in {matched[SERVICE]}/"
          f"{checks['count_checks'][SERVICE]} runs, floor received-count in {matched[FLOOR]}/"
          f"{checks['count_checks'][FLOOR]}; service codes other than OK (calls h2load left in flight at its "
          f"end): {checks['service_other_codes'] or 'none'}")
    for mismatch in checks["count_mismatches"]:
        print(f"  MISMATCH {mismatch['case']} {mismatch['peer']}: {mismatch['shown']}")


def print_request_accounting(accounting: dict) -> None:
    """Requests sent against the service's count: equal, but for the calls h2load left in flight at its ends
    (started by h2load, so in `clients_sent`, yet not necessarily sent: see `service_accounting`)."""
    sent, in_flight, counted = (accounting["clients_sent"], accounting["h2load_left_in_flight"],
                                accounting["service_digits_requests_total"])
    verdict = "-" if counted is None else ("match" if sent - in_flight <= counted <= sent else "MISMATCH")
    slack = f", of which {in_flight:,} h2load left in flight when it stopped (received or not)" if in_flight else ""
    print(f"\nrequests sent to the service by the clients (load tester, h2load, probes): {sent:,}{slack}; "
          f"counted by its /metrics (digits_requests_total): {_num(counted)}: {verdict}")


def print_memory(memory: dict) -> None:
    print("\nRSS per service worker:")
    for worker in memory["workers"]:
        print(f"  pid {worker['pid']}: {_num(worker['rss_before_mb'], 1)} MB -> {_num(worker['rss_after_mb'], 1)} MB "
              f"after {memory['requests']:,} requests (peak {_num(worker['rss_peak_mb'], 1)} MB, "
              f"growth {_num(None if worker['growth'] is None else worker['growth'] * 100, 1)} %)")


# ---------------------------------------------------------------------------------------------
# bars (issue #11)


@dataclass(frozen=True)
class Bar:
    """One bar: `field` of (case, peer) ÷ the same field of (base_case, base_peer), held to `op limit`."""

    name: str
    field: str
    case: str
    peer: str
    base_case: str
    base_peer: str
    op: str  # ">=" or "<="
    limit: float


BARS = (
    Bar("1 × 32: service req/s ≥ 1.5× Triton's", "rps", "1x32", SERVICE, "1x32", TRITON, ">=", 1.5),
    Bar("64 × 8 float32: service images/s ≥ 1.6× Triton's", "images_per_s", "64x8_f32", SERVICE, "64x8_f32", TRITON,
        ">=", 1.6),
    Bar("1 × 1: service p50 ≤ 0.75× Triton's", "p50_ms", "1x1", SERVICE, "1x1", TRITON, "<=", 0.75),
    Bar("1 × 32: service server CPU per request ≤ 0.75× the floor's", "server_cpu_us_per_request", "1x32", SERVICE,
        "1x32", FLOOR, "<=", 0.75),
    Bar("activations: service p50 at 1 × 1 ≤ 1.15× without", "p50_ms", "1x1_act", SERVICE, "1x1", SERVICE, "<=", 1.15),
    Bar("streaming: service req/s ≥ 1.5× unary (digits.v1, 1 × 32)", "rps", "1x32_stream", SERVICE, "1x32_v1",
        SERVICE, ">=", 1.5),
)
UNITS = {"rps": "req/s", "images_per_s": "images/s", "p50_ms": "ms", "server_cpu_us_per_request": "µs/req"}
MEMORY_BAR_REQUESTS = 500_000
RSS_LIMIT_MB, GROWTH_LIMIT = 150.0, 0.10


def _missing(results: dict, case: str, peer: str) -> str | None:
    """Why (case, peer) has no figure in this run, or None when it has one."""
    if case not in results:
        return f"{case} not run"
    if peer not in results[case]:
        return f"{peer} not in this run" + (" (--triton)" if peer == TRITON else "")
    return None


def check_bar(bar: Bar, results: dict) -> dict:
    """The bar's verdict (None: SKIP) with its ratio and the two figures it came from."""
    skip = _missing(results, bar.case, bar.peer) or _missing(results, bar.base_case, bar.base_peer)
    value = base = ratio = None
    if skip is None:
        value, base = results[bar.case][bar.peer][bar.field], results[bar.base_case][bar.base_peer][bar.field]
        ratio = _ratio(value, base)
        skip = None if ratio is not None else "no figure (every request failed?)"
        clients = tuple(results[case][peer].get("client_kind")
                        for case, peer in ((bar.case, bar.peer), (bar.base_case, bar.base_peer)))
        if skip is None and clients[0] != clients[1]:  # a cheaper client alone would move the ratio
            skip = (f"{bar.case} was measured by the {clients[0]} client, {bar.base_case} by {clients[1]}: "
                    f"--client python compares them")
    names = (bar.peer, bar.base_peer) if bar.peer != bar.base_peer else (bar.case, bar.base_case)
    digits = 3 if bar.field == "p50_ms" else 0
    shown = (f"{ratio:.2f}× ({names[0]} {_num(value, digits)} vs {names[1]} {_num(base, digits)} {UNITS[bar.field]})"
             if ratio is not None else "-")
    verdict = None if ratio is None or skip else (ratio >= bar.limit if bar.op == ">=" else ratio <= bar.limit)
    return {"bar": bar.name, "value": ratio, "figures": [value, base], "shown": shown,
            "limit": f"{bar.op} {bar.limit}", "pass": verdict, "skip": skip}


def memory_bars(memory: dict | None) -> list[dict]:
    """Peak RSS per worker, and RSS growth across the long run (SKIP when it was shorter than the bar's)."""
    if memory is None:
        return [{"bar": name, "value": None, "shown": "-", "limit": limit, "pass": None,
                 "skip": "memory run skipped (--memory-requests 0)"}
                for name, limit in ((f"memory: RSS per worker ≤ {RSS_LIMIT_MB:g} MB (peak)", f"<= {RSS_LIMIT_MB:g}"),
                                    (f"memory: RSS growth ≤ {GROWTH_LIMIT:.0%} over {MEMORY_BAR_REQUESTS:,} requests",
                                     f"<= {GROWTH_LIMIT}"))]
    peak = max((w["rss_peak_mb"] or 0.0) for w in memory["workers"])
    growth = max((abs(w["growth"]) for w in memory["workers"] if w["growth"] is not None), default=None)
    enough = memory["requests"] >= MEMORY_BAR_REQUESTS
    return [
        {"bar": f"memory: RSS per worker ≤ {RSS_LIMIT_MB:g} MB (peak)", "value": peak, "shown": f"{peak:.1f} MB",
         "limit": f"<= {RSS_LIMIT_MB:g}", "pass": peak <= RSS_LIMIT_MB, "skip": None},
        {"bar": f"memory: RSS growth ≤ {GROWTH_LIMIT:.0%} over {MEMORY_BAR_REQUESTS:,} requests", "value": growth,
         "shown": "-" if growth is None else f"{growth * 100:.1f} % across {memory['requests']:,} requests",
         "limit": f"<= {GROWTH_LIMIT}", "pass": (growth <= GROWTH_LIMIT) if enough and growth is not None else None,
         "skip": None if enough else f"needs {MEMORY_BAR_REQUESTS:,} requests; this run had {memory['requests']:,}"},
    ]


def print_bars(checks: list[dict]) -> None:
    for check in checks:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[check["pass"]]
        skip = f"; SKIP: {check['skip']}" if check["pass"] is None and check.get("skip") else ""
        print(f"  [{verdict}] {check['bar']}: {check['shown']} (bar {check['limit']}{skip})")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.5 s + 2 s, 1 round, 20,000-request memory run")
    parser.add_argument("--triton", action="store_true",
                        help="add a tritonserver peer (bench/triton_peer.py; installs nvidia-pytriton into a cached "
                             "venv on first use, see $DIGIT_SERVING_TRITON_VENV)")
    parser.add_argument("--triton-instances", type=int, default=2, help="Triton model instances (CPU, default 2)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default 2, quick 0.5)")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured (default 8, quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--client", choices=(PYTHON, H2LOAD), default=None,
                        help="load generator of the unary cases: h2load (nghttp2-client; the default when it is on "
                             "PATH, except with --quick) or python (service.loadtest; always for the stream case)")
    parser.add_argument("--h2load-connections", type=int, default=None,
                        help="most connections h2load opens; streams per connection make up the concurrency "
                             "(default --processes × --channels, the Python client's connections)")
    parser.add_argument("--processes", type=int, default=2, help="load-test client processes")
    parser.add_argument("--channels", type=int, default=4,
                        help="gRPC connections per client process: SO_REUSEPORT spreads connections, not "
                             "requests, over workers, so one connection a process can leave a worker idle")
    parser.add_argument("--workers", type=int, default=CPUS, help="server processes, floor and service")
    parser.add_argument("--model-repository", type=Path,
                        default=Path(os.environ.get("DIGITS_MODEL_REPOSITORY", REPO / "models")),
                        help="served by `digits serve` and Triton, timed in-process (default: "
                             "$DIGITS_MODEL_REPOSITORY, else models/)")
    parser.add_argument("--memory-requests", type=int, default=None,
                        help="requests for the RSS run (default 500,000, quick 20,000; 0 skips it)")
    parser.add_argument("--only", default=None, help="comma-separated case keys (default all): "
                                                     + ",".join(case.key for case in CASES))
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `digits serve` flag (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure and raw run here")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.client is None:  # --quick stays on the Python client so a smoke run needs nothing beyond the venv
        args.client = H2LOAD if h2load.available() and not quick else PYTHON
    if args.client == H2LOAD and not h2load.available():
        parser.error("--client h2load: no h2load on PATH (Debian/Ubuntu: apt-get install nghttp2-client)")
    if args.h2load_connections is None:
        args.h2load_connections = args.processes * args.channels
    if args.h2load_connections < 1:
        parser.error("--h2load-connections must be >= 1")
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 2.0)
    args.duration = args.duration if args.duration is not None else (2.0 if quick else 8.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    args.memory_requests = args.memory_requests if args.memory_requests is not None else (20_000 if quick else 500_000)
    return args


def _versions() -> dict:
    import grpc
    import numpy
    import onnxruntime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    # The figures belong to the code on disk: say so when it is not exactly the commit.
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
    commit += "+uncommitted changes" if changed else ""
    return {"python": platform.python_version(), "grpcio": grpc.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "cpus": CPUS, "platform": platform.platform(), "git": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def find_model(repository: Path) -> Path | None:
    """models/mnist_mlp/1/model.onnx, else the highest version there is."""
    model = repository / "mnist_mlp" / "1" / "model.onnx"
    if model.exists():
        return model
    candidates = sorted(repository.glob("mnist_mlp/*/model.onnx"))
    return candidates[-1] if candidates else None


def time_onnxruntime(model: Path, quick: bool) -> dict:
    print(f"\n(a) onnxruntime in-process, {model.relative_to(REPO) if model.is_relative_to(REPO) else model}, 1 thread")
    images = load_test_images(REPO / "data" / "mnist")
    figures = {}
    for batch in (1, 256):
        rate = onnxruntime_images_per_s(model, images, batch, 1.0 if quick else 3.0)
        figures[f"batch_{batch}_images_per_s"] = rate
        print(f"  batch {batch:>3}: {rate:,.0f} images/s")
    return figures


def start_triton(model: Path, instances: int) -> TritonPeer:
    print(f"  starting tritonserver ({instances} CPU instances; first use installs it) ...", flush=True)
    peer = TritonPeer(model, instances=instances)
    peer.start()
    return peer


def print_protocol(args: argparse.Namespace) -> None:
    print(f"  protocol: closed loop, {args.warmup:g} s warm-up + {args.duration:g} s, {args.rounds} round(s) "
          f"rotating the peers' order, medians; floor and service with {args.workers} worker(s); server CPU = "
          f"utime+stime of the server's process tree over the measured window ÷ requests in it; client CPU = the "
          f"load generator's processes, % of {CPUS} cores")
    python = f"Python load tester (service.loadtest), {args.processes} processes × {args.channels} connections"
    if args.client == H2LOAD:
        print(f"  client: h2load (one process, one thread; at most {args.h2load_connections} connections × streams "
              f"= the concurrency; warm-up is an h2load run of its own) for the unary cases, each preceded by one "
              f"real gRPC call with the same bytes; {python} for the stream case, which h2load cannot drive")
    else:
        print(f"  client: {python}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    print(f"$ {command}")
    machine = _versions()
    print("  " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    print_protocol(args)
    cases = [case for case in CASES if args.only is None or case.key in args.only.split(",")]
    model = find_model(args.model_repository)
    if model is None:
        print(f"no model under {args.model_repository}/mnist_mlp: export one first", file=sys.stderr)
        return 2
    report: dict = {"command": command, "machine": machine, "settings": {
        key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}}
    report["onnxruntime"] = time_onnxruntime(model, args.quick)

    scratch = Path(tempfile.mkdtemp(prefix="digits-bench-"))  # h2load's request bodies and per-request log
    floor = start_floor(args.workers)
    service = start_service(args.workers, args.model_repository, args.serve_arg)
    triton: TritonPeer | None = None
    try:
        floor.wait_ready()
        service.wait_ready()
        peers = [Peer(FLOOR, floor.address, floor.process.pid),
                 Peer(SERVICE, service.address, service.process.pid, metrics_url=service.metrics_url)]
        print(f"\n(b) no-op floor at {floor.address} ({args.workers} workers); "
              f"digits serve at {service.address} (worker pids {service.worker_pids()})")
        if args.triton:
            triton = start_triton(model, args.triton_instances)
            report["triton"] = {"version": triton_version(triton.http_url), "instances": args.triton_instances}
            peers.append(Peer(TRITON, triton.grpc_target, triton.pid, v2_float32_only=True))
            print(f"    tritonserver {report['triton']['version']} at {triton.grpc_target} (pid {triton.pid}, "
                  f"{args.triton_instances} Python-backend instances, dynamic batching)")
        h2load_inputs = (prepare_h2load([case for case in cases if uses_h2load(case, args)], model, scratch)
                         if args.client == H2LOAD else {})
        raw = run_rounds(peers, cases, args, h2load_inputs, scratch)
        results = {key: {who: summarise(runs) for who, runs in by_who.items()} for key, by_who in raw.items()}
        report["cases"] = {case.key: {"label": case.label, **results[case.key],
                                      **{peer.name: {"not_applicable": reason} for peer in peers
                                         if (reason := peer.not_applicable(case)) is not None}}
                           for case in cases}
        report["raw"] = raw
        memory = None
        if args.memory_requests:
            print(f"\n  memory: {args.memory_requests:,} requests (1 × 32, V2, Python load tester) against the "
                  f"service ...", flush=True)
            memory = memory_run(service, args)
            report["memory"] = memory
        sent = sum(run["sent_total"] for by_who in raw.values() for run in by_who[SERVICE])
        sent += memory["sent_total"] if memory else 0
        in_flight = sum(_h2load_totals(run)[2] for by_who in raw.values() for run in by_who[SERVICE]
                        if run["client"] == H2LOAD)
        report["request_accounting"] = {"clients_sent": sent, "h2load_left_in_flight": in_flight,
                                        "service_digits_requests_total": requests_counted(service.metrics_url)}
    finally:
        if triton is not None:
            triton.stop()
        service_code, floor_code = service.stop(), floor.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    report["exit_codes"] = {"service": service_code, "floor": floor_code}

    print("\nResults (medians; server µs/req: CPU of the server's process tree per request; client CPU: "
          f"the load generator's processes, % of {CPUS} cores; client: what measured the row):")
    print_cases(results, cases, peers)
    if args.client == H2LOAD:
        report["h2load_checks"] = h2load_check_summary(raw)
        print_h2load_checks(report["h2load_checks"])
    if memory is not None:
        print_memory(memory)
    print("\nBars (issue #11; SKIP: peer or configuration not in this run, or the run too short for the bar):")
    report["bars"] = [check_bar(bar, results) for bar in BARS] + memory_bars(memory)
    print_bars(report["bars"])
    print_request_accounting(report["request_accounting"])
    print(f"service exit code {service_code}, floor exit code {floor_code}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

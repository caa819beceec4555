"""The benchmark: onnxruntime alone, the no-op gRPC floor and our service, side by side in one run.

    python bench/run.py                 # the issue's protocol: 2 s warm-up + 8 s, 3 interleaved rounds, medians
    python bench/run.py --quick         # a smoke run (~1-2 min)

(a) in-process onnxruntime images/s at batch 1 and 256 — what the model itself costs;
(b) the transport floor: bench/noop_server.py, same protocol and payload, no work;
(c) `digits serve` on a free 127.0.0.1 port.
Floor and service are measured by the same load tester (`service.loadtest`), closed loop, in
rounds that alternate which goes first, and the script prints every figure, the ratios
service/floor and the issue's bars with PASS/FAIL, plus RSS per service worker across a long run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/run.py` from anywhere
    sys.path.insert(0, str(REPO))

from service.cpus import usable_cpus  # noqa: E402
from service.loadtest.config import LoadConfig  # noqa: E402
from service.client.mnist_files import load_test_images  # noqa: E402
from service.loadtest.runner import run_load  # noqa: E402

SERVING = re.compile(r"serving grpc=(\S+) metrics=(\S+) workers=(\d+)")
MB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One load configuration, run against both the floor and the service."""

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


def requests_counted(metrics_url: str) -> float | None:
    """The service's own count of inference requests: the sum of digits_requests_total."""
    import urllib.request

    if not metrics_url.startswith("http://127.0.0.1:"):
        return None  # only ever the local server this script started
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("digits_requests_total{"))


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


# ---------------------------------------------------------------------------------------------
# measuring


def measure(case: Case, target: str, args: argparse.Namespace) -> dict:
    config = LoadConfig(target=target, api=case.api, stream=case.stream, mode="closed",
                        concurrency=case.concurrency, processes=args.processes, channels=args.channels,
                        batch_size=case.batch_size,
                        dtype=case.dtype, activations=case.activations, warmup_s=args.warmup,
                        duration_s=args.duration, timeout_s=10.0, mnist_dir=str(REPO / "data" / "mnist"))
    return run_load(config)


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


def median_of(runs: list[dict], pick) -> float | None:
    values = [pick(run) for run in runs if pick(run) is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict]) -> dict:
    return {
        "rps": median_of(runs, lambda r: r["rps"]),
        "images_per_s": median_of(runs, lambda r: r["images_per_s"]),
        "p50_ms": median_of(runs, lambda r: r["latency_ms"]["p50"]),
        "p99_ms": median_of(runs, lambda r: r["latency_ms"]["p99"]),
        "errors": _sum_errors(runs),
        "rounds": len(runs),
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


def print_cases(results: dict, cases: list[Case]) -> None:
    header = (f"{'configuration':34} {'':8} {'req/s':>9} {'images/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    print(header)
    print("-" * len(header))
    for case in cases:
        floor, ours = results[case.key]["floor"], results[case.key]["service"]
        for name, row in (("floor", floor), ("service", ours)):
            print(f"{case.label if name == 'floor' else '':34} {name:8} {_num(row['rps']):>9} "
                  f"{_num(row['images_per_s']):>11} {_num(row['p50_ms'], 3):>8} {_num(row['p99_ms'], 3):>8}"
                  + (f"   errors {row['errors']}" if row["errors"] else ""))
        print(f"{'':34} {'ratio':8} {_num(_ratio(ours['rps'], floor['rps']), 2) + '×':>9} "
              f"{_num(_ratio(ours['images_per_s'], floor['images_per_s']), 2) + '×':>11} "
              f"{_num(_ratio(ours['p50_ms'], floor['p50_ms']), 2) + '×':>8} "
              f"{_num(_ratio(ours['p99_ms'], floor['p99_ms']), 2) + '×':>8}")


def bars(results: dict, memory: dict | None, memory_target: int) -> list[dict]:
    """The issue's bars as (name, measured ratio or value, limit, pass)."""
    def r(key: str, who: str, field: str) -> float | None:
        return results[key][who][field] if key in results else None  # None: case not run

    checks = [
        ("1 × 32: service req/s ≥ 1.0× floor", _ratio(r("1x32", "service", "rps"), r("1x32", "floor", "rps")), ">=", 1.0),
        ("1 × 1: service p50 ≤ 1.15× floor", _ratio(r("1x1", "service", "p50_ms"), r("1x1", "floor", "p50_ms")), "<=", 1.15),
        ("64 × 8 float32: service images/s ≥ 0.95× floor",
         _ratio(r("64x8_f32", "service", "images_per_s"), r("64x8_f32", "floor", "images_per_s")), ">=", 0.95),
        ("64 × 8 uint8: service images/s ≥ 2.5× float32 floor",
         _ratio(r("64x8_u8", "service", "images_per_s"), r("64x8_f32", "floor", "images_per_s")), ">=", 2.5),
        ("activations: service p50 at 1 × 1 ≤ 1.15× without",
         _ratio(r("1x1_act", "service", "p50_ms"), r("1x1", "service", "p50_ms")), "<=", 1.15),
        ("streaming: service req/s ≥ 1.5× unary (digits.v1, 1 × 32)",
         _ratio(r("1x32_stream", "service", "rps"), r("1x32_v1", "service", "rps")), ">=", 1.5),
    ]
    out = [{"bar": name, "value": value, "limit": f"{op} {limit}",
            "pass": None if value is None else (value >= limit if op == ">=" else value <= limit)}
           for name, value, op, limit in checks]
    if memory is not None:
        peak = max((w["rss_peak_mb"] or 0.0) for w in memory["workers"])
        growth = max(abs(w["growth"]) for w in memory["workers"] if w["growth"] is not None)
        out.append({"bar": "memory: RSS per worker ≤ 150 MB (peak)", "value": peak, "limit": "<= 150",
                    "pass": peak <= 150})
        enough = memory["requests"] >= memory_target
        note = "" if enough else f" (SKIP: the bar needs {memory_target:,}; this is a short run)"
        out.append({"bar": f"memory: RSS growth (|after/before − 1|) across {memory['requests']:,} requests{note}",
                    "value": growth, "limit": "<= 0.10", "pass": (growth <= 0.10) if enough else None})
    return out


def print_bars(checks: list[dict]) -> None:
    for check in checks:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[check["pass"]]
        value = "-" if check["value"] is None else f"{check['value']:.2f}"
        print(f"  [{verdict}] {check['bar']}: {value} (bar {check['limit']})")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.5 s + 2 s, 1 round, 20,000-request memory run")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default 2, quick 0.5)")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured (default 8, quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--processes", type=int, default=2, help="load-test client processes")
    parser.add_argument("--channels", type=int, default=4,
                        help="gRPC connections per client process: SO_REUSEPORT spreads connections, not "
                             "requests, over workers, so one connection a process can leave a worker idle")
    parser.add_argument("--workers", type=int, default=usable_cpus(), help="server processes, floor and service")
    parser.add_argument("--model-repository", type=Path,
                        default=Path(os.environ.get("DIGITS_MODEL_REPOSITORY", REPO / "models")),
                        help="served by `digits serve` and timed in-process (default: $DIGITS_MODEL_REPOSITORY, "
                             "else models/)")
    parser.add_argument("--memory-requests", type=int, default=None,
                        help="requests for the RSS run (default 500,000, quick 20,000; 0 skips it)")
    parser.add_argument("--only", default=None, help="comma-separated case keys (default all): "
                                                     + ",".join(case.key for case in CASES))
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `digits serve` flag (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure and raw run here")
    args = parser.parse_args(argv)
    quick = args.quick
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
    return {"python": platform.python_version(), "grpcio": grpc.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "cpus": usable_cpus(), "platform": platform.platform(), "git": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    print(f"$ {command}")
    machine = _versions()
    print("  " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    print(f"  protocol: closed loop, {args.processes} client processes × {args.channels} connections, "
          f"{args.warmup:g} s warm-up + "
          f"{args.duration:g} s, {args.rounds} interleaved round(s), medians; servers with {args.workers} worker(s)")
    cases = [case for case in CASES if args.only is None or case.key in args.only.split(",")]
    model = args.model_repository / "mnist_mlp" / "1" / "model.onnx"
    if not model.exists():
        candidates = sorted(args.model_repository.glob("mnist_mlp/*/model.onnx"))
        if not candidates:
            print(f"no model under {args.model_repository}/mnist_mlp: export one first", file=sys.stderr)
            return 2
        model = candidates[-1]
    images = load_test_images(REPO / "data" / "mnist")
    report: dict = {"command": command, "machine": machine, "settings": {
        key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}}

    print(f"\n(a) onnxruntime in-process, {model.relative_to(REPO) if model.is_relative_to(REPO) else model}, 1 thread")
    seconds = 1.0 if args.quick else 3.0
    report["onnxruntime"] = {}
    for batch in (1, 256):
        rate = onnxruntime_images_per_s(model, images, batch, seconds)
        report["onnxruntime"][f"batch_{batch}_images_per_s"] = rate
        print(f"  batch {batch:>3}: {rate:,.0f} images/s")

    floor = start_floor(args.workers)
    service = start_service(args.workers, args.model_repository, args.serve_arg)
    try:
        floor.wait_ready()
        service.wait_ready()
        print(f"\n(b) no-op floor at {floor.address} ({args.workers} workers); "
              f"(c) digits serve at {service.address} (pids {service.worker_pids()})")
        raw: dict = {case.key: {"floor": [], "service": []} for case in cases}
        for round_index in range(args.rounds):
            order = (("floor", floor), ("service", service))
            if round_index % 2:
                order = order[::-1]
            for case in cases:
                for who, server in order:
                    before = floor_worker_counts(server.address) if who == "floor" else None
                    run = measure(case, server.address, args)
                    split = ""
                    if before is not None:
                        served = [b - a for a, b in zip(before, floor_worker_counts(server.address))]
                        run["floor_worker_split"] = served
                        split = "  split " + "/".join(f"{100 * n / max(1, sum(served)):.0f}" for n in served)
                    raw[case.key][who].append(run)
                    print(f"  round {round_index + 1}/{args.rounds} {case.label:34} {who:8} "
                          f"{run['rps']:>9,.0f} req/s {run['images_per_s']:>10,.0f} img/s "
                          f"p50 {_num(run['latency_ms']['p50'], 3)} ms"
                          + split + (f"  errors {run['errors']}" if run["errors"] else ""), flush=True)
        results = {key: {who: summarise(runs) for who, runs in by_who.items()} for key, by_who in raw.items()}
        report["cases"] = {case.key: {"label": case.label, **results[case.key]} for case in cases}
        report["raw"] = raw
        memory = None
        if args.memory_requests:
            print(f"\n  memory: {args.memory_requests:,} requests (1 × 32, V2) against the service ...", flush=True)
            memory = memory_run(service, args)
            report["memory"] = memory
        sent = sum(run["sent_total"] for by_who in raw.values() for run in by_who["service"])
        sent += memory["sent_total"] if memory else 0
        counted = requests_counted(service.metrics_url)
        report["request_accounting"] = {"clients_sent": sent, "service_digits_requests_total": counted}
    finally:
        service_code, floor_code = service.stop(), floor.stop()
    report["exit_codes"] = {"service": service_code, "floor": floor_code}

    print("\nResults (medians):")
    print_cases(results, cases)
    if memory is not None:
        print("\nRSS per service worker:")
        for worker in memory["workers"]:
            print(f"  pid {worker['pid']}: {_num(worker['rss_before_mb'], 1)} MB -> {_num(worker['rss_after_mb'], 1)} MB "
                  f"after {memory['requests']:,} requests (peak {_num(worker['rss_peak_mb'], 1)} MB, "
                  f"growth {_num(None if worker['growth'] is None else worker['growth'] * 100, 1)} %)")
    print("\nBars (issue 4; SKIP: configuration not run, or the run too short for the bar):")
    report["bars"] = bars(results, memory, 500_000)
    print_bars(report["bars"])
    context = _ratio(results.get("64x8_u8", {}).get("floor", {}).get("images_per_s"),
                     results.get("64x8_f32", {}).get("floor", {}).get("images_per_s"))
    if context is not None:
        print(f"  context: on this machine the floor itself moves {context:.2f}× more images/s with uint8 "
              f"than float32 at 64 × 8 (the uint8 bar's ceiling if the service only matched the floor)")
        report["floor_uint8_over_float32"] = context
    accounting = report["request_accounting"]
    print(f"\nrequests sent to the service by the load tester: {accounting['clients_sent']:,}; "
          f"counted by its /metrics (digits_requests_total): "
          f"{_num(accounting['service_digits_requests_total'])}")
    print(f"service exit code {service_code}, floor exit code {floor_code}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

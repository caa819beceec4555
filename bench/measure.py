"""Measuring: onnxruntime in-process, one case against one peer by either client, and the memory run.

A run is driven by the Python load tester (service.loadtest) or by h2load (bench/h2load_client.py),
and over its measured window alone (the warm-up excluded) the CPU of the server's process tree and
of the client's processes is read from /proc (WindowMeter). h2load runs are checked against one
real gRPC call and against the server's own count, since h2load cannot tell a gRPC error from an
OK. Rounds rotate the peers' order. Nothing here decides a verdict: bench/report.py does.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bench import h2load_client as h2load
from bench import h2load_rest
from bench.cases import FLOOR, H2LOAD, PYTHON, Case
from bench.peers import CPUS, REPO, Peer, Server, floor_worker_counts, requests_by_code, rss_mb
from bench.report import print_run
from bench.triton_peer import process_tree_cpu_seconds
from service.contract import DEFAULT_MODEL_NAME
from service.loadtest.config import LoadConfig
from service.loadtest.runner import run_load
from service.loadtest.tally import clock  # the clock run_load's windows are in
from service.shared.mnist_files import load_test_images

if TYPE_CHECKING:
    import numpy as np

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def time_onnxruntime(model: Path, quick: bool) -> dict:
    print(f"\n(a) onnxruntime in-process, {model.relative_to(REPO) if model.is_relative_to(REPO) else model}, 1 thread")
    images = load_test_images(REPO / "data" / "mnist")
    figures = {}
    for batch in (1, 256):
        rate = onnxruntime_images_per_s(model, images, batch, 1.0 if quick else 3.0)
        figures[f"batch_{batch}_images_per_s"] = rate
        print(f"  batch {batch:>3}: {rate:,.0f} images/s")
    return figures


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
                                   None if None in clients else sum(cast("list[float]", clients))))

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


def load_config(case: Case, target: str, args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(target=target, api=case.api, stream=case.stream, binary_tensors=case.binary, mode="closed",
                      concurrency=case.concurrency, processes=args.processes, channels=args.channels,
                      batch_size=case.batch_size, dtype=case.dtype, activations=case.activations,
                      warmup_s=args.warmup, duration_s=args.duration, timeout_s=10.0,
                      mnist_dir=str(REPO / "data" / "mnist"))


def measure(case: Case, peer: Peer, args: argparse.Namespace) -> dict:
    """One Python-load-tester run of `case` against `peer`, plus server and client CPU over its measured window."""
    meter = WindowMeter(peer.pid)
    run = run_load(load_config(case, peer.http_url if case.rest else peer.target, args), on_window=meter.start)
    run.update(meter.figures(run["rps"]))
    run["client"] = PYTHON
    processes = min(args.processes, case.concurrency)
    run["client_label"] = (f"python {processes} proc, {case.concurrency} conn" if case.rest
                           else f"python {processes} proc × {args.channels} conn")
    return run


PROBES = 1  # real calls (gRPC or HTTP) per h2load measurement: they are in the server's counts too


@dataclass(frozen=True)
class H2loadInput:
    """What h2load sends for one case, and what the one real gRPC call must get back; built once a run."""

    payload: h2load.Payload | h2load_rest.RestPayload
    body: Path                # h2load's -d file: the gRPC-framed message, or the REST body
    expected: np.ndarray      # onnxruntime's probabilities for the payload's batch


def uses_h2load(case: Case, args: argparse.Namespace) -> bool:
    """h2load drives every unary case when chosen, REST ones in HTTP/1.1; it cannot drive a gRPC stream."""
    return args.client == H2LOAD and not case.stream


def prepare_h2load(cases: list[Case], model: Path, directory: Path) -> dict[str, H2loadInput]:
    """Payload, body file and expected answer of every case h2load drives (the same bytes for every peer)."""
    inputs = {}
    for case in cases:
        payload: h2load.Payload | h2load_rest.RestPayload
        if case.rest:
            payload = h2load_rest.build_rest_payload(case.batch_size, case.dtype, case.activations, case.binary,
                                                     DEFAULT_MODEL_NAME, REPO / "data" / "mnist")
        else:
            payload = h2load.build_payload(case.api, case.batch_size, case.dtype, case.activations,
                                           DEFAULT_MODEL_NAME, REPO / "data" / "mnist")
        body = directory / f"{case.key}.body"
        body.write_bytes(payload.body())
        inputs[case.key] = H2loadInput(payload, body, h2load.reference_probabilities(model, payload))
    return inputs


def measure_h2load(case: Case, peer: Peer, args: argparse.Namespace, given: H2loadInput, log_file: Path) -> dict:
    """One real call (the probe), an h2load warm-up run, then the measured h2load run with its CPU window.

    The warm-up is an h2load run of its own, not h2load's --warm-up-time, because h2load's summary
    leaves a built-in warm-up's requests out: with two runs every call h2load started is in one of
    the two summaries, so the server's own count can be checked against them. The floor's reply is
    a fixed one, so its probe checks shapes only; real models' also their probabilities. A REST
    case is HTTP/1.1 (`--h1`): one connection a request in flight, whatever --h2load-connections says,
    and its probe is one real HTTP request.
    """
    expected = None if peer.name == FLOOR else given.expected
    if case.rest:
        connections, streams = case.concurrency, 1
        target = peer.http_url.removeprefix("http://")
        problems = h2load_rest.probe(peer.http_url, cast(h2load_rest.RestPayload, given.payload), expected)
    else:
        connections, streams = h2load.connection_shape(case.concurrency, args.h2load_connections)
        target = peer.target
        problems = h2load.probe(peer.target, cast(h2load.Payload, given.payload), expected)
    warm = ([h2load.run_h2load(target, given.payload, given.body, connections, streams, args.warmup)]
            if args.warmup > 0 else [])
    meter = WindowMeter(peer.pid)
    run = h2load.run_h2load(target, given.payload, given.body, connections, streams, args.duration, log_file,
                            on_window=meter.start)
    run.update(meter.figures(run["rps"]))
    run["client_label"] = f"h2load --h1 -c {connections}" if case.rest else f"h2load -c {connections} -m {streams}"
    run["probe_problems"] = problems
    run["h2load_runs"] = [each["h2load"] for each in (*warm, run)]  # warm-up first
    run["sent_total"] = PROBES + sum(each["sent_total"] for each in (*warm, run))
    return run


def h2load_totals(run: dict) -> tuple[int, int, int]:
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
    started, http_ok, in_flight = h2load_totals(run)
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
    started, http_ok, in_flight = h2load_totals(run)
    received = sum(split)
    match = http_ok + PROBES <= received <= started + PROBES
    return {"received": received, "h2load_started": started, "h2load_2xx": http_ok, "left_in_flight": in_flight,
            "probes": PROBES, "match": match,
            "shown": f"floor received {received:,} (h2load HTTP 200 {http_ok:,} + {PROBES} probe "
                     f"+ {received - http_ok - PROBES} of the {in_flight} calls h2load left in flight)"}


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
        first, last = before[pid], after[pid]
        if last is not None:  # the sampler runs once a second: the last reading may be the highest
            peak[pid] = max(peak[pid] or 0.0, last)
        growth = (last / first - 1.0) if first and last else None
        workers.append({"pid": pid, "rss_before_mb": before[pid], "rss_after_mb": after[pid],
                        "rss_peak_mb": peak[pid], "growth": growth})
    return {"requests": result["requests"], "ok": result["ok"], "errors": result["errors"],
            "sent_total": result["sent_total"], "workers": workers}

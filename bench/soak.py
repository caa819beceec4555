"""The soak: hours of steady load in windows, watching every server process for memory and fd growth.

    .venv/bin/python bench/soak.py --minutes 30 --interval 30 --workers 2 --concurrency 16 --json runs/soak.json
    .venv/bin/python bench/soak.py --target 127.0.0.1:8001 --server-pid PID --minutes 10   # attach to a running server

A benchmark says how fast; a soak says whether it stays that way. A leak of a few hundred bytes
per request is invisible in a 10 s run and fatal in a week, so the soak drives closed-loop load
window after window and, between windows, reads each server process's resident memory (VmRSS in
/proc/<pid>/status) and open file descriptors (/proc/<pid>/fd): the supervisor and every worker
(the supervisor's children, /proc/<pid>/task/*/children). The first window is the warm-up (gRPC
and onnxruntime grow their pools there, legitimately); growth is judged from its end to the end
of the last window, per process, against a tolerance: RSS ≤ +10 % or +5 MB, whichever is larger,
and fds ≤ +2.

Each window is one `service.loadtest.run_load` call, so the soak measures with exactly the code
behind `digits loadtest`. Each call starts fresh client processes and therefore fresh connections:
a server that leaks per connection shows it as fd growth. Resources are read once the window's
clients have gone and the counts have settled, so they are the server's baseline, not the
window's sockets. Only loopback targets are accepted, and every step is bounded in time: a fixed
number of windows (or a deadline), per-request timeouts, a bounded server start and stop.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/soak.py` from anywhere
    sys.path.insert(0, str(REPO))

from bench.peers import Server, requests_counted, start_service
from service.cpus import usable_cpus
from service.loadtest.config import APIS, LoadConfig
from service.loadtest.runner import run_load

MB = 1024 * 1024
SETTLE_TIMEOUT_S = 3.0  # how long to wait for a window's closed connections to leave the server
SETTLE_POLL_S = 0.2


# ---------------------------------------------------------------------------------------------
# the tolerance


@dataclass(frozen=True)
class Tolerance:
    """How much a process may grow from the end of the warm-up window to the end of the soak.

    RSS is allowed a fraction *or* a fixed amount, whichever is larger: a 40 MB supervisor
    would otherwise be held to 4 MB, less than one glibc arena's worth of noise.
    """

    rss_fraction: float = 0.10
    rss_mb: float = 5.0
    fds: int = 2

    def rss_limit_mb(self, start_mb: float) -> float:
        return max(start_mb * self.rss_fraction, self.rss_mb)

    def describe(self) -> str:
        return (f"RSS growth ≤ {self.rss_fraction * 100:g} % or ≤ {self.rss_mb:g} MB, whichever is larger, "
                f"per process; fd growth ≤ {self.fds}")


# ---------------------------------------------------------------------------------------------
# reading server processes from /proc


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (for `digits serve --workers N`, the workers), from every thread."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            found.update(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            continue
    return sorted(found)


def read_process(pid: int) -> dict | None:
    """{"pid", "rss_mb", "fds"} of a live process, or None once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    if rss_kb is None:  # a zombie has no memory left to report
        return None
    return {"pid": pid, "rss_mb": rss_kb * 1024 / MB, "fds": fds}


def sample_server(root_pid: int) -> list[dict]:
    """The server's processes: the root (supervisor, or the only process) first, then its workers."""
    children = child_pids(root_pid)
    roles = [(root_pid, "supervisor" if children else "server")] + [(pid, "worker") for pid in children]
    samples = []
    for pid, role in roles:
        sample = read_process(pid)
        if sample is not None:
            samples.append({**sample, "role": role})
    return samples


def settled_sample(root_pid: int, timeout_s: float = SETTLE_TIMEOUT_S) -> list[dict]:
    """Samples until two reads in a row agree on the processes and their fd counts (bounded).

    A window's clients have closed their connections when `run_load` returns, but the server
    notices and closes its side a moment later; reading at once would count those sockets.
    """
    deadline = time.monotonic() + timeout_s
    previous = sample_server(root_pid)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_POLL_S)
        current = sample_server(root_pid)
        if [(s["pid"], s["fds"]) for s in current] == [(s["pid"], s["fds"]) for s in previous]:
            return current
        previous = current
    return previous


# ---------------------------------------------------------------------------------------------
# the verdict


def judge(windows: list[dict], tolerance: Tolerance) -> dict:
    """Per-process growth from the first window (warm-up) to the last, and the soak's checks.

    A process present at the start but not at the end (a worker died and was replaced) fails,
    and so does one that appeared later: either means the soak did not watch one process age.
    """
    start = {p["pid"]: p for p in windows[0]["processes"]}
    end = {p["pid"]: p for p in windows[-1]["processes"]}
    processes = []

    def order(pid: int) -> tuple[bool, int]:
        return (start.get(pid) or end[pid])["role"] == "worker", pid

    for pid in sorted(start.keys() | end.keys(), key=order):
        first, last = start.get(pid), end.get(pid)
        entry: dict = {"pid": pid, "role": (first or end[pid])["role"]}  # in one of them
        if first is None or last is None:
            entry.update(ok=False, problem="appeared after the warm-up" if first is None else "gone before the end")
            processes.append(entry)
            continue
        growth_mb = last["rss_mb"] - first["rss_mb"]
        limit_mb = tolerance.rss_limit_mb(first["rss_mb"])
        fd_growth = last["fds"] - first["fds"]
        entry.update(rss_start_mb=first["rss_mb"], rss_end_mb=last["rss_mb"], rss_growth_mb=growth_mb,
                     rss_growth_pct=100.0 * growth_mb / first["rss_mb"] if first["rss_mb"] else math.nan,
                     rss_limit_mb=limit_mb, fds_start=first["fds"], fds_end=last["fds"], fd_growth=fd_growth,
                     rss_ok=growth_mb <= limit_mb, fds_ok=fd_growth <= tolerance.fds)
        entry["ok"] = entry["rss_ok"] and entry["fds_ok"]
        processes.append(entry)
    errors: dict[str, int] = {}
    for window in windows:
        for code, count in window["errors"].items():
            errors[code] = errors.get(code, 0) + count
    checks = {
        "growth within tolerance": bool(processes) and all(p["ok"] for p in processes),
        "no errors": not errors,
        "every window served requests": all(window["ok"] > 0 for window in windows),
    }
    return {"tolerance": asdict(tolerance), "windows": len(windows), "processes": processes,
            "errors": errors, "checks": checks, "pass": all(checks.values())}


# ---------------------------------------------------------------------------------------------
# the soak itself


@dataclass(frozen=True)
class SoakPlan:
    """How long to soak: `windows` windows, or (windows=None) until `minutes` have passed (≥ 2 windows)."""

    interval_s: float = 30.0
    windows: int | None = None
    minutes: float = 30.0
    warmup_s: float = 1.0  # per window, before its measurement starts (the client connecting)

    def more(self, done: int, elapsed_s: float) -> bool:
        if self.windows is not None:
            return done < self.windows
        return done < 2 or elapsed_s < self.minutes * 60.0


def run_windows(load: LoadConfig, root_pid: int, plan: SoakPlan, tolerance: Tolerance,
                emit: Callable[[str], None] = print, on_window: Callable[[list[dict]], None] | None = None) -> dict:
    """Drives `load` in windows against the server whose root process is `root_pid`; returns the report.

    Stops early (with the windows so far) on Ctrl-C or when the server has gone.
    """
    window_load = replace(load, duration_s=plan.interval_s, warmup_s=plan.warmup_s)
    window_load.validate()
    windows: list[dict] = []
    began = time.monotonic()
    interrupted = False
    while plan.more(len(windows), time.monotonic() - began):
        try:
            result = run_load(window_load)
            processes = settled_sample(root_pid)
        except KeyboardInterrupt:
            interrupted = True
            break
        window = {"window": len(windows) + 1, "elapsed_s": time.monotonic() - began, "rps": result["rps"],
                  "requests": result["requests"], "ok": result["ok"], "errors": result["errors"],
                  "sent_total": result["sent_total"], "latency_ms": result["latency_ms"],
                  "processes": processes}
        windows.append(window)
        emit(window_line(window))
        if on_window is not None:
            on_window(windows)
        if not processes:
            emit(f"server process {root_pid} has gone; stopping")
            break
    report: dict = {"load": load.to_dict(), "plan": asdict(plan), "windows": windows, "interrupted": interrupted}
    if windows:
        report["verdict"] = judge(windows, tolerance)
    return report


def _ms(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.2f}"


def window_line(window: dict) -> str:
    """One line per window: elapsed, req/s, latency percentiles, errors, then RSS/fds per process."""
    latency = window["latency_ms"]
    errors = ",".join(f"{code}={count}" for code, count in window["errors"].items()) or "none"
    procs = "  ".join(f"{p['role'][:3]}[{p['pid']}] {p['rss_mb']:.1f}MB/{p['fds']}fd" for p in window["processes"])
    return (f"[{window['elapsed_s']:7.1f}s] w{window['window']:<3} {window['rps']:8.0f} req/s  "
            f"p50 {_ms(latency['p50'])} p99 {_ms(latency['p99'])} p99.9 {_ms(latency['p99.9'])} ms  "
            f"errors {errors}  {procs}")


def summary_lines(report: dict) -> list[str]:
    """The end: each process's RSS and fds after the warm-up window and at the end, and PASS/FAIL."""
    verdict = report.get("verdict")
    if verdict is None:
        return ["no window completed: nothing to judge"]
    lines = [f"summary over {verdict['windows']} windows (start = end of window 1, the warm-up); tolerance: "
             f"{Tolerance(**verdict['tolerance']).describe()}"]
    for p in verdict["processes"]:
        if "problem" in p:
            lines.append(f"  {p['role']:10} pid {p['pid']}: {p['problem']}  FAIL")
            continue
        lines.append(
            f"  {p['role']:10} pid {p['pid']}: RSS {p['rss_start_mb']:.1f} -> {p['rss_end_mb']:.1f} MB "
            f"({p['rss_growth_mb']:+.2f} MB, {p['rss_growth_pct']:+.1f} %, limit +{p['rss_limit_mb']:.1f} MB) "
            f"{'PASS' if p['rss_ok'] else 'FAIL'};  fds {p['fds_start']} -> {p['fds_end']} ({p['fd_growth']:+d}) "
            f"{'PASS' if p['fds_ok'] else 'FAIL'}")
    if "accounting" in report:
        acc = report["accounting"]
        lines.append(f"  requests sent by the load tester {acc['clients_sent']:,}; counted by the server's "
                     f"digits_requests_total {acc['server_counted']:,.0f}")
    for name, ok in verdict["checks"].items():
        lines.append(f"  {name}: {'PASS' if ok else 'FAIL'}")
    lines.append(latency_drift(report["windows"]))
    if verdict["errors"]:
        lines.append(f"  errors by status: {verdict['errors']}")
    lines.append(("PASS" if verdict["pass"] else "FAIL") + (" (interrupted)" if report["interrupted"] else ""))
    return lines


def latency_drift(windows: list[dict]) -> str:
    """Latency after the warm-up window against the last window: reported, not judged (load on the
    machine moves it; growth in memory, not in time, is what this soak decides on)."""
    first, last = windows[min(1, len(windows) - 1)], windows[-1]

    def triple(window: dict) -> str:
        latency = window["latency_ms"]
        return "/".join("-" if latency[q] is None else f"{latency[q]:.2f}" for q in ("p50", "p99", "p99.9"))

    later = f", window {last['window']} {triple(last)}" if last is not first else ""
    return f"  latency p50/p99/p99.9 ms: window {first['window']} {triple(first)}{later} (not judged)"


# ---------------------------------------------------------------------------------------------
# the server: started here, or attached to


def loopback_target(target: str) -> str:
    """`target` if its host is loopback (127.0.0.0/8, ::1, localhost); a soak never leaves the machine."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--target wants HOST:PORT, got {target!r}")
    host = host.strip("[]")
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise ValueError(f"--target must be a loopback address (127.0.0.0/8, [::1], localhost), "
                             f"got {host!r}") from None
    return target


def soak_started_server(load: LoadConfig, plan: SoakPlan, tolerance: Tolerance, workers: int,
                        model_repository: Path = REPO / "models", serve_args: tuple[str, ...] = (),
                        emit: Callable[[str], None] = print,
                        on_window: Callable[[list[dict]], None] | None = None) -> dict:
    """Starts `digits serve --workers N` on a free 127.0.0.1 port, soaks it, stops it; the report.

    Also checks the accounting: what the load tester sent (warm-ups included) against the
    service's own digits_requests_total, so the figures are known to come from this server.
    """
    server: Server = start_service(workers, model_repository, list(serve_args))
    try:
        server.wait_ready()
        emit(f"digits serve --workers {workers} at {server.address} (pid {server.process.pid}, "
             f"workers {child_pids(server.process.pid)})")
        counted_before = requests_counted(server.metrics_url) or 0.0
        report = run_windows(replace(load, target=server.address), server.process.pid, plan, tolerance,
                             emit, on_window)
        counted_after = requests_counted(server.metrics_url)
        if counted_after is not None and "verdict" in report:
            sent = sum(w["sent_total"] for w in report["windows"])
            report["accounting"] = {"clients_sent": sent, "server_counted": counted_after - counted_before}
            verdict = report["verdict"]
            verdict["checks"]["server counted every request sent"] = sent == counted_after - counted_before
            verdict["pass"] = all(verdict["checks"].values())
    finally:
        code = server.stop()
    report["server_exit_code"] = code
    report["server_log_tail"] = server.lines[-20:]
    return report


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (default %(default)s)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds measured per window")
    parser.add_argument("--windows", type=int, default=None, help="exactly this many windows (overrides --minutes)")
    parser.add_argument("--window-warmup", type=float, default=1.0,
                        help="seconds of load at the start of each window before measuring (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="server workers when the soak starts the server")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `digits serve` argument (repeatable)")
    parser.add_argument("--model-repository", type=Path, default=REPO / "models")
    parser.add_argument("--target", default=None, help="attach: HOST:PORT of a running loopback server")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="attach: the pid of its supervisor (or only process)")
    parser.add_argument("--api", choices=APIS, default="kserve_v2")
    parser.add_argument("--stream", action="store_true", help="digits_v1 ClassifyStream")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (closed loop)")
    parser.add_argument("--processes", type=int, default=min(2, usable_cpus()), help="client processes")
    parser.add_argument("--channels", type=int, default=2, help="connections per client process")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", choices=("uint8", "float32"), default="float32")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, seconds")
    parser.add_argument("--rss-pct", type=float, default=10.0, help="tolerated RSS growth, percent")
    parser.add_argument("--rss-mb", type=float, default=5.0, help="tolerated RSS growth, MB (the larger applies)")
    parser.add_argument("--fds", type=int, default=2, help="tolerated growth in open file descriptors")
    parser.add_argument("--json", type=Path, default=None, help="write every window and the verdict here")
    args = parser.parse_args(argv)
    if (args.target is None) != (args.server_pid is None):
        parser.error("--target and --server-pid go together (attach), or neither (start a server)")
    if args.target is not None:
        try:
            loopback_target(args.target)
        except ValueError as exc:
            parser.error(str(exc))
    if args.interval <= 0 or args.minutes <= 0 or (args.windows is not None and args.windows < 2):
        parser.error("--interval and --minutes must be > 0, --windows >= 2 (the first is the warm-up)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    load = LoadConfig(target=args.target or "127.0.0.1:0", api=args.api, stream=args.stream, mode="closed",
                      concurrency=args.concurrency, processes=args.processes, channels=args.channels,
                      batch_size=args.batch_size, dtype=args.dtype, timeout_s=args.timeout,
                      mnist_dir=str(REPO / "data" / "mnist"))
    plan = SoakPlan(interval_s=args.interval, windows=args.windows, minutes=args.minutes,
                    warmup_s=args.window_warmup)
    tolerance = Tolerance(rss_fraction=args.rss_pct / 100.0, rss_mb=args.rss_mb, fds=args.fds)
    length = f"{args.windows} windows" if args.windows else f"{args.minutes:g} min"
    print(f"$ {command}\nsoak: {length}, {args.interval:g} s windows (+{args.window_warmup:g} s warm-up each), "
          f"closed loop {args.api}{' stream' if args.stream else ''}, concurrency {args.concurrency}, "
          f"{args.processes} client processes × {args.channels} connections; {tolerance.describe()}", flush=True)

    def save(windows: list[dict]) -> None:  # after every window, so a long soak cut short keeps its data
        if args.json:
            write_json(args.json, {"command": command, "windows": windows, "partial": True})

    def emit(line: str) -> None:
        print(line, flush=True)

    if args.target is None:
        report = soak_started_server(load, plan, tolerance, args.workers, args.model_repository,
                                     tuple(args.serve_arg), emit, save)
    else:
        if not sample_server(args.server_pid):
            print(f"no process {args.server_pid}", file=sys.stderr)
            return 2
        report = run_windows(load, args.server_pid, plan, tolerance, emit, save)
    report["command"] = command
    for line in summary_lines(report):
        print(line)
    if args.json:
        write_json(args.json, report)
        print(f"JSON written to {args.json}")
    return 0 if report.get("verdict", {}).get("pass") else 1


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())

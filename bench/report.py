"""Reporting: medians over the rounds, the printed tables and checks, and issue #11's bars with their verdicts.

Apart from measuring so that the figures and the way they are judged and shown can be read (and
tested, without servers) on their own; every line it prints keeps the format the benchmark's
README quotes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.cases import FLOOR, H2LOAD, SERVICE, TRITON, Case
from bench.peers import CPUS, REPO, Peer


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


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def print_run(round_name: str, case: Case, peer: str, run: dict) -> None:
    split = run.get("floor_worker_split")
    shares = "  split " + "/".join(f"{100 * n / max(1, sum(split)):.0f}" for n in split) if split else ""
    print(f"  round {round_name} {case.label:32} {peer:8} {run['rps']:>9,.0f} req/s "
          f"{run['images_per_s']:>10,.0f} img/s "
          f"p50 {_num(run['latency_ms']['p50'], 3)} ms  server {_num(run['server_cpu_us_per_request'])} µs/req  "
          f"client {_num(run['client_cpu_pct'])} %  [{run['client_label']}]" + shares
          + (f"  errors {run['errors']}" if run["errors"] else ""), flush=True)
    if run["client"] == H2LOAD:
        print("        " + h2load_checks_line(run), flush=True)


def h2load_checks_line(run: dict) -> str:
    """The probe's verdict and, for the floor and the service, the server's count against h2load's."""
    problems = run["probe_problems"]
    line = "probe ok" if not problems else f"probe FAILED: {'; '.join(problems)}"
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
    print(f"\nh2load checks: {checks['runs']} h2load runs, each after one real call (gRPC, or HTTP for REST) with "
          f"the same bytes: "
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
    Bar("REST binary 1 × 32: ours ≥ 1.0× Triton's REST req/s", "rps", "1x32_rest_bin", SERVICE, "1x32_rest_bin",
        TRITON, ">=", 1.0),
)
UNITS = {"rps": "req/s", "images_per_s": "images/s", "p50_ms": "ms", "server_cpu_us_per_request": "µs/req"}
MEMORY_BAR_REQUESTS = 500_000
RSS_LIMIT_MB, GROWTH_LIMIT = 150.0, 0.10


def _missing(results: dict, case: str, peer: str, unavailable: dict[str, dict[str, str]]) -> str | None:
    """Why (case, peer) has no figure in this run, or None when it has one."""
    if case not in results:
        return f"{case} not run"
    if peer in unavailable.get(case, {}):
        return f"{peer} {unavailable[case][peer]} in {case}"
    if peer not in results[case]:
        return f"{peer} not in this run" + (" (--triton)" if peer == TRITON else "")
    return None


def check_bar(bar: Bar, results: dict, unavailable: dict[str, dict[str, str]] | None = None) -> dict:
    """The bar's verdict (None: SKIP) with its ratio and the two figures it came from; `unavailable`
    (case → peer → reason, e.g. "n/a: no HTTP") says why a peer in the run has no row for a case."""
    unavailable = unavailable or {}
    skip = (_missing(results, bar.case, bar.peer, unavailable)
            or _missing(results, bar.base_case, bar.base_peer, unavailable))
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


def versions() -> dict:
    import grpc
    import numpy
    import onnxruntime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    # The figures belong to the code on disk: say so when it is not exactly the commit.
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
    commit += "+uncommitted changes" if changed else ""
    return {"python": platform.python_version(), "grpcio": grpc.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "cpus": CPUS, "platform": platform.platform(), "git": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def print_protocol(args: argparse.Namespace) -> None:
    print(f"  protocol: closed loop, {args.warmup:g} s warm-up + {args.duration:g} s, {args.rounds} round(s) "
          f"rotating the peers' order, medians; floor and service with {args.workers} worker(s); server CPU = "
          f"utime+stime of the server's process tree over the measured window ÷ requests in it; client CPU = the "
          f"load generator's processes, % of {CPUS} cores")
    python = f"Python load tester (service.loadtest), {args.processes} processes × {args.channels} connections"
    if args.client == H2LOAD:
        print(f"  client: h2load (one process, one thread; at most {args.h2load_connections} connections × streams "
              f"= the concurrency; warm-up is an h2load run of its own) for the unary cases, each preceded by one "
              f"real gRPC call with the same bytes; REST cases with h2load --h1 (HTTP/1.1, one connection a "
              f"request in flight), each preceded by one real HTTP request with the same bytes; {python} for the "
              f"stream case, which h2load cannot drive")
    else:
        print(f"  client: {python} (REST: one HTTP/1.1 connection a request in flight)")

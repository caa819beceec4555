"""The per-call cost ladder: what each of the service's features adds to one V2 ModelInfer call.

It starts from a bare loop on our own transport answering with a cached reply, adds the service's
features one rung at a time, each rung a server of its own (bench/ladder_rungs.py for rungs 1 to
8, built from the service's modules; `digits serve` itself for 9 to 11), and measures every rung
under h2load in the same run, rounds interleaved, the order rotated each round:

- server CPU per call at 1 × 32 (batch 1, 32 calls in flight: h2load -c 8 -m 4): utime + stime of
  the server's process tree from /proc over the measured window ÷ the calls answered in it;
- req/s at 1 × 32, and p50 latency and CPU per call at 1 × 1 (h2load -c 1 -m 1);
- h2load's own CPU, as a share of all the machine's cores.

Two reference rows come from the shared measuring probe `../shared/probes/lean_loop.py` (the
barest loop on grpcio's completion queue: `floor`, a cached reply; `ort`, onnxruntime a call),
when it is there. Before each measurement one real gRPC call with the same bytes (and token)
must come back with onnxruntime's answer, and where the rung counts its calls (rung 4 on) its
/metrics must show an OK for every HTTP 200 h2load saw: h2load cannot see a gRPC error.

    .venv/bin/python bench/ladder.py                                # 3 rounds of 1 s warm-up + 5 s a run
    .venv/bin/python bench/ladder.py --rounds 5 --duration 8 --json runs/ladder.json
    .venv/bin/python bench/ladder.py --rungs 1-3,9 --rounds 2                # some rungs only
    .venv/bin/python bench/ladder.py --smoke                                # rungs 1 and 7, 1 round of 0.2 + 0.5 s
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/ladder.py` from anywhere
    sys.path.insert(0, str(REPO))

from bench import h2load_client as h2load
from bench.measure import WindowMeter
from bench.peers import CPUS, Server, find_model, requests_by_code, start_service
from service.contract import DEFAULT_MODEL_NAME

RUNGS = {
    1: "bare loop, cached reply",
    2: "+ V2 adapter, validation, ort a call",
    3: "+ batching (core + batcher)",
    4: "+ metrics",
    5: "+ deadlines, cancellation watch",
    6: "+ admission, request policy",
    7: "+ token check",
    8: "+ drain/health/reflection: ServingLoop",
    9: "digits serve --workers 1 --no-http",
    10: "+ HTTP front end, idle",
    11: "--workers 2",
}
TOKEN_FROM = 7                      # rungs from here on require (and are sent) the bearer token
REFERENCES = ("floor", "ort")       # lean_loop.py's modes
PROBE_SCRIPT = REPO.parent / "shared" / "probes" / "lean_loop.py"
CASES = (("1x32", 32), ("1x1", 1))  # (key, concurrency), batch 1, V2 float32
MOST_CONNECTIONS = 8                # as bench/run.py: 1 × 32 -> h2load -c 8 -m 4
READY = re.compile(r"READY (?P<address>\S+) metrics=(?P<metrics>\S+)")
TOKEN = "ladder-bench-token"
SMOKE = {"rungs": "1,7", "rounds": 1, "duration": 0.5, "warmup": 0.2, "no_reference": True}


@dataclass(frozen=True)
class TokenPayload(h2load.Payload):
    """The benchmark's request with the bearer token among h2load's headers."""

    token: str = ""

    @property
    def headers(self) -> tuple[str, ...]:
        return (*h2load.GRPC_HEADERS, f"authorization: Bearer {self.token}")


@dataclass
class Rung:
    key: str                 # "1".."11", or "ref floor" / "ref ort"
    label: str
    target: str = ""
    pid: int = 0
    metrics_url: str = ""
    token: bool = False
    server: Server | None = None
    process: subprocess.Popen | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(rung: Rung, token_file: Path, log_dir: Path, probe_script: Path) -> None:
    """Starts the rung's server (not waiting for it)."""
    number = int(rung.key) if rung.key.isdigit() else 0
    if 1 <= number <= 8:
        command = [sys.executable, str(REPO / "bench" / "ladder_rungs.py"), rung.key, "--token-file", str(token_file)]
        rung.server = Server(f"rung {rung.key}", command, READY, "stdout")
    elif number >= 9:
        extra = ["--auth-token-file", str(token_file), *(["--no-http"] if number == 9 else [])]
        rung.server = start_service(2 if number == 11 else 1, REPO / "models", extra)
    else:
        port = free_port()
        rung.target = f"127.0.0.1:{port}"
        with open(log_dir / f"{rung.key.replace(' ', '_')}.log", "w") as log:
            rung.process = subprocess.Popen([sys.executable, str(probe_script), str(port), rung.key.split()[1]],
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        rung.pid = rung.process.pid


def wait_ready(rung: Rung, payload: h2load.Payload) -> None:
    if rung.server is not None:
        rung.server.wait_ready()
        rung.target, rung.pid = rung.server.address, rung.server.process.pid
        rung.metrics_url = rung.server.metrics_url if rung.server.metrics_url.startswith("http") else ""
        return
    deadline = time.monotonic() + 60
    process = rung.process
    assert process is not None, "started above"
    while call_failed(probe(rung, payload, None)) and time.monotonic() < deadline:  # it prints no start-up line
        if process.poll() is not None:
            raise RuntimeError(f"{rung.label} exited with {process.returncode}")
        time.sleep(0.2)


def stop(rungs: list[Rung]) -> None:
    processes = [r.server.process if r.server else r.process for r in rungs]
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
    for process in processes:
        if process is not None:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def call_failed(problems: list[str]) -> list[str]:
    """The problems that say the call itself failed ("UNAVAILABLE: ..."), not what its reply held."""
    return [p for p in problems if p.split(":")[0].isupper()]


def probe(rung: Rung, payload: h2load.Payload, expected) -> list[str]:
    """One real gRPC call with h2load's bytes (and token); what is wrong with its reply."""
    if not rung.token:
        return h2load.probe(rung.target, payload, expected)
    import grpc

    with grpc.insecure_channel(rung.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            reply = channel.unary_unary(payload.path)(payload.message, timeout=10,
                                                      metadata=(("authorization", f"Bearer {TOKEN}"),))
        except grpc.RpcError as exc:
            return [f"{exc.code().name}: {exc.details()}"]
    return h2load._check_kserve(reply, payload, expected)


def measure(rung: Rung, payload: h2load.Payload, body: Path, expected, concurrency: int, args: argparse.Namespace,
            log_file: Path) -> dict:
    """Probe, an h2load warm-up run, then the measured run with its CPU window and the server's count."""
    if rung.token:
        payload = TokenPayload(**{f.name: getattr(payload, f.name) for f in fields(h2load.Payload)}, token=TOKEN)
    reference = not rung.key.isdigit()
    problems = probe(rung, payload, None if reference else expected)
    if reference:  # lean_loop's floor echoes no id and answers zeros: only a failed call counts
        problems = call_failed(problems)
    if problems:
        raise RuntimeError(f"{rung.label}: the probe call failed: {problems}")
    connections, streams = h2load.connection_shape(concurrency, MOST_CONNECTIONS)
    if args.warmup > 0:
        h2load.run_h2load(rung.target, payload, body, connections, streams, args.warmup)
    before = requests_by_code(rung.metrics_url) if rung.metrics_url else None
    meter = WindowMeter(rung.pid)
    run = h2load.run_h2load(rung.target, payload, body, connections, streams, args.duration, log_file,
                            on_window=meter.start)
    run.update(meter.figures(run["rps"]))
    if before is not None:
        time.sleep(0.05)  # the calls h2load reset at its end are counted as they finish
        after = requests_by_code(rung.metrics_url) or {}
        delta = {code: after.get(code, 0.0) - before.get(code, 0.0) for code in set(before) | set(after)}
        ok, others = int(delta.pop("OK", 0)), {c: int(n) for c, n in delta.items() if n}
        in_flight = run["h2load"]["started"] - run["h2load"]["done"]
        run["counted"] = {"ok": ok, "others": others, "http_200": run["ok"], "left_in_flight": in_flight,
                          "match": ok >= run["ok"] and sum(others.values()) <= in_flight + concurrency}
    return run


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def figures(runs: dict[str, list[dict]]) -> dict[str, float | None]:
    """Medians over the rounds of one rung's runs."""
    big, one = runs["1x32"], runs["1x1"]
    return {"rps_1x32": median([r["rps"] for r in big]),
            "cpu_us_1x32": median([r["server_cpu_us_per_request"] for r in big]),
            "p50_ms_1x1": median([(r["latency_ms"] or {}).get("p50") for r in one]),
            "cpu_us_1x1": median([r["server_cpu_us_per_request"] for r in one]),
            "rps_1x1": median([r["rps"] for r in one]),
            "h2load_cpu_pct_1x32": median([r["client_cpu_pct"] for r in big]),
            "h2load_cpu_pct_1x1": median([r["client_cpu_pct"] for r in one])}


def added(raw: dict[str, dict[str, list[dict]]], key: str, below: str) -> dict[str, float | None]:
    """What rung `key` adds to rung `below`: the median over rounds of the difference measured in each round."""
    def per_round(case: str, pick) -> float | None:
        pairs = zip(raw[key][case], raw[below][case])
        return median([None if pick(a) is None or pick(b) is None else pick(a) - pick(b) for a, b in pairs])

    cpu = lambda run: run["server_cpu_us_per_request"]  # noqa: E731
    p50 = lambda run: (run["latency_ms"] or {}).get("p50")  # noqa: E731
    ms = per_round("1x1", p50)
    return {"cpu_us_1x32": per_round("1x32", cpu), "p50_us_1x1": None if ms is None else ms * 1000,
            "cpu_us_1x1": per_round("1x1", cpu)}


def ratio(raw: dict, key: str, other: str, case: str) -> float | None:
    """Median over rounds of rung `key`'s CPU per call ÷ `other`'s in the same round."""
    values = [None if not (a["server_cpu_us_per_request"] and b["server_cpu_us_per_request"])
              else a["server_cpu_us_per_request"] / b["server_cpu_us_per_request"]
              for a, b in zip(raw[key][case], raw[other][case])]
    return median(values)


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def signed(value: float | None) -> str:
    return "" if value is None else f"{value:+,.0f}"


def print_table(rungs: list[Rung], raw: dict, args: argparse.Namespace) -> dict:
    print(f"\nThe per-call ladder: medians of {args.rounds} interleaved round(s) of {args.warmup:g} s warm-up + "
          f"{args.duration:g} s a run; V2 ModelInfer, 1 image, float32; server CPU: the server's process tree "
          f"from /proc ÷ calls; h2load CPU: % of {CPUS} cores; 'adds': median over rounds of this rung minus "
          "the one above, same round")
    head = (f"{'rung':<44}{'req/s':>9}{'µs CPU/call':>13}{'p50 ms':>9}{'µs CPU/call':>13}{'h2load CPU':>12}"
            f"  {'adds µs/call':>13}{'adds p50 µs':>12}{'adds µs/call':>13}")
    sub = f"{'':<44}{'1×32':>9}{'1×32':>13}{'1×1':>9}{'1×1':>13}{'1×32 / 1×1':>12}  {'1×32':>13}{'1×1':>12}{'1×1':>13}"
    print(head)
    print(sub)
    print("-" * len(head))
    table = {}
    previous = None
    for rung in rungs:
        row = figures(raw[rung.key])
        adds: dict[str, float | None] = added(raw, rung.key, previous) if previous is not None and rung.key.isdigit() \
            else {}
        table[rung.key] = {"label": rung.label, **row, "adds": adds}
        name = f"{rung.key:>2}  {rung.label}" if rung.key.isdigit() else f"ref {rung.label}"
        client = f"{fmt(row['h2load_cpu_pct_1x32'], '.0f')} / {fmt(row['h2load_cpu_pct_1x1'], '.0f')} %"
        print(f"{name:<44}{fmt(row['rps_1x32'], ',.0f'):>9}{fmt(row['cpu_us_1x32'], ',.0f'):>13}"
              f"{fmt(row['p50_ms_1x1'], '.3f'):>9}{fmt(row['cpu_us_1x1'], ',.0f'):>13}{client:>12}  "
              f"{signed(adds.get('cpu_us_1x32')):>13}{signed(adds.get('p50_us_1x1')):>12}"
              f"{signed(adds.get('cpu_us_1x1')):>13}", flush=True)
        if rung.key.isdigit():
            previous = rung.key
    keys = {r.key for r in rungs}
    for ours, lean in (("1", "ref floor"), ("2", "ref ort")):
        if ours in keys and lean in keys:
            print(f"rung {ours} ÷ lean_loop {lean.split()[1]}, CPU per call (median of per-round ratios): "
                  f"1×32 {fmt(ratio(raw, ours, lean, '1x32'), '.2f')}×, "
                  f"1×1 {fmt(ratio(raw, ours, lean, '1x1'), '.2f')}×")
    counted = [run["counted"] for by_case in raw.values() for runs in by_case.values() for run in runs
               if "counted" in run]
    if counted:
        bad = [c for c in counted if not c["match"]]
        print(f"server counts (rungs with /metrics): {len(counted) - len(bad)}/{len(counted)} runs had an OK for "
              f"every HTTP 200 h2load saw, other codes only among the calls left in flight"
              + (f"; MISMATCH: {bad}" if bad else ""))
    return table


def parse_rungs(text: str) -> list[int]:
    chosen: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        chosen += range(int(low), int(high or low) + 1)
    unknown = [n for n in chosen if n not in RUNGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"no rung {unknown}; rungs are 1 to {len(RUNGS)}")
    return sorted(set(chosen))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each measured h2load run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of the h2load run before each")
    parser.add_argument("--rungs", type=parse_rungs, default=list(RUNGS), help="e.g. 1-4,9 (default: all)")
    parser.add_argument("--no-reference", action="store_true", help="leave out lean_loop.py's two rows")
    parser.add_argument("--probe-script", type=Path, default=PROBE_SCRIPT, help="lean_loop.py")
    parser.add_argument("--json", type=Path, help="write every run and the table here")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a check that it runs: rungs {SMOKE['rungs']}, 1 round of {SMOKE['warmup']} + "
                             f"{SMOKE['duration']} s, no reference rows (explicit flags win)")
    args = parser.parse_args(argv)
    if args.smoke:
        given = set(argv if argv is not None else sys.argv[1:])
        for name, value in SMOKE.items():
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, parse_rungs(str(value)) if name == "rungs" else value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not h2load.available():
        print("h2load is not on PATH (Debian: apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    rungs = [Rung(str(n), RUNGS[n], token=n >= TOKEN_FROM) for n in args.rungs]
    if not args.no_reference:
        if args.probe_script.exists():
            rungs = [Rung(f"ref {mode}", f"lean_loop {mode}") for mode in REFERENCES] + rungs
        else:
            print(f"(no reference rows: {args.probe_script} is not there)")
    model = find_model(REPO / "models")
    assert model is not None, "the repository ships a model"
    payload = h2load.build_payload("kserve_v2", 1, "float32", False, DEFAULT_MODEL_NAME, REPO / "data" / "mnist")
    expected = h2load.reference_probabilities(model, payload)
    raw: dict[str, dict[str, list[dict]]] = {r.key: {case: [] for case, _ in CASES} for r in rungs}
    with tempfile.TemporaryDirectory(prefix="ladder-") as scratch:
        scratch_dir = Path(scratch)
        body = scratch_dir / "1x1.body"
        body.write_bytes(payload.body())
        token_file = scratch_dir / "token"
        token_file.write_text(TOKEN)
        try:
            for rung in rungs:
                start(rung, token_file, scratch_dir, args.probe_script)
            for rung in rungs:
                wait_ready(rung, payload)
            print(f"{len(rungs)} servers up: " + ", ".join(f"{r.key} pid {r.pid}" for r in rungs), flush=True)
            for round_index in range(args.rounds):
                shift = round_index % len(rungs)
                order = rungs[shift:] + rungs[:shift]
                for case, concurrency in CASES:
                    for rung in order:
                        run = measure(rung, payload, body, expected, concurrency, args, scratch_dir / "h2load.log")
                        raw[rung.key][case].append(run)
                        print(f"  {round_index + 1}/{args.rounds} {case:<5} {rung.key:>9}: {run['rps']:>8,.0f} req/s, "
                              f"{fmt(run['server_cpu_us_per_request'], ',.0f'):>6} µs CPU/call, p50 "
                              f"{fmt((run['latency_ms'] or {}).get('p50'), '.3f')} ms, h2load "
                              f"{fmt(run['client_cpu_pct'], '.0f')} %", flush=True)
        finally:
            stop(rungs)
    table = print_table(rungs, raw, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table,
                                         "runs": raw}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

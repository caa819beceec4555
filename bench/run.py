"""The benchmark: onnxruntime alone, the no-op gRPC floor, our service and optionally Triton, side by side.

    python bench/run.py                 # the issue's protocol: 2 s warm-up + 8 s, 3 interleaved rounds, medians
    python bench/run.py --triton        # the same, plus a real tritonserver (cached venv, installed on first use)
    python bench/run.py --quick         # a smoke run (~1-2 min), no Triton unless asked for

(a) in-process onnxruntime images/s at batch 1 and 256 — what the model itself costs;
(b) the peers, each on a free 127.0.0.1 port: the transport floor (bench/noop_server.py, no work),
    `digits serve`, and with --triton a tritonserver 2.51 running the same ONNX model in its
    Python backend (bench/triton_peer.py; it speaks KServe V2 with FP32 input only, so the
    digits.v1 and uint8 cases are marked not applicable for it). The REST cases (`*_rest_*`, the Open
    Inference Protocol over HTTP/1.1, JSON or binary tensors) run against the service's and Triton's
    HTTP endpoints; the service is started with `--http-port 0` when it has one and its URL read
    from its start-up line, else (and for the floor, which has no HTTP) they are "n/a: no HTTP".
Every peer is measured by the same client, closed loop, in rounds that rotate which peer goes
first: `--client h2load` (the default when the binary is on PATH; bench/h2load_client.py) drives
the unary cases with nghttp2's compiled HTTP/2 load generator (`--h1`, HTTP/1.1, for REST:
bench/h2load_rest.py), so the client's own CPU no longer
decides the ratios; `--client python` (the default with --quick, and always for the streaming
case, which h2load cannot drive) uses our Python load tester (`service.loadtest`). Over each run's
measured window only (warm-up excluded) the script reads from /proc the CPU time of the server's
whole process tree and of the client's processes. It prints every figure and which client
measured it, ratios against the floor and against Triton, issue #11's bars with PASS/FAIL/SKIP,
and the RSS of every service worker across a long run.

This file is the command line and the order of the stages only; the work is in bench/peers.py
(the servers and /proc), bench/measure.py (the runs and their CPU windows) and bench/report.py
(medians, tables, bars), with the cases and the peers' and clients' names in bench/cases.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/run.py` from anywhere
    sys.path.insert(0, str(REPO))

from bench import h2load_client as h2load
from bench.cases import CASES, FLOOR, H2LOAD, PYTHON, SERVICE, TRITON
from bench.measure import h2load_totals, memory_run, prepare_h2load, run_rounds, time_onnxruntime, uses_h2load
from bench.peers import (
    CPUS,
    Peer,
    find_model,
    requests_counted,
    start_floor,
    start_service,
    start_triton,
    triton_version,
)
from bench.report import (
    BARS,
    check_bar,
    h2load_check_summary,
    memory_bars,
    print_bars,
    print_cases,
    print_h2load_checks,
    print_memory,
    print_protocol,
    print_request_accounting,
    summarise,
    versions,
)
from bench.triton_peer import TritonPeer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 0.5 s + 2 s, 1 round, 20,000-request memory run")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    print(f"$ {command}")
    machine = versions()
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
                 Peer(SERVICE, service.address, service.process.pid, metrics_url=service.metrics_url,
                      http_url=service.http_url)]
        print(f"\n(b) no-op floor at {floor.address} ({args.workers} workers); "
              f"digits serve at {service.address}, REST {service.http_url or 'none'} "
              f"(worker pids {service.worker_pids()})")
        if args.triton:
            triton = start_triton(model, args.triton_instances)
            report["triton"] = {"version": triton_version(triton.http_url), "instances": args.triton_instances}
            peers.append(Peer(TRITON, triton.grpc_target, triton.pid, v2_float32_only=True, http_url=triton.http_url))
            print(f"    tritonserver {report['triton']['version']} at {triton.grpc_target}, REST {triton.http_url} "
                  f"(pid {triton.pid}, "
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
        sent = sum(run["sent_total"] for by_who in raw.values() for run in by_who.get(SERVICE, []))
        sent += memory["sent_total"] if memory else 0
        in_flight = sum(h2load_totals(run)[2] for by_who in raw.values() for run in by_who.get(SERVICE, [])
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
    unavailable = {case.key: {peer.name: reason for peer in peers if (reason := peer.not_applicable(case))}
                   for case in cases}
    report["bars"] = [check_bar(bar, results, unavailable) for bar in BARS] + memory_bars(memory)
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

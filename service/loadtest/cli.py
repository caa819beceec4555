"""`digits loadtest`: the command-line face of the load tester."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from service.shared.mnist_files import TEST_IMAGES_FILE, default_mnist_dir
from service.contract import DEFAULT_MODEL_NAME, DEFAULT_TARGET
from service.cpus import usable_cpus
from service.loadtest.config import APIS, DEFAULT_REST_TARGET, DTYPES, MODES, REST_API, LoadConfig
from service.loadtest.plot import plot_latency_vs_load
from service.loadtest.report import describe, document, table, write_json
from service.loadtest.runner import LoadTestError, run_load, sweep


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--rates wants numbers separated by commas: {exc}") from exc
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError("--rates wants one or more positive rates, e.g. 500,1000,2000")
    return rates


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "loadtest", help="drive a deployment with MNIST requests and report throughput and latency",
        description="Closed loop (fixed concurrency) or open loop (fixed arrival rate, latency from the "
                    "intended send time) load against a digits or any Open Inference Protocol server, over "
                    "gRPC or the protocol's REST API (HTTP/1.1, one keep-alive connection per request in flight).")
    parser.add_argument("--target", default=os.environ.get("DIGITS_TARGET"),
                        help=f"where the server listens: HOST:PORT for the gRPC APIs (default {DEFAULT_TARGET}), "
                             f"http://HOST:PORT (or HOST:PORT) for {REST_API} (default {DEFAULT_REST_TARGET}); "
                             "$DIGITS_TARGET overrides both defaults")
    parser.add_argument("--api", choices=APIS, default="kserve_v2",
                        help="kserve_v2: ModelInfer of the Open Inference Protocol over gRPC; digits_v1: Classify; "
                             f"{REST_API}: POST /v2/models/MODEL/infer of the same protocol over HTTP, JSON tensors "
                             "unless --binary-tensors; errors are counted by HTTP status (\"429\", \"503\") or "
                             "client-side problem (CLIENT_TIMEOUT, CLIENT_CONNECT_FAILED, ...)")
    parser.add_argument("--binary-tensors", action="store_true",
                        help=f"{REST_API} only: send the pixels as raw little-endian bytes after the JSON request "
                             "header and ask for binary outputs (Triton's binary tensor data extension, "
                             "Inference-Header-Content-Length), instead of JSON number arrays both ways; "
                             "what a performance-minded REST client sends")
    parser.add_argument("--stream", action="store_true",
                        help="digits_v1 only: many requests in flight on one ClassifyStream per channel")
    parser.add_argument("--mode", choices=MODES, default="closed",
                        help="closed: --concurrency requests always in flight; open: --rate arrivals/s whatever "
                             "the server does (latency from the intended send time)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: requests in flight (all processes)")
    parser.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second (all processes)")
    parser.add_argument("--rates", type=_rates, default=None,
                        help="open-loop sweep, e.g. 500,1000,2000: one run per rate (implies --mode open)")
    parser.add_argument("--processes", type=int, default=min(2, usable_cpus()), help="client processes (default %(default)s)")
    parser.add_argument("--channels", type=int, default=1,
                        help="gRPC connections per client process (REST: always one connection a request in flight)")
    parser.add_argument("--lb-policy", choices=("pick_first", "round_robin"), default="pick_first",
                        help="gRPC load balancing; round_robin with a dns:/// target reaches every pod of a headless Service")
    parser.add_argument("--batch-size", type=int, default=1, help="images per request")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="pixel encoding on the wire")
    parser.add_argument("--activations", action="store_true", help="also request hidden activations and logits")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, seconds")
    parser.add_argument("--max-inflight", type=int, default=1000,
                        help="open loop: in-flight cap per process; requests beyond it count as CLIENT_INFLIGHT_LIMIT")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="stop after this many measured requests (0: run for --duration)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="kserve_v2 model name")
    parser.add_argument("--mnist-dir", default=str(default_mnist_dir()),
                        help="directory with t10k-images-idx3-ubyte.gz (env DIGITS_MNIST_DIR; random pixels if absent)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write latency percentiles vs offered load as a PNG (meant for --rates)")
    parser.set_defaults(handler=run_command)


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    target = args.target or (DEFAULT_REST_TARGET if args.api == REST_API else DEFAULT_TARGET)
    return LoadConfig(
        target=target, api=args.api, stream=args.stream, binary_tensors=args.binary_tensors,
        mode="open" if args.rates else args.mode, concurrency=args.concurrency,
        rate=args.rates[0] if args.rates else args.rate, processes=args.processes, channels=args.channels, lb_policy=args.lb_policy,
        batch_size=args.batch_size, dtype=args.dtype, activations=args.activations,
        warmup_s=args.warmup, duration_s=args.duration, timeout_s=args.timeout,
        max_inflight=args.max_inflight, max_requests=args.max_requests,
        model_name=args.model_name, mnist_dir=args.mnist_dir,
    )


def run_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        config.validate()
    except ValueError as exc:
        print(f"digits loadtest: {exc}", file=sys.stderr)
        return 2
    mnist = Path(config.mnist_dir) / TEST_IMAGES_FILE
    if not (mnist.exists() or mnist.with_suffix("").exists()):
        print(f"digits loadtest: no MNIST test images in {config.mnist_dir}; sending random pixels",
              file=sys.stderr)
    print(describe(config, args.rates), flush=True)
    try:
        runs = sweep(config, args.rates) if args.rates else [run_load(config)]
    except LoadTestError as exc:
        print(f"digits loadtest: {exc}", file=sys.stderr)
        return 2
    print(table(runs))
    if args.json:
        write_json(args.json, document(config, runs, shlex.join(getattr(sys, "orig_argv", sys.argv))))
        print(f"JSON written to {args.json}")
    if args.plot:
        plot_latency_vs_load(runs, args.plot, f"digits loadtest: {config.api}{' stream' if config.stream else ''}"
                                              f"{' binary' if config.binary_tensors else ''}, "
                                              f"batch {config.batch_size} {config.dtype}, {config.target}")
        print(f"plot written to {args.plot}")
    return 0 if any(run["ok"] for run in runs) else 1

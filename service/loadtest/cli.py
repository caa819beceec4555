"""`digits loadtest`: the command-line face of the load tester.

Exit codes: 0 when some request succeeded, 1 when none did or the target failed the probe before
the load (down, silent, or refusing our TLS or token: one line saying which), 2 for a
configuration that cannot run, 130 after Ctrl-C (with the summary of what was measured so far).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from service.client import security as client_security
from service.contract import DEFAULT_MODEL_NAME, DEFAULT_TARGET
from service.cpus import usable_cpus
from service.loadtest.config import APIS, DEFAULT_REST_TARGET, DTYPES, MODES, REST_API, LoadConfig
from service.loadtest.plot import plot_latency_vs_load
from service.loadtest.report import describe, document, table, write_json
from service.loadtest.runner import LoadInterrupted, LoadTestError, TargetUnusable, run_load, sweep
from service.shared.mnist_files import MNIST_DIR_ENV, TEST_IMAGES_FILE, default_mnist_dir

PROG = "digits loadtest"
TARGET_ENV, HTTP_TARGET_ENV = "DIGITS_TARGET", "DIGITS_HTTP_TARGET"
EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by SIGINT (128 + 2)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--rates wants numbers separated by commas: {exc}") from exc
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError("--rates wants one or more positive rates, e.g. 500,1000,2000")
    return rates


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Registers `loadtest` on the `digits` command (see service/cli.py)."""
    parser = subparsers.add_parser(
        "loadtest", help="drive a deployment over gRPC or REST with MNIST requests and report throughput and latency",
        description="Closed loop (fixed concurrency) or open loop (fixed arrival rate, latency from the "
                    "intended send time) load against a digits or any Open Inference Protocol server, over "
                    f"gRPC (--api kserve_v2, digits_v1; --stream for their streams) or the protocol's REST API "
                    f"(--api {REST_API}: HTTP/1.1, one keep-alive connection per request in flight), with TLS "
                    "and a bearer token when the server wants them. One probe call first: a target that does "
                    "not answer or refuses us ends the command at once (exit 1). Ctrl-C prints what was "
                    "measured so far (exit 130).")
    parser.add_argument("--target", default=None,
                        help=f"where the server listens: HOST:PORT for the gRPC APIs (default ${TARGET_ENV}, else "
                             f"{DEFAULT_TARGET}); http(s)://HOST:PORT or HOST:PORT for {REST_API} (default "
                             f"${HTTP_TARGET_ENV}, else {DEFAULT_REST_TARGET}; https when a TLS option is given)")
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
                        help="gRPC only: many requests in flight on one stream per channel, ModelStreamInfer "
                             "(kserve_v2) or ClassifyStream (digits_v1); a V2 answer with error_message counts "
                             "as ERROR_MESSAGE")
    parser.add_argument("--mode", choices=MODES, default="closed",
                        help="closed: --concurrency requests always in flight; open: --rate arrivals/s whatever "
                             "the server does (latency from the intended send time)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: requests in flight (all processes)")
    parser.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second (all processes)")
    parser.add_argument("--rates", type=_rates, default=None,
                        help="open-loop sweep, e.g. 500,1000,2000: one run per rate (implies --mode open)")
    parser.add_argument("--processes", type=int, default=min(2, usable_cpus()),
                        help="client processes (default %(default)s)")
    parser.add_argument("--channels", type=int, default=1,
                        help="gRPC connections per client process (REST: always one connection a request in flight)")
    parser.add_argument("--lb-policy", choices=("pick_first", "round_robin"), default="pick_first",
                        help="gRPC load balancing; round_robin with a dns:/// target reaches every pod of a "
                             "headless Service")
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
    add_data_dir_option(parser, f"folder with {TEST_IMAGES_FILE} (env {MNIST_DIR_ENV}; random pixels if absent; "
                                "default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, default=None,
                        help="write latency percentiles vs offered load as a PNG (meant for --rates)")
    client_security.add_options(parser)
    parser.set_defaults(handler=run_command)


def add_data_dir_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--data-dir, the name train/export/evaluate use for the same folder, with --mnist-dir (its old
    name here) still accepted but left out of the help."""
    parser.add_argument("--data-dir", dest="data_dir", type=Path, default=default_mnist_dir(), help=help_text)
    parser.add_argument("--mnist-dir", dest="data_dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def default_target(api: str, environ: Mapping[str, str] | None = None) -> str:
    """Where to send load without --target: $DIGITS_HTTP_TARGET for REST and $DIGITS_TARGET for gRPC
    (they are different ports), else the protocol's default port on this machine."""
    environ = os.environ if environ is None else environ
    if api == REST_API:
        return environ.get(HTTP_TARGET_ENV) or DEFAULT_REST_TARGET
    return environ.get(TARGET_ENV) or DEFAULT_TARGET


def config_from_args(args: argparse.Namespace,
                     security: client_security.ClientSecurity = client_security.ClientSecurity()) -> LoadConfig:
    target = args.target or default_target(args.api)
    return LoadConfig(
        target=target, api=args.api, stream=args.stream, binary_tensors=args.binary_tensors,
        mode="open" if args.rates else args.mode, concurrency=args.concurrency,
        rate=args.rates[0] if args.rates else args.rate, processes=args.processes, channels=args.channels,
        lb_policy=args.lb_policy,
        batch_size=args.batch_size, dtype=args.dtype, activations=args.activations,
        warmup_s=args.warmup, duration_s=args.duration, timeout_s=args.timeout,
        max_inflight=args.max_inflight, max_requests=args.max_requests,
        model_name=args.model_name, mnist_dir=str(args.data_dir), security=security,
    )


def run_command(args: argparse.Namespace) -> int:
    """Runs the load and prints it; Ctrl-C at any point ends in exit 130 without a traceback."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args, client_security.from_args(args))
        config.validate()
    except ValueError as exc:  # SecurityOptionsError included
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    warning = client_security.plaintext_token_warning(config.security, config.target)
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    mnist = Path(config.mnist_dir) / TEST_IMAGES_FILE
    if not (mnist.exists() or mnist.with_suffix("").exists()):
        print(f"{PROG}: no MNIST test images in {config.mnist_dir}; sending random pixels", file=sys.stderr)
    print(describe(config, args.rates), flush=True)
    interrupted = False
    try:
        runs = sweep(config, args.rates) if args.rates else [run_load(config)]
    except TargetUnusable as exc:
        print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except LoadTestError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except LoadInterrupted as exc:
        runs, interrupted = exc.runs, True
    if runs:
        print(table(runs), flush=True)
    if args.json and runs:
        write_json(args.json, document(config, runs, shlex.join(getattr(sys, "orig_argv", sys.argv))))
        print(f"JSON written to {args.json}")
    if args.plot and runs:
        plot_latency_vs_load(runs, args.plot, f"digits loadtest: {config.api}{' stream' if config.stream else ''}"
                                              f"{' binary' if config.binary_tensors else ''}, "
                                              f"batch {config.batch_size} {config.dtype}, {config.target}")
        print(f"plot written to {args.plot}")
    if interrupted:
        print(f"{PROG}: interrupted" + ("" if runs else " before anything was measured"), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if any(run["ok"] for run in runs) else 1

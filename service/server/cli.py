"""`digits serve`: parse settings, set up logging, then serve in this process or under a supervisor."""

from __future__ import annotations

import argparse
import logging
import sys

from service.server import config as serve_config
from service.server import logs
from service.version import package_version

log = logging.getLogger("service.serve")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the model over gRPC and REST (digits.v1 + Open Inference Protocol) and the page",
        description="Serve the model over gRPC: digits.v1.DigitClassifier, the Open Inference Protocol "
                    "(inference.GRPCInferenceService) with Triton's extensions, grpc.health.v1 and reflection; "
                    "over HTTP: the Open Inference Protocol's REST binding (Triton's binary tensors too) and the "
                    "drawing page at /; Prometheus metrics on their own port. Every flag can also be set by the "
                    "environment variable shown.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    serve_config.add_arguments(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        config = serve_config.from_args(args)
    except serve_config.ConfigError as exc:
        print(f"digits serve: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_json)
    try:
        # Imported here, not above: a client-only install (without the `server` extra) still runs
        # every other `digits` command, and this one says what is missing.
        from service.server import lifecycle, workers
    except ImportError as exc:
        log.error("cannot start: %s; `digits serve` needs the server's dependencies: "
                  "pip install 'digit-serving[server]'", exc)
        return 2
    if config.workers == 1:
        return lifecycle.serve_in_process(config)
    return workers.Supervisor(config).run()

"""`digits serve`: parse settings, set up logging, then serve in this process or under a supervisor."""

from __future__ import annotations

import argparse
import logging

from service import config as serve_config
from service import logs

log = logging.getLogger("service.serve")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the model over gRPC (digits.v1 + Open Inference Protocol)",
        description="Serve the model over gRPC: digits.v1.DigitClassifier, the Open Inference Protocol "
                    "(inference.GRPCInferenceService), grpc.health.v1 and reflection; Prometheus metrics "
                    "over HTTP. Every flag can also be set by the environment variable shown.")
    serve_config.add_arguments(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    config = serve_config.from_args(args)
    logs.configure(config.log_level, config.log_json)
    if config.workers == 1:
        return serve_in_process(config)
    from service.workers import Supervisor  # sets up multiprocess metrics before they are imported

    return Supervisor(config).run()


def announce(config: serve_config.ServeConfig, grpc_port: int, metrics_port: int) -> None:
    """The one line that says the server is up (tests and scripts wait for it)."""
    log.info("serving grpc=%s:%d metrics=http://%s:%d/metrics workers=%d", config.host, grpc_port,
             config.host, metrics_port, config.workers)


def serve_in_process(config: serve_config.ServeConfig) -> int:
    from prometheus_client import start_http_server

    from service import server

    try:
        httpd, _ = start_http_server(config.metrics_port, addr=config.host)
    except OSError as exc:
        log.error("cannot start: metrics port %d: %s", config.metrics_port, exc)
        return 2
    return server.serve(config, lambda port: announce(config, port, httpd.server_port))

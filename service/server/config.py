"""`digits serve` settings: one table of options, each a flag and an environment variable.

The environment variable is DIGITS_ plus the flag in upper snake case (`--grace-period` ->
DIGITS_GRACE_PERIOD), so a ConfigMap can set anything a command line can; a flag beats the
environment, which beats the default.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

from service.contract import (DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT,
                              DEFAULT_MODEL_NAME)
from service.cpus import usable_cpus
from service.server.repository import DEFAULT_ROOT, default_root


@dataclass(frozen=True)
class ServeConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_GRPC_PORT
    http: bool = True
    http_port: int = DEFAULT_HTTP_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    model_repository: str = DEFAULT_ROOT
    model_name: str = DEFAULT_MODEL_NAME
    model_version: str = ""
    workers: int = 0                       # 0: one per usable CPU
    intra_op_threads: int = 1
    graph_optimization: str = "all"
    max_batch_size: int = 1024
    max_queue_size: int = 8192
    max_queue_delay_us: int = 0
    max_concurrent_rpcs: int = 256
    max_receive_message_bytes: int = 16 * 1024 * 1024
    max_send_message_bytes: int = 16 * 1024 * 1024
    max_connection_age: float = 0.0        # seconds; 0 keeps connections for ever
    max_concurrent_streams: int = 256      # HTTP/2 streams (calls) one gRPC connection may have open
    max_connections: int = 400             # client connections per worker, on each of gRPC and HTTP
    grpc_read_timeout: float = 30.0        # seconds a gRPC call has to send its (first) request message
    http_read_timeout: float = 30.0        # seconds a client has to send one whole HTTP request
    http_idle_timeout: float = 75.0        # seconds an idle HTTP keep-alive connection stays open
    grace_period: float = 10.0
    model_poll_interval: float = 5.0       # seconds; 0 never looks for new versions
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_token_file: str = ""
    log_level: str = "INFO"
    log_json: bool = False


HELP = {
    "host": "address to listen on for gRPC, HTTP and metrics (0.0.0.0 in containers)",
    "port": "gRPC port (0 picks a free one)",
    "http": "serve the Open Inference Protocol over REST and the page at / (--no-http: gRPC only)",
    "http_port": "HTTP port of REST and the page (0 picks a free one)",
    "metrics_port": "HTTP port of Prometheus /metrics (0 picks a free one)",
    "model_repository": "folder holding <model-name>/<version>/model.onnx; `models` means ./models if that "
                        "folder exists, else the model shipped in the package",
    "model_name": "model folder in the repository; also the model's name on the V2 API",
    "model_version": "version folder to serve (default: the newest)",
    "workers": "server processes sharing the port (default: one per usable CPU)",
    "intra_op_threads": "onnxruntime threads per worker",
    "graph_optimization": "onnxruntime graph optimisation level",
    "max_batch_size": "most images per request and per onnxruntime call",
    "max_queue_size": "most images waiting for compute per worker; beyond it RESOURCE_EXHAUSTED",
    "max_queue_delay_us": "wait this long for more requests before computing (latency for throughput)",
    "max_concurrent_rpcs": "most inference calls (stream messages included) one worker handles at once on each "
                           "of gRPC and HTTP; more get RESOURCE_EXHAUSTED / 429 (about as many may wait in gRPC "
                           "core, which sheds the rest)",
    "max_receive_message_bytes": "largest request message (gRPC) or body (HTTP, else 413) accepted",
    "max_send_message_bytes": "largest response message sent",
    "max_connection_age": "close client connections after this many seconds so clients rebalance (0: never)",
    "max_concurrent_streams": "most gRPC calls one client connection may have open at once (HTTP/2 "
                              "MAX_CONCURRENT_STREAMS); more are refused (REFUSED_STREAM, clients retry)",
    "max_connections": "most client connections one worker keeps open on each of gRPC and HTTP; past it new "
                       "connections are refused (size `ulimit -n` above twice this)",
    "grpc_read_timeout": "seconds a gRPC call has to send its request message (a stream: its first one); "
                         "slower ones end DEADLINE_EXCEEDED",
    "http_read_timeout": "seconds a client has to send one whole HTTP request; slower ones get 408",
    "http_idle_timeout": "seconds an idle HTTP keep-alive connection stays open",
    "grace_period": "seconds in-flight requests get to finish after SIGTERM/SIGINT",
    "model_poll_interval": "seconds between looks for a new model version to swap in (0: never)",
    "tls_cert": "PEM certificate chain: serve gRPC and HTTP over TLS",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "auth_token_file": "file holding a bearer token the inference APIs require (or env DIGITS_AUTH_TOKEN)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_json": "log one JSON object per line",
}
CHOICES = {"graph_optimization": ("disable", "basic", "extended", "all"),
           "log_level": ("DEBUG", "INFO", "WARNING", "ERROR")}


def env_name(field_name: str) -> str:
    return "DIGITS_" + field_name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def add_arguments(parser: argparse.ArgumentParser, environ: dict[str, str] | None = None) -> None:
    environ = os.environ if environ is None else environ
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        default = f.default
        if env_name(f.name) in environ:
            raw = environ[env_name(f.name)]
            try:
                default = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                parser.error(f"environment variable {env_name(f.name)}={raw!r} is not a valid {kind.__name__}")
        help_text = f"{HELP[f.name]} [env {env_name(f.name)}; default %(default)s]"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, choices=CHOICES.get(f.name),
                                help=help_text)


def from_args(args: argparse.Namespace) -> ServeConfig:
    values = {f.name: getattr(args, f.name) for f in fields(ServeConfig)}
    if values["workers"] <= 0:
        values["workers"] = usable_cpus()
    if values["model_repository"] == DEFAULT_ROOT:
        values["model_repository"] = str(default_root())
    return ServeConfig(**values)

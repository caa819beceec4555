"""`digits serve` settings: one table of options, each a flag and an environment variable.

The environment variable is DIGITS_ plus the flag in upper snake case (`--grace-period` ->
DIGITS_GRACE_PERIOD), so a ConfigMap can set anything a command line can; a flag beats the
environment, which beats the default. The table (`OPTIONS`) also gives each numeric setting its
range, checked while parsing (flag or environment), so a bad value stops the command with one
line and exit code 2 instead of failing later in a socket call or gRPC core: ports 0..65535,
gRPC's 32-bit arguments, seconds that gRPC counts in 32-bit milliseconds.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from service.contract import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_MODEL_NAME,
)
from service.cpus import usable_cpus
from service.server.repository import DEFAULT_ROOT, default_root


@dataclass(frozen=True)
class ServeConfig:
    host: str = DEFAULT_HOST
    grpc_port: int = DEFAULT_GRPC_PORT
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
    max_connections: int = 400             # per worker and protocol: 2 x 400 + listeners fit `ulimit -n` 1024
    max_receive_message_bytes: int = 16 * 1024 * 1024
    max_send_message_bytes: int = 16 * 1024 * 1024
    max_connection_age: float = 0.0        # seconds; 0 keeps connections for ever
    max_concurrent_streams: int = 256      # HTTP/2 streams (calls) one gRPC connection may have open
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


INT32_MAX = 2**31 - 1                 # gRPC core's integer arguments are C ints
GRPC_SECONDS_MAX = INT32_MAX // 1000  # seconds that gRPC core is given in milliseconds


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: from `low` (excluded when `above`, for durations that
    must be positive) up to `high` (None: no upper bound)."""

    low: float
    high: float | None = None
    above: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return (value > self.low if self.above else value >= self.low) and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high) if self.high is not None else None
        if self.above:
            return f"> {low}" + (f" and <= {high}" if high is not None else "")
        return f"{low}..{high}" if high is not None else f">= {low}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Option:
    group: str
    help: str
    range: Range | None = None
    choices: tuple[str, ...] | None = None
    public: str | None = None    # the flag's and variable's name when it is not the field's


NETWORK, MODEL, LIMITS, SECURITY, HTTP, METRICS, LOGGING = (
    "network", "model", "batching and limits", "security", "HTTP", "metrics", "logging")
GROUP_ORDER = (NETWORK, MODEL, LIMITS, SECURITY, HTTP, METRICS, LOGGING)
PORT = Range(0, 65535)
POSITIVE_SECONDS = Range(0, GRPC_SECONDS_MAX, above=True)
SECONDS_OR_ZERO = Range(0, GRPC_SECONDS_MAX)

OPTIONS = {
    "host": Option(NETWORK, "address to listen on for gRPC, HTTP and metrics (0.0.0.0 in containers)"),
    "grpc_port": Option(NETWORK, "gRPC port (0 picks a free one)", PORT, public="port"),
    "workers": Option(NETWORK, "server processes sharing the ports (0: one per usable CPU)", Range(0, 1024)),
    "max_connection_age": Option(NETWORK, "close client connections after this many seconds so clients rebalance "
                                          "(0: never)", SECONDS_OR_ZERO),
    "grpc_read_timeout": Option(NETWORK, "seconds a gRPC call has to send its request message (a stream: its first "
                                         "one); slower ones end DEADLINE_EXCEEDED", POSITIVE_SECONDS),
    "grace_period": Option(NETWORK, "seconds in-flight requests get to finish after SIGTERM/SIGINT", SECONDS_OR_ZERO),
    "http": Option(HTTP, "serve the Open Inference Protocol over REST and the page at / (--no-http: gRPC only)"),
    "http_port": Option(HTTP, "HTTP port of REST and the page (0 picks a free one)", PORT),
    "http_read_timeout": Option(HTTP, "seconds a client has to send one whole HTTP request; slower ones get 408",
                                POSITIVE_SECONDS),
    "http_idle_timeout": Option(HTTP, "seconds an idle HTTP keep-alive connection stays open", POSITIVE_SECONDS),
    "metrics_port": Option(METRICS, "HTTP port of Prometheus /metrics (0 picks a free one)", PORT),
    "model_repository": Option(MODEL, "folder holding <model-name>/<version>/model.onnx; `models` means ./models if "
                                      "that folder exists, else the model shipped in the package"),
    "model_name": Option(MODEL, "model folder in the repository; also the model's name on the V2 API"),
    "model_version": Option(MODEL, "version folder to serve (empty: the newest)"),
    "model_poll_interval": Option(MODEL, "seconds between looks for a new model version to swap in (0: never)",
                                  Range(0, 86400)),
    "intra_op_threads": Option(MODEL, "onnxruntime threads per worker", Range(1, 1024)),
    "graph_optimization": Option(MODEL, "onnxruntime graph optimisation level",
                                 choices=("disable", "basic", "extended", "all")),
    "max_batch_size": Option(LIMITS, "most images per request and per onnxruntime call (start-up warms up at it)",
                             Range(1, 65536)),
    "max_queue_size": Option(LIMITS, "most images waiting for compute per worker; beyond it RESOURCE_EXHAUSTED",
                             Range(1, INT32_MAX)),
    "max_queue_delay_us": Option(LIMITS, "wait this long for more requests before computing (latency for "
                                         "throughput)", Range(0, 10_000_000)),
    "max_concurrent_rpcs": Option(LIMITS, "most inference calls (stream messages included) one worker handles at once "
                                          "on each of gRPC and HTTP; more get RESOURCE_EXHAUSTED / 429 (about as many "
                                          "may wait in gRPC core, which sheds the rest)", Range(1, INT32_MAX)),
    "max_receive_message_bytes": Option(LIMITS, "largest request message (gRPC) or body (HTTP, else 413) accepted",
                                        Range(1, INT32_MAX)),
    "max_send_message_bytes": Option(LIMITS, "largest response message sent", Range(1, INT32_MAX)),
    "max_concurrent_streams": Option(LIMITS, "most gRPC calls one client connection may have open at once (HTTP/2 "
                                             "MAX_CONCURRENT_STREAMS); more are refused (REFUSED_STREAM, clients "
                                             "retry)", Range(1, INT32_MAX)),
    "max_connections": Option(LIMITS, "most client connections one worker keeps open on each of gRPC and HTTP; past "
                                      "it new connections are refused (gRPC: closed at once; HTTP: 503 and closed); "
                                      "size `ulimit -n` above twice this", Range(1, INT32_MAX)),
    "tls_cert": Option(SECURITY, "PEM certificate chain: serve gRPC and HTTP over TLS"),
    "tls_key": Option(SECURITY, "PEM private key of --tls-cert"),
    "tls_client_ca": Option(SECURITY, "PEM CA bundle: require client certificates signed by it (mutual TLS)"),
    "auth_token_file": Option(SECURITY, "file holding a bearer token the inference APIs require (or env "
                                        "DIGITS_AUTH_TOKEN)"),
    "log_level": Option(LOGGING, "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    "log_json": Option(LOGGING, "log one JSON object per line"),
}


METAVARS = {int: "INT", float: "FLOAT", str: "TEXT"}


class ConfigError(ValueError):
    """Settings that are each valid but do not go together; `digits serve` reports it in one line."""


def public_name(field_name: str) -> str:
    """The name users know a setting by (`grpc_port` is `--port`, DIGITS_PORT, as it always was)."""
    return OPTIONS[field_name].public or field_name


def flag_of(field_name: str) -> str:
    return "--" + public_name(field_name).replace("_", "-")


def env_name(field_name: str) -> str:
    return "DIGITS_" + public_name(field_name).upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(kind: type, allowed: Range | None) -> Callable[[str], object]:
    """Text -> value of `kind`, refused (ArgumentTypeError, argparse's one-line reason, which starts
    with the text) when it is not one or lies outside `allowed`."""
    def convert(text: str) -> object:
        try:
            value = _parse_bool(text) if kind is bool else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if allowed is not None and value not in allowed:
            raise argparse.ArgumentTypeError(f"{text} is out of range ({allowed})")
        return value
    return convert


def _show_default(value: object) -> str:
    if isinstance(value, bool):
        return "; default on" if value else "; default off"
    return f"; default {value}" if value != "" else ""


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """One flag per setting, in the table's groups; a DIGITS_* variable sets its default (a bad
    one is a usage error naming the variable)."""
    environ = os.environ if environ is None else environ
    groups = {name: parser.add_argument_group(name) for name in GROUP_ORDER}
    for f in fields(ServeConfig):
        option, flag, kind, default = OPTIONS[f.name], flag_of(f.name), type(f.default), f.default
        convert = _converter(kind, option.range)
        if env_name(f.name) in environ:
            try:
                default = convert(environ[env_name(f.name)])
            except argparse.ArgumentTypeError as exc:
                parser.error(f"environment variable {env_name(f.name)}={exc}")
        bounds = f"; {option.range}" if option.range is not None else ""
        help_text = f"{option.help} [env {env_name(f.name)}{_show_default(default)}{bounds}]".replace("%", "%%")
        group = groups[option.group]
        if kind is bool:  # default given separately: BooleanOptionalAction would append its own "(default: …)"
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
            parser.set_defaults(**{f.name: default})
        else:
            group.add_argument(flag, dest=f.name, type=convert, default=default, choices=option.choices,
                               metavar=METAVARS[kind] if option.choices is None else None, help=help_text)


def from_args(args: argparse.Namespace) -> ServeConfig:
    """The settings; ConfigError when two of them clash (two services on one port)."""
    values = {f.name: getattr(args, f.name) for f in fields(ServeConfig)}
    ports = [(name, values[name]) for name in ("grpc_port", "http_port", "metrics_port")
             if values[name] != 0 and (name != "http_port" or values["http"])]
    for i, (name, port) in enumerate(ports):
        for other, other_port in ports[i + 1:]:
            if port == other_port:
                raise ConfigError(f"{flag_of(name)} and {flag_of(other)} are both {port}; "
                                  "each service needs a port of its own")
    if values["workers"] <= 0:
        values["workers"] = usable_cpus()
    if values["model_repository"] == DEFAULT_ROOT:
        values["model_repository"] = str(default_root())
    return ServeConfig(**values)

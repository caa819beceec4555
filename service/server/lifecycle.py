"""Lifecycle of one server process: assemble, load, warm up, report ready, drain on a signal.

This is the only module that decides health status. Order of events:
load and warm up the model (a bad model fails start-up before any port is bound) → start the
HTTP front end's thread (its own core; ready answers 503 until SERVING) → start gRPC with every
service NOT_SERVING → SERVING → serve gRPC on this thread's loop, while a watcher thread loads
new model versions for both cores, until SIGTERM/SIGINT → NOT_SERVING → new calls UNAVAILABLE
(HTTP: 503) while in-flight ones get `grace_period` seconds → exit 0. `serve_in_process` runs it
with its own /metrics; `workers.Supervisor` runs it in N forked workers.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import REGISTRY, start_http_server

from service.server import metrics, ports, runtime, security
from service.server.config import ServeConfig
from service.server.core import InferenceCore, LoadedModels
from service.server.core_types import CoreSettings
from service.server.errors import ModelNotFound
from service.server.grpc_api import server as grpc_server
from service.server.grpc_api import transport
from service.server.http_api.front_end import HttpFrontEnd
from service.server.repository import ModelRepository
from service.server.runtime import ModelLoadError

log = logging.getLogger(__name__)


def announce(config: ServeConfig, grpc_port: int, http_port: int | None, metrics_port: int) -> None:
    """The one line that says the server is up (tests and scripts wait for it)."""
    scheme = "https" if config.tls_cert else "http"
    http = f"{scheme}://{config.host}:{http_port}" if http_port is not None else "off"
    log.info("serving grpc=%s:%d http=%s metrics=http://%s:%d/metrics workers=%d repository=%s", config.host,
             grpc_port, http, config.host, metrics_port, config.workers, Path(config.model_repository).absolute())


def check_ports_unused(config: ServeConfig) -> None:
    """Raises OSError when another process listens on a port this server is to serve: SO_REUSEPORT
    would otherwise share it silently (see ports.py)."""
    ports.check_unused(config.host, config.grpc_port, "gRPC")
    if config.http:
        ports.check_unused(config.host, config.http_port, "HTTP")
    ports.check_unused(config.host, config.metrics_port, "metrics")


def core_settings(config: ServeConfig) -> CoreSettings:
    return CoreSettings(max_batch_size=config.max_batch_size, max_queue_size=config.max_queue_size,
                        max_queue_delay=config.max_queue_delay_us / 1e6,
                        intra_op_threads=config.intra_op_threads,
                        graph_optimization=config.graph_optimization, workers=config.workers)


def build_core(config: ServeConfig, models: LoadedModels | None = None) -> InferenceCore:
    """An inference core for one front end; cores given the same `models` share each loaded version."""
    return InferenceCore(ModelRepository(config.model_repository, config.model_name),
                         config.model_version or None, core_settings(config), models)


class ServerProcess:
    """One process's gRPC server over one inference core, driven by the serving loop, and its
    HTTP front end over another."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._models = LoadedModels(core_settings(config))   # one copy of each version, both front ends
        self.core = build_core(config, self._models)
        self._serving = False
        self._stop = threading.Event()
        self.port: int | None = None
        self.http: HttpFrontEnd | None = None

    def is_serving(self) -> bool:
        return self._serving

    def request_stop(self) -> None:
        self._stop.set()

    def start(self) -> int:
        """Loads the model, binds and starts serving; returns the bound gRPC port."""
        model = self.core.load()  # raises on a missing, corrupt or wrong model: nothing bound yet
        tls, token = security.tls_material(self.config), security.load_token(self.config)
        if self.config.http:
            self.http = HttpFrontEnd(self.config, build_core(self.config, self._models), self.is_serving, token)
            self.http.start()
        self._transport, self._loop, self.port = grpc_server.build(self.config, self.core, self.is_serving,
                                                                   tls, token)
        self._transport.start()  # every service NOT_SERVING until the line below
        # the core warmed up the session while loading; now the whole path is ready
        self._serving = True
        self._loop.set_serving(True)
        log.info("worker ready: grpc %s:%d, model %s version %s (sha256 %s)", self.config.host, self.port,
                 model.name, model.version, model.sha256[:12])
        return self.port

    def _watch_repository(self) -> None:
        """Loads new model versions as they appear (hot reload) until the server stops; the
        serving loop swaps each one in between two turns."""
        interval = self.config.model_poll_interval
        cores = [self.core, *([self.http.core] if self.http else [])]
        while interval > 0 and not self._stop.wait(interval):
            try:
                for core in cores:
                    core.reload_if_changed()
            except Exception:  # noqa: BLE001 - a watcher that dies would silently end hot reload
                log.exception("model repository check failed")

    def serve_until_stopped(self) -> None:
        watcher = threading.Thread(target=self._watch_repository, name="repository-watcher", daemon=True)
        watcher.start()
        self._loop.run(self._stop.is_set)
        log.info("draining: NOT_SERVING, refusing new RPCs, %.1f s for in-flight ones", self.config.grace_period)
        self._serving = False
        deadline = time.monotonic() + self.config.grace_period
        if self.http:
            self.http.begin_drain()
        drained = self._loop.drain(self.config.grace_period)
        if self.http and not self.http.wait_drained(deadline - time.monotonic()):
            drained = False
        if not drained:
            log.warning("grace period over with calls still in flight; their clients get UNAVAILABLE")
        watcher.join()
        log.info("stopped after answering %d inference calls successfully", metrics.answered_calls())


def serve(config: ServeConfig, on_ready: Callable[[int, int | None], object] | None = None) -> int:
    """Runs one server process to completion (SIGTERM/SIGINT drain it), which then exits with 0;
    a start-up failure is one log line and returns 2. The caller has set up metrics
    (`serve_in_process` or the supervisor)."""
    runtime.disable_telemetry()
    try:
        transport.check_grpcio()
        process = ServerProcess(config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: process.request_stop())
        port = process.start()
    except ModelNotFound as exc:
        log.error("cannot start: %s; name the model repository with --model-repository (or DIGITS_MODEL_REPOSITORY)",
                  exc)
        return 2
    except (ModelLoadError, security.SecurityConfigError, OSError, transport.UnsupportedGrpcio) as exc:
        log.error("cannot start: %s", exc)
        return 2
    if on_ready is not None:
        on_ready(port, process.http.port if process.http else None)
    process.serve_until_stopped()
    # Leave without destroying the gRPC server: a core shutdown would answer CANCELLED to calls
    # still on their way, whereas the connections the kernel closes now read UNAVAILABLE to them.
    logging.shutdown()
    os._exit(0)


def serve_in_process(config: ServeConfig) -> int:
    """`--workers 1`: this process serves gRPC, and /metrics from a thread."""
    try:
        check_ports_unused(config)
    except OSError as exc:
        log.error("cannot start: %s", exc.strerror)
        return 2
    metrics.register(REGISTRY)  # beside prometheus-client's process and platform collectors
    try:
        httpd, _ = start_http_server(config.metrics_port, addr=config.host)
    except OSError as exc:
        log.error("cannot start: metrics port %d: %s", config.metrics_port, exc)
        return 2
    return serve(config, lambda port, http_port: announce(config, port, http_port, httpd.server_port))

"""Lifecycle of one server process: assemble, load, warm up, report ready, drain on a signal.

This is the only module that decides health status. Order of events:
load and warm up the model (a bad model fails start-up before any port is bound) → start gRPC
with every service NOT_SERVING → SERVING → watch the repository for new versions while waiting
for SIGTERM/SIGINT → NOT_SERVING → stop accepting RPCs and give in-flight ones `grace_period`
seconds → exit 0. `serve_in_process` runs it with its own /metrics; `workers.Supervisor` runs it
in N forked workers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from prometheus_client import REGISTRY, start_http_server

from service.server import metrics, runtime, security
from service.server.config import ServeConfig
from service.server.core import InferenceCore
from service.server.core_types import CoreSettings
from service.server.errors import ModelNotFound
from service.server.grpc_api.server import GrpcServer
from service.server.repository import ModelRepository
from service.server.runtime import ModelLoadError

log = logging.getLogger(__name__)


def announce(config: ServeConfig, grpc_port: int, metrics_port: int) -> None:
    """The one line that says the server is up (tests and scripts wait for it)."""
    log.info("serving grpc=%s:%d metrics=http://%s:%d/metrics workers=%d", config.host, grpc_port,
             config.host, metrics_port, config.workers)


def build_core(config: ServeConfig) -> InferenceCore:
    settings = CoreSettings(max_batch_size=config.max_batch_size, max_queue_size=config.max_queue_size,
                            max_queue_delay=config.max_queue_delay_us / 1e6,
                            intra_op_threads=config.intra_op_threads,
                            graph_optimization=config.graph_optimization)
    return InferenceCore(ModelRepository(config.model_repository, config.model_name),
                         config.model_version or None, settings)


class ServerProcess:
    """One process's gRPC server over one inference core."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.core = build_core(config)
        self._serving = False
        self._stop = asyncio.Event()
        self._grpc: GrpcServer | None = None
        self.port: int | None = None

    def is_serving(self) -> bool:
        return self._serving

    async def start(self) -> int:
        """Loads the model and starts serving; returns the bound gRPC port."""
        model = self.core.load()  # raises on a missing, corrupt or wrong model: nothing bound yet
        self._grpc = GrpcServer(self.config, self.core, self.is_serving,
                                security.tls_material(self.config), security.load_token(self.config))
        self.port = await self._grpc.start()
        # the core warmed up the session while loading; now the whole path is ready
        self._serving = True
        await self._grpc.set_serving(True)
        log.info("worker ready: grpc %s:%d, model %s version %s (sha256 %s)", self.config.host, self.port,
                 model.name, model.version, model.sha256[:12])
        return self.port

    def request_stop(self) -> None:
        self._stop.set()

    async def watch_repository(self) -> None:
        """Swaps in new model versions as they appear (hot reload), until the server stops."""
        interval = self.config.model_poll_interval
        while interval > 0 and not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
            except TimeoutError:
                await self.core.reload_if_changed()

    async def wait_and_drain(self) -> None:
        watcher = asyncio.create_task(self.watch_repository())
        await self._stop.wait()
        await watcher
        log.info("draining: NOT_SERVING, refusing new RPCs, %.1f s for in-flight ones", self.config.grace_period)
        self._serving = False
        await self._grpc.drain(self.config.grace_period)
        log.info("stopped after answering %d inference calls successfully", metrics.answered_calls())


async def run(config: ServeConfig, on_ready: Callable[[int], None] | None = None) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code."""
    process = ServerProcess(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.request_stop)
    port = await process.start()
    if on_ready is not None:
        on_ready(port)
    await process.wait_and_drain()
    return 0


def serve(config: ServeConfig, on_ready: Callable[[int], None] | None = None) -> int:
    """Runs one server process to completion; a start-up failure is one log line and exit code 2.
    The caller has set up metrics (`serve_in_process` or the supervisor)."""
    runtime.disable_telemetry()
    try:
        return asyncio.run(run(config, on_ready))
    except (ModelLoadError, ModelNotFound, security.SecurityConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2


def serve_in_process(config: ServeConfig) -> int:
    """`--workers 1`: this process serves gRPC, and /metrics from a thread."""
    metrics.register(REGISTRY)  # beside prometheus-client's process and platform collectors
    try:
        httpd, _ = start_http_server(config.metrics_port, addr=config.host)
    except OSError as exc:
        log.error("cannot start: metrics port %d: %s", config.metrics_port, exc)
        return 2
    return serve(config, lambda port: announce(config, port, httpd.server_port))

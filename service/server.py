"""Lifecycle of one server process: assemble, load, warm up, report ready, drain on a signal.

This is the only module that touches health status. Order of events:
load and warm up the model (a bad model fails start-up before any port is bound) → start gRPC
with every service NOT_SERVING → SERVING → watch the repository for new versions while waiting
for SIGTERM/SIGINT → NOT_SERVING → stop accepting RPCs and give in-flight ones `grace_period`
seconds → exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service import metrics, security, status
from service.config import ServeConfig
from service.core import CoreSettings, InferenceCore
from service.errors import ModelNotFound
from service.repository import ModelRepository
from service.runtime import ModelLoadError
from service.servicers import digits_v1, kserve_v2

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def build_core(config: ServeConfig) -> InferenceCore:
    settings = CoreSettings(max_batch_size=config.max_batch_size, max_queue_size=config.max_queue_size,
                            max_queue_delay=config.max_queue_delay_us / 1e6,
                            intra_op_threads=config.intra_op_threads,
                            graph_optimization=config.graph_optimization)
    return InferenceCore(ModelRepository(config.model_repository, config.model_name),
                         config.model_version or None, settings)


def grpc_options(config: ServeConfig) -> list[tuple[str, int]]:
    options = [("grpc.max_receive_message_length", config.max_receive_message_bytes),
               ("grpc.max_send_message_length", config.max_send_message_bytes),
               ("grpc.so_reuseport", 1),
               # Calls gRPC core holds before our event loop takes them. Unbounded (its default is
               # thousands), an overloaded worker serves only calls that waited past their deadline
               # and goodput collapses; bounded, the excess is shed at once and what is served is fresh.
               ("grpc.server.max_pending_requests", config.max_concurrent_rpcs),
               ("grpc.server.max_pending_requests_hard_limit", 2 * config.max_concurrent_rpcs)]
    if config.max_connection_age > 0:
        age_ms = int(config.max_connection_age * 1000)
        options += [("grpc.max_connection_age_ms", age_ms),
                    ("grpc.max_connection_age_grace_ms", int(config.grace_period * 1000))]
    return options


class ServerProcess:
    """One process's gRPC server over one inference core."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.core = build_core(config)
        self._health = health.aio.HealthServicer()
        self._serving = False
        self._stop = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    def is_serving(self) -> bool:
        return self._serving

    async def start(self) -> int:
        """Loads the model and starts serving; returns the bound gRPC port."""
        model = self.core.load()  # raises on a missing, corrupt or wrong model: nothing bound yet
        credentials = security.server_credentials(self.config)
        token = security.load_token(self.config)
        interceptors = [security.BearerTokenInterceptor(token)] if token else []
        status.limit_concurrent_calls(self.config.max_concurrent_rpcs)
        server = grpc.aio.server(options=grpc_options(self.config), interceptors=interceptors)
        names = [digits_v1.add_to_server(self.core, server),
                 kserve_v2.add_to_server(self.core, self.is_serving, server)]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._service_names = ["", *names]
        for name in self._service_names:
            await self._health.set(name, NOT_SERVING)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        address = f"{self.config.host}:{self.config.port}"
        self.port = (server.add_secure_port(address, credentials) if credentials
                     else server.add_insecure_port(address))
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        # the core warmed up the session while loading; now the whole path is ready
        self._serving = True
        for name in self._service_names:
            await self._health.set(name, SERVING)
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
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.config.grace_period)
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
    """Runs one server process to completion; a start-up failure is one log line and exit code 2."""
    try:
        return asyncio.run(run(config, on_ready))
    except (ModelLoadError, ModelNotFound, security.SecurityConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2

"""The gRPC server of one worker process: both APIs, health and reflection on one grpc.aio server.

The lifecycle code decides when it starts, when health says SERVING and when it drains; this
module only knows how to do each of those with gRPC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.server.config import ServeConfig
from service.server.grpc_api import auth, digits_v1, kserve_v2, status
from service.server.security import TlsMaterial

if TYPE_CHECKING:
    from service.server.core import InferenceCore

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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


class GrpcServer:
    """digits.v1, the Open Inference Protocol, grpc.health.v1 and reflection over one core."""

    def __init__(self, config: ServeConfig, core: InferenceCore, is_serving: Callable[[], bool],
                 tls: TlsMaterial | None, token: bytes | None) -> None:
        self._config = config
        self._credentials = auth.server_credentials(tls)
        interceptors = [auth.BearerTokenInterceptor(token)] if token else []
        status.limit_concurrent_calls(config.max_concurrent_rpcs)
        self._server = grpc.aio.server(options=grpc_options(config), interceptors=interceptors)
        names = [digits_v1.add_to_server(core, self._server),
                 kserve_v2.add_to_server(core, is_serving, self._server)]
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._service_names = ["", *names]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server)

    async def start(self) -> int:
        """Listens with every service NOT_SERVING; returns the bound port."""
        await self.set_serving(False)
        address = f"{self._config.host}:{self._config.port}"
        port = (self._server.add_secure_port(address, self._credentials) if self._credentials
                else self._server.add_insecure_port(address))
        if not port:
            raise OSError(f"cannot listen on {address}")
        await self._server.start()
        return port

    async def set_serving(self, serving: bool) -> None:
        for name in self._service_names:
            await self._health.set(name, SERVING if serving else NOT_SERVING)

    async def drain(self, grace: float) -> None:
        """Health NOT_SERVING (watchers told), new calls refused, in-flight ones given `grace` seconds."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)

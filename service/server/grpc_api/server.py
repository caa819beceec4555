"""Assembles one worker's gRPC server: the transport, every method table, and the serving loop.

The lifecycle code decides when it starts, when health says SERVING and when it drains; this
module only wires the pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from service.server.config import ServeConfig
from service.server.grpc_api import auth
from service.server.grpc_api.digits_v1 import SERVICE as DIGITS_SERVICE
from service.server.grpc_api.digits_v1 import DigitsV1
from service.server.grpc_api.health import SERVICE as HEALTH_SERVICE
from service.server.grpc_api.health import Health
from service.server.grpc_api.kserve_v2 import SERVICE as KSERVE_SERVICE
from service.server.grpc_api.kserve_v2 import KServeV2
from service.server.grpc_api.loop import ServingLoop
from service.server.grpc_api.reflection import Reflection
from service.server.grpc_api.transport import CoreServer
from service.server.policy import RequestPolicy
from service.server.security import TlsMaterial

if TYPE_CHECKING:
    from service.server.core import InferenceCore

# Calls the core keeps requested ahead of arrivals. A call that finds none waits in the core's
# own queue, where a burst beyond it could be cancelled; this many covers a 2,000-call burst.
REQUESTED_CALLS = 2500


def channel_options(config: ServeConfig) -> list[tuple[str, int]]:
    options = [("grpc.max_receive_message_length", config.max_receive_message_bytes),
               ("grpc.max_send_message_length", config.max_send_message_bytes),
               ("grpc.so_reuseport", 1),
               # HTTP/2 MAX_CONCURRENT_STREAMS; gRPC core counts a stream until its call is freed
               # (overload protection, on by default), which also bounds what rapid resets can hold
               ("grpc.max_concurrent_streams", config.max_concurrent_streams),
               # no BDP probing: it raises every stream's flow-control window to megabytes, which
               # gRPC core then buffers for a client that sends while we do not read (a stream
               # whose replies it does not read); 64 KiB a stream keeps that bounded
               ("grpc.http2.bdp_probe", 0),
               ("grpc.max_allowed_incoming_connections", config.max_connections),
               # a TLS or HTTP/2 handshake gets as long as a call gets for its request
               ("grpc.server_handshake_timeout_ms", int(config.grpc_read_timeout * 1000))]
    if config.max_connection_age > 0:
        options += [("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(config.grace_period * 1000))]
    return options


def build(config: ServeConfig, core: InferenceCore, is_serving: Callable[[], bool],
          tls: TlsMaterial | None, token: bytes | None) -> tuple[CoreServer, ServingLoop, int]:
    """The transport bound to `config.host:config.grpc_port` (not yet started), its loop, and the port."""
    transport = CoreServer(channel_options(config), backlog=REQUESTED_CALLS)
    health = Health([DIGITS_SERVICE, KSERVE_SERVICE])
    reflection = Reflection([DIGITS_SERVICE, KSERVE_SERVICE, HEALTH_SERVICE])
    methods = [*DigitsV1(core).methods(), *KServeV2(core, is_serving).methods(), *health.methods(),
               *reflection.methods()]
    loop = ServingLoop(transport, core, methods, health, RequestPolicy(core, token, config.max_concurrent_rpcs),
                       config.max_send_message_bytes, config.grpc_read_timeout)
    port = transport.add_port(f"{config.host}:{config.grpc_port}", auth.server_credentials(tls))
    return transport, loop, port

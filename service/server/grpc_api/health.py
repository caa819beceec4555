"""grpc.health.v1: Check, List, and Watch's subscribers, for the serving loop.

The lifecycle code is the only caller of `set_serving`; the loop sends what it returns to the
watchers. Every service this server offers is listed (and "" for the server as a whole), so a
probe of any of them flips together. The messages are our own generated code
(proto/grpc/health/v1/health.proto), not grpcio-health-checking's, which pins protobuf 7.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from service.generated.grpc.health.v1 import health_pb2 as pb
from service.server.errors import ModelNotFound
from service.server.grpc_api.methods import Kind, Method
from service.server.grpc_api.status import parse

if TYPE_CHECKING:
    from service.server.grpc_api.transport import Call

SERVICE = pb.DESCRIPTOR.services_by_name["Health"].full_name
_REPLIES = {status: pb.HealthCheckResponse(status=status).SerializeToString()
            for status in (pb.HealthCheckResponse.SERVING, pb.HealthCheckResponse.NOT_SERVING,
                           pb.HealthCheckResponse.SERVICE_UNKNOWN)}


class Health:
    def __init__(self, service_names: list[str]) -> None:
        self._status = {name: pb.HealthCheckResponse.NOT_SERVING for name in ["", *service_names]}
        self._watchers: dict[Call, str] = {}  # a Watch call -> the service it watches

    def check(self, data: bytes, deadline: float | None) -> bytes:
        service = parse(pb.HealthCheckRequest, data).service
        if service not in self._status:
            raise ModelNotFound(f"unknown service '{service}'")
        return _REPLIES[self._status[service]]

    def list(self, data: bytes, deadline: float | None) -> bytes:
        """Every service with its status (the server as a whole under "")."""
        parse(pb.HealthListRequest, data)
        reply = pb.HealthListResponse()
        for name, status in self._status.items():
            reply.statuses[name].status = status
        return reply.SerializeToString()

    def watch(self, call: Call, data: bytes) -> bytes:
        """Subscribes `call`; returns the first reply (SERVICE_UNKNOWN for a service we lack,
        which may appear later, as the protocol says)."""
        service = parse(pb.HealthCheckRequest, data).service
        self._watchers[call] = service
        return _REPLIES[self._status.get(service, pb.HealthCheckResponse.SERVICE_UNKNOWN)]

    def unwatch(self, call: Call) -> None:
        self._watchers.pop(call, None)

    def watchers(self) -> builtins.list[Call]:  # `list` here is the method above
        return list(self._watchers)

    def set_serving(self, serving: bool) -> builtins.list[tuple[Call, bytes]]:
        """Sets every service's status; returns (watch call, reply) for each watcher to notify."""
        status = pb.HealthCheckResponse.SERVING if serving else pb.HealthCheckResponse.NOT_SERVING
        changed = {name for name, old in self._status.items() if old != status}
        for name in changed:
            self._status[name] = status
        return [(call, _REPLIES[status]) for call, name in self._watchers.items() if name in changed]

    def methods(self) -> builtins.list[Method]:
        return [Method(f"/{SERVICE}/Check", Kind.UNARY, self.check),
                Method(f"/{SERVICE}/List", Kind.UNARY, self.list),
                Method(f"/{SERVICE}/Watch", Kind.WATCH)]

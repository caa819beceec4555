"""Server reflection, v1alpha and v1, so grpcurl and other tools can list and describe our services.

The answers come from grpcio-reflection's servicer, one request message at a time. v1 and
v1alpha messages are the same on the wire (only the package name differs), so both method paths
parse with the v1alpha classes.
"""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2 as pb
from grpc_reflection.v1alpha.reflection import ReflectionServicer

from service.server.grpc_api.methods import Kind, Method
from service.server.grpc_api.status import parse

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"


class Reflection:
    def __init__(self, service_names: list[str]) -> None:
        self._servicer = ReflectionServicer([*service_names, V1ALPHA, V1])

    def answer(self, data: bytes, deadline: float | None) -> bytes:
        request = parse(pb.ServerReflectionRequest, data)
        (response,) = self._servicer.ServerReflectionInfo(iter((request,)), None)
        return response.SerializeToString()

    @staticmethod
    def stream_error(data: bytes, code: str, message: str) -> bytes:
        return pb.ServerReflectionResponse(error_response=pb.ErrorResponse(
            error_code=grpc.StatusCode[code].value[0], error_message=message)).SerializeToString()

    def methods(self) -> list[Method]:
        return [Method(f"/{name}/ServerReflectionInfo", Kind.STREAM, self.answer, stream_error=self.stream_error)
                for name in (V1ALPHA, V1)]

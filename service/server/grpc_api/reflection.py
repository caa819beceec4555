"""Server reflection, v1 and v1alpha, so grpcurl and other tools can list and describe our services.

The answers come from the descriptors that our generated code registers in protobuf's default
pool, one request message at a time. Each file is sent with every file it imports, however
often it was sent before on the stream: a client builds its own pool from the answers, and
without the imports it cannot. v1 and v1alpha messages are the same on the wire (only the
package name differs), so both method paths parse with the v1 classes, generated from
proto/grpc/reflection (grpcio-reflection pins protobuf 7, so we answer ourselves).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from service.generated.grpc.reflection.v1 import reflection_pb2 as pb
from service.generated.grpc.reflection.v1alpha import reflection_pb2 as _v1alpha  # registers its file
from service.server.grpc_api.methods import Kind, Method
from service.server.grpc_api.status import parse

V1ALPHA = _v1alpha.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1 = pb.DESCRIPTOR.services_by_name["ServerReflection"].full_name


class Reflection:
    def __init__(self, service_names: list[str]) -> None:
        self._services = sorted({*service_names, V1ALPHA, V1})
        self._pool = descriptor_pool.Default()

    def answer(self, data: bytes, deadline: float | None) -> bytes:
        request = parse(pb.ServerReflectionRequest, data)
        reply = pb.ServerReflectionResponse(valid_host=request.host, original_request=request)
        asked = request.WhichOneof("message_request")
        try:
            if asked == "list_services":
                reply.list_services_response.service.extend(pb.ServiceResponse(name=n) for n in self._services)
            elif asked == "file_by_filename":
                self._send_files(reply, self._pool.FindFileByName(request.file_by_filename))
            elif asked == "file_containing_symbol":
                self._send_files(reply, self._pool.FindFileContainingSymbol(request.file_containing_symbol))
            elif asked == "file_containing_extension":
                wanted = request.file_containing_extension
                message = self._pool.FindMessageTypeByName(wanted.containing_type)
                self._send_files(reply, self._pool.FindExtensionByNumber(message, wanted.extension_number).file)
            elif asked == "all_extension_numbers_of_type":
                message = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = reply.all_extension_numbers_response
                numbers.base_type_name = message.full_name
                numbers.extension_number.extend(sorted(e.number for e in self._pool.FindAllExtensions(message)))
            else:
                return self._error(reply, grpc.StatusCode.UNIMPLEMENTED, "no request in the message")
        except KeyError:
            return self._error(reply, grpc.StatusCode.NOT_FOUND, f"{asked} not found: {getattr(request, asked)}")
        return reply.SerializeToString()

    @staticmethod
    def _send_files(reply: pb.ServerReflectionResponse, file: FileDescriptor) -> None:
        """`file` first, then everything it imports, directly or not, each once."""
        order, seen = [file], {file.name}
        for current in order:  # grows as imports are found; ends when every import is in it
            for imported in current.dependencies:
                if imported.name not in seen:
                    seen.add(imported.name)
                    order.append(imported)
        reply.file_descriptor_response.file_descriptor_proto.extend(f.serialized_pb for f in order)

    @staticmethod
    def _error(reply: pb.ServerReflectionResponse, code: grpc.StatusCode, message: str) -> bytes:
        reply.error_response.error_code = code.value[0]
        reply.error_response.error_message = message
        return reply.SerializeToString()

    @staticmethod
    def stream_error(data: bytes, code: str, message: str) -> bytes:
        return pb.ServerReflectionResponse(error_response=pb.ErrorResponse(
            error_code=grpc.StatusCode[code].value[0], error_message=message)).SerializeToString()

    def methods(self) -> list[Method]:
        return [Method(f"/{name}/ServerReflectionInfo", Kind.STREAM, self.answer, stream_error=self.stream_error)
                for name in (V1ALPHA, V1)]

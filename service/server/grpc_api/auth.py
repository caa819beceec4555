"""gRPC's side of transport security: server credentials from the TLS files, and the bearer-token check."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc

from service.server.security import TlsMaterial

PROTECTED_PREFIXES = ("/digits.v1.", "/inference.")  # the inference APIs; health and reflection stay open
REFUSAL = "missing or invalid bearer token"


def server_credentials(tls: TlsMaterial | None) -> grpc.ServerCredentials | None:
    """TLS (mutual when a client CA is set) credentials, or None for plaintext."""
    if tls is None:
        return None
    return grpc.ssl_server_credentials([(tls.key, tls.certificate_chain)], root_certificates=tls.client_ca,
                                       require_client_auth=tls.client_ca is not None)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses inference RPCs without `authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token
        self._deny = grpc.unary_unary_rpc_method_handler(self._refuse)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(self._refuse_stream)

    async def _refuse(self, request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    async def _refuse_stream(self, requests: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if not details.method.startswith(PROTECTED_PREFIXES):
            return await continuation(details)
        given = next((value for key, value in details.invocation_metadata or () if key == "authorization"), "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return await continuation(details)
        return self._deny_stream if details.method.endswith("Stream") else self._deny

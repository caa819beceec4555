"""Transport security and the optional bearer token for the inference RPCs.

TLS (and mutual TLS when a client CA is given) protects the gRPC port. The bearer token is a
shared secret for the inference APIs only: health and reflection stay open so that probes and
tools need no secret. The token comes from a file or the DIGITS_AUTH_TOKEN environment variable,
never from a command-line flag (visible in `ps`), and is never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from service.config import ServeConfig

log = logging.getLogger(__name__)
TOKEN_ENV = "DIGITS_AUTH_TOKEN"
PROTECTED_PREFIXES = ("/digits.v1.", "/inference.")


class SecurityConfigError(ValueError):
    """A certificate, key or token setting is missing, unreadable or inconsistent."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials, or None for plaintext."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        if not is_loopback(config.host):
            log.warning("serving PLAINTEXT on %s: anyone on the network can call and read it; "
                        "use --tls-cert/--tls-key (and --tls-client-ca for mutual TLS) or a service mesh",
                        config.host)
        return None
    if not (config.tls_cert and config.tls_key):
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    pair = (_read(config.tls_key, "TLS key"), _read(config.tls_cert, "TLS certificate"))
    client_ca = _read(config.tls_client_ca, "client CA") if config.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(config: ServeConfig, environ: dict[str, str] | None = None) -> bytes | None:
    environ = os.environ if environ is None else environ
    if config.auth_token_file and environ.get(TOKEN_ENV):
        raise SecurityConfigError(f"set the token by --auth-token-file or {TOKEN_ENV}, not both")
    token = _read(config.auth_token_file, "token file").strip() if config.auth_token_file \
        else environ.get(TOKEN_ENV, "").strip().encode()
    if config.auth_token_file and not token:
        raise SecurityConfigError(f"token file {config.auth_token_file} is empty")
    return token or None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses inference RPCs without `authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token
        self._deny = grpc.unary_unary_rpc_method_handler(self._refuse)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(self._refuse_stream)

    async def _refuse(self, request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    async def _refuse_stream(self, requests: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if not details.method.startswith(PROTECTED_PREFIXES):
            return await continuation(details)
        given = next((value for key, value in details.invocation_metadata or () if key == "authorization"), "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return await continuation(details)
        return self._deny_stream if details.method.endswith("Stream") else self._deny

"""gRPC's side of transport security: server credentials from the TLS files (the bearer token is
checked by the serving loop, against the methods marked protected)."""

from __future__ import annotations

import grpc

from service.server.security import TlsMaterial


def server_credentials(tls: TlsMaterial | None) -> grpc.ServerCredentials | None:
    """TLS (mutual when a client CA is set) credentials, or None for plaintext."""
    if tls is None:
        return None
    return grpc.ssl_server_credentials([(tls.key, tls.certificate_chain)], root_certificates=tls.client_ca,
                                       require_client_auth=tls.client_ca is not None)

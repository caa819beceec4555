"""Transport security settings and the optional bearer token for the inference APIs.

TLS (and mutual TLS when a client CA is given) protects the serving port. The bearer token is a
shared secret for the inference APIs only: health and reflection stay open so that probes and
tools need no secret. The token comes from a file or the DIGITS_AUTH_TOKEN environment variable,
never from a command-line flag (visible in `ps`), and is never logged. This module reads and
checks the settings; each transport turns them into its own credentials and checks
(`grpc_api.auth` for gRPC).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.server.config import ServeConfig

log = logging.getLogger(__name__)
TOKEN_ENV = "DIGITS_AUTH_TOKEN"
REFUSAL = "missing or invalid bearer token"   # what every API answers a request without the token


class SecurityConfigError(ValueError):
    """A certificate, key or token setting is missing, unreadable or inconsistent."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of the server's key pair and, for mutual TLS, the CA its clients must chain to."""

    key: bytes
    certificate_chain: bytes
    client_ca: bytes | None


def tls_material(config: ServeConfig) -> TlsMaterial | None:
    """The TLS files, read and checked, or None for plaintext (with a warning off loopback)."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        if not is_loopback(config.host):
            log.warning("serving PLAINTEXT on %s: anyone on the network can call and read it; "
                        "use --tls-cert/--tls-key (and --tls-client-ca for mutual TLS) or a service mesh",
                        config.host)
        return None
    if not (config.tls_cert and config.tls_key):
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    return TlsMaterial(key=_read(config.tls_key, "TLS key"),
                       certificate_chain=_read(config.tls_cert, "TLS certificate"),
                       client_ca=_read(config.tls_client_ca, "client CA") if config.tls_client_ca else None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(config: ServeConfig, environ: Mapping[str, str] | None = None) -> bytes | None:
    environ = os.environ if environ is None else environ
    if config.auth_token_file and environ.get(TOKEN_ENV):
        raise SecurityConfigError(f"set the token by --auth-token-file or {TOKEN_ENV}, not both")
    token = _read(config.auth_token_file, "token file").strip() if config.auth_token_file \
        else environ.get(TOKEN_ENV, "").strip().encode()
    if config.auth_token_file and not token:
        raise SecurityConfigError(f"token file {config.auth_token_file} is empty")
    return token or None

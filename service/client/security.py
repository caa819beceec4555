"""What the client tools need to reach a server that serves TLS or wants a bearer token.

`digits classify` and `digits loadtest` take the same options, read the same environment variables
and fail the same way, so both get them from here: `add_options` registers them, `from_args` reads
them into a `ClientSecurity`, and each transport turns that into its own form (`grpc_credentials`
for gRPC channels, `ssl_context` and `authorization` for the load tester's HTTP/1.1 client).

The token mirrors the server's rules (service/server/security.py): it comes from a file
(`--token-file`, env DIGITS_TOKEN_FILE) or from DIGITS_TOKEN, never from a flag (a command line is
visible in `ps`), not both, surrounding whitespace ignored, empty refused. It must be visible ASCII,
since it travels in a gRPC metadata value and an HTTP header line, where anything else is refused or
would end the line. Over TLS gRPC sends it as call credentials, which gRPC binds to the secure
channel (the load tester sends it as metadata instead, see `grpc_credentials`); over plaintext it
is plain metadata, with a warning, because the server may sit inside a
network the user trusts (a service mesh, a NetworkPolicy) and that is the user's call, not ours.

Every problem is a `SecurityOptionsError` with a one-line message naming the option or file, raised
before any connection is opened.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

CA_ENV, CERT_ENV, KEY_ENV = "DIGITS_TLS_CA", "DIGITS_TLS_CERT", "DIGITS_TLS_KEY"
TOKEN_ENV, TOKEN_FILE_ENV = "DIGITS_TOKEN", "DIGITS_TOKEN_FILE"
AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case; HTTP header names are not case-sensitive


class SecurityOptionsError(ValueError):
    """A certificate, key or token setting that is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class ClientSecurity:
    """Paths of the PEM files (empty: not given) and the token (empty: none).

    Plain strings, so it pickles into the load tester's client processes, which read the files
    themselves. The token is left out of `repr` so that no log or traceback shows it.
    """

    ca: str = ""      # CA bundle the server's certificate must chain to (empty: the system's)
    cert: str = ""    # client certificate chain, for mutual TLS
    key: str = ""     # the client certificate's private key
    token: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        """Whether TLS was asked for: any of the TLS options turns it on."""
        return bool(self.ca or self.cert or self.key)

    def describe(self) -> str:
        """What is in use, without the secret, for the load tester's setup line and JSON report."""
        if not self.tls:
            parts = ["plaintext"]
        else:
            parts = ["TLS with a client certificate" if self.cert else "TLS"]
        if self.token:
            parts.append("bearer token")
        return " + ".join(parts)

    def check(self) -> None:
        """Reads and parses every file once, so a typo or a key that does not match its certificate
        fails here in one line, rather than as a handshake failure on every connection."""
        if bool(self.cert) != bool(self.key):
            raise SecurityOptionsError("a client certificate needs both --tls-cert and --tls-key")
        if self.tls:
            ssl_context(self)


def add_options(parser: argparse.ArgumentParser) -> None:
    """Registers --tls-ca, --tls-cert, --tls-key and --token-file; defaults come from the environment
    when the command runs (see `from_args`), so a test or a wrapper can set them after import."""
    group = parser.add_argument_group(
        "TLS and token", "for a server started with --tls-cert/--tls-key (TLS), --tls-client-ca (mutual TLS) or "
                         "--auth-token-file (bearer token); any TLS option turns TLS on")
    group.add_argument("--tls-ca", metavar="PEM", default=None,
                       help=f"CA certificate(s) the server's certificate must chain to (env {CA_ENV}; "
                            "default with TLS: the system's CAs)")
    group.add_argument("--tls-cert", metavar="PEM", default=None,
                       help=f"client certificate chain for mutual TLS (env {CERT_ENV}; with --tls-key)")
    group.add_argument("--tls-key", metavar="PEM", default=None,
                       help=f"private key of --tls-cert (env {KEY_ENV})")
    group.add_argument("--token-file", metavar="FILE", default=None,
                       help=f"file holding the bearer token sent as 'authorization: Bearer' (env {TOKEN_FILE_ENV}; "
                            f"or the token itself in env {TOKEN_ENV}; never on the command line, where ps shows it)")


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ClientSecurity:
    """The options `add_options` registered, each falling back on its environment variable; checked."""
    environ = os.environ if environ is None else environ

    def option(value: str | None, env: str) -> str:
        return value if value is not None else environ.get(env, "")

    token_file = option(args.token_file, TOKEN_FILE_ENV)
    if token_file and environ.get(TOKEN_ENV):
        raise SecurityOptionsError(f"set the token by --token-file (or {TOKEN_FILE_ENV}) or {TOKEN_ENV}, not both")
    if token_file:
        token = _read(token_file, "token file").decode("utf-8", "replace").strip()
        if not token:
            raise SecurityOptionsError(f"token file {token_file} is empty")
    else:
        token = environ.get(TOKEN_ENV, "").strip()
    if token and not all("!" <= char <= "~" for char in token):
        raise SecurityOptionsError("the token must be visible ASCII characters without spaces "
                                   "(it is sent in a header line)")
    security = ClientSecurity(ca=option(args.tls_ca, CA_ENV), cert=option(args.tls_cert, CERT_ENV),
                              key=option(args.tls_key, KEY_ENV), token=token)
    security.check()
    return security


def grpc_credentials(security: ClientSecurity, *, token_as_metadata: bool = False
                     ) -> tuple[grpc.ChannelCredentials | None, tuple[tuple[str, str], ...]]:
    """(channel credentials or None for plaintext, metadata to send on every call).

    Over TLS the token rides in the credentials and the metadata is empty; over plaintext gRPC will
    not send call credentials, so the token becomes metadata the caller adds to each call.
    `token_as_metadata` makes it metadata over TLS too: the same header, encrypted all the same,
    without the call-credentials plugin that grpcio runs for every call, which doubles a client's
    CPU a call (about 500 instead of 235 µs, measured on grpc.aio): the load tester's choice, so
    that it loads the server and not itself.
    """
    header = ((AUTHORIZATION, f"Bearer {security.token}"),) if security.token else ()
    if not security.tls:
        return None, header
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(security.ca, "--tls-ca") if security.ca else None,
        private_key=_read(security.key, "--tls-key") if security.key else None,
        certificate_chain=_read(security.cert, "--tls-cert") if security.cert else None)
    if token_as_metadata:
        return credentials, header
    if security.token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(security.token))
    return credentials, ()


def plaintext_token_warning(security: ClientSecurity, target: str) -> str | None:
    """The warning to print when the token would cross the network unencrypted, else None."""
    if security.token and not security.tls:
        return (f"sending the bearer token to {target} over plaintext: anyone on the path can read it "
                "(use TLS unless the network is trusted)")
    return None


def ssl_context(security: ClientSecurity) -> ssl.SSLContext:
    """A client TLS context for HTTPS: the server's certificate verified against --tls-ca (else the
    system's CAs) and its name checked, plus the client certificate for mutual TLS."""
    try:
        context = ssl.create_default_context(cafile=security.ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise SecurityOptionsError(f"cannot use --tls-ca {security.ca}: {_reason(exc)}") from None
    if security.cert:
        try:
            context.load_cert_chain(security.cert, security.key)
        except (OSError, ssl.SSLError) as exc:
            raise SecurityOptionsError(f"cannot use --tls-cert {security.cert} with --tls-key {security.key}: "
                                       f"{_reason(exc)}") from None
    return context


def authorization(security: ClientSecurity) -> dict[str, str]:
    """The HTTP header that carries the token, or none."""
    return {"Authorization": f"Bearer {security.token}"} if security.token else {}


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityOptionsError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason
    return getattr(exc, "strerror", None) or str(exc)

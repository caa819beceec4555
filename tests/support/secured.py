"""Real `digits serve` processes that want TLS, mutual TLS or a bearer token, with the certificates and
token files a client needs to reach them: what the client tools' security options are tested against.

Each server starts on first use and stops at the end of the session, so a test run that needs only
one of them pays for one.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.certificates import CertificateAuthority
from tests.support.server import RunningServer

TOKEN = "client-tools-Token_0123456789"
REFUSAL = "missing or invalid bearer token"  # what the server answers a call without the token


class SecuredServers:
    """The certificates, token files and (lazily) three single-worker servers:
    `tls_token` (TLS and a token), `mutual_tls` (TLS requiring a client certificate from `ca`) and
    `plaintext_token` (no TLS, a token)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = CertificateAuthority(folder)
        self.server_cert = self.ca.issue("server", server=True)
        self.client = self.ca.issue("client", server=False)
        self.stranger_ca = CertificateAuthority(folder, "stranger CA")  # trusts nothing of ours
        self.token_file = folder / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.wrong_token_file = folder / "wrong-token"
        self.wrong_token_file.write_text("not-the-token\n")
        self._servers: dict[str, RunningServer] = {}

    def _server(self, name: str, *args: str) -> RunningServer:
        if name not in self._servers:
            self._servers[name] = RunningServer("--workers", "1", *args)
        return self._servers[name]

    def _tls_args(self) -> tuple[str, ...]:
        return "--tls-cert", str(self.server_cert.cert), "--tls-key", str(self.server_cert.key)

    @property
    def tls_token(self) -> RunningServer:
        return self._server("tls_token", *self._tls_args(), "--auth-token-file", str(self.token_file))

    @property
    def mutual_tls(self) -> RunningServer:
        return self._server("mutual_tls", *self._tls_args(), "--tls-client-ca", str(self.ca.issued.cert))

    @property
    def plaintext_token(self) -> RunningServer:
        return self._server("plaintext_token", "--auth-token-file", str(self.token_file))

    def client_options(self, *, ca: bool = True, client_cert: bool = False, token: bool = False) -> list[str]:
        """The client tools' options for the files above."""
        options = ["--tls-ca", str(self.ca.issued.cert)] if ca else []
        if client_cert:
            options += ["--tls-cert", str(self.client.cert), "--tls-key", str(self.client.key)]
        if token:
            options += ["--token-file", str(self.token_file)]
        return options

    def stop(self) -> dict[str, int]:
        """Stops every server started; their exit codes by name."""
        return {name: server.stop() for name, server in self._servers.items()}

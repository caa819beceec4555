"""Listening ports that every worker of one server binds: SO_REUSEPORT lets the kernel spread
connections over them, and the supervisor can hold a port (bound, not listening) so that port 0
resolves once for everyone.

SO_REUSEPORT would also let a second server, of the same user, bind a port the first one serves,
and the kernel would then split connections between two servers that know nothing of each other.
So before reserving, a server makes sure nobody listens there: a probe socket without
SO_REUSEPORT cannot bind a port that has a listener (SO_REUSEADDR keeps it from failing on the
TIME_WAIT connections a server that just stopped leaves behind)."""

from __future__ import annotations

import errno
import socket


def _socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def check_unused(host: str, port: int, what: str) -> None:
    """Raises OSError naming `what` when another socket listens on `host:port` (port 0: nothing to check)."""
    if port == 0:
        return
    with _socket(host) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"{what} port {host}:{port} is in use by another process") from None
            raise OSError(exc.errno, f"cannot bind {what} port {host}:{port}: {exc.strerror}") from None


def reserve(host: str, port: int, what: str) -> socket.socket:
    """A bound TCP socket, not yet listening; a taken port raises OSError naming `what`."""
    sock = _socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind {what} port {host}:{port}: {exc.strerror}") from None
    return sock

"""Listening ports that every worker of one server binds: SO_REUSEPORT lets the kernel spread
connections over them, and the supervisor can hold a port (bound, not listening) so that port 0
resolves once for everyone."""

from __future__ import annotations

import socket


def reserve(host: str, port: int, what: str) -> socket.socket:
    """A bound TCP socket, not yet listening; a taken port raises OSError naming `what`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind {what} port {host}:{port}: {exc.strerror}") from None
    return sock

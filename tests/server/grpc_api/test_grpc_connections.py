"""The gRPC port's own limits on connections: how many one worker keeps (`--max-connections`), and
how long a connection may take to finish its handshake (`--grpc-read-timeout`), plaintext or TLS.

A client that opens connections and sends nothing must not be able to use up the worker's
descriptors and lock the other protocol (HTTP) or well-behaved gRPC clients out.
"""

from __future__ import annotations

import os
import socket
import time

import grpc
import pytest

from tests.support import wait_for
from tests.support.certificates import CertificateAuthority
from tests.support.h2_raw import PREFACE
from tests.support.http import call
from tests.support.messages import ONE
from tests.support.server import RunningServer, health_status
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc

LIMIT = 20


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes `sock` within `timeout` (reading and dropping what it sends)."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def test_a_worker_keeps_at_most_max_connections_and_http_still_answers():
    server = RunningServer("--workers", "1", "--max-connections", str(LIMIT))
    sockets: list[socket.socket] = []
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as early:
            stub = pb_grpc.DigitClassifierStub(early)
            stub.Classify(ONE, timeout=10)          # a client connected before the flood
            pid = server.worker_pids()[0]
            before = open_descriptors(pid)
            for _ in range(3 * LIMIT):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(PREFACE)               # and then nothing
                sockets.append(sock)
            closed = sum(closed_by_server(sock, 0.2) for sock in sockets)
            assert closed >= 3 * LIMIT - LIMIT, f"only {closed} of {3 * LIMIT} surplus connections were refused"
            assert open_descriptors(pid) <= before + LIMIT
            assert len(stub.Classify(ONE, timeout=10).predictions) == 1   # the early client is still served
            assert call(server.http_url, "GET", "/v2/health/live").status == 200   # HTTP is not locked out
            for sock in sockets:
                sock.close()
            # once the flood is gone, new clients connect again
            assert wait_for(lambda: health_status(grpc.insecure_channel(server.address)) == "SERVING", timeout=10)
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_a_connection_that_never_finishes_its_handshake_is_closed(tmp_path, tls):
    args = ["--workers", "1", "--no-http", "--grpc-read-timeout", "1"]
    if tls:
        issued = CertificateAuthority(tmp_path).issue("server", server=True)
        args += ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]
    server = RunningServer(*args)
    try:
        port = int(server.address.rsplit(":", 1)[1])
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        half = socket.create_connection(("127.0.0.1", port), timeout=5)
        half.sendall(b"\x16\x03\x01\x00\xff" if tls else PREFACE[:10])   # a handshake begun, never finished
        began = time.monotonic()
        assert closed_by_server(silent, 10) and closed_by_server(half, 10)
        assert time.monotonic() - began < 5
        silent.close()
        half.close()
    finally:
        assert server.stop() == 0

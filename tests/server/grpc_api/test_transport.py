"""The transport on grpcio's core: precise statuses under overload and drain, and its start-up check.

gRPC core itself answers CANCELLED to calls it kills (a backlog it sheds, calls that reach a
server after its shutdown); these tests hold the server to answering every call itself.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter

import grpc

from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from service.generated.grpc.reflection.v1 import reflection_pb2
from tests.support.messages import ONE
from tests.support.mnist import mnist_test_images
from tests.support.server import RunningServer

ANSWERED = re.compile(r"stopped after answering (\d+) inference calls successfully")


def hammer(address: str, stop: threading.Event, statuses: Counter, lock: threading.Lock) -> None:
    """One client thread: calls back to back until told to stop, counting every outcome."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DigitClassifierStub(channel)
        while not stop.is_set():
            try:
                stub.Classify(ONE, timeout=10)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                statuses[code] += 1


def test_sigterm_under_sustained_load_answers_every_call_ok_or_unavailable():
    for workers in ("1", "2"):
        server = RunningServer("--workers", workers, "--grace-period", "10")
        statuses: Counter = Counter()
        lock, stop = threading.Lock(), threading.Event()
        threads = [threading.Thread(target=hammer, args=(server.address, stop, statuses, lock)) for _ in range(16)]
        try:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while statuses["OK"] < 500 and time.monotonic() < deadline:  # load is flowing
                time.sleep(0.05)
            assert statuses["OK"] >= 500, statuses
            server.signal()
            assert server.wait_exit(30) == 0, server.log
            time.sleep(0.3)  # clients keep calling the departed server: still no CANCELLED
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            server.stop()
        print(f"--workers {workers}: {dict(statuses)}")
        assert set(statuses) <= {"OK", "UNAVAILABLE"}, statuses
        assert statuses["UNAVAILABLE"] > 0
        counted = sum(int(n) for n in ANSWERED.findall(server.log))
        assert len(ANSWERED.findall(server.log)) == int(workers)
        assert counted == statuses["OK"], (counted, dict(statuses))


def test_reflection_v1_lists_the_services_like_v1alpha(server):
    request = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    with grpc.insecure_channel(server.address) as channel:
        for version in ("v1", "v1alpha"):
            call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
            (reply,) = list(call(iter([request]), timeout=10))
            names = {s.name for s in reflection_pb2.ServerReflectionResponse.FromString(reply)
                     .list_services_response.service}
            assert {"digits.v1.DigitClassifier", "inference.GRPCInferenceService", "grpc.health.v1.Health",
                    "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary("/digits.v1.DigitClassifier/NoSuchMethod")
    try:
        call(b"", timeout=10)
        raise AssertionError("an unknown method was answered")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "/digits.v1.DigitClassifier/NoSuchMethod" in exc.details()


def test_a_grpcio_without_the_internals_it_needs_stops_start_up_with_one_line(tmp_path):
    # sitecustomize runs before the server: it removes one piece of grpcio's internal layer
    (tmp_path / "sitecustomize.py").write_text("from grpc._cython import cygrpc\ndel cygrpc.CompletionQueue\n")
    server = RunningServer("--workers", "1", env={"PYTHONPATH": f"{tmp_path}:{sys.path[0]}"}, wait=False)
    assert server.wait_exit(60) == 2, server.log
    errors = [line for line in server.log.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and "CompletionQueue" in errors[0] and "grpcio" in errors[0], server.log


def test_a_response_over_the_send_limit_is_refused_precisely_and_counted_so():
    server = RunningServer("--workers", "1", "--max-send-message-bytes", "2000")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.DigitClassifierStub(channel)
            assert len(stub.Classify(ONE, timeout=10).predictions) == 1  # a small answer fits
            many = pb.ClassifyRequest(pixel_format=pb.PIXEL_FORMAT_UINT8, include_activations=True,
                                      pixels=mnist_test_images()[:20].tobytes())
            try:
                stub.Classify(many, timeout=10)
                raise AssertionError("an answer over --max-send-message-bytes was sent")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "exceeds the server's limit of 2000 (--max-send-message-bytes)" in exc.details()
        assert server.metric("digits_requests_total", 'code="RESOURCE_EXHAUSTED"') == 1
        assert server.metric("digits_requests_total", 'code="OK"') == 1
    finally:
        assert server.stop() == 0


def client_ports_connected_to(port: int) -> set[int]:
    """Local ports of established TCP connections to `port` (from /proc/net/tcp and tcp6: gRPC
    may use dual-stack sockets)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                found.add(int(local.rsplit(":", 1)[1], 16))
    return found


def test_max_connection_age_makes_clients_reconnect_without_failing_calls():
    server = RunningServer("--workers", "1", "--max-connection-age", "0.5")
    port = int(server.address.rsplit(":", 1)[1])
    try:
        seen: set[int] = set()
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.DigitClassifierStub(channel)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                assert len(stub.Classify(ONE, timeout=10).predictions) == 1  # every call succeeds
                seen |= client_ports_connected_to(port)
                time.sleep(0.02)
        assert len(seen) >= 2, seen  # the connection was closed by age and replaced
    finally:
        assert server.stop() == 0

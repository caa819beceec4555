"""Hostile gRPC clients, frame by frame, against one real worker: none may starve a bystander, grow
the worker's memory, fill its log, or be counted as a call it never made.

Each attack (tests/support/grpc_attacks.py) runs for a few seconds beside a bystander process that
calls ModelInfer every 20 ms on a connection of its own. The bars are the issue's: RSS growth at
most 50 MB once the attack ends and 150 MB while it lasts, every bystander call OK within a
second, no traceback in the log, and `digits_requests_total` changed only by calls whose request
reached our code. `python -m tests.support.grpc_attacks --seconds 10` prints the same figures for
the 10 s attacks of the issue.
"""

from __future__ import annotations

import gzip
import os
import time
from collections import Counter

import pytest

from tests.support.grpc_attacks import (ATTACKS, INFER, AttackReport, infer_message, requests_by_code,
                                        run_attack)
from tests.support.h2_raw import RawH2, grpc_frame
from tests.support import wait_for
from tests.support.server import RunningServer

SECONDS = float(os.environ.get("HOSTILE_SECONDS", "3"))
READ_TIMEOUT = 1.0
STREAMS = 50
MAX_RECEIVE = 1024 * 1024


@pytest.fixture(scope="module")
def server():
    running = RunningServer("--workers", "1", "--no-http", "--grpc-read-timeout", str(READ_TIMEOUT),
                            "--max-concurrent-streams", str(STREAMS),
                            "--max-receive-message-bytes", str(MAX_RECEIVE))
    yield running
    assert running.stop() == 0


def port_of(server: RunningServer) -> int:
    return int(server.address.rsplit(":", 1)[1])


def attack(server: RunningServer, name: str) -> AttackReport:
    before = server.sync_log().count("Traceback")
    report = run_attack(name, ATTACKS[name](), port_of(server), server.worker_pids()[0], server.metrics_text,
                        SECONDS)
    print(report.line())
    assert server.sync_log().count("Traceback") == before, "the attack put a traceback in the log"
    assert report.growth_after <= 50, report.line()
    assert report.growth_peak <= 150, report.line()
    codes = report.bystander["codes"]
    assert set(codes) == {"OK"} and codes["OK"] > 10, report.line()
    assert report.bystander["worst_latency"] < 1.0, report.line()
    return report


def test_idle_calls_hold_no_admission_slot_and_are_ended(server):
    """300 unary calls that never send their request: the worker's 256 admission slots stay free
    (the bystander is answered), the stream limit refuses what is past it, and the calls that got
    in are ended DEADLINE_EXCEEDED by --grpc-read-timeout, counted nowhere."""
    report = attack(server, "idle_calls")
    assert report.counted == {}, report.line()
    statuses = report.details["statuses"]
    assert statuses.get("4") == STREAMS, report.details            # DEADLINE_EXCEEDED, one per admitted stream
    assert sum(statuses.values()) == report.details["calls"], report.details   # the rest refused by RST_STREAM


def test_a_connection_may_open_only_max_concurrent_streams(server):
    report = attack(server, "idle_streams")
    assert report.details["max_concurrent_streams"] == STREAMS
    assert report.details["refused_by_rst"] >= report.details["opened"] - STREAMS, report.details
    assert report.counted == {}, report.line()


def test_rapid_reset_costs_bounded_memory_and_counts_nothing(server):
    report = attack(server, "rapid_reset")
    assert report.details["streams_sent"] > 10_000, report.details   # the attack really ran
    assert report.counted == {}, report.line()
    # each reset stream costs the worker a bounded few tens of µs (22 µs measured; 37 µs before the
    # stream limit, when each one also became a call the loop refused and counted)
    assert report.cpu_seconds / report.details["streams_sent"] < 60e-6, report.line()


@pytest.mark.parametrize("name", ["unread_reflection", "unread_classify_stream", "unread_model_stream",
                                  "unread_streams_100"])
def test_a_stream_whose_client_never_reads_stops_being_read(server, name):
    report = attack(server, name)
    assert set(report.counted) <= {"OK"}, report.line()
    # every request taken in was answered (its reply queued): what the client sent beyond waits in
    # flow control, where gRPC core bounds it by its windows
    assert report.details["messages_sent"] > 0


def test_metadata_that_is_not_ascii_is_refused_without_a_traceback(server):
    report = attack(server, "bad_metadata")
    assert report.details["statuses"] == {3: 21}, report.details   # INVALID_ARGUMENT, health included
    assert report.counted == {}, report.line()


# What gRPC core answers itself, before the serving loop sees a request (docs/errors.md lists them):
# the client gets the status below and /metrics counts nothing, as no request reached our code.
CORE_ANSWERS = {
    "compressed flag without grpc-encoding": ([], grpc_frame(gzip.compress(infer_message()), compressed=True), 13),
    "grpc-encoding br": ([(b"grpc-encoding", b"br")], grpc_frame(infer_message(), compressed=True), 13),
    "corrupt gzip": ([(b"grpc-encoding", b"gzip")], grpc_frame(b"\x1f\x8b not gzip" * 8, compressed=True), 13),
    "malformed grpc-timeout": ([(b"grpc-timeout", b"soon")], grpc_frame(infer_message()), 13),
    "upper-case metadata key": ([(b"X-Upper", b"v")], grpc_frame(infer_message()), 13),
    "message over the limit": ([], grpc_frame(bytes(MAX_RECEIVE + 1)), 8),
    "gzip bomb": ([(b"grpc-encoding", b"gzip")],
                  grpc_frame(gzip.compress(bytes(20 * MAX_RECEIVE)), compressed=True), 8),
    "metadata over the limit": ([(b"x-big", b"a" * 20_000)], grpc_frame(infer_message()), 8),
}


@pytest.mark.parametrize("case", list(CORE_ANSWERS))
def test_what_grpc_core_refuses_is_answered_by_it_and_not_counted(server, case):
    metadata, message, expected = CORE_ANSWERS[case]
    before = requests_by_code(server.metrics_text())
    conn = RawH2(port_of(server))
    try:
        conn.pump(0.1)
        stream_id = conn.new_stream()
        conn.send(conn.headers_frame(stream_id, conn.request_headers(INFER, metadata)))
        rest, deadline = message, time.monotonic() + 10
        while rest and not conn.streams[stream_id].ended and time.monotonic() < deadline:
            rest = rest[conn.send_within_window(stream_id, rest):]
            conn.pump(0.01)
        conn.send(conn.data_frame(stream_id, b"", end_stream=True))
        assert conn.wait(lambda: conn.streams[stream_id].ended, 10)
        assert conn.streams[stream_id].grpc_status == expected, conn.streams[stream_id].grpc_message
    finally:
        conn.close()
    time.sleep(0.2)
    assert requests_by_code(server.metrics_text()) == before


def test_a_unary_call_without_a_message_is_invalid_and_not_counted(server):
    before = requests_by_code(server.metrics_text())
    conn = RawH2(port_of(server))
    try:
        stream_id = conn.open_call(INFER)   # HEADERS with END_STREAM: no message at all
        assert conn.wait(lambda: conn.streams[stream_id].ended, 10)
        result = conn.streams[stream_id]
        assert (result.grpc_status, result.grpc_message) == (3, "the client sent no request message")
    finally:
        conn.close()
    assert requests_by_code(server.metrics_text()) == before


def test_an_error_quoting_a_huge_input_is_cut_to_a_line(server):
    """A shape of 100,001 dimensions is quoted in the error: the status message stays at most
    1,024 characters (uncut, its 300 KB would exceed what a gRPC client accepts as trailers)."""
    import grpc
    from service.generated.inference import grpc_predict_v2_pb2 as pb
    from service.generated.inference import grpc_predict_v2_pb2_grpc as pb_grpc
    request = pb.ModelInferRequest.FromString(infer_message())
    request.inputs[0].shape[:] = [1] * 100_001
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith("input 'pixels' has shape [1, 1, 1")
    assert len(failure.value.details()) <= 1024 and failure.value.details().endswith("…")


WATCH = "/grpc.health.v1.Health/Watch"


def test_a_watch_that_half_closes_without_its_request_is_answered(server):
    conn = RawH2(port_of(server))
    try:
        stream_id = conn.open_call(WATCH)   # HEADERS with END_STREAM: no request
        assert conn.wait(lambda: conn.streams[stream_id].ended, 5)
        result = conn.streams[stream_id]
        assert (result.grpc_status, result.grpc_message) == (3, "the client sent no request message")
    finally:
        conn.close()


def test_calls_without_a_request_do_not_hold_a_drain():
    """A Watch (and a unary call) that sent nothing is ended UNAVAILABLE when the drain begins,
    so the worker exits at once, not after the whole grace period."""
    import signal
    running = RunningServer("--workers", "1", "--no-http", "--grace-period", "20")
    conn = RawH2(port_of(running))
    try:
        watch, unary = conn.open_call(WATCH, end_stream=False), conn.open_call(INFER, end_stream=False)
        conn.pump(0.3)
        began = time.monotonic()
        running.signal(signal.SIGTERM)
        assert running.wait_exit(15) == 0
        assert time.monotonic() - began < 5, "a call without a request held the drain"
        assert conn.wait(lambda: conn.streams[watch].ended and conn.streams[unary].ended, 5) or conn.closed
        for stream_id in (watch, unary):
            if conn.streams[stream_id].grpc_status is not None:
                assert conn.streams[stream_id].grpc_status == 14   # UNAVAILABLE "server is shutting down"
    finally:
        conn.close()
        running.stop()


def test_a_unary_call_with_two_messages_is_refused_and_counted_so(server):
    before = requests_by_code(server.metrics_text())
    conn = RawH2(port_of(server))
    try:
        stream_id = conn.open_call(INFER, message=grpc_frame(infer_message()) + grpc_frame(infer_message()))
        assert conn.wait(lambda: conn.streams[stream_id].ended, 10)
        result = conn.streams[stream_id]
        assert result.grpc_status == 3 and "exactly one request message" in result.grpc_message, result
        assert result.messages() == []   # nothing computed was sent
    finally:
        conn.close()
    assert wait_for(lambda: requests_by_code(server.metrics_text()) - before == Counter(INVALID_ARGUMENT=1))


def test_a_message_without_its_half_close_holds_no_slot_and_is_ended():
    """100 calls send their message but never half-close, past --max-concurrent-rpcs 64: the
    bystander is still served (they were never admitted) and the read timeout ends each one,
    uncounted."""
    running = RunningServer("--workers", "1", "--no-http", "--grpc-read-timeout", "1", "--max-concurrent-rpcs", "64")
    conn = RawH2(port_of(running))
    try:
        before = requests_by_code(running.metrics_text())
        calls = [conn.open_call(INFER, end_stream=False) for _ in range(100)]
        pending = {stream_id: grpc_frame(infer_message()) for stream_id in calls}
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:   # each message whole, within flow control
            for stream_id in list(pending):
                pending[stream_id] = pending[stream_id][conn.send_within_window(stream_id, pending[stream_id]):]
                if not pending[stream_id]:
                    del pending[stream_id]
            conn.pump(0.01)
        assert not pending
        import grpc
        from service.generated.inference import grpc_predict_v2_pb2 as pb
        from service.generated.inference import grpc_predict_v2_pb2_grpc as pb_grpc
        with grpc.insecure_channel(running.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest.FromString(infer_message()), timeout=5)
            assert reply.outputs
        assert conn.wait(lambda: all(conn.streams[s].ended for s in calls), 10)
        assert {conn.streams[s].grpc_status for s in calls} == {4}
        assert requests_by_code(running.metrics_text()) - before == Counter(OK=1)
    finally:
        conn.close()
        assert running.stop() == 0

"""`--workers N`: the kernel spreads connections over the worker processes, each serves what reaches
it, and a worker that dies is replaced while the others keep serving. (The supervisor's summed
/metrics are tested in test_metrics.py.)"""

from __future__ import annotations

import os
import signal

import grpc

from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from tests.support import wait_for
from tests.support.messages import ONE
from tests.support.server import LOCAL_CONNECTION, RunningServer, connections_by_process


def _classify_ok(channel) -> bool:
    try:
        return len(pb_grpc.DigitClassifierStub(channel).Classify(ONE, timeout=5).predictions) == 1
    except grpc.RpcError:
        return False


def test_connections_are_spread_over_workers_and_each_serves_its_own():
    """Which worker accepted each connection is read from /proc; each worker then reports (when it
    stops) exactly the calls sent on its connections, and both report some."""
    server = RunningServer("--workers", "2")
    port = int(server.address.rsplit(":", 1)[1])
    channels: list[tuple[grpc.Channel, int]] = []  # (channel, pid of the worker holding its connection)
    try:
        workers = server.worker_pids()
        assert len(workers) == 2
        seen = {pid: set() for pid in workers}
        # new connections until each worker holds at least two (SO_REUSEPORT hashes them over workers)
        while len(channels) < 64 and min(map(len, seen.values())) < 2:
            channel = grpc.insecure_channel(server.address, options=LOCAL_CONNECTION)
            grpc.channel_ready_future(channel).result(timeout=10)
            now = connections_by_process(workers, port)
            (owner,) = [pid for pid in workers if now[pid] - seen[pid]]  # the one new connection
            seen = now
            channels.append((channel, owner))
        expected = {pid: 0 for pid in workers}
        for i, (channel, owner) in enumerate(channels):
            stub = pb_grpc.DigitClassifierStub(channel)
            for _ in range(i % 3 + 1):  # an uneven number of calls per connection
                assert len(stub.Classify(ONE, timeout=10).predictions) == 1
            expected[owner] += i % 3 + 1
    finally:
        for channel, _ in channels:
            channel.close()
        assert server.stop() == 0, server.log
    assert all(count > 0 for count in expected.values()), expected
    assert server.answered_by_worker() == expected


def test_killed_worker_is_replaced_and_others_keep_serving():
    server = RunningServer("--workers", "2")
    try:
        first = server.worker_pids()
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        assert wait_for(lambda: "starting a replacement" in server.log)
        assert wait_for(lambda: len(server.worker_pids()) == 2 and first[0] not in server.worker_pids())
        for _ in range(20):  # new connections land on either worker; all must answer
            with grpc.insecure_channel(server.address, options=LOCAL_CONNECTION) as channel:
                assert wait_for(lambda: _classify_ok(channel), timeout=10)
    finally:
        assert server.stop() == 0, server.log

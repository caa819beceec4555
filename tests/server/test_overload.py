"""Overload and departed clients: bounded work, fast refusals, no collapse, nothing computed for nobody.

The admission and departed-client tests hold the model busy by an event (`HeldServer`), so the
calls they count on are still in flight, whatever the machine's load, until the test releases them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import numpy as np

from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from tests.support import wait_for
from tests.support.messages import ONE
from tests.support.server import HeldServer, RunningServer, rss_mb


async def burst(address: str, calls: int, deadline: float) -> tuple[Counter, list[float], float]:
    """Offers `calls` requests at once (far above what one worker answers in a deadline)."""
    statuses: Counter = Counter()
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DigitClassifierStub(channel)

        async def one() -> None:
            start = time.monotonic()
            try:
                response = await stub.Classify(ONE, timeout=deadline)
                assert len(response.predictions) == 1
                statuses["OK"] += 1
                latencies.append(time.monotonic() - start)
            except grpc.aio.AioRpcError as exc:
                statuses[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "limit of 64 calls (--max-concurrent-rpcs)" in exc.details()

        start = time.monotonic()
        await asyncio.gather(*(one() for _ in range(calls)))
    return statuses, latencies, time.monotonic() - start


def test_far_above_capacity_excess_is_refused_and_nothing_is_wasted():
    # a 20 ms batching window keeps calls in flight, so the 64-call admission limit is what binds
    # all 2,000 calls share one connection: let it carry them (past --max-concurrent-streams, gRPC
    # core refuses streams, and the client reads UNAVAILABLE, not the admission limit this is about)
    server = RunningServer("--workers", "1", "--max-concurrent-rpcs", "64", "--max-queue-delay-us", "20000",
                           "--max-concurrent-streams", "2000")
    try:
        statuses, latencies, seconds = asyncio.run(burst(server.address, calls=2000, deadline=10.0))
        peak_rss = rss_mb(server.process.pid)
        computed = server.metric("digits_images_classified_total")
        late_in_server = server.metric("digits_requests_total", 'code="DEADLINE_EXCEEDED"')
        with grpc.insecure_channel(server.address) as channel:  # and it answers normally right after
            assert len(pb_grpc.DigitClassifierStub(channel).Classify(ONE, timeout=10).predictions) == 1
    finally:
        assert server.stop() == 0
    print(f"overload: 2000 calls at once: {dict(statuses)} in {seconds:.2f} s; served {statuses['OK'] / seconds:.0f} "
          f"req/s, p99 of served {np.percentile(latencies, 99) * 1e3:.1f} ms, server RSS {peak_rss:.0f} MB")
    # Every call is answered by us, at once: OK, or RESOURCE_EXHAUSTED over --max-concurrent-rpcs.
    # Never a CANCELLED from gRPC core's own backlog, a DEADLINE_EXCEEDED, UNKNOWN or INTERNAL.
    assert set(statuses) <= {"OK", "RESOURCE_EXHAUSTED"}, statuses
    assert late_in_server == 0
    assert statuses["RESOURCE_EXHAUSTED"] > 0 and statuses["OK"] > 0
    assert computed == statuses["OK"]  # nothing computed that no one received
    assert peak_rss < 400


def test_calls_over_the_admission_limit_get_resource_exhausted():
    # the first 8 calls are held in the queue, so they hold every admission slot until released
    server = HeldServer("--workers", "1", "--max-concurrent-rpcs", "8")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.DigitClassifierStub(channel)
            holding = [stub.Classify.future(ONE, timeout=30) for _ in range(8)]
            assert wait_for(lambda: server.metric("digits_inflight_requests") == 8)
            outcomes = Counter()
            for _ in range(4):  # one at a time: each meets a full house
                try:
                    stub.Classify(ONE, timeout=10)
                    outcomes["OK"] += 1
                except grpc.RpcError as exc:
                    outcomes[exc.code().name] += 1
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "limit of 8 calls (--max-concurrent-rpcs)" in exc.details()
            assert not any(call.done() for call in holding)
            server.release()
            outcomes["OK"] += sum(len(call.result().predictions) for call in holding)
        assert outcomes == {"OK": 8, "RESOURCE_EXHAUSTED": 4}
        assert server.metric("digits_requests_total", 'code="RESOURCE_EXHAUSTED"') == 4
    finally:
        server.release()
        assert server.stop() == 0


def test_client_that_leaves_costs_no_compute():
    server = HeldServer("--workers", "1")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.DigitClassifierStub(channel)
            leaving = [stub.Classify.future(ONE, timeout=30) for _ in range(10)]
            assert wait_for(lambda: server.metric("digits_inflight_requests") == 10)
            for future in leaving:
                future.cancel()
            # the server has seen every cancellation before the model may run
            assert wait_for(lambda: server.metric("digits_inflight_requests") == 0)
            assert server.metric("digits_requests_total", 'code="CANCELLED"') == 10
            server.release()
            assert len(stub.Classify(ONE, timeout=10).predictions) == 1
        assert server.metric("digits_batch_size_count") == 1  # only the request that stayed
        assert server.metric("digits_images_classified_total") == 1
    finally:
        server.release()
        assert server.stop() == 0

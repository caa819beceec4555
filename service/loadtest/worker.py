"""One client process: its own gRPC channels or HTTP connections and event loop, driving a share of the load.

Closed loop: `concurrency` coroutines, each sending its next request when the previous answer
arrives. Open loop: requests leave on a fixed schedule (`rate` per second) whatever the server
does, and latency is measured from each request's *intended* send time, so a slow server cannot
hide its queueing by slowing the client down (no coordinated omission). In-flight requests are
capped; a request that would exceed the cap is not sent and is counted as CLIENT_INFLIGHT_LIMIT.

Every unary call, gRPC or REST, is a coroutine that returns the code to count ("OK", a gRPC
status name, an HTTP status), so both loops are the same for both protocols. What is counted and
how is in `tally`; streams are in `stream`; REST connections and replies in `rest`.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Awaitable
from typing import BinaryIO, Callable

import grpc

from service.contract import FEATURES
from service.generated.digits.v1 import digits_pb2_grpc
from service.generated.inference import grpc_predict_v2_pb2_grpc
from service.loadtest.config import LoadConfig
from service.loadtest.ipc import read_frame, write_frame
from service.shared.mnist_files import load_test_images
from service.loadtest.payload import build_requests, synthetic_images
from service.loadtest.rest import RestClient
from service.loadtest.rest_payload import build_rest_payloads
from service.loadtest.stream import StreamSession
from service.loadtest.tally import Tally, clock

INFLIGHT_LIMIT = "CLIENT_INFLIGHT_LIMIT"
_TIMER_SLACK_S = 0.001  # asyncio's timer resolution on Linux (epoll_wait takes milliseconds)
_RING_BYTES = 64 << 20  # at most this much prebuilt payload per process
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),  # each channel its own TCP connection
]


Send = Callable[[], Awaitable[str]]  # one call; returns the code to count


def grpc_send(method: Callable, request, timeout: float) -> Send:
    """A prebuilt gRPC unary call as a `Send`: its status name, "OK" on success."""
    async def send() -> str:
        try:
            await method(request, timeout=timeout)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    return send


@dataclass(frozen=True)
class ProcessPlan:
    """This process's share: its concurrency (closed) or rate (open) and request quota."""

    index: int
    concurrency: int
    rate: float
    max_requests: int
    image_offset: int


class ProcessRun:
    """Everything one client process needs, built before the synchronised start."""

    def __init__(self, config: LoadConfig, plan: ProcessPlan, measure_start: float) -> None:
        self.config = config
        self.plan = plan
        self.tally = Tally(measure_start, measure_start + config.duration_s, plan.max_requests,
                           closed=config.mode == "closed")
        self.start = measure_start - config.warmup_s
        self.channels: list = []
        self.rest: RestClient | None = None
        if config.rest:
            self.rest = RestClient(config.target, self._requests(), config.timeout_s)
        else:
            options = [*_CHANNEL_OPTIONS, ("grpc.lb_policy_name", config.lb_policy)]
            self.channels = [grpc.aio.insecure_channel(config.target, options=options)
                             for _ in range(config.channels)]
            self.requests = self._requests()

    def _requests(self) -> list:
        config = self.config
        images = load_test_images(Path(config.mnist_dir))
        if images is None:
            images = synthetic_images()
        per_request = config.batch_size * FEATURES * (1 if config.dtype == "uint8" else 4)
        wanted = self.plan.concurrency if config.mode == "closed" and not config.stream else 16
        count = max(1, min(wanted, _RING_BYTES // per_request))
        if config.rest:
            return build_rest_payloads(images, count, self.plan.image_offset, batch_size=config.batch_size,
                                       dtype=config.dtype, activations=config.activations,
                                       model_name=config.model_name, binary=config.binary_tensors)
        return build_requests(images, count, self.plan.image_offset, api=config.api,
                              batch_size=config.batch_size, dtype=config.dtype,
                              activations=config.activations, model_name=config.model_name)

    async def connect(self) -> None:
        """Waits briefly for every connection; an unreachable target shows up as UNAVAILABLE errors
        (gRPC) or CLIENT_CONNECT_FAILED (REST: one connection a closed-loop slot, opened here)."""
        if self.rest is not None:
            if self.config.mode == "closed":
                await self.rest.connect(self.plan.concurrency, min(self.config.timeout_s, 5.0))
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in self.channels)),
                                   timeout=min(self.config.timeout_s, 5.0))
        except (asyncio.TimeoutError, grpc.aio.AioRpcError):
            pass

    def _unary_method(self, channel) -> Callable:
        if self.config.api == "kserve_v2":
            return grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        return digits_pb2_grpc.DigitClassifierStub(channel).Classify

    async def run(self) -> dict:
        await _sleep_until(self.start)
        if self.config.stream:
            sessions = [StreamSession(digits_pb2_grpc.DigitClassifierStub(ch), self.tally, self.config.timeout_s)
                        for ch in self.channels]
            try:
                if self.config.mode == "closed":
                    await self._closed_stream(sessions)
                else:
                    await self._open_stream(sessions)
            finally:
                await asyncio.gather(*(session.close() for session in sessions))
        elif self.rest is not None:
            try:
                if self.config.mode == "closed":
                    await self._closed_unary([self.rest.slot(i) for i in range(self.plan.concurrency)])
                else:
                    await self._open_unary(self.rest.call)
            finally:
                self.rest.close()
        else:
            methods = [self._unary_method(ch) for ch in self.channels]
            timeout = self.config.timeout_s
            if self.config.mode == "closed":
                await self._closed_unary([grpc_send(methods[i % len(methods)], self.requests[i % len(self.requests)],
                                                    timeout) for i in range(self.plan.concurrency)])
            else:
                await self._open_unary(lambda n: grpc_send(methods[n % len(methods)],
                                                           self.requests[n % len(self.requests)], timeout)())
        for channel in self.channels:
            await channel.close()
        return self.tally.result()

    async def _closed_unary(self, slots: list[Send]) -> None:
        """Each slot sends its next request when its previous answer arrives."""
        tally = self.tally

        async def slot_loop(send: Send) -> None:
            while tally.may_start(now := clock()):
                tally.started(now)
                tally.sent_total += 1
                code = await send()
                tally.done(now, clock(), code)

        await asyncio.gather(*(slot_loop(send) for send in slots))

    async def _closed_stream(self, sessions: list[StreamSession]) -> None:
        tally, loop = self.tally, asyncio.get_running_loop()

        async def slot_loop(session: StreamSession, request) -> None:
            while tally.may_start(now := clock()):
                tally.started(now)
                waiter = loop.create_future()
                session.submit(request, now, waiter)
                await waiter

        await asyncio.gather(*(slot_loop(sessions[i % len(sessions)], self.requests[i % len(self.requests)])
                               for i in range(self.plan.concurrency)))

    async def _open_schedule(self, issue: Callable[[float, float, int], None]) -> None:
        """Calls issue(intended, origin, n) for the n-th request on the fixed schedule.

        asyncio timers wake up to ~1 ms late (epoll has millisecond resolution), so the loop aims
        _TIMER_SLACK_S early: a request leaving early has its latency counted from when it really
        left (`origin`), one leaving late from when it should have left, so lateness is never
        hidden. Overdue requests (the process was busy) go out at once, back to back."""
        interval = 1.0 / self.plan.rate
        tally, n = self.tally, 0
        while True:
            intended = self.start + n * interval
            if not tally.may_start(intended):
                return
            now = clock()
            if intended - now > _TIMER_SLACK_S:
                await asyncio.sleep(intended - now - _TIMER_SLACK_S)
                continue
            tally.sent_late(intended, now)
            issue(intended, max(intended, now), n)
            n += 1

    async def _open_unary(self, send_nth: Callable[[int], Awaitable[str]]) -> None:
        """`send_nth(n)` is the n-th request's call, started on the schedule whatever came back."""
        tally, cap = self.tally, self.config.max_inflight
        tasks: set[asyncio.Task] = set()

        async def one(call: Awaitable[str], intended: float, origin: float) -> None:
            code = await call
            tally.done(intended, clock(), code, origin)

        def issue(intended: float, origin: float, n: int) -> None:
            tally.started(intended)
            if len(tasks) >= cap:
                tally.done(intended, intended, INFLIGHT_LIMIT)
                return
            tally.sent_total += 1
            task = asyncio.ensure_future(one(send_nth(n), intended, origin))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await self._open_schedule(issue)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _open_stream(self, sessions: list[StreamSession]) -> None:
        tally, cap = self.tally, self.config.max_inflight

        def issue(intended: float, origin: float, n: int) -> None:
            tally.started(intended)
            if sum(session.inflight for session in sessions) >= cap:
                tally.done(intended, intended, INFLIGHT_LIMIT)
                return
            sessions[n % len(sessions)].submit(self.requests[n % len(self.requests)], intended, None, origin)

        await self._open_schedule(issue)


async def _sleep_until(when: float) -> None:
    delay = when - clock()
    if delay > 0:
        await asyncio.sleep(delay)


async def _main(config: LoadConfig, plan: ProcessPlan, inbox: BinaryIO, outbox: BinaryIO) -> dict:
    loop = asyncio.get_running_loop()
    # Build everything with a provisional window; the real one comes from the parent.
    run = ProcessRun(config, plan, clock() + 3600)
    await run.connect()
    gc.collect()
    gc.freeze()  # setup objects never need scanning again: fewer, shorter GC pauses under load
    write_frame(outbox, ("ready", plan.index))
    measure_start = await loop.run_in_executor(None, read_frame, inbox)
    run.tally.measure_start = measure_start
    run.tally.measure_end = measure_start + config.duration_s
    run.start = measure_start - config.warmup_s
    return await run.run()


def main() -> int:
    """Entry point of a client process: read the job on stdin, report ready and results on stdout."""
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the frame stream
    config, plan = read_frame(inbox)
    try:
        result = asyncio.run(_main(config, plan, inbox, outbox))
        write_frame(outbox, ("result", plan.index, result))
    except BaseException:  # noqa: BLE001 - the parent must hear about any failure
        write_frame(outbox, ("failed", plan.index, traceback.format_exc()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

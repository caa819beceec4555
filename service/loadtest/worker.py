"""One client process: its own gRPC channels or HTTP connections and event loop, driving a share of the load.

Closed loop: `concurrency` coroutines, each sending its next request when the previous answer
arrives. Open loop: requests leave on a fixed schedule (`rate` per second) whatever the server
does, and latency is measured from each request's *intended* send time, so a slow server cannot
hide its queueing by slowing the client down (no coordinated omission). In-flight requests are
capped; a request that would exceed the cap is not sent and is counted as CLIENT_INFLIGHT_LIMIT.

Every unary call, gRPC or REST, is a coroutine that returns the code to count ("OK", a gRPC
status name, an HTTP status), so both loops are the same for both protocols. What is counted and
how is in `tally`; streams are in `stream`; REST connections and replies in `rest`.

Before it reports ready, the process makes one probe call on every connection (`ProcessRun.connect`):
a target that does not answer, or refuses our TLS or token, ends the run before it starts, in one
line, instead of a whole duration of identical failures. Once running, a "stop" frame from the
parent (or the parent going away) ends the run at once with what was measured so far: that is how
Ctrl-C on `digits loadtest` gets its partial summary.
"""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from service.client.security import grpc_credentials
from service.contract import FEATURES
from service.generated.digits.v1 import digits_pb2_grpc
from service.generated.inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from service.loadtest.config import LoadConfig
from service.loadtest.ipc import Readable, Writable, read_frame, write_frame
from service.loadtest.payload import build_requests, synthetic_images
from service.loadtest.rest import RestClient
from service.loadtest.rest_payload import build_rest_payloads
from service.loadtest.stream import StreamSession, stream_opener
from service.loadtest.tally import Tally, clock
from service.shared.mnist_files import load_test_images

INFLIGHT_LIMIT = "CLIENT_INFLIGHT_LIMIT"
PROBE_TIMEOUT_S = 5.0  # at most this long for the probe call (less with a shorter --timeout)
# Probe failures that mean the load cannot run: nothing answers, or it will not talk to us. Any
# other status (UNIMPLEMENTED from a server without the probe method, say) lets the load go on.
_FATAL_PROBE_CODES = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED))
_TIMER_SLACK_S = 0.001  # asyncio's timer resolution on Linux (epoll_wait takes milliseconds)
_RING_BYTES = 64 << 20  # at most this much prebuilt payload per process
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),  # each channel its own TCP connection
]


Send = Callable[[], Awaitable[str]]  # one call; returns the code to count


def grpc_send(method: Callable, request, timeout: float, metadata: Sequence[tuple[str, str]] | None = None) -> Send:
    """A prebuilt gRPC unary call as a `Send`: its status name, "OK" on success. `metadata` (the
    token) goes with every call."""
    async def send() -> str:
        try:
            await method(request, timeout=timeout, metadata=metadata)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    return send


async def probe_channel(channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]] | None,
                        timeout: float) -> str | None:
    """One V2 `ServerLive` call, for either gRPC API: why the load cannot run on this channel, or None.

    ServerLive is guarded by the token like inference, costs the server nothing and is not in its
    request metrics (GetModelInfo would be), so the server's count still equals the load's. A
    server without it answers UNIMPLEMENTED, which is not a reason to stop."""
    name = "ServerLive"
    try:
        await grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
            grpc_predict_v2_pb2.ServerLiveRequest(), timeout=timeout, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in _FATAL_PROBE_CODES:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"no answer to {name} within {timeout:g} s"
            return f"{name}: {exc.code().name}: {' '.join((exc.details() or '').split())}"
    return None


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
        self.metadata: tuple[tuple[str, str], ...] | None = None
        self.interrupted = False
        if config.rest:
            self.rest = RestClient(config.target, self._requests(), config.timeout_s, config.security)
        else:
            credentials, metadata = grpc_credentials(config.security, token_as_metadata=True)  # cheaper a call
            self.metadata = metadata or None
            options = [*_CHANNEL_OPTIONS, ("grpc.lb_policy_name", config.lb_policy)]
            if credentials is None:
                self.channels = [grpc.aio.insecure_channel(config.target, options=options)
                                 for _ in range(config.channels)]
            else:
                self.channels = [grpc.aio.secure_channel(config.target, credentials, options=options)
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

    async def connect(self) -> str | None:
        """Opens every connection (REST: one a closed-loop slot) and makes one probe call on each
        (REST: one), so the load starts on open connections; returns why the target cannot be
        load-tested (see `probe_channel`, `RestClient.probe`), or None."""
        timeout = min(self.config.timeout_s, PROBE_TIMEOUT_S)
        if self.rest is not None:
            if self.config.mode == "closed":
                await self.rest.connect(self.plan.concurrency, timeout)
            return await self.rest.probe(timeout)
        problems = await asyncio.gather(*(probe_channel(channel, self.metadata, timeout)
                                          for channel in self.channels))
        return next((problem for problem in problems if problem), None)

    def _unary_method(self, channel) -> Callable:
        if self.config.api == "kserve_v2":
            return grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        return digits_pb2_grpc.DigitClassifierStub(channel).Classify

    async def run(self, stop: asyncio.Event | None = None) -> dict:
        """Drives the load to the end of the window, or until `stop` is set: then whatever is in
        flight is cancelled and the result holds what was measured so far, marked interrupted."""
        load = asyncio.ensure_future(self._drive())
        if stop is not None:
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait((load, stopped), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not load.done():
                self.interrupted = True
                self.tally.interrupt(clock())
                load.cancel()
        try:
            await load
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
        await self.close()
        return self.tally.result()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        if self.rest is not None:
            self.rest.close()

    async def _drive(self) -> None:
        await _sleep_until(self.start)
        if self.config.stream:
            sessions = [StreamSession(stream_opener(self.config.api, ch, self.metadata or ()), self.tally,
                                      self.config.timeout_s) for ch in self.channels]
            try:
                if self.config.mode == "closed":
                    await self._closed_stream(sessions)
                else:
                    await self._open_stream(sessions)
            finally:
                await asyncio.gather(*(session.close(drain=not self.interrupted) for session in sessions))
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
            timeout, metadata = self.config.timeout_s, self.metadata
            if self.config.mode == "closed":
                await self._closed_unary([grpc_send(methods[i % len(methods)], self.requests[i % len(self.requests)],
                                                    timeout, metadata) for i in range(self.plan.concurrency)])
            else:
                await self._open_unary(lambda n: grpc_send(methods[n % len(methods)],
                                                           self.requests[n % len(self.requests)], timeout, metadata)())

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

        try:
            await self._open_schedule(issue)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:  # only when interrupted: otherwise all are done
                task.cancel()

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


def _watch_parent(inbox: Readable, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Sets `stop` when the parent says "stop" or goes away (its end of our stdin closes)."""
    try:
        read_frame(inbox)
    except (EOFError, OSError, ValueError):
        pass
    try:
        loop.call_soon_threadsafe(stop.set)
    except RuntimeError:  # the run is over and its loop closed: nothing to stop
        pass


async def _main(config: LoadConfig, plan: ProcessPlan, inbox: Readable, outbox: Writable) -> dict | None:
    """Result of the run, or None when the probe found the target unusable (the parent was told)."""
    loop = asyncio.get_running_loop()
    # Build everything with a provisional window; the real one comes from the parent.
    run = ProcessRun(config, plan, clock() + 3600)
    problem = await run.connect()
    if problem is not None:
        await run.close()
        write_frame(outbox, ("unusable", plan.index, problem))
        return None
    gc.collect()
    gc.freeze()  # setup objects never need scanning again: fewer, shorter GC pauses under load
    write_frame(outbox, ("ready", plan.index))
    measure_start = await loop.run_in_executor(None, read_frame, inbox)
    run.tally.measure_start = measure_start
    run.tally.measure_end = measure_start + config.duration_s
    run.start = measure_start - config.warmup_s
    stop = asyncio.Event()
    # A daemon thread, not the executor: asyncio.run would wait for an executor thread still
    # blocked on stdin, which the parent closes only after our result.
    threading.Thread(target=_watch_parent, args=(inbox, loop, stop), daemon=True).start()
    return await run.run(stop)


def main() -> int:
    """Entry point of a client process: read the job on stdin, report ready and results on stdout."""
    # stdin unbuffered: a thread waits on it for "stop" (`_watch_parent`) while the interpreter may
    # be exiting, and a buffered reader's lock held by that thread would abort the exit.
    inbox, outbox = cast(io.BufferedReader, sys.stdin.buffer).raw, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the frame stream
    config, plan = read_frame(inbox)
    try:
        result = asyncio.run(_main(config, plan, inbox, outbox))
        if result is not None:
            write_frame(outbox, ("result", plan.index, result))
    except BaseException:  # noqa: BLE001 - the parent must hear about any failure
        try:
            write_frame(outbox, ("failed", plan.index, traceback.format_exc()))
        except OSError:  # the parent has gone: there is no one to tell
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

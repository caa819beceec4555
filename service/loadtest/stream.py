"""Streaming load: many requests in flight on one bidirectional stream, digits.v1 `ClassifyStream`
or the Open Inference Protocol's `ModelStreamInfer` (Triton's, which tritonclient's `start_stream`
uses). The two differ only in where a message carries its id and how an answer says it failed, so
a `StreamApi` says that and one `StreamSession` drives either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from service.generated.digits.v1 import digits_pb2_grpc
from service.generated.inference import grpc_predict_v2_pb2_grpc
from service.loadtest.tally import Tally, clock, error_code, status_name

STREAM_ENDED = "STREAM_ENDED"
# A ModelStreamInfer answer with `error_message` set: the protocol gives a text, not a status code.
ERROR_MESSAGE = "ERROR_MESSAGE"


@dataclass(frozen=True)
class StreamApi:
    """How one streaming method tags a request with its id and reads (id, code to count) off an answer."""

    name: str
    tag: Callable[[Any, str], None]
    outcome: Callable[[Any], tuple[str, str]]


def _tag_classify(request, request_id: str) -> None:
    request.request_id = request_id


def _classify_outcome(response) -> tuple[str, str]:
    return response.request_id, status_name(response.error.code) if response.HasField("error") else "OK"


def _tag_infer(request, request_id: str) -> None:
    request.id = request_id


def _infer_outcome(response) -> tuple[str, str]:
    return response.infer_response.id, ERROR_MESSAGE if response.error_message else "OK"


CLASSIFY_STREAM = StreamApi("ClassifyStream", _tag_classify, _classify_outcome)
MODEL_STREAM_INFER = StreamApi("ModelStreamInfer", _tag_infer, _infer_outcome)


def stream_opener(api: str, channel: grpc.aio.Channel,
                  metadata: Sequence[tuple[str, str]] = ()) -> tuple[Callable[[], Any], StreamApi]:
    """(a function that opens a new stream on `channel`, how to read it) for `api`."""
    if api == "kserve_v2":
        method, kind = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer, MODEL_STREAM_INFER
    else:
        method, kind = digits_pb2_grpc.DigitClassifierStub(channel).ClassifyStream, CLASSIFY_STREAM
    extra = tuple(metadata) or None
    return (lambda: method(metadata=extra)), kind


class StreamSession:
    """One stream carrying many requests at once, answers matched by their id.

    Requests are queued and written by one writer task, so neither the open-loop schedule nor
    other slots wait on a slow write; a queued request's clock is already running. The request
    messages are reused: the writer sets `request_id` just before the write serialises the
    message. A broken stream fails its in-flight requests with the stream's status and the next
    write opens a new one.
    """

    def __init__(self, opener: tuple[Callable[[], Any], StreamApi], tally: Tally, timeout_s: float) -> None:
        self._open_call, self._api = opener
        self._tally = tally
        self._timeout_s = timeout_s
        self._call = None
        self._readers: set[asyncio.Task] = set()
        # request_id -> (intended send time, waiter or None, the call it was written on or None,
        #                latency origin)
        self._pending: dict[str, tuple[float, asyncio.Future | None, object, float]] = {}
        self._queue: asyncio.Queue = asyncio.Queue()
        self._next_id = 0
        self._writer = asyncio.ensure_future(self._write_queued())
        self._sweeper = asyncio.ensure_future(self._sweep())

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def submit(self, request, intended: float, waiter: asyncio.Future | None, origin: float | None = None) -> None:
        """Queues `request`; its outcome is recorded in the tally and signalled on `waiter`."""
        request_id = str(self._next_id)
        self._next_id += 1
        self._pending[request_id] = (intended, waiter, None, intended if origin is None else origin)
        self._queue.put_nowait((request_id, request))

    def _open(self):
        call = self._open_call()
        reader = asyncio.ensure_future(self._read(call))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        self._call = call
        return call

    async def _write_queued(self) -> None:
        while True:
            request_id, request = await self._queue.get()
            entry = self._pending.get(request_id)
            if entry is None:  # timed out while queued: never sent
                continue
            call = self._call or self._open()
            self._pending[request_id] = (entry[0], entry[1], call, entry[3])
            self._api.tag(request, request_id)
            self._tally.sent_total += 1
            try:
                await call.write(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is this request's result
                if self._call is call:
                    self._call = None
                code = error_code(exc)
                if not isinstance(exc, grpc.aio.AioRpcError) and call.done():
                    code = (await call.code()).name  # the stream's own status says more
                entry = self._pending.pop(request_id, None)
                if entry is not None:
                    self._complete(entry, code)

    def _complete(self, entry: tuple, code: str) -> None:
        intended, waiter, _, origin = entry
        self._tally.done(intended, clock(), code, origin)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _read(self, call) -> None:
        code = STREAM_ENDED
        try:
            outcome = self._api.outcome
            async for response in call:
                request_id, answer = outcome(response)
                entry = self._pending.pop(request_id, None)
                if entry is None:  # answered after we gave up on it
                    continue
                self._complete(entry, answer)
        except BaseException as exc:  # noqa: BLE001 - the stream's reader must report any end, cancellation included
            code = error_code(exc)
        finally:
            if self._call is call:
                self._call = None
            for request_id in [rid for rid, entry in self._pending.items() if entry[2] is call]:
                self._complete(self._pending.pop(request_id), code)

    async def _sweep(self) -> None:
        """Fails requests unanswered after the timeout (a stream has no per-message deadline)."""
        period = max(0.01, min(self._timeout_s / 4, 0.25))
        while True:
            await asyncio.sleep(period)
            limit = clock() - self._timeout_s
            for request_id in [rid for rid, entry in self._pending.items() if entry[0] < limit]:
                self._complete(self._pending.pop(request_id), "DEADLINE_EXCEEDED")

    async def close(self, drain: bool = True) -> None:
        """Waits (bounded by the timeout; not at all without `drain`) for outstanding answers, then
        ends the stream."""
        deadline = clock() + self._timeout_s + 0.5
        while drain and self._pending and clock() < deadline:
            await asyncio.sleep(0.005)
        self._writer.cancel()
        self._sweeper.cancel()
        call = self._call
        if call is not None:
            try:
                if drain:  # a polite end; an interrupted run just cancels
                    await asyncio.wait_for(call.done_writing(), timeout=1.0)
            except BaseException:  # noqa: BLE001 - shutting down
                pass
            call.cancel()
        for reader in list(self._readers):
            reader.cancel()
        await asyncio.gather(self._writer, self._sweeper, *self._readers, return_exceptions=True)

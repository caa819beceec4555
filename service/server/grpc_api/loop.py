"""The serving loop of one worker: gRPC calls in, the inference core in the middle, replies out.

One thread, no asyncio on the request path. Each turn takes every transport event that has
already completed (arrivals, messages, client cancellations), hands each request to its
method's adapter (which answers at once or queues an inference with the core), and only then
asks the core to compute: so everything that arrived together goes to onnxruntime in one call,
and nothing waits that did not have to. Replies go out as one batched operation per call.

The loop owns what is gRPC's: looking the method up, reading the token from the metadata, calls
that send no request (`--grpc-read-timeout`), stream windows and health Watch subscribers. What
every inference call goes through, over gRPC or HTTP, is the request policy's (`policy.py`:
token check, draining, admission, the core, cancellation, counting and answering once).
Adapters only convert.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import grpc

from service.server import metrics
from service.server.errors import InferenceError, InvalidInput, Overloaded
from service.server.grpc_api.health import Health
from service.server.grpc_api.methods import Handler, Kind, Method
from service.server.grpc_api.status import status_of
from service.server.grpc_api.transport import (
    Call,
    CallArrived,
    CallFinished,
    CoreServer,
    MessageReceived,
    SendWindowOpen,
)
from service.server.policy import SHUTTING_DOWN, Inference, RequestPolicy
from service.server.security import REFUSAL

if TYPE_CHECKING:
    from service.server.core import InferenceCore

log = logging.getLogger(__name__)

STREAM_WINDOW = 64      # messages of one stream computed concurrently; more wait to be read
IDLE_POLL = 0.5         # seconds a turn waits for an event when nothing is queued


class _CallState:
    """What the loop remembers of one call (kept in `Call.user_data`)."""

    __slots__ = ("method", "start", "request", "inference", "open", "half_closed", "reading", "closing", "finished")

    def __init__(self, method: Method) -> None:
        self.method = method
        self.start = time.perf_counter()
        self.request: bytes | None = None        # a unary call's message, until its client half-closes
        self.inference: Inference | None = None  # a unary call's, once admitted
        self.open: set[_Message] = set()         # a stream's messages being answered
        self.half_closed = False                 # a stream's client sent its last message
        self.reading = False                     # a stream's read is outstanding
        self.closing = False                     # a stream finishes once its open messages are answered
        self.finished = False                    # a stream's status is sent


class _Message:
    """One message of a stream: admitted, timed and counted like a unary call of the same method."""

    __slots__ = ("start", "inference")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.inference: Inference | None = None


class ServingLoop:
    def __init__(self, transport: CoreServer, core: InferenceCore, methods: list[Method], health: Health,
                 policy: RequestPolicy, max_send_bytes: int, read_timeout: float) -> None:
        self._transport = transport
        self._core = core
        self._methods = {m.path: m for m in methods}
        self._observers = {m.path: metrics.RequestObserver(*m.observed) for m in methods if m.observed}
        self._health = health
        self._policy = policy
        self._max_send = max_send_bytes
        self._streams: set[Call] = set()
        # Calls whose first request message has not arrived, in arrival order, with the time by
        # which it must: such a call holds no admission slot, and is ended when that time passes.
        self._read_timeout = read_timeout
        self._awaiting: dict[Call, float] = {}

    # -- turns -----------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool]) -> None:
        """Serves until `should_stop()` is true (checked at least every IDLE_POLL seconds)."""
        while not should_stop():
            due = self._core.next_due()
            timeout = IDLE_POLL if due is None else max(0.0, due - time.monotonic())
            self.handle(self._transport.poll(timeout))

    def handle(self, events: list) -> None:
        """One turn: every event, then one compute for everything that became ready."""
        for event in events:
            kind = type(event)
            try:
                if kind is MessageReceived:
                    self._on_message(event.call, event.data, event.ok)
                elif kind is CallArrived:
                    self._on_arrival(event.call)
                elif kind is CallFinished:
                    self._on_finished(event.call, event.cancelled)
                elif kind is SendWindowOpen:
                    state = event.call.user_data
                    if state is not None:
                        self._read_more(event.call, state)
            except Exception as exc:  # noqa: BLE001 - a bug of ours fails this call, not the worker
                event.call.fail(*status_of(exc))
        self._core.compute_due()
        if self._awaiting:
            self._end_unread_calls()

    def _end_unread_calls(self) -> None:
        """Ends the calls whose first request message is overdue (oldest first; the rest are younger)."""
        now = time.monotonic()
        awaiting = self._awaiting
        while awaiting:
            call = next(iter(awaiting))
            if awaiting[call] > now:
                return
            self._end_unread(call, grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"request not received whole within {self._read_timeout:g} s (--grpc-read-timeout)")

    def _end_unread(self, call: Call, code: grpc.StatusCode, message: str) -> None:
        """Ends a call that has sent no request: never admitted nor counted, nothing to observe."""
        del self._awaiting[call]
        self._streams.discard(call)
        call.user_data = None
        call.fail(code, message)

    def set_serving(self, serving: bool) -> None:
        """Health for every service, told to every Watch subscriber."""
        for call, reply in self._health.set_serving(serving):
            call.send(reply)

    def drain(self, grace: float) -> bool:
        """NOT_SERVING; then new calls get UNAVAILABLE while in-flight ones finish (at most `grace`
        seconds; streams end once their open messages are answered). Returns whether everything
        in flight finished; the caller then ends the process (see `transport` for why)."""
        self._policy.draining = True
        self.set_serving(False)
        for call in self._health.watchers():
            self._health.unwatch(call)
            call.finish(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        for call in list(self._awaiting):   # no request sent yet: nothing of theirs is lost
            self._end_unread(call, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        return self._transport.drain(grace, self._drain_turn)

    def _drain_turn(self, events: list) -> None:
        self.handle(events)
        for call in list(self._streams):
            state = call.user_data
            if not state.closing:
                state.closing = True
                self._maybe_finish_stream(call, state)

    # -- events ----------------------------------------------------------------------------
    def _on_arrival(self, call: Call) -> None:
        method = self._methods.get(call.method)
        if method is None:
            call.fail(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {call.method}")
            return
        bad_key = _non_ascii_metadata(call.metadata)
        if bad_key is not None:
            call.fail(grpc.StatusCode.INVALID_ARGUMENT, f"metadata {bad_key!r} is not printable ASCII")
            return
        if method.protected and self._policy.guarded and not self._policy.authorised(self._authorization(call)):
            call.fail(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
            return
        state = _CallState(method)
        call.user_data = state
        if method.kind is Kind.STREAM:
            self._streams.add(call)
            state.reading = True
        self._awaiting[call] = time.monotonic() + self._read_timeout
        call.read()

    @staticmethod
    def _authorization(call: Call) -> bytes:
        return next((value for key, value in call.metadata if key == "authorization"), "").encode()

    def _on_message(self, call: Call, data: bytes | None, ok: bool) -> None:
        state: _CallState | None = call.user_data
        if state is None:
            return
        kind = state.method.kind
        if kind is Kind.UNARY and ok and data is not None and state.request is None:
            state.request = data   # a unary request is whole once its client half-closes: read that too
            call.read()
            return
        self._awaiting.pop(call, None)
        if not ok:   # the call died first; gRPC core answered the client if anyone did (CallFinished follows)
            return
        if kind is Kind.UNARY:
            if data is None:
                self._unary_message(call, state, state.request)
            else:
                self._second_message(call, state)
        elif kind is Kind.STREAM:
            state.reading = False
            if data is None:
                state.half_closed = state.closing = True
                self._maybe_finish_stream(call, state)
            else:
                self._stream_message(call, state, data)
                self._read_more(call, state)
        elif data is None:  # Kind.WATCH half-closed without its request
            call.fail(*status_of(InvalidInput("the client sent no request message")))
        else:               # Kind.WATCH: its one request; nothing more is read
            try:
                call.send(self._health.watch(call, data))
            except InferenceError as exc:
                call.fail(*status_of(exc))

    def _on_finished(self, call: Call, cancelled: bool) -> None:
        self._awaiting.pop(call, None)
        state: _CallState | None = call.user_data
        if state is None:
            return
        call.user_data = None    # what the call's callbacks refer to goes with it: no cycle left
        self._health.unwatch(call)
        self._streams.discard(call)
        code = "DEADLINE_EXCEEDED" if call.deadline is not None and time.monotonic() >= call.deadline \
            else "CANCELLED"
        for message in state.open:
            if message.inference is not None:
                message.inference.cancel(code)
        state.open.clear()
        if state.inference is not None:
            state.inference.cancel(code if cancelled else "OK")
            state.inference = None

    # -- what a front end tells the policy -------------------------------------------------
    def _check_size(self, reply: bytes) -> None:
        if len(reply) > self._max_send:
            raise Overloaded(f"response of {len(reply)} bytes exceeds the server's limit of {self._max_send} "
                             "(--max-send-message-bytes); send fewer images per request")

    # -- unary -----------------------------------------------------------------------------
    def _second_message(self, call: Call, state: _CallState) -> None:
        """A unary call whose client sent a second message: refused, as grpc-java and grpc-go do
        (their status is INTERNAL; ours says it is the client's mistake), and counted so."""
        code, message = status_of(InvalidInput("a unary call takes exactly one request message; "
                                               "this one sent more (use the streaming method)"))
        call.fail(code, message)
        observe = self._observers.get(state.method.path)
        if observe is not None:
            observe(code.name, time.perf_counter() - state.start)

    def _unary_message(self, call: Call, state: _CallState, data: bytes | None) -> None:
        method = state.method
        if data is None:   # answered, not counted: only calls whose request reached us are
            call.fail(*status_of(InvalidInput("the client sent no request message")))
            return
        handle = cast(Handler, method.handle)   # every UNARY method has one
        observe = self._observers.get(method.path)
        if observe is None:   # health, liveness, metadata of the server: neither admitted nor counted
            try:
                reply = cast(bytes, handle(data, call.deadline))   # no model involved: the reply itself
                self._check_size(reply)
                call.reply(reply)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a precise status
                call.fail(*status_of(exc))
            return
        state.inference = self._policy.serve(
            observe, state.start, lambda: handle(data, call.deadline), call.reply,
            lambda exc: call.fail(*status_of(exc)), self._check_size)

    # -- streams ---------------------------------------------------------------------------
    def _stream_message(self, call: Call, state: _CallState, data: bytes) -> None:
        method = state.method
        message = _Message()
        state.open.add(message)
        handle = cast(Handler, method.handle)   # every STREAM method has one, and a stream_error

        def send(reply: bytes) -> None:
            self._stream_sent(call, state, message, reply)

        def fail(exc: BaseException) -> None:
            code, text = status_of(exc)
            send(cast("Callable[[bytes, str, str], bytes]", method.stream_error)(data, code.name, text))

        observe = self._observers.get(method.path)
        if observe is None:   # reflection: neither admitted nor counted
            try:
                send(cast(bytes, handle(data, call.deadline)))   # reflection: the reply itself
            except Exception as exc:  # noqa: BLE001 - becomes this message's error, not the stream's
                fail(exc)
            return
        message.inference = self._policy.serve(observe, message.start, lambda: handle(data, call.deadline),
                                               send, fail, self._check_size)

    def _stream_sent(self, call: Call, state: _CallState, message: _Message, reply: bytes) -> None:
        if message not in state.open:
            return
        state.open.discard(message)
        message.inference = None
        call.send(reply)
        self._read_more(call, state)
        self._maybe_finish_stream(call, state)

    def _read_more(self, call: Call, state: _CallState) -> None:
        if not (state.reading or state.half_closed or state.closing or call.send_backlogged) \
                and len(state.open) < STREAM_WINDOW:
            state.reading = True
            call.read()

    def _maybe_finish_stream(self, call: Call, state: _CallState) -> None:
        if state.closing and not state.open and not state.finished:
            state.finished = True
            if state.half_closed:
                call.finish()
            else:
                call.finish(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)


def _non_ascii_metadata(metadata: tuple) -> str | None:
    """The first key whose text value is not ASCII (grpcio decodes what is not UTF-8 as latin-1),
    or None. Binary (`-bin`) values arrive as bytes and are not looked at."""
    for key, value in metadata:
        if value.__class__ is str and not value.isascii():
            return key
    return None

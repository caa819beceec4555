"""Single-threaded gRPC server transport driven directly on grpcio's Cython layer.

Why: grpc.aio spends ~200 us of server CPU per unary call in Python machinery (tasks, futures,
per-call coroutines). One thread that owns one completion queue and calls the Cython wrappers
around gRPC core directly answers a unary call in a few tens of microseconds. This module is
the only place that knows those internals; callers see ``CoreServer``, ``Call`` and events.

Model (one thread owns everything; nothing here is thread-safe):

* ``CoreServer`` wraps ``cygrpc.Server`` + one ``cygrpc.CompletionQueue``. After ``start()``
  it keeps ``backlog`` unmatched ``Server.request_call`` requests outstanding and re-requests
  one each time the core matches an incoming RPC to one of them. Keep ``backlog`` above the
  largest burst of simultaneous calls: calls that wait in the core's own pending queue were
  occasionally killed (client: CANCELLED) in a 2,000-call burst with 128; none with 2,500.
* ``poll(timeout)`` blocks (GIL released, inside C) for the first completion, then drains every
  completion that is already queued with non-blocking polls, and returns them as a list of
  events. The caller computes on the whole list before polling again: that is the batching
  point. Events: ``CallArrived``, ``MessageReceived``, ``CallFinished``.
* Each ``Call`` turns user actions into core batches (``Call.start_server_batch``):
  ``read()`` -> [RecvMessage]; ``reply()`` -> [SendInitialMetadata, SendMessage,
  SendStatusFromServer(OK)] (+RecvCloseOnServer when not already pending) in ONE batch;
  ``fail()`` -> [SendInitialMetadata?, SendStatus]; ``send()`` -> [SendInitialMetadata?,
  SendMessage], at most one in flight per call (a core rule), the rest queued here;
  ``finish()`` -> [SendStatus] once the queue is empty.
* Cancellation: RecvCloseOnServer completes when the call is over and reports whether it was
  cancelled (client cancel, deadline, transport loss, core rejection such as an oversize
  message). With ``watch_cancellation=True`` it is started when the call arrives (one extra
  batch, so a cancelled client is seen while the call is still being computed); otherwise it
  rides in the final batch. ``CallFinished`` is emitted once, when that op and every other op
  of the call completed.

grpcio internals used (check_grpcio() verifies them): ``cygrpc.Server(options, xds)``,
``.register_completion_queue/.add_http2_port/.start/.request_call``;
``cygrpc.CompletionQueue().poll(deadline)`` whose argument is an ABSOLUTE
``time.time()`` float (0 = non-blocking, None = forever; it wakes every 200 ms to run Python
signal handlers); the event attributes ``completion_type, tag, success, call, call_details
(.method, .deadline on the time.time() clock; the core keeps it on the monotonic clock and the
wrapper converts), invocation_metadata, batch_operations``; the ``*Operation`` classes; and the
private ``grpc.ServerCredentials._credentials`` (the cygrpc credentials behind the public TLS
object). Tested with grpcio 1.85.x.

Drain and exit, in the only order that leaves no client a CANCELLED. gRPC core answers CANCELLED
(it kills the call as a zombie) to every call that reaches a server whose shutdown has begun,
and to calls still unmatched at that moment; no timing after a core shutdown is safe, because
a client may send a call before it reads the GOAWAY. A closed connection, by contrast, reads
UNAVAILABLE to its client, which retries elsewhere. So the core is never shut down:
  1. ``drain()``: keep listening and requesting calls; every new call is answered UNAVAILABLE
     "server is shutting down" at once, while the calls in flight finish (at most ``grace`` s);
  2. keep answering so for ``linger`` s, so the last replies leave the process;
  3. the caller ends the process without destroying the server (``os._exit``): the kernel
     closes every connection, and whatever a client had in transit fails UNAVAILABLE.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc
from grpc._cython import cygrpc

TESTED_GRPCIO = "1.85"
_OK = cygrpc.StatusCode.ok
_OP_COMPLETE = cygrpc.CompletionType.operation_complete
# Tag kinds. A tag is (kind, call) for batches, a bare kind for request_call.
_REQUEST, _RECV, _SEND, _FINAL, _CLOSE, _PREREAD = range(6)
_FAR_FUTURE = 1e15  # the core's "no deadline" comes back as ~9e18 s
# Replies of one stream queued or in flight beyond which `Call.send_backlogged` says stop reading:
# a client that does not read its replies (flow-control window 0) must not grow our memory.
SEND_WINDOW = 8

ChannelOption = tuple[str, int | str | bytes]


class UnsupportedGrpcio(RuntimeError):
    """The installed grpcio lacks an internal this module drives (its message is one line)."""


def check_grpcio() -> str:
    """Fails with a one-line UnsupportedGrpcio unless grpcio has every internal this module uses."""
    needed = {
        "Server": ("register_completion_queue", "add_http2_port", "start", "request_call", "destroy"),
        "CompletionQueue": ("poll",),
        "Call": ("start_server_batch",),
        "RequestCallEvent": ("call", "call_details", "invocation_metadata", "success", "tag"),
        "BatchOperationEvent": ("batch_operations", "success", "tag", "completion_type"),
        "CallDetails": ("method", "deadline"),
        "ReceiveMessageOperation": ("message",),
        "ReceiveCloseOnServerOperation": ("cancelled",),
        "SendInitialMetadataOperation": (), "SendMessageOperation": (),
        "SendStatusFromServerOperation": (), "StatusCode": ("ok", "unavailable"),
        "CompletionType": ("operation_complete",),
    }
    for cls, attrs in needed.items():
        obj = getattr(cygrpc, cls, None)
        missing = [a for a in attrs if obj is not None and not hasattr(obj, a)]
        if obj is None or missing:
            raise UnsupportedGrpcio(f"grpcio {grpc.__version__} lacks cygrpc.{cls}"
                                    f"{'.' + missing[0] if missing else ''} (the serving loop is tested with "
                                    f"grpcio {TESTED_GRPCIO}.x)")
    try:
        cygrpc.Server((), False).destroy()
    except TypeError as exc:
        raise UnsupportedGrpcio(f"grpcio {grpc.__version__}: cygrpc.Server(options, xds) signature "
                                f"changed ({exc}); the serving loop is tested with {TESTED_GRPCIO}.x") from None
    return grpc.__version__


class CallArrived:
    """A new RPC was matched; inspect ``call.method`` etc. and start ``call.read()``."""
    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call


class MessageReceived:
    """The read started by ``call.read()`` completed. ``data`` None with ``ok`` True: the client
    half-closed, or left (a cancelled CallFinished follows); with ``ok`` False: gRPC core refused
    the message (too large, undecodable) and answered the client itself (a CallFinished follows)."""
    __slots__ = ("call", "data", "ok")

    def __init__(self, call: Call, data: bytes | None, ok: bool) -> None:
        self.call, self.data, self.ok = call, data, ok


class SendWindowOpen:
    """A stream's unsent replies fell below ``SEND_WINDOW`` again: its reading may resume."""
    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call


class CallFinished:
    """The call is over; ``cancelled`` True = the client did not get our status (cancelled,
    deadline, disconnect). Emitted once per user-visible call; the Call is dead afterwards."""
    __slots__ = ("call", "cancelled")

    def __init__(self, call: Call, cancelled: bool) -> None:
        self.call, self.cancelled = call, cancelled


Event = CallArrived | MessageReceived | CallFinished | SendWindowOpen


class Call:
    """One server-side RPC. Methods are no-ops once the status is queued or the call died."""
    __slots__ = ("method", "metadata", "deadline", "cancelled", "user_data", "_server", "_call",
                 "_ops", "_close_pending", "_closed", "_md_sent", "_status_queued", "_sending",
                 "_queue", "_final", "_visible", "_read_started")

    def __init__(self, server: CoreServer, event, visible: bool) -> None:
        details = event.call_details
        self.method: str = details.method.decode("latin-1")
        self.metadata: tuple = event.invocation_metadata   # ((key, value), ...)
        wall = details.deadline                            # time.time() clock
        self.deadline: float | None = (None if wall > _FAR_FUTURE
                                          else time.monotonic() + (wall - time.time()))
        self.cancelled = False
        self.user_data: Any = None                         # free slot for the application
        self._server, self._call = server, event.call
        self._ops = 0                 # batches in flight
        self._close_pending = False   # RecvCloseOnServer started
        self._closed = False          # RecvCloseOnServer completed
        self._md_sent = False
        self._status_queued = False
        self._sending = False
        self._queue: deque = deque()
        self._final: tuple[int, bytes] | None = None
        self._visible = visible
        self._read_started = False


    @property
    def active(self) -> bool:
        return not (self._status_queued or self.cancelled)

    @property
    def send_backlogged(self) -> bool:
        """Whether ``SEND_WINDOW`` replies are already waiting to leave (stop reading this stream;
        a ``SendWindowOpen`` event says when to go on)."""
        return len(self._queue) + self._sending >= SEND_WINDOW

    def read(self) -> None:
        """Starts receiving the next request message (one read at a time)."""
        if self.active:
            self._read_started = True
            self._batch((cygrpc.ReceiveMessageOperation(0),), _RECV)

    def reply(self, data: bytes) -> None:
        """Unary answer: initial metadata + message + OK status in one batch."""
        if self.active:
            self._status_queued = True
            ops = [cygrpc.SendMessageOperation(data, 0),
                   cygrpc.SendStatusFromServerOperation(None, _OK, b"", 0)]
            self._final_batch(ops)

    def fail(self, code: grpc.StatusCode, message: str = "") -> None:
        """Ends the call with an error status now (pending stream sends are dropped).
        Before any read, the request is read (and dropped) first, so that the status does not
        race the client's request on the stream."""
        if not self.active:
            return
        self._status_queued = True
        self._queue.clear()
        status = (code.value[0], message.encode("utf-8"))
        if not self._read_started:
            self._read_started = True
            self._final = status
            self._batch((cygrpc.ReceiveMessageOperation(0),), _PREREAD)
        else:
            self._final_batch([cygrpc.SendStatusFromServerOperation(None, *status, 0)])

    def send(self, data: bytes) -> None:
        """Queues one stream message; only one send batch may be in flight per call."""
        if not self.active:
            return
        if self._sending:
            self._queue.append(data)
        else:
            self._start_send(data)

    def finish(self, code: grpc.StatusCode = grpc.StatusCode.OK, message: str = "") -> None:
        """Ends a stream after every queued message went out."""
        if not self.active:
            return
        self._status_queued = True
        status = (code.value[0], message.encode("utf-8"))
        if self._sending:
            self._final = status
        else:
            self._final_batch([cygrpc.SendStatusFromServerOperation(None, *status, 0)])


    # -- internals ---------------------------------------------------------------------
    def _batch(self, ops: Sequence, kind: int) -> None:
        error = self._call.start_server_batch(ops, (kind, self))
        if error:  # grpc_call_error: a usage bug (e.g. two reads at once), never a network fault
            raise RuntimeError(f"grpc_call_start_batch refused a batch: grpc_call_error {error}")
        self._ops += 1

    def _start_send(self, data: bytes) -> None:
        self._sending = True
        ops = [cygrpc.SendMessageOperation(data, 0)]
        if not self._md_sent:
            self._md_sent = True
            ops.insert(0, cygrpc.SendInitialMetadataOperation(None, 0))
        self._batch(ops, _SEND)

    def _final_batch(self, ops: list) -> None:
        if not self._md_sent:
            self._md_sent = True
            ops.insert(0, cygrpc.SendInitialMetadataOperation(None, 0))
        if not self._close_pending:
            self._close_pending = True
            ops.append(cygrpc.ReceiveCloseOnServerOperation(0))
            self._batch(ops, _CLOSE)
        else:
            self._batch(ops, _FINAL)

    def _watch_close(self) -> None:
        if not self._close_pending:
            self._close_pending = True
            self._batch((cygrpc.ReceiveCloseOnServerOperation(0),), _CLOSE)

    def _complete(self, kind: int, event, out: list) -> None:
        self._ops -= 1
        ok = event.success
        if kind == _RECV:
            data = event.batch_operations[0].message() if ok else None
            if self._visible:
                out.append(MessageReceived(self, data, ok))
        elif kind == _SEND:
            self._sending = False
            if not ok:
                self._queue.clear()
            elif self._queue:
                self._start_send(self._queue.popleft())
                if len(self._queue) == SEND_WINDOW - 2 and self._visible:  # was SEND_WINDOW unsent
                    out.append(SendWindowOpen(self))
            elif self._final is not None:
                code, message = self._final
                self._final = None
                self._final_batch([cygrpc.SendStatusFromServerOperation(None, code, message, 0)])
        elif kind == _PREREAD:
            code, message = cast("tuple[int, bytes]", self._final)   # fail() set it before this batch
            self._final = None
            if ok:
                self._final_batch([cygrpc.SendStatusFromServerOperation(None, code, message, 0)])
        elif kind == _CLOSE:
            self._closed = True
            ops = event.batch_operations
            if not ok or ops[-1].cancelled():
                self.cancelled = True
        if not ok and not self._close_pending:
            self._watch_close()   # the call died; learn how, and when it is released
        if self._closed and self._ops == 0:
            self._server._release(self, out)


class CoreServer:
    """A gRPC server on one completion queue, driven by ``poll()`` from one thread."""

    def __init__(self, options: Sequence[ChannelOption] = (), backlog: int = 1024,
                 watch_cancellation: bool = True) -> None:
        self._server = cygrpc.Server(tuple(options), False)
        self._cq = cygrpc.CompletionQueue()
        self._server.register_completion_queue(self._cq)
        self._backlog = backlog
        self._watch = watch_cancellation
        self._calls: set = set()     # every live Call, including internal rejections
        self.active_calls = 0        # live calls handed to the application
        self.draining = False

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Binds ``address``; TLS/mTLS via the public grpc.ssl_server_credentials(...)."""
        core_creds = None
        if credentials is not None:
            core_creds = getattr(credentials, "_credentials", None)
            if core_creds is None:
                raise UnsupportedGrpcio(f"grpcio {grpc.__version__}: grpc.ServerCredentials has no _credentials")
        port = self._server.add_http2_port(address.encode(), core_creds)
        if not port:
            raise OSError(f"cannot bind {address}")
        return port

    def start(self) -> None:
        self._server.start()
        for _ in range(self._backlog):
            self._request()

    def poll(self, timeout: float | None) -> list:
        """Waits up to ``timeout`` s (None = forever) for one completion, then returns it and
        every completion already queued, translated into events."""
        cq = self._cq
        if timeout is None:
            event = cq.poll(None)
        else:
            event = cq.poll(time.time() + timeout if timeout > 0 else 0)
        out: list = []
        while event.completion_type == _OP_COMPLETE:
            self._dispatch(event, out)
            event = cq.poll(0)
        return out

    def begin_drain(self) -> None:
        """From now on answer new calls UNAVAILABLE at once (clients fail over); calls in flight
        continue. The core is untouched: still listening, calls still requested."""
        self.draining = True

    def drain(self, grace: float, handle: Callable[[list], None], linger: float = 0.1) -> bool:
        """Steps 1 and 2 of the module's drain order, events going to ``handle`` meanwhile (the
        application finishes its calls there). Returns whether every call in flight finished
        within ``grace``; either way the caller then ends the process."""
        now = time.monotonic
        end = now() + grace
        self.begin_drain()
        while self.active_calls and now() < end:
            handle(self.poll(min(0.05, max(0.0, end - now()))))
        finished = not self.active_calls
        lingered = now() + linger
        while now() < lingered:
            handle(self.poll(max(0.0, lingered - now())))
        return finished

    # -- internals ---------------------------------------------------------------------
    def _request(self) -> None:
        self._server.request_call(self._cq, self._cq, _REQUEST)

    def _dispatch(self, event, out: list) -> None:
        tag = event.tag
        if tag.__class__ is tuple:
            tag[1]._complete(tag[0], event, out)
        elif tag == _REQUEST:
            self._request()
            if event.success:
                self._arrived(event, out)

    def _arrived(self, event, out: list) -> None:
        visible = not self.draining
        call = Call(self, event, visible)
        self._calls.add(call)
        if not visible:
            call.fail(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            return
        self.active_calls += 1
        if self._watch:
            call._watch_close()
        out.append(CallArrived(call))

    def _release(self, call: Call, out: list) -> None:
        # Drop our reference to the core's call now, not when a garbage collection finds the
        # application's cycles through `user_data`: gRPC core counts a stream against
        # MAX_CONCURRENT_STREAMS until its call is freed, and refuses new streams past it.
        call._call = None
        self._calls.discard(call)
        if call._visible:
            call._visible = False
            self.active_calls -= 1
            out.append(CallFinished(call, call.cancelled))

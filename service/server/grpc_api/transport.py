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
  point. Events: ``CallArrived``, ``MessageReceived``, ``SendDone``, ``CallFinished``.
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
``.register_completion_queue/.add_http2_port/.start/.request_call/.shutdown/.cancel_all_calls
/.destroy``; ``cygrpc.CompletionQueue().poll(deadline)`` whose argument is an ABSOLUTE
``time.time()`` float (0 = non-blocking, None = forever; it wakes every 200 ms to run Python
signal handlers); the event attributes ``completion_type, tag, success, call, call_details
(.method, .deadline on the time.time() clock; the core keeps it on the monotonic clock and the
wrapper converts), invocation_metadata, batch_operations``; the ``*Operation`` classes; and the
private ``grpc.ServerCredentials._credentials`` (the cygrpc credentials behind the public TLS
object). Tested with grpcio 1.85.x.

Shutdown order (CANCELLED counts per order in NOTES.md). A call that reaches the core after
``grpc_server_shutdown_and_notify`` is killed by the core and its client sees CANCELLED; a
call already matched survives shutdown and can still be answered. So nothing may be on the
wire when the core shuts down, and the core shuts down last:
  1. ``begin_drain()``: keep listening and requesting; answer new calls UNAVAILABLE "server is
     shutting down" at once (clients fail over); in-flight calls finish, up to ``grace``.
  2. ``begin_quiesce()``: park new calls unanswered until none arrived for ``quiet`` s: every
     closed-loop client now waits on a parked call, so it sends nothing.
  3. ``begin_shutdown()``: core shutdown -- stop listening, GOAWAY on every connection,
     fail the outstanding request_calls.
  4. after ``settle`` s (the GOAWAY is written before our answers), ``release_parked()``
     answers the parked calls UNAVAILABLE; a client's next call sees the GOAWAY and cannot
     reconnect: UNAVAILABLE. Once ``grace`` is over, ``cancel_all_calls()`` ends what is left.
  5. poll until ``stopped``; ``close()``.
``shutdown(grace, handle)`` runs exactly this sequence. Open-loop clients (new calls without
waiting for answers) can still land in the window between steps 3 and 4's GOAWAY.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Optional, Sequence, Tuple, Union

import grpc
from grpc._cython import cygrpc

TESTED_GRPCIO = "1.85"
_OK = cygrpc.StatusCode.ok
_OP_COMPLETE = cygrpc.CompletionType.operation_complete
# Tag kinds. A tag is (kind, call) for batches, a bare kind for request/shutdown.
_REQUEST, _SHUTDOWN, _RECV, _SEND, _FINAL, _CLOSE, _PREREAD = range(7)
_FAR_FUTURE = 1e15  # the core's "no deadline" comes back as ~9e18 s

ChannelOption = Tuple[str, Union[int, str, bytes]]


class UnsupportedGrpcio(RuntimeError):
    """The installed grpcio lacks an internal this module drives (its message is one line)."""


def check_grpcio() -> str:
    """Fails with a one-line UnsupportedGrpcio unless grpcio has every internal this module uses."""
    needed = {
        "Server": ("register_completion_queue", "add_http2_port", "start", "request_call",
                   "shutdown", "cancel_all_calls", "destroy"),
        "CompletionQueue": ("poll", "shutdown"),
        "Call": ("start_server_batch", "cancel", "peer"),
        "RequestCallEvent": ("call", "call_details", "invocation_metadata", "success", "tag"),
        "BatchOperationEvent": ("batch_operations", "success", "tag", "completion_type"),
        "CallDetails": ("method", "deadline"),
        "ReceiveMessageOperation": ("message",),
        "ReceiveCloseOnServerOperation": ("cancelled",),
        "SendInitialMetadataOperation": (), "SendMessageOperation": (),
        "SendStatusFromServerOperation": (), "StatusCode": ("ok", "unavailable"),
        "CompletionType": ("operation_complete", "queue_timeout", "queue_shutdown"),
    }
    for cls, attrs in needed.items():
        obj = getattr(cygrpc, cls, None)
        missing = [a for a in attrs if obj is not None and not hasattr(obj, a)]
        if obj is None or missing:
            raise UnsupportedGrpcio(f"grpcio {grpc.__version__} lacks cygrpc.{cls}"
                               f"{'.' + missing[0] if missing else ''} (core_loop is tested with "
                               f"grpcio {TESTED_GRPCIO}.x)")
    try:
        cygrpc.Server((), False).destroy()
    except TypeError as exc:
        raise UnsupportedGrpcio(f"grpcio {grpc.__version__}: cygrpc.Server(options, xds) signature "
                           f"changed ({exc}); core_loop is tested with {TESTED_GRPCIO}.x") from None
    return grpc.__version__


class CallArrived:
    """A new RPC was matched; inspect ``call.method`` etc. and start ``call.read()``."""
    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call


class MessageReceived:
    """The read started by ``call.read()`` completed; ``data`` None = client half-closed
    (or the call died; then a CallFinished follows)."""
    __slots__ = ("call", "data")

    def __init__(self, call: Call, data: Optional[bytes]) -> None:
        self.call, self.data = call, data


class SendDone:
    """Every message queued by ``call.send()`` was handed to the transport (backpressure)."""
    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call


class CallFinished:
    """The call is over; ``cancelled`` True = the client did not get our status (cancelled,
    deadline, disconnect). Emitted once per user-visible call; the Call is dead afterwards."""
    __slots__ = ("call", "cancelled")

    def __init__(self, call: Call, cancelled: bool) -> None:
        self.call, self.cancelled = call, cancelled


Event = Union[CallArrived, MessageReceived, SendDone, CallFinished]


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
        self.deadline: Optional[float] = (None if wall > _FAR_FUTURE
                                          else time.monotonic() + (wall - time.time()))
        self.cancelled = False
        self.user_data: object = None                      # free slot for the application
        self._server, self._call = server, event.call
        self._ops = 0                 # batches in flight
        self._close_pending = False   # RecvCloseOnServer started
        self._closed = False          # RecvCloseOnServer completed
        self._md_sent = False
        self._status_queued = False
        self._sending = False
        self._queue: deque = deque()
        self._final: Optional[Tuple[int, bytes]] = None
        self._visible = visible
        self._read_started = False

    @property
    def peer(self) -> str:
        return self._call.peer().decode("latin-1")

    @property
    def active(self) -> bool:
        return not (self._status_queued or self.cancelled)

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
        Before any read, the request is read (and dropped) first, so the status does not
        race the client's request on the stream (common advice; NOTES.md: no measured gain)."""
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

    def cancel(self) -> None:
        """Aborts the call (client sees CANCELLED); a CallFinished follows."""
        if not self._closed:
            self._call.cancel()

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
                out.append(MessageReceived(self, data))
        elif kind == _SEND:
            self._sending = False
            if not ok:
                self._queue.clear()
            elif self._queue:
                self._start_send(self._queue.popleft())
            elif self._final is not None:
                code, message = self._final
                self._final = None
                self._final_batch([cygrpc.SendStatusFromServerOperation(None, code, message, 0)])
            elif self._visible and not self._status_queued:
                out.append(SendDone(self))
        elif kind == _PREREAD:
            code, message = self._final
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
        self._requested = 0          # outstanding request_call()s
        self._calls: set = set()     # every live Call, including internal rejections
        self.active_calls = 0        # live calls handed to the application
        self.draining = False
        self.shutting_down = False
        self.last_arrival = 0.0      # monotonic time of the latest arrival while quiescing
        self._parking = False
        self._parked: list = []
        self._core_down = False
        self._started = False
        self._destroyed = False

    def add_port(self, address: str, credentials: Optional[grpc.ServerCredentials] = None) -> int:
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
        self._started = True
        for _ in range(self._backlog):
            self._request()

    def poll(self, timeout: Optional[float]) -> list:
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
        """Phase 1: answer new calls UNAVAILABLE at once (clients fail over); in-flight calls
        continue. The core is untouched: still listening, calls still requested."""
        self.draining = True

    def begin_quiesce(self) -> None:
        """Phase 2: park new calls unanswered. A client blocked on a parked call sends nothing
        more, so nothing can be on the wire when the core shuts down; matched calls survive
        core shutdown, so the parked ones are answered UNAVAILABLE after the GOAWAY."""
        self.draining = True
        self._parking = True
        self.last_arrival = time.monotonic()

    def begin_shutdown(self, close_connections: bool = False) -> None:
        """Phase 3: core shutdown -- stop listening, GOAWAY on every connection, fail the
        outstanding request_calls. Calls reaching the core from now on are killed by it
        (client sees CANCELLED). ``close_connections`` also cancel_all_calls(): every
        connection is dropped and in-flight calls are cancelled (end of grace)."""
        if self._started and not self.shutting_down:
            self.draining = self.shutting_down = True
            self._server.shutdown(self._cq, _SHUTDOWN)
        if close_connections and self.shutting_down and not self._core_down:
            self._server.cancel_all_calls()

    def release_parked(self) -> None:
        """Phase 4 (after the GOAWAY went out): answer parked calls UNAVAILABLE."""
        self._parking = False
        parked, self._parked = self._parked, []
        for call in parked:
            call.fail(grpc.StatusCode.UNAVAILABLE, "server is shutting down")

    @property
    def stopped(self) -> bool:
        return self._core_down and not self._calls

    def shutdown(self, grace: float, handle: Callable[[list], None], quiet: float = 0.02,
                 settle: float = 0.05) -> None:
        """The whole shutdown, events going to ``handle`` meanwhile (the application finishes
        its in-flight calls there): drain until no call is in flight (at most ``grace`` s),
        park new calls until none arrived for ``quiet`` s, core shutdown, wait ``settle`` s
        for the GOAWAYs to be written ahead of our answers, release the parked calls, and
        cancel whatever is still in flight once ``grace`` is over."""
        now = time.monotonic
        end = now() + grace
        self.begin_drain()
        while self.active_calls and now() < end:
            handle(self.poll(min(0.05, max(0.0, end - now()))))
        self.begin_quiesce()
        quiet_end = max(end, now()) + 10 * quiet
        while now() - self.last_arrival < quiet and now() < quiet_end:
            handle(self.poll(quiet))
        self.begin_shutdown()
        settled = now() + settle
        while now() < settled:
            handle(self.poll(max(0.0, settled - now())))
        self.release_parked()
        while not self.stopped:
            if now() >= end:
                self.begin_shutdown(close_connections=True)
            handle(self.poll(0.05))

    def close(self) -> None:
        """Releases the core server and queue (after ``stopped``, or to abandon everything:
        then in-flight calls are cancelled). Idempotent."""
        if self._destroyed:
            return
        if not self._started:    # the core aborts on destroying a bound, never-shut server
            self._server.start()
            self._started = True
        self.begin_shutdown(close_connections=True)
        self.release_parked()
        while not self.stopped:
            self.poll(0.05)
        self._destroyed = True
        self._calls.clear()
        self._server.destroy()
        self._cq.shutdown()
        while self._cq.poll(None).completion_type != cygrpc.CompletionType.queue_shutdown:
            pass

    # -- internals ---------------------------------------------------------------------
    def _request(self) -> None:
        self._requested += 1
        self._server.request_call(self._cq, self._cq, _REQUEST)

    def _dispatch(self, event, out: list) -> None:
        tag = event.tag
        if tag.__class__ is tuple:
            tag[1]._complete(tag[0], event, out)
        elif tag == _REQUEST:
            self._requested -= 1
            if not self.shutting_down:
                self._request()
            if event.success:
                self._arrived(event, out)
        elif tag == _SHUTDOWN:
            self._core_down = True

    def _arrived(self, event, out: list) -> None:
        visible = not self.draining
        call = Call(self, event, visible)
        self._calls.add(call)
        if not visible:
            if self._parking:
                self.last_arrival = time.monotonic()
                self._parked.append(call)
            else:
                call.fail(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            return
        self.active_calls += 1
        if self._watch:
            call._watch_close()
        out.append(CallArrived(call))

    def _release(self, call: Call, out: list) -> None:
        self._calls.discard(call)
        if call._visible:
            call._visible = False
            self.active_calls -= 1
            out.append(CallFinished(call, call.cancelled))

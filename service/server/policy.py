"""The request policy: what every inference call goes through, whichever front end it came by.

Written once for gRPC and HTTP: the bearer token, draining, admission (`--max-concurrent-rpcs`),
handing the adapter's `Pending` inference to the core with its deadline, cancellation when the
client leaves, and the completion that counts a call and answers it exactly once (counted first,
so a scrape right after an answer always sees it). A front end only finds the method, decodes
with its adapter and says how to send an answer or a failure in its protocol.

One instance per front end: each front end has its own thread, inference core and metrics row,
so the policy, like the core, is never shared between threads.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.server import metrics
from service.server.core_types import Pending
from service.server.errors import InferenceError, NotReady, Overloaded

if TYPE_CHECKING:
    from service.server.batcher import Ticket
    from service.server.core import InferenceCore

SHUTTING_DOWN = "server is shutting down"
Answer = Callable[[], Any]            # runs the adapter: a reply now, or a `Pending` inference
Send = Callable[[Any], None]          # puts a reply on the wire
Fail = Callable[[BaseException], None]
Check = Callable[[Any], None]         # raises if a reply cannot be sent (a size limit)


def code_of(exc: BaseException) -> str:
    """The status name a failure is counted under (the gRPC name, over HTTP too)."""
    return exc.status if isinstance(exc, InferenceError) else "INTERNAL"


class Inference:
    """One admitted call (or one stream message), from admission to its one answer."""

    __slots__ = ("_observe", "_started", "_send", "_fail", "_check", "finished", "ticket")

    def __init__(self, observe: metrics.RequestObserver, started: float, send: Send, fail: Fail,
                 check: Check | None) -> None:
        self._observe, self._started = observe, started
        self._send, self._fail, self._check = send, fail, check
        self.finished = False
        self.ticket: Ticket | None = None

    def answer(self, reply: Any) -> None:
        if self.finished:
            return
        if self._check is not None:
            try:
                self._check(reply)
            except Exception as exc:  # noqa: BLE001 - the reply cannot go: the call fails instead
                self.fail(exc)
                return
        self._count("OK")
        self._send(reply)

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self._count(code_of(exc))
            self._fail(exc)

    def cancel(self, code: str) -> None:
        """The client left (or its deadline passed): nothing is computed or sent for it."""
        if self.ticket is not None:
            self.ticket.cancel()
        if not self.finished:
            self._count(code)

    def _count(self, code: str) -> None:
        self.finished = True
        self.ticket = None        # its callback refers back to this call
        metrics.request_finished()
        self._observe(code, time.perf_counter() - self._started)


class RequestPolicy:
    def __init__(self, core: InferenceCore, token: bytes | None, max_concurrent: int) -> None:
        self._core = core
        self._expected_authorization = b"Bearer " + token if token else None
        self._limit = max_concurrent
        self.draining = False

    @property
    def guarded(self) -> bool:
        """Whether a token is configured."""
        return self._expected_authorization is not None

    def authorised(self, given: bytes) -> bool:
        """Whether `given` (the authorization value) carries the token; true when none is set."""
        expected = self._expected_authorization
        return expected is None or hmac.compare_digest(given, expected)

    def serve(self, observe: metrics.RequestObserver, started: float, answer: Answer, send: Send,
              fail: Fail, check: Check | None = None) -> Inference:
        """Admits one call and answers it: `send(reply)` once, or `fail(exc)` once; returns the
        call, whose `cancel` the front end calls if its client leaves first. Whatever a reply
        needs computed is queued with the core; the front end runs `core.compute_due()` after
        its turn, so that everything that arrived together is computed together."""
        metrics.request_started()
        inference = Inference(observe, started, send, fail, check)
        try:
            if self.draining:
                raise NotReady(SHUTTING_DOWN)
            if metrics.inflight() > self._limit:
                raise Overloaded(f"server is handling its limit of {self._limit} calls (--max-concurrent-rpcs); "
                                 "retry with backoff or add replicas")
            outcome = answer()
            if type(outcome) is not Pending:
                inference.answer(outcome)
                return inference
            encode = outcome.encode

            def done(result, error: InferenceError | None) -> None:
                if error is not None:
                    inference.fail(error)
                    return
                try:
                    reply = encode(result)
                except Exception as exc:  # noqa: BLE001 - every failure becomes a precise status
                    inference.fail(exc)
                    return
                inference.answer(reply)

            inference.ticket = self._core.submit(outcome.request, done)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a precise status
            inference.fail(exc)
        return inference

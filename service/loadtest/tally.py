"""Counting one client process's outcomes: which requests are measured, their latency, errors by status.

Only requests whose intended send time falls in the measurement window are reported; every
request actually sent, warm-up included, is counted in `sent_total` so that a server's own count
can be checked against ours.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from service.loadtest.histogram import LatencyHistogram

clock = time.monotonic  # CLOCK_MONOTONIC: one clock shared by all processes on the machine
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code, f"CODE_{code}")


class Tally:
    """Counts and latencies of one process; only requests intended inside the window count."""

    def __init__(self, measure_start: float, measure_end: float, quota: int, closed: bool) -> None:
        self.closed = closed
        self.last_finish = 0.0
        self.measure_start = measure_start
        self.measure_end = measure_end
        self.quota = quota
        self.histogram = LatencyHistogram()
        self.send_lag = LatencyHistogram()  # open loop: how late requests left against the schedule
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.sent_total = 0
        self.measured_started = 0
        self.stopped_at: float | None = None
        self.interrupted = False

    def may_start(self, now: float) -> bool:
        """Whether another request may begin; notes the time the quota (if any) ran out."""
        if now >= self.measure_end:
            return False
        if self.quota and self.measured_started >= self.quota:
            if self.stopped_at is None:
                self.stopped_at = now
            return False
        return True

    def started(self, intended: float) -> None:
        if intended >= self.measure_start:
            self.measured_started += 1

    def sent_late(self, intended: float, now: float) -> None:
        """Open loop: the client's own lateness (CPU starvation, timer jitter), for the report."""
        if intended >= self.measure_start:
            self.send_lag.record(max(0.0, now - intended))

    def done(self, intended: float, finished: float, code: str, origin: float | None = None) -> None:
        """Records one outcome. `intended` places it in (or out of) the window; latency runs from
        `origin` (default: `intended`), the later of intended and actual send time."""
        if not self.measure_start <= intended < self.measure_end or self.interrupted:
            return
        if finished > self.last_finish:
            self.last_finish = finished
        if code == "OK":
            self.ok += 1
            self.histogram.record(finished - (intended if origin is None else origin))
        else:
            self.errors[code] = self.errors.get(code, 0) + 1

    def interrupt(self, now: float) -> None:
        """Ends the window at `now` (the user stopped the run): no request starts or counts after it,
        so requests cut off in flight are neither successes nor failures, and the rate is over the
        time actually measured."""
        self.interrupted = True
        self.measure_end = min(self.measure_end, max(now, self.measure_start))
        self.stopped_at = now if self.stopped_at is None else min(self.stopped_at, now)

    def elapsed(self) -> float:
        """The span the measured requests cover.

        Closed loop: from the window's start to the last measured answer. The requests still in
        flight when the window closes are counted, so the time they took is counted too, and
        requests/elapsed is the true rate with no end-of-window bias. Open loop: the scheduled
        window (or until the quota ran out), stretched to the last answer when a saturated
        server answers long after the schedule ended, so req/s is what was achieved, not offered.
        """
        if self.closed:
            return max(0.0, self.last_finish - self.measure_start)
        stop = self.measure_end if self.stopped_at is None else min(self.stopped_at, self.measure_end)
        return max(0.0, stop - self.measure_start, self.last_finish - self.measure_start)

    def result(self) -> dict:
        return {"ok": self.ok, "errors": dict(self.errors), "sent_total": self.sent_total,
                "elapsed_s": self.elapsed(), "interrupted": self.interrupted,
                "histogram": self.histogram.to_state(), "send_lag": self.send_lag.to_state()}


def error_code(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "CLIENT_" + type(exc).__name__.upper()

"""Latency recording with bounded memory: log-spaced buckets 1 % wide, from 1 µs to ~1000 s.

A run of any length costs a fixed ~17 KB per process, histograms from several client processes
merge by adding counts, and a percentile is off by at most half a bucket (±0.5 %). Samples are
buffered and bucketed in vectorised batches so that recording is one list append per request.
"""

from __future__ import annotations

import math

import numpy as np

MIN_SECONDS = 1e-6
GROWTH = 1.01
_LOG_GROWTH = math.log(GROWTH)
BUCKETS = int(math.ceil(math.log(1000.0 / MIN_SECONDS) / _LOG_GROWTH)) + 2
_FLUSH_EVERY = 1 << 16


class LatencyHistogram:
    """Counts of latencies (seconds) per log bucket, plus exact count, sum and maximum."""

    def __init__(self) -> None:
        self.counts = np.zeros(BUCKETS, dtype=np.int64)
        self.total = 0
        self.sum_s = 0.0
        self.max_s = 0.0
        self._buffer: list[float] = []

    def record(self, seconds: float) -> None:
        self._buffer.append(seconds)
        if len(self._buffer) >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Moves buffered samples into the buckets (one vectorised pass)."""
        if not self._buffer:
            return
        samples = np.asarray(self._buffer, dtype=np.float64)
        self._buffer.clear()
        index = np.floor(np.log(np.maximum(samples, MIN_SECONDS) / MIN_SECONDS) / _LOG_GROWTH) + 1
        index[samples < MIN_SECONDS] = 0
        index = np.clip(index, 0, BUCKETS - 1).astype(np.int64)
        self.counts += np.bincount(index, minlength=BUCKETS)
        self.total += samples.size
        self.sum_s += float(samples.sum())
        self.max_s = max(self.max_s, float(samples.max()))

    def merge(self, other: LatencyHistogram) -> None:
        self.flush()
        other.flush()
        self.counts += other.counts
        self.total += other.total
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)

    def quantile(self, q: float) -> float:
        """The q-quantile (0 < q <= 1) in seconds: the geometric middle of its bucket, capped at max."""
        self.flush()
        if self.total == 0:
            return math.nan
        rank = max(1, math.ceil(q * self.total))
        bucket = int(np.searchsorted(np.cumsum(self.counts), rank))
        if bucket == 0:
            return min(MIN_SECONDS, self.max_s)
        return min(MIN_SECONDS * GROWTH ** (bucket - 0.5), self.max_s)

    def mean(self) -> float:
        self.flush()
        return self.sum_s / self.total if self.total else math.nan

    def to_state(self) -> dict:
        """A compact picklable form for sending from a client process to the parent."""
        self.flush()
        nonzero = np.flatnonzero(self.counts)
        return {"index": nonzero, "counts": self.counts[nonzero], "total": self.total,
                "sum_s": self.sum_s, "max_s": self.max_s}

    @classmethod
    def from_state(cls, state: dict) -> LatencyHistogram:
        histogram = cls()
        histogram.counts[state["index"]] = state["counts"]
        histogram.total = int(state["total"])
        histogram.sum_s = float(state["sum_s"])
        histogram.max_s = float(state["max_s"])
        return histogram

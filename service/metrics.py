"""Prometheus metrics: what is measured, under which names, and with which buckets.

Three seams observe: end-to-end latency in the servicer wrapper (`service.status`), queue wait and
batch size in the batcher, compute time around the onnxruntime call. Nothing else times anything.

The per-request series live in a block of shared memory: one row of float64 cells per worker
slot, written only by that worker's event-loop thread and summed by whoever collects (the
supervisor's /metrics with `--workers N`). An observation is two additions to plain numbers, no
lock. prometheus-client's multiprocess values take a lock, check the pid and pack into an mmap on
every update (about 1.3 µs each, a dozen per request); that was the largest part of our p50
overhead at one image per call. The series that change rarely (model info, images by version) stay
prometheus-client multiprocess metrics, so PROMETHEUS_MULTIPROC_DIR must still be set before this
module is first imported when several workers run.
"""

from __future__ import annotations

import mmap
from bisect import bisect_left
from collections.abc import Iterator

import grpc
import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

disable_created_metrics()  # `_created` series double the exposition and no dashboard uses them

PREFIX = "digits"

# 50 µs to 1 s, dense where this service lives (0.1–10 ms).
LATENCY_BUCKETS = (
    50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 10e-3, 15e-3, 20e-3, 30e-3, 50e-3, 75e-3,
    0.1, 0.2, 0.5, 1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

# The inference API methods whose calls are timed and counted; a RequestObserver for any other
# method fails at import, so a new method is added here, where the memory layout is decided.
OBSERVED_METHODS = (
    ("kserve_v2", "ModelInfer"), ("kserve_v2", "ModelMetadata"), ("kserve_v2", "ModelReady"),
    ("digits_v1", "Classify"), ("digits_v1", "ClassifyStream"), ("digits_v1", "GetModelInfo"),
)
CODES = tuple(code.name for code in grpc.StatusCode)

IMAGES = Counter(f"{PREFIX}_images_classified", "Images classified successfully, by the model version that answered.",
                 ["version"])
MODEL_INFO = Gauge(
    f"{PREFIX}_model_info", "The model being served (value 1): name, version and SHA-256 of model.onnx.",
    ["model", "version", "sha256"], multiprocess_mode="livemax")


class _Histogram:
    """Where one histogram's cells sit in a row: a count per bucket (the last is +Inf), then the sum."""

    def __init__(self, offset: int, bounds: tuple[float, ...]) -> None:
        self.offset, self.bounds = offset, bounds
        self.sum_cell = offset + len(bounds) + 1
        self.end = self.sum_cell + 1
        self.edges = [*map(floatToGoString, bounds), "+Inf"]

    def observe(self, value: float) -> None:
        cells = _cells
        cells[self.offset + bisect_left(self.bounds, value)] += 1.0
        cells[self.sum_cell] += value

    def count(self, row) -> float:
        return sum(row[self.offset:self.sum_cell])

    def export(self, row: np.ndarray) -> tuple[list[tuple[str, float]], float, float]:
        """(cumulative buckets, sum, count) from one summed row."""
        counts = np.cumsum(row[self.offset:self.sum_cell]).tolist()
        return list(zip(self.edges, counts)), float(row[self.sum_cell]), counts[-1]


def _allocate(bounds: tuple[float, ...]) -> _Histogram:
    """The next histogram of the row layout, placed after the previous one."""
    global ROW_CELLS
    histogram = _Histogram(ROW_CELLS, bounds)
    ROW_CELLS = histogram.end
    return histogram


ROW_CELLS = 0
_REQUESTS = {(api, method, code): _allocate(LATENCY_BUCKETS) for api, method in OBSERVED_METHODS for code in CODES}
_QUEUE_WAIT = _allocate(LATENCY_BUCKETS)
_COMPUTE = _allocate(LATENCY_BUCKETS)
_BATCH = _allocate(BATCH_BUCKETS)
_INFLIGHT = ROW_CELLS
ROW_CELLS += 1


class _Block:
    """Rows of cells in anonymous shared memory: mapped before fork, so every worker shares it."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.memory = mmap.mmap(-1, rows * ROW_CELLS * 8)  # MAP_SHARED, zero-filled

    def row(self, slot: int) -> memoryview:
        start = slot * ROW_CELLS * 8
        return memoryview(self.memory)[start:start + ROW_CELLS * 8].cast("d")

    def total(self) -> np.ndarray:
        return np.frombuffer(self.memory, dtype=np.float64).reshape(self.rows, ROW_CELLS).sum(axis=0)


_block = _Block(1)      # a single process until the supervisor shares a block between workers
_cells = _block.row(0)  # this process's row: the request path's only write target
_answered_before = 0.0  # OK calls already in this row when the process took it over


def share_between_workers(workers: int) -> None:
    """Called by the supervisor before forking: one row per worker slot."""
    global _block, _cells
    _block = _Block(workers)
    _cells = _block.row(0)


def use_slot(slot: int) -> None:
    """Called in a worker after fork. A replacement takes over its predecessor's row, so counters
    stay monotonic; only the in-flight gauge restarts from zero."""
    global _cells, _answered_before
    _cells = _block.row(slot)
    _cells[_INFLIGHT] = 0.0
    _answered_before = _answered(_cells)


def worker_exited(slot: int) -> None:
    """A dead worker's calls are no longer in flight."""
    _block.row(slot)[_INFLIGHT] = 0.0


class RequestObserver:
    """Records one API method's calls: latency and count by gRPC status code."""

    def __init__(self, api: str, method: str) -> None:
        if (api, method) not in OBSERVED_METHODS:
            raise ValueError(f"{api}.{method} is not in metrics.OBSERVED_METHODS")
        self._histograms = {code: _REQUESTS[api, method, code] for code in CODES}

    def __call__(self, code: str, seconds: float) -> None:
        self._histograms[code].observe(seconds)


def request_started() -> None:
    _cells[_INFLIGHT] += 1.0


def request_finished() -> None:
    _cells[_INFLIGHT] -= 1.0


def inflight() -> float:
    """Calls this worker is handling now."""
    return _cells[_INFLIGHT]


observe_queue_wait = _QUEUE_WAIT.observe


def observe_compute(seconds: float, images: int) -> None:
    """One onnxruntime call: its duration and its batch size."""
    _COMPUTE.observe(seconds)
    _BATCH.observe(images)


def _answered(row) -> float:
    return sum(h.count(row) for (_, _, code), h in _REQUESTS.items() if code == "OK")


def answered_calls() -> int:
    """Inference calls this process answered successfully: the server's side of a drain count."""
    return int(_answered(_cells) - _answered_before)


class SharedCollector:
    """Exports the shared rows, summed over workers, in Prometheus' data model."""

    def collect(self) -> Iterator[Metric]:
        row = _block.total()
        labels = ["api", "method", "code"]
        duration = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "End-to-end time of an inference API call in the server, by API, method and gRPC status code.",
            labels=labels)
        calls = CounterMetricFamily(
            f"{PREFIX}_requests", "Inference API calls handled, by API, method and gRPC status code.",
            labels=labels)
        for key, histogram in _REQUESTS.items():
            buckets, total, count = histogram.export(row)
            if count:
                duration.add_metric(list(key), buckets, total)
                calls.add_metric(list(key), count)
        yield duration
        yield calls
        for histogram, name, doc in (
                (_QUEUE_WAIT, "queue_wait_seconds", "Time a request waited in the batching queue before compute."),
                (_COMPUTE, "model_compute_seconds", "Time of one onnxruntime call (one coalesced batch)."),
                (_BATCH, "batch_size", "Images per onnxruntime call after coalescing.")):
            buckets, total, _ = histogram.export(row)
            yield HistogramMetricFamily(f"{PREFIX}_{name}", doc, buckets=buckets, sum_value=total)
        yield GaugeMetricFamily(f"{PREFIX}_inflight_requests", "Inference API calls being handled now.",
                                value=float(row[_INFLIGHT]))


def register(registry: CollectorRegistry) -> None:
    registry.register(SharedCollector())


register(REGISTRY)  # a single process's default registry; the supervisor registers its own

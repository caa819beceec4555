"""Prometheus metrics: what is measured, under which names, and with which buckets.

Three seams observe: end-to-end latency in the request policy (`policy.py`, for gRPC and HTTP
alike), queue wait and batch size in the batcher, and each model execution's phases in the batcher
(preparing the input, the onnxruntime call, splitting the outputs). Nothing else times anything.
`totals` reads the same cells for Triton's statistics extension (`service.server.v2.statistics`).

Every series lives in cells this module owns: one row of float64 cells per front end (gRPC,
HTTP) of each worker slot, written only by that front end's thread and summed by whoever collects
(the supervisor's /metrics with `--workers N`). An observation is two additions to plain numbers,
no lock: prometheus-client's multiprocess values take a lock, check the pid and pack into an mmap
on every update (about 1.3 µs each, a dozen per request), which was the largest part of our p50
overhead at one image per call. Model versions (name, version, SHA-256) sit in a small table beside each row, so
images-by-version and model info need no prometheus-client multiprocess mode either.

Importing this module maps nothing and registers nothing. Until the lifecycle code calls
`map_shared`, observations land in a private row of this process (enough for unit tests); the
lifecycle code maps the shared block before any worker forks, picks each worker's row with
`use_slot`, each front end's thread picks its row in it with `use_front_end`, and the collector
is registered with `register` in the process that serves /metrics.
"""

from __future__ import annotations

import logging
import mmap
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

PREFIX = "digits"

# 50 µs to 1 s, dense where this service lives (0.1–10 ms).
LATENCY_BUCKETS = (
    50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 10e-3, 15e-3, 20e-3, 30e-3, 50e-3, 75e-3,
    0.1, 0.2, 0.5, 1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

# The inference API methods whose calls are timed and counted; a RequestObserver for any other
# method fails at construction, so a new method is added here, where the memory layout is decided.
OBSERVED_METHODS = (
    ("kserve_v2", "ModelInfer"), ("kserve_v2", "ModelStreamInfer"), ("kserve_v2", "ModelMetadata"),
    ("kserve_v2", "ModelReady"),
    ("digits_v1", "Classify"), ("digits_v1", "ClassifyStream"), ("digits_v1", "GetModelInfo"),
    ("kserve_v2_rest", "ModelInfer"), ("kserve_v2_rest", "ModelMetadata"), ("kserve_v2_rest", "ModelReady"),
    ("digits_rest", "Preprocess"),
    # Triton's extensions, on both V2 bindings
    ("kserve_v2", "ModelConfig"), ("kserve_v2", "ModelStatistics"), ("kserve_v2", "RepositoryIndex"),
    ("kserve_v2_rest", "ModelConfig"), ("kserve_v2_rest", "ModelStatistics"), ("kserve_v2_rest", "RepositoryIndex"),
)
# The methods that ask the model for an inference: their calls are Triton's success and fail.
INFERENCE_METHODS = (("kserve_v2", "ModelInfer"), ("kserve_v2", "ModelStreamInfer"), ("digits_v1", "Classify"),
                     ("digits_v1", "ClassifyStream"), ("kserve_v2_rest", "ModelInfer"))
# The phases of one model execution (batcher.py), as Triton's statistics split them.
PHASES = ("input", "infer", "output")
# The serving threads of one worker, each with its own row (one writer per row, no lock).
FRONT_ENDS = ("grpc", "http")
# gRPC's status code names, as strings so that metrics need not import grpc.
CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
         "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
         "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
VERSION_SLOTS = 64          # distinct model versions one server run can label; later ones are not counted
_NAME_BYTES, _VERSION_BYTES, _SHA_BYTES = 64, 32, 32
_ENTRY_BYTES = _NAME_BYTES + _VERSION_BYTES + _SHA_BYTES


class _Histogram:
    """Where one histogram's cells sit in a row: a count per bucket (the last is +Inf), then the sum."""

    def __init__(self, offset: int, bounds: tuple[float, ...]) -> None:
        self.offset, self.bounds = offset, bounds
        self.sum_cell = offset + len(bounds) + 1
        self.end = self.sum_cell + 1
        self.edges = [*map(floatToGoString, bounds), "+Inf"]

    def observe(self, value: float) -> None:
        cells = _writer.cells
        cells[self.offset + bisect_left(self.bounds, value)] += 1.0
        cells[self.sum_cell] += value

    def count(self, row) -> float:
        return sum(row[self.offset:self.sum_cell])

    def export(self, row: np.ndarray) -> tuple[list[tuple[str, float]], float, float]:
        """(cumulative buckets, sum, count) from one summed row."""
        counts = np.cumsum(row[self.offset:self.sum_cell]).tolist()
        return list(zip(self.edges, counts)), float(row[self.sum_cell]), counts[-1]


class _Layout:
    """Hands out consecutive cells of a row, so the layout is written once, in order."""

    def __init__(self) -> None:
        self.cells = 0

    def histogram(self, bounds: tuple[float, ...]) -> _Histogram:
        histogram = _Histogram(self.cells, bounds)
        self.cells = histogram.end
        return histogram

    def block(self, size: int) -> int:
        start, self.cells = self.cells, self.cells + size
        return start


_layout = _Layout()
_REQUESTS = {(api, method, code): _layout.histogram(LATENCY_BUCKETS)
             for api, method in OBSERVED_METHODS for code in CODES}
_QUEUE_WAIT = _layout.histogram(LATENCY_BUCKETS)
_COMPUTE = _layout.histogram(LATENCY_BUCKETS)
_BATCH = _layout.histogram(BATCH_BUCKETS)
# Per request computed: its batch's time in each phase (a batch's time counts once for each request
# in it, as Triton charges it), after the count of such requests; then when the last batch ended.
_COMPUTED = _layout.block(1)
_PHASE_SECONDS = _layout.block(len(PHASES))
_LAST_INFERENCE = _layout.block(1)       # time.time() at the end of the last onnxruntime call
_INFLIGHT = _layout.block(1)
_IMAGES = _layout.block(VERSION_SLOTS)   # images classified, by version-table entry
_SERVING = _layout.block(1)              # 1 + the table entry this worker serves now; 0: none
ROW_CELLS = _layout.cells


class _Block:
    """Rows of cells, then each row's own version table. Shared between processes when mapped
    before fork; every row and its table have one writer (their worker), so nothing is locked."""

    def __init__(self, rows: int, shared: bool) -> None:
        self.rows = rows
        self.cells_bytes = rows * ROW_CELLS * 8
        size = self.cells_bytes + rows * VERSION_SLOTS * _ENTRY_BYTES
        self.memory = mmap.mmap(-1, size) if shared else bytearray(size)  # zero-filled either way

    def row(self, slot: int) -> memoryview[float]:
        start = slot * ROW_CELLS * 8
        return memoryview(self.memory)[start:start + ROW_CELLS * 8].cast("d")

    def rows_array(self) -> np.ndarray:
        return np.frombuffer(self.memory, dtype=np.float64, count=self.rows * ROW_CELLS).reshape(self.rows, ROW_CELLS)

    def _entry(self, slot: int, index: int) -> memoryview:
        start = self.cells_bytes + (slot * VERSION_SLOTS + index) * _ENTRY_BYTES
        return memoryview(self.memory)[start:start + _ENTRY_BYTES]

    def entries(self, slot: int) -> list[tuple[str, str, str]]:
        """(model, version, sha256 hex) of every version row `slot` has labelled, in table order."""
        found = []
        for index in range(VERSION_SLOTS):
            entry = bytes(self._entry(slot, index))
            if not entry[0]:
                break
            name = entry[:_NAME_BYTES].rstrip(b"\0").decode()
            version = entry[_NAME_BYTES:_NAME_BYTES + _VERSION_BYTES].rstrip(b"\0").decode()
            found.append((name, version, entry[_NAME_BYTES + _VERSION_BYTES:].hex()))
        return found

    def find_or_add(self, slot: int, name: str, version: str, sha256: str) -> int | None:
        """The index of this model version in row `slot`'s table, added if new; None when full."""
        wanted = (name, version, sha256)
        entries = self.entries(slot)
        if wanted in entries:
            return entries.index(wanted)
        if len(entries) == VERSION_SLOTS:
            return None
        record = (name.encode()[:_NAME_BYTES].ljust(_NAME_BYTES, b"\0")
                  + version.encode()[:_VERSION_BYTES].ljust(_VERSION_BYTES, b"\0") + bytes.fromhex(sha256))
        self._entry(slot, len(entries))[:] = record
        return len(entries)


class _Writer(threading.local):
    """The row the calling thread writes: the class attributes are the process's gRPC row, which
    every thread uses until it picks another with `use_front_end`."""

    row: int = 0
    cells: memoryview[float]


_block = _Block(len(FRONT_ENDS), shared=False)   # this process alone until `map_shared`
_slot = 0                                        # this process's worker slot
_writer = _Writer()
_Writer.cells = _block.row(0)                    # the request path's only write target
_answered_before = 0.0                           # OK calls in this slot's rows when the process took it over


def _rows_of(slot: int) -> range:
    return range(slot * len(FRONT_ENDS), (slot + 1) * len(FRONT_ENDS))


def map_shared(workers: int) -> None:
    """Maps the shared rows of every worker slot; the supervisor calls it before any worker forks.
    A single-process server keeps its private rows."""
    global _block, _slot
    _block = _Block(workers * len(FRONT_ENDS), shared=True)
    _slot = 0
    _Writer.row, _Writer.cells = 0, _block.row(0)


def use_slot(slot: int) -> None:
    """Called in a worker after fork. A replacement takes over its predecessor's rows, so counters
    stay monotonic; only the in-flight gauges and the served versions restart."""
    global _answered_before, _slot
    _slot = slot
    worker_exited(slot)
    _Writer.row = _rows_of(slot)[0]
    _Writer.cells = _block.row(_Writer.row)
    _answered_before = _answered_by_slot()


def use_front_end(front_end: str) -> None:
    """Called by a front end's serving thread before it loads its model or serves a request:
    from then on this thread writes its own row of this worker's slot."""
    _writer.row = _rows_of(_slot)[FRONT_ENDS.index(front_end)]
    _writer.cells = _block.row(_writer.row)


def worker_exited(slot: int) -> None:
    """A dead worker's calls are no longer in flight, and it serves no version."""
    for index in _rows_of(slot):
        row = _block.row(index)
        row[_INFLIGHT] = 0.0
        row[_SERVING] = 0.0


def model_installed(name: str, version: str, sha256: str) -> Callable[[int], None]:
    """Records that this worker now serves this model version (model info) and returns the function
    that counts its classified images."""
    cells = _writer.cells
    index = _block.find_or_add(_writer.row, name, version, sha256)
    if index is None:
        log.warning("metrics label %d model versions at most; images of version %s are not counted",
                    VERSION_SLOTS, version)
        cells[_SERVING] = 0.0
        return lambda images: None
    cell = _IMAGES + index
    cells[_SERVING] = index + 1.0

    def count_images(images: int) -> None:
        cells[cell] += images

    return count_images


class RequestObserver:
    """Records one API method's calls: latency and count by gRPC status code name."""

    def __init__(self, api: str, method: str) -> None:
        if (api, method) not in OBSERVED_METHODS:
            raise ValueError(f"{api}.{method} is not in metrics.OBSERVED_METHODS")
        self._histograms = {code: _REQUESTS[api, method, code] for code in CODES}

    def __call__(self, code: str, seconds: float) -> None:
        self._histograms[code].observe(seconds)


def request_started() -> None:
    _writer.cells[_INFLIGHT] += 1.0


def request_finished() -> None:
    _writer.cells[_INFLIGHT] -= 1.0


def inflight() -> float:
    """Calls the calling front end of this worker is handling now."""
    return _writer.cells[_INFLIGHT]


def observe_queue_wait(seconds: float) -> None:
    _QUEUE_WAIT.observe(seconds)


def observe_execution(input_seconds: float, infer_seconds: float, output_seconds: float, images: int,
                      requests: int) -> None:
    """One model execution of `requests` requests (`images` images): the onnxruntime call's duration
    and batch size, and each phase's time charged to every request in it."""
    _COMPUTE.observe(infer_seconds)
    _BATCH.observe(images)
    cells = _writer.cells
    cells[_COMPUTED] += requests
    cells[_PHASE_SECONDS] += input_seconds * requests
    cells[_PHASE_SECONDS + 1] += infer_seconds * requests
    cells[_PHASE_SECONDS + 2] += output_seconds * requests
    cells[_LAST_INFERENCE] = time.time()


def _answered(row) -> float:
    return sum(h.count(row) for (_, _, code), h in _REQUESTS.items() if code == "OK")


def _answered_by_slot() -> float:
    return sum(_answered(_block.row(index)) for index in _rows_of(_slot))


def answered_calls() -> int:
    """Inference calls this process answered successfully over every front end: the server's
    side of a drain count."""
    return int(_answered_by_slot() - _answered_before)


@dataclass(frozen=True)
class Totals:
    """What Triton's statistics report, summed over every row (every worker and front end) of this
    server run: (count, seconds) pairs, images and executions, and the last execution's time."""

    success: tuple[int, float]          # inference calls answered OK, and their end-to-end time
    fail: tuple[int, float]             # inference calls that ended with any other status
    queue: tuple[int, float]            # requests that reached the model, and their queue wait
    phases: dict[str, tuple[int, float]]    # PHASES -> (requests computed, their batches' time)
    images: int                         # images classified successfully (every version)
    executions: int                     # onnxruntime calls
    last_inference: float               # time.time() of the last onnxruntime call's end; 0: none yet


def totals() -> Totals:
    """The counters Triton's statistics extension reports, from the same cells /metrics exports;
    any worker can answer for all, since every worker maps the same block."""
    rows = _block.rows_array()
    ok, failed = [0.0, 0.0], [0.0, 0.0]
    for (api, method, code), histogram in _REQUESTS.items():
        if (api, method) in INFERENCE_METHODS:
            tally = ok if code == "OK" else failed
            tally[0] += rows[:, histogram.offset:histogram.sum_cell].sum()
            tally[1] += rows[:, histogram.sum_cell].sum()
    computed = int(rows[:, _COMPUTED].sum())
    phases = {phase: (computed, float(rows[:, _PHASE_SECONDS + i].sum())) for i, phase in enumerate(PHASES)}
    return Totals(
        success=(int(ok[0]), ok[1]), fail=(int(failed[0]), failed[1]),
        queue=(int(rows[:, _QUEUE_WAIT.offset:_QUEUE_WAIT.sum_cell].sum()), float(rows[:, _QUEUE_WAIT.sum_cell].sum())),
        phases=phases, images=int(rows[:, _IMAGES:_IMAGES + VERSION_SLOTS].sum()),
        executions=int(rows[:, _BATCH.offset:_BATCH.sum_cell].sum()),
        last_inference=float(rows[:, _LAST_INFERENCE].max()))


class SharedCollector:
    """Exports the rows, summed over workers, in Prometheus' data model."""

    def collect(self) -> Iterator[Metric]:
        rows = _block.rows_array()
        row = rows.sum(axis=0)
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
        charged = CounterMetricFamily(
            f"{PREFIX}_request_compute_seconds",
            "Time of the model executions that answered requests, by phase (input, infer, output), counted "
            "once for each request in the batch (Triton's compute_input, compute_infer, compute_output).",
            labels=["phase"])
        for index, phase in enumerate(PHASES):
            charged.add_metric([phase], float(row[_PHASE_SECONDS + index]))
        yield charged
        yield CounterMetricFamily(f"{PREFIX}_requests_computed",
                                  "Requests whose batch the model computed successfully.", value=float(row[_COMPUTED]))
        yield GaugeMetricFamily(f"{PREFIX}_last_inference_timestamp_seconds",
                                "Unix time at which the last model execution ended (0: none yet).",
                                value=float(rows[:, _LAST_INFERENCE].max()))
        yield GaugeMetricFamily(f"{PREFIX}_inflight_requests", "Inference API calls being handled now.",
                                value=float(row[_INFLIGHT]))
        images = CounterMetricFamily(f"{PREFIX}_images_classified",
                                     "Images classified successfully, by the model version that answered.",
                                     labels=["version"])
        info = GaugeMetricFamily(f"{PREFIX}_model_info",
                                 "The model being served (value 1): name, version and SHA-256 of model.onnx.",
                                 labels=["model", "version", "sha256"])
        by_version: dict[str, float] = {}          # a file replaced in place: one version, two digests
        served: dict[tuple[str, str, str], float] = {}
        for slot in range(_block.rows):
            serving = int(rows[slot, _SERVING])
            for index, model in enumerate(_block.entries(slot)):
                by_version[model[1]] = by_version.get(model[1], 0.0) + float(rows[slot, _IMAGES + index])
                served[model] = max(served.get(model, 0.0), 1.0 if index + 1 == serving else 0.0)
        for version, count in by_version.items():
            images.add_metric([version], count)
        for model, value in served.items():
            info.add_metric(list(model), value)
        yield images
        yield info


def register(registry: CollectorRegistry) -> None:
    """Adds the collector to `registry`; the lifecycle code calls it in the process serving /metrics."""
    registry.register(SharedCollector())

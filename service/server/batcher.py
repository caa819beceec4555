"""Coalesces the requests that are ready into one onnxruntime call, without adding latency.

This network costs microseconds per image and much less per image in a batch, while each call has
a fixed overhead; so under concurrency, one call for everything waiting beats one call each. The
serving loop reads every request that has already arrived (it drains the transport's completed
events first) and then asks the batcher to compute: whatever is queued at that moment goes to
the model together, up to `max_batch_size` images a call, with no waiting added. An optional
`max_queue_delay` instead holds each request up to that long to gather more. Compute runs on the
serving loop's thread: for a model this small a hop to another thread costs more than the compute
itself, and each worker process owns one core anyway.

Not thread-safe: one serving loop owns a batcher.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.server import metrics
from service.server.errors import DeadlineExpired, InferenceError, Overloaded

log = logging.getLogger(__name__)
RunFn = Callable[[np.ndarray, tuple[str, ...]], list[np.ndarray]]
# Called once per request: its outputs in the order asked for, or the error that ended it.
DoneFn = Callable[[list[np.ndarray] | None, InferenceError | None], None]


@dataclass(slots=True)
class Ticket:
    """A queued request. `cancel()` (the client went away) drops it before compute."""

    pixels: np.ndarray
    outputs: tuple[str, ...]
    deadline: float | None
    done: DoneFn
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Batcher:
    def __init__(self, run: RunFn, output_order: tuple[str, ...], *, max_batch_size: int,
                 max_queue_size: int, max_queue_delay: float = 0.0) -> None:
        self._run = run
        self._output_order = output_order
        self._max_batch = max_batch_size
        self._max_queue = max_queue_size
        self._delay = max_queue_delay
        self._pending: deque[Ticket] = deque()
        self._queued_images = 0

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def add(self, pixels: np.ndarray, outputs: tuple[str, ...], deadline: float | None, done: DoneFn) -> Ticket:
        """Queues one request for the next `compute`; raises Overloaded when the queue is full."""
        count = len(pixels)
        if self._queued_images + count > self._max_queue:
            raise Overloaded(f"server queue is full ({self._queued_images} images waiting, limit "
                             f"{self._max_queue}); retry with backoff or add replicas")
        ticket = Ticket(pixels, outputs, deadline, done)
        self._pending.append(ticket)
        self._queued_images += count
        return ticket

    def next_due(self) -> float | None:
        """When the oldest request must be computed (time.monotonic()), or None if none waits."""
        if not self._pending:
            return None
        return self._pending[0].enqueued + self._delay

    def compute(self, now: float | None = None) -> None:
        """Computes what is due: with no queue delay, everything queued, in calls of at most
        `max_batch_size` images; with one, only once the oldest has waited it out or a full
        batch is waiting."""
        now = time.monotonic() if now is None else now
        while self._pending:
            if self._delay > 0 and now < self._pending[0].enqueued + self._delay \
                    and self._queued_images < self._max_batch:
                return
            batch = self._take_batch(now)
            if batch:
                self._compute(batch)

    def _take_batch(self, now: float) -> list[Ticket]:
        """Pops what fits in one call, dropping requests nobody waits for or that are too late."""
        batch: list[Ticket] = []
        images = 0
        while self._pending:
            item = self._pending[0]
            count = len(item.pixels)
            if batch and images + count > self._max_batch:
                break
            self._pending.popleft()
            self._queued_images -= count
            if item.cancelled:
                continue
            if item.deadline is not None and now >= item.deadline:
                item.done(None, DeadlineExpired(
                    f"deadline passed after {now - item.enqueued:.6f} s in the queue; not computed"))
                continue
            metrics.observe_queue_wait(now - item.enqueued)
            batch.append(item)
            images += count
        return batch

    def _compute(self, batch: list[Ticket]) -> None:
        names = batch[0].outputs
        if any(item.outputs != names for item in batch):
            wanted = {n for item in batch for n in item.outputs}
            names = tuple(n for n in self._output_order if n in wanted)
        # Three phases, timed as Triton's statistics split them: input (one float32 array of the
        # batch), infer (the onnxruntime call), output (each request's rows of every output).
        started = time.perf_counter()
        pixels = _as_float(_stack([item.pixels for item in batch]))
        ran = time.perf_counter()
        try:
            results = self._execute(pixels, names)
        except InferenceError as error:  # a runtime failure fails this batch, not the server
            for item in batch:
                item.done(None, error)
            return
        computed = time.perf_counter()
        if len(batch) == 1 and batch[0].outputs == names:
            answers = [results]
        else:
            by_name = dict(zip(names, results))
            answers, row = [], 0
            for item in batch:
                end = row + len(item.pixels)
                answers.append([by_name[n][row:end] for n in item.outputs])
                row = end
        metrics.observe_execution(ran - started, computed - ran, time.perf_counter() - computed, len(pixels),
                                  len(batch))
        for item, answer in zip(batch, answers):
            item.done(answer, None)

    def _execute(self, pixels: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        """One onnxruntime call on float32 pixels."""
        try:
            return self._run(pixels, names)
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            log.error("model execution failed for a batch of %d images: %s", len(pixels), exc)
            raise InferenceError(f"model execution failed: {exc}") from exc


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """One [N, 784] array of the batch; uint8 stays uint8 so it is scaled once, by `_as_float`."""
    if len(parts) == 1:
        return parts[0]
    if all(p.dtype == parts[0].dtype for p in parts):
        return np.concatenate(parts)
    return np.concatenate([_as_float(p) for p in parts])


def _as_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return np.multiply(pixels, np.float32(1 / 255), dtype=np.float32)
    return np.ascontiguousarray(pixels, dtype=np.float32)

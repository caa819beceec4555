"""Coalesces concurrent requests into one onnxruntime call, without adding latency.

This network costs microseconds per image and much less per image in a batch, while each call has
a fixed overhead; so under concurrency, one call for everything waiting beats one call each. The
batcher lives on the server's event loop: a request that finds the model idle is computed at once,
on its own loop turn; requests that arrive while the model is busy (later in the same turn, or
while others are queued) wait in a bounded queue and the next turn's call takes all of them, up to
`max_batch_size` images. An optional `max_queue_delay` holds every request that long to gather
more. Compute runs inline on the loop thread: for a model this small a hop to a worker thread
costs more than the compute itself, and each worker process owns one core anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.server import metrics
from service.server.errors import DeadlineExpired, InferenceError, Overloaded

RunFn = Callable[[np.ndarray, tuple[str, ...]], list[np.ndarray]]


@dataclass(slots=True)
class _Pending:
    pixels: np.ndarray
    outputs: tuple[str, ...]
    deadline: float | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, run: RunFn, output_order: tuple[str, ...], *, max_batch_size: int,
                 max_queue_size: int, max_queue_delay: float = 0.0) -> None:
        self._run = run
        self._output_order = output_order
        self._max_batch = max_batch_size
        self._max_queue = max_queue_size
        self._delay = max_queue_delay
        self._pending: deque[_Pending] = deque()
        self._queued_images = 0
        self._flush_scheduled = False
        self._busy_this_turn = False

    def _end_turn(self) -> None:
        self._busy_this_turn = False

    @property
    def queued_images(self) -> int:
        return self._queued_images

    async def submit(self, pixels: np.ndarray, outputs: tuple[str, ...],
                     deadline: float | None) -> list[np.ndarray]:
        """Returns the requested outputs for these rows, in the order of `outputs`."""
        if not (self._pending or self._busy_this_turn) and self._delay <= 0:
            # Idle: compute now, on this loop turn, with no hop of latency. Requests that reach
            # the batcher later in the same turn queue and go together on the next turn.
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExpired("deadline passed before compute; not computed")
            self._busy_this_turn = True
            asyncio.get_running_loop().call_soon(self._end_turn)
            metrics.observe_queue_wait(0.0)
            return self._execute(pixels, outputs)
        count = len(pixels)
        if self._queued_images + count > self._max_queue:
            raise Overloaded(f"server queue is full ({self._queued_images} images waiting, limit "
                             f"{self._max_queue}); retry with backoff or add replicas")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(_Pending(pixels, outputs, deadline, future))
        self._queued_images += count
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._delay > 0:
                loop.call_later(self._delay, self._flush)
            else:
                loop.call_soon(self._flush)
        return await future

    def _take_batch(self) -> list[_Pending]:
        """Pops what fits in one call, dropping requests nobody waits for or that are too late."""
        batch: list[_Pending] = []
        images = 0
        now = time.monotonic()
        while self._pending:
            item = self._pending[0]
            count = len(item.pixels)
            if batch and images + count > self._max_batch:
                break
            self._pending.popleft()
            self._queued_images -= count
            if item.future.done():  # cancelled: the client went away
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExpired(
                    f"deadline passed after {now - item.enqueued:.6f} s in the queue; not computed"))
                continue
            metrics.observe_queue_wait(now - item.enqueued)
            batch.append(item)
            images += count
        return batch

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch = self._take_batch()
        if self._pending:  # more than one call's worth: come back on the next loop turn
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if batch:
            self._compute(batch)

    def _compute(self, batch: list[_Pending]) -> None:
        names = batch[0].outputs
        if any(item.outputs != names for item in batch):
            wanted = {n for item in batch for n in item.outputs}
            names = tuple(n for n in self._output_order if n in wanted)
        try:
            results = self._execute(_stack([item.pixels for item in batch]), names)
        except InferenceError as error:  # a runtime failure fails this batch, not the server
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        by_name = dict(zip(names, results))
        row = 0
        for item in batch:
            end = row + len(item.pixels)
            if not item.future.done():
                item.future.set_result([by_name[n][row:end] for n in item.outputs])
            row = end

    def _execute(self, pixels: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        """One onnxruntime call, timed; `pixels` may still be uint8."""
        pixels = _as_float(pixels)
        start = time.perf_counter()
        try:
            results = self._run(pixels, names)
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise InferenceError(f"model execution failed: {exc}") from exc
        metrics.observe_compute(time.perf_counter() - start, len(pixels))
        return results


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """One [N, 784] array of the batch; uint8 stays uint8 so it is scaled once, in `_execute`."""
    if len(parts) == 1:
        return parts[0]
    if all(p.dtype == parts[0].dtype for p in parts):
        return np.concatenate(parts)
    return np.concatenate([_as_float(p) for p in parts])


def _as_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return np.multiply(pixels, np.float32(1 / 255), dtype=np.float32)
    return np.ascontiguousarray(pixels, dtype=np.float32)

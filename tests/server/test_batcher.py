"""The batcher coalesces, bounds, drops expired and cancelled work, on a real onnxruntime session.

Every ordering here is decided by loop turns, never by wall-clock time: requests submitted before
the test yields reach the batcher in the same turn, and the one test about the batching window
runs on a loop whose clock moves only when the test advances it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.server.batcher import Batcher
from service.server.errors import DeadlineExpired, InferenceError, Overloaded
from service.server.repository import ModelRepository
from service.server.runtime import ModelRuntime
from tests.support.mnist import mnist_test_images


class CountingRuntime:
    """A real ModelRuntime that records the batch size of every call."""

    def __init__(self, model_path) -> None:
        repository = ModelRepository(model_path.parents[1].parent, model_path.parents[1].name)
        self.runtime = ModelRuntime(repository.resolve("1"))
        self.calls: list[int] = []
        self.fail_next = False

    def run(self, pixels, names):
        self.calls.append(len(pixels))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated execution failure")
        return self.runtime.run(pixels, names)


@pytest.fixture
def runtime(model_path):
    return CountingRuntime(model_path)


def batcher_for(runtime, **kwargs) -> Batcher:
    settings = dict(max_batch_size=64, max_queue_size=1000) | kwargs
    return Batcher(runtime.run, runtime.runtime.output_names, **settings)


def expected(runtime, images, names=("probabilities",)):
    return runtime.runtime.run(images.astype(np.float32) / np.float32(255), names)


def test_idle_request_is_computed_at_once(runtime):
    images = mnist_test_images()[:2]

    async def main():
        batcher = batcher_for(runtime)
        task = asyncio.ensure_future(batcher.submit(images, ("probabilities",), None))
        await asyncio.sleep(0)  # one loop turn: the task ran, and so did the model
        assert task.done() and runtime.calls == [2]
        return task.result()

    (probabilities,) = asyncio.run(main())
    np.testing.assert_allclose(probabilities, expected(runtime, images)[0], atol=1e-6)


def test_requests_arriving_while_busy_share_one_call_and_get_their_own_rows(runtime):
    images = mnist_test_images()[:30]

    async def main():
        batcher = batcher_for(runtime)
        return await asyncio.gather(*(batcher.submit(images[i:i + 3], ("probabilities",), None)
                                      for i in range(0, 30, 3)))

    results = asyncio.run(main())
    assert runtime.calls == [3, 27]  # the first found the model idle; the rest arrived while it was busy
    want = expected(runtime, images)[0]
    for k, (probabilities,) in enumerate(results):
        np.testing.assert_allclose(probabilities, want[3 * k:3 * k + 3], atol=1e-6)


def test_calls_never_exceed_max_batch_size(runtime):
    images = mnist_test_images()[:100]

    async def main():
        batcher = batcher_for(runtime, max_batch_size=25)
        return await asyncio.gather(*(batcher.submit(images[i:i + 10], ("probabilities",), None)
                                      for i in range(0, 100, 10)))

    asyncio.run(main())
    assert runtime.calls == [10, 20, 20, 20, 20, 10]


def test_mixed_dtypes_and_outputs_in_one_call(runtime):
    images = mnist_test_images()[:4]

    async def main():
        batcher = batcher_for(runtime, max_queue_delay=0.001)
        return await asyncio.gather(
            batcher.submit(images[:2], ("probabilities",), None),
            batcher.submit((images[2:] / 255).astype(np.float32), ("activation_1", "logits"), None))

    (first,), (hidden, logits) = asyncio.run(main())
    assert runtime.calls == [4]
    probabilities, want_logits, want_hidden = expected(runtime, images, ("probabilities", "logits", "activation_1"))
    np.testing.assert_allclose(first, probabilities[:2], atol=1e-6)
    np.testing.assert_allclose(hidden, want_hidden[2:], atol=1e-5)
    np.testing.assert_allclose(logits, want_logits[2:], atol=1e-5)


def test_full_queue_is_refused_without_waiting(runtime):
    images = mnist_test_images()[:8]

    async def main():
        batcher = batcher_for(runtime, max_queue_size=10, max_queue_delay=0.01)
        first = asyncio.ensure_future(batcher.submit(images, ("probabilities",), None))
        await asyncio.sleep(0)  # queued, not yet computed
        with pytest.raises(Overloaded, match="8 images waiting, limit 10"):
            await batcher.submit(images[:3], ("probabilities",), None)
        await first
        assert batcher.queued_images == 0

    asyncio.run(main())
    assert runtime.calls == [8]


def test_expired_and_cancelled_requests_are_not_computed(runtime):
    images = mnist_test_images()[:3]

    async def main():
        batcher = batcher_for(runtime, max_queue_delay=0.01)
        expired = asyncio.ensure_future(batcher.submit(images[:1], ("probabilities",), time.monotonic() - 1))
        cancelled = asyncio.ensure_future(batcher.submit(images[1:2], ("probabilities",), None))
        live = asyncio.ensure_future(batcher.submit(images[2:], ("probabilities",), time.monotonic() + 60))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(DeadlineExpired, match="not computed"):
            await expired
        return await live

    asyncio.run(main())
    assert runtime.calls == [1]


def test_execution_failure_fails_that_batch_only(runtime):
    images = mnist_test_images()[:2]

    async def main():
        batcher = batcher_for(runtime)
        runtime.fail_next = True
        with pytest.raises(InferenceError, match="simulated execution failure"):
            await batcher.submit(images, ("probabilities",), None)
        return await batcher.submit(images, ("probabilities",), None)

    (probabilities,) = asyncio.run(main())
    np.testing.assert_allclose(probabilities, expected(runtime, images)[0], atol=1e-6)


class ManualClock:
    """A new event loop whose clock moves only by `advance`: a batching window stays open until the
    test closes it, however long the machine takes between two loop turns."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.now = self.loop.time()
        self.loop.time = lambda: self.now  # call_later schedules, and fires, on this clock

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def run(self, coroutine):
        try:
            return self.loop.run_until_complete(coroutine)
        finally:
            self.loop.close()


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_queue_delay_gathers_requests_arriving_later(runtime):
    images = mnist_test_images()[:3]
    clock = ManualClock()

    async def main():
        batcher = batcher_for(runtime, max_queue_delay=0.05)
        first = asyncio.ensure_future(batcher.submit(images[:1], ("probabilities",), None))
        await turns()  # later loop turns, inside the window
        assert runtime.calls == [] and batcher.queued_images == 1
        second = asyncio.ensure_future(batcher.submit(images[1:2], ("probabilities",), None))
        await turns()
        clock.advance(0.049)
        await turns()
        assert runtime.calls == [] and batcher.queued_images == 2  # 1 ms of the window left
        clock.advance(0.001)
        await turns()
        assert first.done() and second.done() and runtime.calls == [2]
        third = asyncio.ensure_future(batcher.submit(images[2:], ("probabilities",), None))
        await turns()
        assert runtime.calls == [2]  # after the window closed: a window of its own
        clock.advance(0.05)
        await turns()
        assert third.done()
        return [first.result(), second.result(), third.result()]

    results = clock.run(main())
    assert runtime.calls == [2, 1]
    want = expected(runtime, images)[0]
    for k, (probabilities,) in enumerate(results):
        np.testing.assert_allclose(probabilities, want[k:k + 1], atol=1e-6)

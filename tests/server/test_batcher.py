"""The batcher coalesces what is queued, bounds, drops expired and cancelled work, on a real onnxruntime session.

The serving loop decides when to compute; here the test does, so every ordering is explicit."""

from __future__ import annotations

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


class Outcomes:
    """Collects what each request's `done` received, in the order they were queued."""

    def __init__(self) -> None:
        self.results: dict[int, list] = {}
        self.errors: dict[int, Exception] = {}

    def done_for(self, key: int):
        def done(arrays, error) -> None:
            assert key not in self.results and key not in self.errors, "done called twice"
            if error is not None:
                self.errors[key] = error
            else:
                self.results[key] = arrays

        return done


def test_one_queued_request_is_computed_alone_and_answered_once(runtime):
    images = mnist_test_images()[:2]
    batcher, outcomes = batcher_for(runtime), Outcomes()
    batcher.add(images, ("probabilities",), None, outcomes.done_for(0))
    assert runtime.calls == [] and batcher.queued_images == 2  # nothing runs until the loop says
    batcher.compute()
    assert runtime.calls == [2] and batcher.queued_images == 0
    np.testing.assert_allclose(outcomes.results[0][0], expected(runtime, images)[0], atol=1e-6)
    batcher.compute()
    assert runtime.calls == [2]  # nothing left, nothing run


def test_requests_queued_together_share_one_call_and_get_their_own_rows(runtime):
    images = mnist_test_images()[:30]
    batcher, outcomes = batcher_for(runtime), Outcomes()
    for k, i in enumerate(range(0, 30, 3)):
        batcher.add(images[i:i + 3], ("probabilities",), None, outcomes.done_for(k))
    batcher.compute()
    assert runtime.calls == [30]
    want = expected(runtime, images)[0]
    for k in range(10):
        np.testing.assert_allclose(outcomes.results[k][0], want[3 * k:3 * k + 3], atol=1e-6)


def test_calls_never_exceed_max_batch_size(runtime):
    images = mnist_test_images()[:100]
    batcher, outcomes = batcher_for(runtime, max_batch_size=25), Outcomes()
    for k, i in enumerate(range(0, 100, 10)):
        batcher.add(images[i:i + 10], ("probabilities",), None, outcomes.done_for(k))
    batcher.compute()
    assert runtime.calls == [20, 20, 20, 20, 20] and len(outcomes.results) == 10


def test_mixed_dtypes_and_outputs_in_one_call(runtime):
    images = mnist_test_images()[:4]
    batcher, outcomes = batcher_for(runtime), Outcomes()
    batcher.add(images[:2], ("probabilities",), None, outcomes.done_for(0))
    batcher.add((images[2:] / 255).astype(np.float32), ("activation_1", "logits"), None, outcomes.done_for(1))
    batcher.compute()
    assert runtime.calls == [4]
    (first,), (hidden, logits) = outcomes.results[0], outcomes.results[1]
    probabilities, want_logits, want_hidden = expected(runtime, images, ("probabilities", "logits", "activation_1"))
    np.testing.assert_allclose(first, probabilities[:2], atol=1e-6)
    np.testing.assert_allclose(hidden, want_hidden[2:], atol=1e-5)
    np.testing.assert_allclose(logits, want_logits[2:], atol=1e-5)


def test_full_queue_is_refused_without_waiting(runtime):
    images = mnist_test_images()[:8]
    batcher, outcomes = batcher_for(runtime, max_queue_size=10), Outcomes()
    batcher.add(images, ("probabilities",), None, outcomes.done_for(0))
    with pytest.raises(Overloaded, match="8 images waiting, limit 10"):
        batcher.add(images[:3], ("probabilities",), None, outcomes.done_for(1))
    batcher.compute()
    assert batcher.queued_images == 0 and runtime.calls == [8] and 1 not in outcomes.results


def test_expired_and_cancelled_requests_are_not_computed(runtime):
    images = mnist_test_images()[:3]
    batcher, outcomes = batcher_for(runtime), Outcomes()
    batcher.add(images[:1], ("probabilities",), time.monotonic() - 1, outcomes.done_for(0))
    batcher.add(images[1:2], ("probabilities",), None, outcomes.done_for(1)).cancel()
    batcher.add(images[2:], ("probabilities",), time.monotonic() + 60, outcomes.done_for(2))
    batcher.compute()
    assert runtime.calls == [1]
    assert isinstance(outcomes.errors[0], DeadlineExpired) and "not computed" in str(outcomes.errors[0])
    assert 1 not in outcomes.results and 1 not in outcomes.errors  # the client went away: no answer
    np.testing.assert_allclose(outcomes.results[2][0], expected(runtime, images[2:])[0], atol=1e-6)


def test_execution_failure_fails_that_batch_only(runtime):
    images = mnist_test_images()[:2]
    batcher, outcomes = batcher_for(runtime), Outcomes()
    runtime.fail_next = True
    batcher.add(images, ("probabilities",), None, outcomes.done_for(0))
    batcher.compute()
    assert isinstance(outcomes.errors[0], InferenceError) and "simulated execution failure" in str(outcomes.errors[0])
    batcher.add(images, ("probabilities",), None, outcomes.done_for(1))
    batcher.compute()
    np.testing.assert_allclose(outcomes.results[1][0], expected(runtime, images)[0], atol=1e-6)


def test_queue_delay_holds_requests_until_due_or_a_full_batch(runtime):
    images = mnist_test_images()[:30]
    batcher, outcomes = batcher_for(runtime, max_batch_size=25, max_queue_delay=0.05), Outcomes()
    start = time.monotonic()
    batcher.add(images[:1], ("probabilities",), None, outcomes.done_for(0))
    first = batcher.next_due()
    assert first is not None and 0.05 <= first - start < 1.0
    batcher.compute(now=first - 0.001)
    assert runtime.calls == []                      # not due yet: held to gather more
    batcher.add(images[1:2], ("probabilities",), None, outcomes.done_for(1))
    batcher.compute(now=first)
    assert runtime.calls == [2] and batcher.next_due() is None  # both went together when due
    for k in range(2, 5):                            # a full batch goes at once, before its delay
        batcher.add(images[10 * (k - 2):10 * (k - 2) + 10], ("probabilities",), None, outcomes.done_for(k))
    now = time.monotonic()
    batcher.compute(now=now)
    assert runtime.calls == [2, 20]                  # requests are never split: the third waits
    batcher.compute(now=batcher.next_due())
    assert runtime.calls == [2, 20, 10] and len(outcomes.results) == 5

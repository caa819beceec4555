"""`digits serve`, with its model held busy by an event the test controls instead of by a clock.

    python -m tests.support.held_serve serve --port 0 ...     (any `digits` command line)

With DIGITS_TEST_HOLD=compute, queued requests are not computed until the process gets SIGUSR1:
they stay queued and in flight (the in-flight gauge counts them), so a test can fill the queue,
reach the admission limit, cancel calls, signal a drain or swap model versions while they wait,
with no batching window that a busy machine could let expire.
With DIGITS_TEST_HOLD=warmup, each process's start-up warm-up waits for SIGUSR1 instead.

SIGUSR1 releases the process it is sent to; with `--workers N`, send it to each worker. The hold
wraps `Batcher.compute` and `Batcher.next_due` (or `ModelRuntime.warm_up`), installed before the
server starts: the real batcher, the real onnxruntime session, the real serving loop and the real
lifecycle do everything else (once released, the loop computes within its idle poll, 0.5 s). Each
hold logs one line when it first holds something, so a test can wait for it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from service.server.batcher import Batcher
from service.server.runtime import ModelRuntime

HOLD_ENV = "DIGITS_TEST_HOLD"
log = logging.getLogger("tests.held_serve")

_released = threading.Event()
_held_once = threading.Event()
_original_compute = Batcher.compute
_original_next_due = Batcher.next_due
_original_warm_up = ModelRuntime.warm_up


def _held_compute(batcher: Batcher, now: float | None = None) -> None:
    """Where the serving loop would compute: nothing, until released (requests stay queued)."""
    if _released.is_set():
        _original_compute(batcher, now)
        return
    if batcher.queued_images and not _held_once.is_set():
        _held_once.set()
        log.info("test hold: compute held until SIGUSR1")


def _held_next_due(batcher: Batcher) -> float | None:
    """While held nothing is due, so the loop waits for events instead of spinning."""
    return _original_next_due(batcher) if _released.is_set() else None


def _held_warm_up(runtime: ModelRuntime, max_batch: int) -> None:
    if not _released.is_set():
        log.info("test hold: warm-up held until SIGUSR1")
        while not _released.wait(0.05):  # short waits: the signal handler runs between them
            pass
    _original_warm_up(runtime, max_batch)


def _on_release(signum: int, frame: object) -> None:
    _released.set()


def install(hold: str) -> None:
    if hold == "compute":
        Batcher.compute = _held_compute
        Batcher.next_due = _held_next_due
    elif hold == "warmup":
        ModelRuntime.warm_up = _held_warm_up
    else:
        raise SystemExit(f"{HOLD_ENV} must be 'compute' or 'warmup', not {hold!r}")
    signal.signal(signal.SIGUSR1, _on_release)  # inherited by forked workers


def main() -> int:
    install(os.environ.get(HOLD_ENV, "compute"))
    from service.cli import main as digits_main

    return digits_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""`digits serve`, with its model held busy by an event the test controls instead of by a clock.

    python -m tests.support.held_serve serve --port 0 ...     (any `digits` command line)

With DIGITS_TEST_HOLD=compute, queued requests are not computed until the process gets SIGUSR1:
they stay queued and in flight (the in-flight gauge counts them), so a test can fill the queue,
reach the admission limit, cancel calls, signal a drain or swap model versions while they wait,
with no batching window that a busy machine could let expire. The hold covers queued requests,
so such a server needs `--max-queue-delay-us` > 0 (any value: every request then queues).
With DIGITS_TEST_HOLD=warmup, each process's start-up warm-up waits for SIGUSR1 instead.

SIGUSR1 releases the process it is sent to; with `--workers N`, send it to each worker. The hold
is one wrapper around `Batcher._flush` (or `ModelRuntime.warm_up`), installed before the server
starts: the real batcher, the real onnxruntime session, the real gRPC server and the real
lifecycle do everything else. Each hold logs one line when it first holds something, so a test can
wait for it.
"""

from __future__ import annotations

import asyncio
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
_deferred: list[Batcher] = []
_loop: asyncio.AbstractEventLoop | None = None
_original_flush = Batcher._flush
_original_warm_up = ModelRuntime.warm_up


def _held_flush(batcher: Batcher) -> None:
    """Runs on the server's event loop where the batcher would flush; defers while held."""
    global _loop
    if _released.is_set():
        _original_flush(batcher)
        return
    if not _deferred:
        log.info("test hold: compute held until SIGUSR1")
    _loop = asyncio.get_running_loop()
    _deferred.append(batcher)  # its _flush_scheduled stays set: nothing else schedules a flush


def _flush_deferred() -> None:
    while _deferred:
        _original_flush(_deferred.pop(0))


def _held_warm_up(runtime: ModelRuntime, max_batch: int) -> None:
    if not _released.is_set():
        log.info("test hold: warm-up held until SIGUSR1")
        while not _released.wait(0.05):  # short waits: the signal handler runs between them
            pass
    _original_warm_up(runtime, max_batch)


def _on_release(signum: int, frame: object) -> None:
    _released.set()
    if _loop is not None and not _loop.is_closed():
        _loop.call_soon_threadsafe(_flush_deferred)


def install(hold: str) -> None:
    if hold == "compute":
        Batcher._flush = _held_flush
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

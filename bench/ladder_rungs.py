"""The in-process rungs of the per-call cost ladder (bench/ladder.py): one server variant a process.

Each rung is the one below it plus one of the service's features, and each is put together from
the service's own modules (the transport, the V2 adapter, the core and its batcher, metrics, the
request policy, the serving loop); what is written here is only the glue a rung needs where the
serving loop would otherwise supply it, kept as thin as the loop's own.

    python bench/ladder_rungs.py RUNG [--token-file PATH]   # prints READY 127.0.0.1:PORT metrics=URL|-

Rungs (the later ones, 9 to 11, are `digits serve` itself, started by bench/ladder.py):

1. bare: our transport (`CoreServer`), each ModelInfer answered with one cached reply;
2. + the V2 adapter's decode and encode, validation and the core's checks, onnxruntime once a call;
3. + batching: the core's `submit` and its batcher, one onnxruntime call a loop turn;
4. + metrics: the shared rows, /metrics served, each call counted and timed;
5. + deadlines and the cancellation watch (`watch_cancellation=True`), a cancelled call dropped;
6. + admission and the request policy (`policy.RequestPolicy.serve` replaces 4 and 5's glue);
7. + the bearer token, checked on each call's arrival;
8. + draining, health and reflection: the full `ServingLoop` as `grpc_api.server.build` makes it.

Every rung answers the benchmark's request with the same bytes (rung 1's cached reply is the V2
adapter's own reply to it, computed once at start-up) and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn, cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/ladder_rungs.py` from anywhere
    sys.path.insert(0, str(REPO))

import grpc

from bench.h2load_client import build_payload
from service.contract import DEFAULT_MODEL_NAME
from service.server import lifecycle, metrics
from service.server.config import ServeConfig
from service.server.core import InferenceCore
from service.server.core_types import InferenceResult
from service.server.errors import Overloaded
from service.server.grpc_api import server as grpc_server
from service.server.grpc_api.kserve_v2 import API, KServeV2
from service.server.grpc_api.loop import IDLE_POLL, ServingLoop
from service.server.grpc_api.status import status_of
from service.server.grpc_api.transport import CallArrived, CallFinished, CoreServer, MessageReceived
from service.server.policy import RequestPolicy
from service.server.runtime import ModelRuntime
from service.server.security import REFUSAL, load_token
from service.server.validation import check_batch_size

IN_PROCESS_RUNGS = range(1, 9)


def config_for(token_file: str) -> ServeConfig:
    """`digits serve`'s defaults on a free loopback port (what rungs 9 to 11 run with)."""
    return ServeConfig(host="127.0.0.1", grpc_port=0, http=False, metrics_port=0, workers=1,
                       model_repository=str(REPO / "models"), auth_token_file=token_file)


# -- rungs 1 to 7: the serving loop's glue, one feature more a rung --------------------------------
class Bare:
    """Rung 1: read each call's request, answer it with the cached reply."""

    watch_cancellation = False

    def __init__(self, config: ServeConfig, core: InferenceCore, cached: bytes) -> None:
        self.config, self.core, self.cached = config, core, cached

    def timeout(self) -> float:
        return IDLE_POLL

    def handle(self, events: list) -> None:
        for event in events:
            kind = type(event)
            if kind is MessageReceived:
                if event.ok and event.data is not None:
                    self.on_message(event.call, event.data)
                elif event.ok:
                    event.call.fail(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
            elif kind is CallArrived:
                self.on_arrival(event.call)
            elif kind is CallFinished:
                self.on_finished(event.call, event.cancelled)
        self.after_turn()

    def on_arrival(self, call) -> None:
        call.read()

    def on_message(self, call, data: bytes) -> None:
        call.reply(self.cached)

    def on_finished(self, call, cancelled: bool) -> None:
        pass

    def after_turn(self) -> None:
        pass


class Adapter(Bare):
    """Rung 2: the V2 adapter parses and validates, the core's checks run, onnxruntime runs once
    for this call alone (no batcher), and the adapter encodes the reply."""

    def __init__(self, config: ServeConfig, core: InferenceCore, cached: bytes) -> None:
        super().__init__(config, core, cached)
        self.api = KServeV2(core, lambda: True)
        self.model = core.model
        settings = core.settings
        # the same model file and session options as the core's own runtime; a session of its own
        self.runtime = ModelRuntime(core.repository.resolve(config.model_version or None),
                                    intra_op_threads=settings.intra_op_threads,
                                    graph_optimization=settings.graph_optimization)
        self.runtime.warm_up(settings.max_batch_size)

    def on_message(self, call, data: bytes) -> None:
        try:
            pending = self.api.model_infer(data, None)
            request = pending.request
            check_batch_size(len(request.pixels), self.core.settings.max_batch_size)
            InferenceCore._check_outputs(self.model, request.outputs)
            arrays = self.runtime.run(request.pixels, request.outputs)
            call.reply(pending.encode(InferenceResult(self.model, dict(zip(request.outputs, arrays)))))
        except Exception as exc:  # noqa: BLE001 - as the loop does: the call fails, not the server
            call.fail(*status_of(exc))


class Batched(Bare):
    """Rung 3: the core's `submit` queues each request with its batcher; one `compute_due` a turn."""

    def __init__(self, config: ServeConfig, core: InferenceCore, cached: bytes) -> None:
        super().__init__(config, core, cached)
        self.api = KServeV2(core, lambda: True)

    def timeout(self) -> float:   # as ServingLoop.run
        due = self.core.next_due()
        return IDLE_POLL if due is None else max(0.0, due - time.monotonic())

    def deadline(self, call) -> float | None:
        return None

    def on_message(self, call, data: bytes) -> None:
        try:
            pending = self.api.model_infer(data, self.deadline(call))
            encode = pending.encode

            def done(result, error) -> None:
                if error is not None:
                    self.failed(call, error)
                else:
                    self.answered(call, encode(result))

            self.submitted(call, self.core.submit(pending.request, done))
        except Exception as exc:  # noqa: BLE001
            self.failed(call, exc)

    def submitted(self, call, ticket) -> None:
        pass

    def answered(self, call, reply: bytes) -> None:
        call.reply(reply)

    def failed(self, call, exc: BaseException) -> None:
        call.fail(*status_of(exc))

    def after_turn(self) -> None:
        self.core.compute_due()


class Metered(Batched):
    """Rung 4: metrics as `digits serve` sets them up (shared rows, the collector registered and
    /metrics served from a thread); each call counted in flight, then timed and counted by status."""

    def __init__(self, config: ServeConfig, core: InferenceCore, cached: bytes) -> None:
        super().__init__(config, core, cached)
        self.observe = metrics.RequestObserver(API, "ModelInfer")

    def on_arrival(self, call) -> None:
        call.user_data = [time.perf_counter(), None, False]   # start, ticket, counted
        call.read()

    def on_message(self, call, data: bytes) -> None:
        metrics.request_started()
        super().on_message(call, data)

    def count(self, call, code: str) -> None:
        state = call.user_data
        if state is not None and not state[2]:
            state[2], state[1] = True, None
            metrics.request_finished()
            self.observe(code, time.perf_counter() - state[0])

    def answered(self, call, reply: bytes) -> None:
        self.count(call, "OK")
        call.reply(reply)

    def failed(self, call, exc: BaseException) -> None:
        self.count(call, getattr(exc, "status", "INTERNAL"))
        call.fail(*status_of(exc))

    def on_finished(self, call, cancelled: bool) -> None:
        call.user_data = None


class Deadlines(Metered):
    """Rung 5: the client's deadline goes with each request to the batcher, and the transport
    watches every call for cancellation from its arrival; a call that ends first is dropped
    from the queue and counted CANCELLED or DEADLINE_EXCEEDED."""

    watch_cancellation = True

    def deadline(self, call) -> float | None:
        return call.deadline

    def submitted(self, call, ticket) -> None:
        state = call.user_data
        if state is not None and not state[2]:
            state[1] = ticket

    def on_finished(self, call, cancelled: bool) -> None:
        state = call.user_data
        if state is not None and not state[2]:
            if state[1] is not None:
                state[1].cancel()
            late = call.deadline is not None and time.monotonic() >= call.deadline
            self.count(call, "DEADLINE_EXCEEDED" if late else "CANCELLED")
        call.user_data = None


class Policy(Bare):
    """Rung 6: every call through `RequestPolicy.serve` (draining, admission, the core, counted
    then answered once, the reply's size checked), cancelled through its `Inference`."""

    watch_cancellation = True
    token: bytes | None = None

    def __init__(self, config: ServeConfig, core: InferenceCore, cached: bytes) -> None:
        super().__init__(config, core, cached)
        self.api = KServeV2(core, lambda: True)
        self.observe = metrics.RequestObserver(API, "ModelInfer")
        self.policy = RequestPolicy(core, self.token, config.max_concurrent_rpcs)
        self.max_send = config.max_send_message_bytes

    timeout = Batched.timeout
    after_turn = Batched.after_turn

    def on_arrival(self, call) -> None:
        call.user_data = [time.perf_counter(), None]   # start, inference
        call.read()

    def check_size(self, reply: bytes) -> None:   # as ServingLoop._check_size
        if len(reply) > self.max_send:
            raise Overloaded(f"response of {len(reply)} bytes exceeds the server's limit of {self.max_send}")

    def on_message(self, call, data: bytes) -> None:
        state = call.user_data
        model_infer = self.api.model_infer
        state[1] = self.policy.serve(self.observe, state[0], lambda: model_infer(data, call.deadline), call.reply,
                                     lambda exc: call.fail(*status_of(exc)), self.check_size)

    def on_finished(self, call, cancelled: bool) -> None:
        state = call.user_data
        call.user_data = None
        if state is not None and state[1] is not None:
            late = call.deadline is not None and time.monotonic() >= call.deadline
            state[1].cancel(("DEADLINE_EXCEEDED" if late else "CANCELLED") if cancelled else "OK")


class Token(Policy):
    """Rung 7: the bearer token, read from the call's metadata and compared on arrival."""

    def __init__(self, config: ServeConfig, core: InferenceCore, cached: bytes) -> None:
        self.token = load_token(config)
        if self.token is None:
            raise SystemExit("rung 7 needs --token-file")
        super().__init__(config, core, cached)

    def on_arrival(self, call) -> None:
        if self.policy.guarded and not self.policy.authorised(ServingLoop._authorization(call)):
            call.fail(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
            return
        super().on_arrival(call)


RUNGS = {1: Bare, 2: Adapter, 3: Batched, 4: Metered, 5: Deadlines, 6: Policy, 7: Token}


def cached_reply(core: InferenceCore) -> bytes:
    """The V2 adapter's reply to the benchmark's request (1 × 784 float32), computed once."""
    payload = build_payload("kserve_v2", 1, "float32", False, DEFAULT_MODEL_NAME, REPO / "data" / "mnist")
    replies: list[bytes] = []
    pending = KServeV2(core, lambda: True).model_infer(payload.message, None)
    core.submit(pending.request, lambda result, error: replies.append(pending.encode(cast(InferenceResult, result))))
    core.compute_due()
    return replies[0]


def serve(rung: int, token_file: str) -> NoReturn:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    config = config_for(token_file)
    metrics_url = "-"
    if rung >= 4:   # as `digits serve` does: the shared rows before the model is installed, /metrics served
        from prometheus_client import REGISTRY, start_http_server

        metrics.map_shared(1)
        metrics.use_slot(0)
        metrics.register(REGISTRY)
        httpd, _ = start_http_server(0, addr=config.host)
        metrics_url = f"http://{config.host}:{httpd.server_port}/metrics"
    core = lifecycle.build_core(config)
    core.load()
    if rung == 8:
        transport, loop, port = grpc_server.build(config, core, lambda: True, None, load_token(config))
        transport.start()
        loop.set_serving(True)
        print(f"READY {config.host}:{port} metrics={metrics_url}", flush=True)
        loop.run(stop.is_set)
        leave()
    cached = cached_reply(core) if rung == 1 else b""
    rung_loop = RUNGS[rung](config, core, cached)
    transport = CoreServer(grpc_server.channel_options(config), backlog=grpc_server.REQUESTED_CALLS,
                           watch_cancellation=rung_loop.watch_cancellation)
    port = transport.add_port(f"{config.host}:{config.grpc_port}")
    transport.start()
    print(f"READY {config.host}:{port} metrics={metrics_url}", flush=True)
    poll, handle, timeout = transport.poll, rung_loop.handle, rung_loop.timeout
    while not stop.is_set():
        handle(poll(timeout()))
    leave()


def leave() -> NoReturn:
    """Ends the process here, as `digits serve` does: returning would drop the last reference to the
    gRPC core server, whose teardown waits for the calls it still has requested (see transport.py)."""
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rung", type=int, choices=IN_PROCESS_RUNGS)
    parser.add_argument("--token-file", default="", help="the bearer token (rungs 7 and 8)")
    args = parser.parse_args(argv)
    serve(args.rung, args.token_file)


if __name__ == "__main__":
    main()

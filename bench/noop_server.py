"""The transport floor: a grpc.aio server speaking our protocols that does no work at all.

It answers V2 `ModelInfer` and digits.v1 `Classify`/`ClassifyStream` with a fixed reply of the
right shape and size for the request (batch size, outputs asked for), serialised once and cached,
so a request costs exactly what gRPC, HTTP/2 and protobuf parsing cost. Whatever our service
spends beyond this server is our own overhead. Like the service it can run several worker
processes on one port (SO_REUSEPORT, forked before any gRPC object exists).

It counts the inference requests it receives (in shared memory, so every worker's count is
visible) and reports them in GetModelInfo's metadata and on exit, so a load tester's count can
be checked against the server's.

    python bench/noop_server.py --port 0 --workers 2     # prints "READY 127.0.0.1:PORT workers=2"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys
from contextlib import closing

import grpc

from service.contract import DEFAULT_MODEL_NAME as MODEL_NAME
from service.contract import FEATURES as PIXELS
from service.contract import INPUT_NAME, LOGITS, NUM_CLASSES, PROBABILITIES, activation_name
from service.generated.digits.v1 import digits_pb2
from service.generated.grpc.health.v1 import health_pb2, health_pb2_grpc
from service.generated.inference import grpc_predict_v2_pb2 as v2
from service.wire import length_delimited

MODEL_VERSION = "1"
HIDDEN_UNITS = 16  # the shipped network's hidden layers
OUTPUT_WIDTHS = {PROBABILITIES: NUM_CLASSES, LOGITS: NUM_CLASSES,
                 activation_name(1): HIDDEN_UNITS, activation_name(2): HIDDEN_UNITS}
ACTIVATION_NAMES = (activation_name(1), activation_name(2), LOGITS)
KSERVE_DTYPE_BYTES = {"FP32": 4, "UINT8": 1}
DIGITS_FORMAT_BYTES = {digits_pb2.PIXEL_FORMAT_UINT8: 1, digits_pb2.PIXEL_FORMAT_FLOAT32: 4}
COUNTERS = ("kserve_v2.ModelInfer", "digits_v1.Classify", "digits_v1.ClassifyStream")
_CACHE_LIMIT = 256


class ReplyCache:
    """Fixed replies, serialised once per (kind, batch, outputs) and reused."""

    def __init__(self) -> None:
        self._replies: dict[tuple, bytes] = {}

    def get(self, key: tuple, build) -> bytes:
        reply = self._replies.get(key)
        if reply is None:
            if len(self._replies) >= _CACHE_LIMIT:
                self._replies.clear()
            reply = self._replies[key] = build()
        return reply


def kserve_reply(batch: int, outputs: tuple[str, ...]) -> bytes:
    return v2.ModelInferResponse(
        model_name=MODEL_NAME, model_version=MODEL_VERSION,
        outputs=[v2.ModelInferResponse.InferOutputTensor(name=name, datatype="FP32",
                                                          shape=[batch, OUTPUT_WIDTHS[name]]) for name in outputs],
        raw_output_contents=[bytes(4 * batch * OUTPUT_WIDTHS[name]) for name in outputs],
    ).SerializeToString()


def digits_reply(batch: int, activations: bool) -> bytes:
    prediction = digits_pb2.Prediction(digit=0, confidence=0.1, probabilities=[0.1] * 10)
    if activations:
        prediction.activations.extend(digits_pb2.LayerActivation(name=name, values=[0.0] * OUTPUT_WIDTHS[name])
                                      for name in ACTIVATION_NAMES)
    return digits_pb2.ClassifyResponse(model_name=MODEL_NAME, model_version=MODEL_VERSION,
                                       predictions=[prediction] * batch).SerializeToString()


class Rejected(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class NoopServicer:
    """The handlers. `counts` is a shared int64 array, one row of counters per worker."""

    def __init__(self, counts, row: int) -> None:
        self._counts, self._base = counts, row * len(COUNTERS)
        self._cache = ReplyCache()

    def total(self, counter: int) -> int:
        return sum(self._counts[i * len(COUNTERS) + counter] for i in range(len(self._counts) // len(COUNTERS)))

    def per_worker(self) -> list[int]:
        """Requests of every kind served by each worker: shows how SO_REUSEPORT spread connections."""
        width = len(COUNTERS)
        return [sum(self._counts[i * width:(i + 1) * width]) for i in range(len(self._counts) // width)]

    def _kserve_reply(self, request: v2.ModelInferRequest) -> bytes:
        if request.model_name != MODEL_NAME:
            raise Rejected(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.model_name}'")
        if len(request.inputs) != 1 or len(request.raw_input_contents) != 1:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "expected one input in raw_input_contents")
        tensor = request.inputs[0]
        itemsize = KSERVE_DTYPE_BYTES.get(tensor.datatype)
        batch = tensor.shape[0] if tensor.shape else 0
        if itemsize is None or batch < 1 or len(request.raw_input_contents[0]) != batch * PIXELS * itemsize:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "input must be FP32 or UINT8 [N, 784]")
        outputs = tuple(output.name for output in request.outputs) or tuple(OUTPUT_WIDTHS)
        if any(name not in OUTPUT_WIDTHS for name in outputs):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"unknown output in {outputs}")
        reply = self._cache.get(("kserve", batch, outputs), lambda: kserve_reply(batch, outputs))
        return reply + length_delimited(3, request.id.encode()) if request.id else reply

    def _digits_reply(self, request: digits_pb2.ClassifyRequest) -> bytes:
        if request.pixels:
            itemsize = DIGITS_FORMAT_BYTES.get(request.pixel_format)
            if itemsize is None:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "pixel_format must be UINT8 or FLOAT32")
            batch, rest = divmod(len(request.pixels), PIXELS * itemsize)
        else:
            batch, rest = divmod(len(request.pixel_values), PIXELS)
        if batch < 1 or rest:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "pixels must hold N * 784 values")
        activations = request.include_activations
        reply = self._cache.get(("digits", batch, activations), lambda: digits_reply(batch, activations))
        return reply + length_delimited(1, request.request_id.encode()) if request.request_id else reply

    async def model_infer(self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[return]  # abort() raises (grpc is untyped here)
        self._counts[self._base] += 1
        try:
            return self._kserve_reply(request)
        except Rejected as exc:
            await context.abort(exc.code, exc.details)

    async def classify(self, request: digits_pb2.ClassifyRequest, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[return]  # abort() raises (grpc is untyped here)
        self._counts[self._base + 1] += 1
        try:
            return self._digits_reply(request)
        except Rejected as exc:
            await context.abort(exc.code, exc.details)

    async def classify_stream(self, requests, context: grpc.aio.ServicerContext):
        async for request in requests:
            self._counts[self._base + 2] += 1
            try:
                yield self._digits_reply(request)
            except Rejected as exc:
                yield digits_pb2.ClassifyResponse(
                    request_id=request.request_id,
                    error=digits_pb2.Error(code=exc.code.value[0], message=exc.details)).SerializeToString()

    async def get_model_info(self, request, context) -> digits_pb2.ModelInfo:
        counts = {name: str(self.total(i)) for i, name in enumerate(COUNTERS)}
        return digits_pb2.ModelInfo(
            name=MODEL_NAME, version=MODEL_VERSION, available_versions=[MODEL_VERSION],
            layer_sizes=[PIXELS, HIDDEN_UNITS, HIDDEN_UNITS, NUM_CLASSES], input_name=INPUT_NAME,
            output_names=list(OUTPUT_WIDTHS),
            metadata={"noop": "true", **{f"requests.{name}": value for name, value in counts.items()},
                      **{f"worker.{i}.requests": str(n) for i, n in enumerate(self.per_worker())}})

    async def server_live(self, request, context) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def server_ready(self, request, context) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=True)

    async def model_ready(self, request, context) -> v2.ModelReadyResponse:
        return v2.ModelReadyResponse(ready=request.name == MODEL_NAME)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """Replies go out as the cached bytes (identity serialiser); requests are parsed normally."""
        def unary(fn, request_type, raw_reply: bool):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request_type.FromString,
                response_serializer=None if raw_reply else (lambda message: message.SerializeToString()))
        return [
            grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
                "ModelInfer": unary(self.model_infer, v2.ModelInferRequest, True),
                "ServerLive": unary(self.server_live, v2.ServerLiveRequest, False),
                "ServerReady": unary(self.server_ready, v2.ServerReadyRequest, False),
                "ModelReady": unary(self.model_ready, v2.ModelReadyRequest, False),
            }),
            grpc.method_handlers_generic_handler("digits.v1.DigitClassifier", {
                "Classify": unary(self.classify, digits_pb2.ClassifyRequest, True),
                "ClassifyStream": grpc.stream_stream_rpc_method_handler(
                    self.classify_stream, request_deserializer=digits_pb2.ClassifyRequest.FromString),
                "GetModelInfo": unary(self.get_model_info, digits_pb2.GetModelInfoRequest, False),
            }),
        ]


class AlwaysServing(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 Check: SERVING for the server and both services from the start (the floor
    has no model to load), NOT_FOUND for any other name, as our server answers."""

    SERVICES = ("", "digits.v1.DigitClassifier", "inference.GRPCInferenceService")

    async def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 - the gRPC method's name
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service not in self.SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def reserve_port(host: str, port: int) -> socket.socket:
    """Binds (without listening) a SO_REUSEPORT socket so that workers can share the port it got."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


async def serve_worker(host: str, port: int, counts, row: int, ready=None) -> None:
    """One worker: serves until SIGTERM/SIGINT, then stops with a short grace period."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", -1),
                                      ("grpc.max_send_message_length", -1)])
    servicer = NoopServicer(counts, row)
    server.add_generic_rpc_handlers(servicer.handlers())
    health_pb2_grpc.add_HealthServicer_to_server(AlwaysServing(), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) != port:
        raise RuntimeError(f"could not bind {address}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    await server.stop(grace=1.0)


def _worker_main(host: str, port: int, counts, row: int, ready) -> None:
    asyncio.run(serve_worker(host, port, counts, row, ready))


def run(host: str, port: int, workers: int) -> dict[str, int]:
    """Serves until signalled; returns the request counts. Workers are forked before any gRPC object."""
    context = multiprocessing.get_context("fork")
    counts = context.RawArray("q", workers * len(COUNTERS))
    with closing(reserve_port(host, port)) as reserved:
        port = reserved.getsockname()[1]
        if workers == 1:
            ready = _Printer(host, port, workers)
            asyncio.run(serve_worker(host, port, counts, 0, ready))
        else:
            events = [context.Event() for _ in range(workers)]
            processes = [context.Process(target=_worker_main, args=(host, port, counts, i, events[i]),
                                         name=f"noop-worker-{i}") for i in range(workers)]
            for process in processes:
                process.start()
            stop = {"now": False}

            def forward(signum, _frame):
                stop["now"] = True
                for process in processes:
                    if process.is_alive():
                        os.kill(process.pid, signal.SIGTERM)

            signal.signal(signal.SIGTERM, forward)
            signal.signal(signal.SIGINT, forward)
            for event, process in zip(events, processes):
                while not event.wait(0.1):
                    if not process.is_alive():
                        forward(signal.SIGTERM, None)
                        raise SystemExit(f"noop worker {process.name} exited during start-up")
            _Printer(host, port, workers).set()
            for process in processes:
                process.join()
    return {name: sum(counts[i * len(COUNTERS) + c] for i in range(workers)) for c, name in enumerate(COUNTERS)}


class _Printer:
    """Announces readiness on stdout in a form scripts parse: `READY host:port workers=N`."""

    def __init__(self, host: str, port: int, workers: int) -> None:
        self._line = f"READY {host}:{port} workers={workers}"

    def set(self) -> None:
        print(self._line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port (printed on the READY line)")
    parser.add_argument("--workers", type=int, default=1, help="server processes sharing the port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    counts = run(args.host, args.port, max(1, args.workers))
    print(json.dumps({"requests": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

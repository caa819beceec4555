"""Driving the benchmark's unary gRPC cases with h2load, nghttp2's compiled HTTP/2 load generator.

Why: the Python load tester (`service.loadtest`, grpc.aio) spends ~300 µs of CPU on every request
and shares the machine's cores with the servers it measures, so at 1 × 32 the ratio between two
servers mostly reflects the client. h2load (Debian: `apt-get install nghttp2-client`) spends a
small fraction of that, so more of the cores go to the server under test.

A gRPC unary call is an HTTP/2 POST to `/<package>.<Service>/<Method>` with `content-type:
application/grpc` and `te: trailers`, whose body is the length-prefixed message (1 byte 0, 4-byte
big-endian length, the serialised protobuf). h2load sends one fixed body; `build_payload` makes it
the very message the Python load tester's first client slot sends, so both clients send identical
bytes.

h2load sees HTTP statuses only: a failed gRPC call is still HTTP 200, its status is in the
`grpc-status` trailer. So correctness is checked another way: `probe` sends the same bytes once
with a real gRPC client and checks the reply decodes with the expected outputs (and, for a real
model, the expected probabilities); the caller compares h2load's request counts with the
server's own counts afterwards.

h2load cannot drive a gRPC stream (it sends one request per HTTP/2 stream), so streaming cases
stay on the Python load tester.

The REST cases (bench/h2load_rest.py) use the same runs with `--h1`: HTTP/1.1, one connection a
request in flight, the body and headers of the Python tester's first REST request.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.contract import FEATURES, NUM_CLASSES, PROBABILITIES
from service.loadtest.payload import KSERVE_ACTIVATION_OUTPUTS, KSERVE_OUTPUTS, build_requests, synthetic_images
from service.loadtest.tally import clock
from service.shared.mnist_files import load_test_images

H2LOAD = "h2load"
GRPC_PATHS = {"kserve_v2": "/inference.GRPCInferenceService/ModelInfer",
              "digits_v1": "/digits.v1.DigitClassifier/Classify"}
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
# The CPU window sits inside h2load's main phase: it opens once the connections are up and closes
# just before h2load's own timer ends (the process must still be alive to be read from /proc).
_WINDOW_LEAD_S, _WINDOW_TAIL_S = 0.25, 0.05
_SUMMARY = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout")
_STATUSES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))

# on_window(window_start, window_end, client_pids), in `clock()` time, like service.loadtest.runner's.
WindowObserver = Callable[[float, float, list[int]], None]

if TYPE_CHECKING:
    from bench.h2load_rest import RestPayload


class H2loadError(RuntimeError):
    """h2load did not run or printed no summary (not a server error: those are counted)."""


def available() -> bool:
    """Whether the h2load binary is on PATH (the default client then)."""
    return shutil.which(H2LOAD) is not None


@dataclass(frozen=True)
class Payload:
    """One request exactly as both load generators send it, and what its reply must hold."""

    api: str
    batch_size: int
    dtype: str
    activations: bool
    pixels: bytes   # the batch as packed on the wire
    message: bytes  # the serialised request protobuf
    request_id: str

    h1 = False  # gRPC is HTTP/2

    @property
    def path(self) -> str:
        return GRPC_PATHS[self.api]

    @property
    def headers(self) -> tuple[str, ...]:
        return GRPC_HEADERS

    def body(self) -> bytes:
        """What h2load's -d file holds."""
        return self.grpc_frame()

    def grpc_frame(self) -> bytes:
        """The HTTP/2 body of the call: uncompressed flag, big-endian length, message."""
        return b"\0" + len(self.message).to_bytes(4, "big") + self.message

    def float_pixels(self) -> np.ndarray:
        """The batch as the model sees it (uint8 scaled to 0-1, as the service and the tester do)."""
        if self.dtype == "uint8":
            return np.frombuffer(self.pixels, np.uint8).reshape(-1, FEATURES).astype(np.float32) / np.float32(255.0)
        return np.frombuffer(self.pixels, "<f4").reshape(-1, FEATURES)


def build_payload(api: str, batch_size: int, dtype: str, activations: bool, model_name: str,
                  mnist_dir: Path) -> Payload:
    """The first request the Python load tester sends (process 0, slot 0: image offset 0, id "0").

    Built by the tester's own `build_requests`, so the h2load rows differ from the Python rows in
    the client alone. (The tester rotates distinct images over its slots; h2load repeats one body.
    The model's cost does not depend on the pixel values.)
    """
    images = load_test_images(mnist_dir)
    if images is None:  # what the tester's worker does too
        images = synthetic_images()
    request = build_requests(images, 1, 0, api=api, batch_size=batch_size, dtype=dtype,
                             activations=activations, model_name=model_name)[0]
    pixels = request.raw_input_contents[0] if api == "kserve_v2" else request.pixels
    request_id = request.id if api == "kserve_v2" else request.request_id
    return Payload(api, batch_size, dtype, activations, pixels, request.SerializeToString(), request_id)


def connection_shape(concurrency: int, max_connections: int) -> tuple[int, int]:
    """(connections, streams each) whose product is `concurrency`, with as many connections as allowed.

    Many connections, because SO_REUSEPORT spreads connections, not requests, over the server's
    workers: with 4 connections on 2 workers one run in eight puts all of them on one worker.
    """
    connections = max(d for d in range(1, min(concurrency, max_connections) + 1) if concurrency % d == 0)
    return connections, concurrency // connections


def h2load_command(target: str, path: str, body: Path, connections: int, streams: int, duration_s: float,
                   log_file: Path | None, headers: tuple[str, ...] = GRPC_HEADERS, h1: bool = False) -> list[str]:
    """One timing-based h2load run (no warm-up of its own: see `run_h2load`), one thread; `h1`:
    HTTP/1.1, where `streams` must be 1 (more would be pipelining, which no REST client does)."""
    command = [H2LOAD, *(["--h1"] if h1 else []), "-c", str(connections), "-m", str(streams), "-t", "1",
               "-D", f"{round(duration_s * 1000)}ms", "-d", str(body)]
    for header in headers:
        command += ["-H", header]
    if log_file is not None:
        command.append(f"--log-file={log_file}")
    return [*command, f"http://{target}{path}"]


def parse_summary(text: str) -> dict[str, int]:
    """h2load's request and status counts ("started" includes calls still in flight when it stopped)."""
    counts, statuses = _SUMMARY.search(text), _STATUSES.search(text)
    if counts is None or statuses is None:
        raise H2loadError(f"no h2load summary in its output:\n{text[-2000:]}")
    names = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    summary = dict(zip(names, map(int, counts.groups())))
    summary.update(zip(("2xx", "3xx", "4xx", "5xx"), map(int, statuses.groups())))
    return summary


def latency_ms(log_file: Path) -> dict[str, float | None]:
    """Percentiles (nearest rank), max and mean of the HTTP-200 requests in h2load's per-request log.

    The log (start µs, HTTP status, µs to the end of the response) holds the main phase only.
    """
    durations = []
    for line in log_file.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[1] == "200":
            durations.append(int(fields[2]))
    if not durations:
        nothing: dict[str, float | None] = {name: None for name in [*(name for name, _ in PERCENTILES), "max", "mean"]}
        return nothing
    durations.sort()
    figures: dict[str, float | None] = {
        name: durations[min(len(durations) - 1, max(0, int(np.ceil(q * len(durations))) - 1))] / 1000.0
        for name, q in PERCENTILES}
    figures["max"] = durations[-1] / 1000.0
    figures["mean"] = sum(durations) / len(durations) / 1000.0
    return figures


def _errors(summary: dict[str, int]) -> dict[str, int]:
    """What h2load saw go wrong (a gRPC error is HTTP 200, so it never shows here)."""
    errors = {f"HTTP_{kind}": summary[kind] for kind in ("3xx", "4xx", "5xx") if summary[kind]}
    errors.update({f"H2LOAD_{kind.upper()}": summary[kind] for kind in ("errored", "timeout") if summary[kind]})
    return errors


def run_h2load(target: str, payload: Payload | RestPayload, body: Path, connections: int, streams: int,
               duration_s: float,
               log_file: Path | None = None, on_window: WindowObserver | None = None) -> dict:
    """One h2load run to completion, as a dict shaped like `service.loadtest.runner.run_load`'s.

    The body file must hold `payload.body()`. `on_window`, if given, hears the CPU window
    (inside the main phase) and h2load's pid right after the launch, and must return at once.
    `target` is HOST:PORT (for a REST payload, its HTTP endpoint's).
    """
    command = h2load_command(target, payload.path, body, connections, streams, duration_s, log_file,
                             payload.headers, payload.h1)
    if log_file is not None:
        log_file.unlink(missing_ok=True)  # h2load appends to an existing log: the last run's lines would stay
    launched = clock()
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise H2loadError(f"cannot run {H2LOAD}: {exc}") from exc
    if on_window is not None:
        lead, tail = min(_WINDOW_LEAD_S, duration_s / 4), min(_WINDOW_TAIL_S, duration_s / 10)
        on_window(launched + lead, launched + duration_s - tail, [process.pid])
    try:
        output, _ = process.communicate(timeout=duration_s + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise H2loadError(f"h2load did not finish:\n{output[-2000:]}") from None
    summary = parse_summary(output)
    ok = summary["2xx"]
    rps = ok / duration_s
    return {"client": H2LOAD, "command": command, "connections": connections, "streams": streams,
            "api": payload.api, "batch_size": payload.batch_size, "dtype": payload.dtype,
            "activations": payload.activations, "duration_s": duration_s, "h2load": summary,
            "requests": summary["done"], "ok": ok, "failed": summary["done"] - ok, "errors": _errors(summary),
            "sent_total": summary["started"], "rps": rps, "images_per_s": rps * payload.batch_size,
            "latency_ms": latency_ms(log_file) if log_file is not None else None}


# ---------------------------------------------------------------------------------------------
# the one real gRPC call that vouches for the bytes h2load sends


class HasPixels(Protocol):
    """Payload or h2load_rest.RestPayload: what the reference answer needs of either."""

    def float_pixels(self) -> np.ndarray: ...


def reference_probabilities(model: Path, payload: HasPixels) -> np.ndarray:
    """The model's own answer for the payload's batch, in-process, to hold a server's reply against."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run([PROBABILITIES], {session.get_inputs()[0].name: payload.float_pixels()})[0]


def probe(target: str, payload: Payload, expected: np.ndarray | None, timeout_s: float = 10.0) -> list[str]:
    """Sends the payload's exact message once with a real gRPC client; what is wrong with the reply.

    An empty list means the call succeeded and its reply has the outputs asked for, of the right
    shapes, and (when `expected` is given) the model's probabilities. The channel sends the
    message bytes as they are: no serialiser, so this is the body h2load sends.
    """
    import grpc

    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary(payload.path)  # bytes in, bytes out
        try:
            reply = call(payload.message, timeout=timeout_s)
        except grpc.RpcError as exc:
            return [f"{exc.code().name}: {exc.details()}"]
    check = _check_kserve if payload.api == "kserve_v2" else _check_digits
    try:
        return check(reply, payload, expected)
    except Exception as exc:  # noqa: BLE001 - an undecodable reply is a finding, not a crash
        return [f"reply does not decode: {exc!r}"]


def compare_probabilities(probabilities: np.ndarray, expected: np.ndarray | None) -> list[str]:
    if expected is None:
        return []
    if probabilities.shape != expected.shape:
        return [f"probabilities shape {probabilities.shape}, expected {expected.shape}"]
    if not np.allclose(probabilities, expected, atol=1e-4):
        return [f"probabilities differ from onnxruntime's by up to {np.abs(probabilities - expected).max():.2e}"]
    return []


def _check_kserve(reply: bytes, payload: Payload, expected: np.ndarray | None) -> list[str]:
    from service.generated.inference import grpc_predict_v2_pb2 as v2

    response = v2.ModelInferResponse.FromString(reply)
    wanted = KSERVE_OUTPUTS + (KSERVE_ACTIVATION_OUTPUTS if payload.activations else ())
    names = [output.name for output in response.outputs]
    problems = [] if sorted(names) == sorted(wanted) else [f"outputs {names}, asked for {list(wanted)}"]
    if response.id != payload.request_id:
        problems.append(f"id {response.id!r}, sent {payload.request_id!r}")
    if len(response.raw_output_contents) != len(response.outputs):
        return problems + [f"{len(response.raw_output_contents)} raw_output_contents for {len(names)} outputs"]
    for output, raw in zip(response.outputs, response.raw_output_contents):
        shape = list(output.shape)
        sized = len(shape) == 2 and shape[0] == payload.batch_size and len(raw) == 4 * shape[0] * shape[1]
        if output.datatype != "FP32" or not sized:
            problems.append(f"output {output.name}: {output.datatype} {shape} in {len(raw)} bytes")
        elif output.name == PROBABILITIES:
            problems += compare_probabilities(np.frombuffer(raw, "<f4").reshape(shape), expected)
    return problems


def _check_digits(reply: bytes, payload: Payload, expected: np.ndarray | None) -> list[str]:
    from service.generated.digits.v1 import digits_pb2

    response = digits_pb2.ClassifyResponse.FromString(reply)
    if response.HasField("error"):
        return [f"error {response.error.code}: {response.error.message}"]
    problems = [] if response.request_id == payload.request_id else [
        f"request_id {response.request_id!r}, sent {payload.request_id!r}"]
    if len(response.predictions) != payload.batch_size:
        return problems + [f"{len(response.predictions)} predictions for {payload.batch_size} images"]
    activations = list(KSERVE_ACTIVATION_OUTPUTS) if payload.activations else []
    for prediction in response.predictions:
        if len(prediction.probabilities) != NUM_CLASSES:
            return problems + [f"{len(prediction.probabilities)} probabilities a prediction"]
        layers = [layer.name for layer in prediction.activations]
        if layers != activations:
            return problems + [f"activations {layers}, asked for {activations}"]
    probabilities = np.array([list(p.probabilities) for p in response.predictions], np.float32)
    problems += compare_probabilities(probabilities, expected)
    if expected is not None and [p.digit for p in response.predictions] != list(expected.argmax(axis=1)):
        problems.append("digits are not the argmax of the model's probabilities")
    return problems

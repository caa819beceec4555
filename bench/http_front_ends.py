"""Why our HTTP front end is our own protocol class and not an ASGI server: both measured, side by side.

    python bench/http_front_ends.py            # 3 rounds of 1 s warm-up + 5 s, h2load --h1, 1 × 32 binary FP32

Both candidates run the very same application (`service.server.http_api.app.HttpApp`: routing,
validation, the core, the encoding) in 2 worker processes sharing the port with SO_REUSEPORT, on
uvloop; they differ only in what sits between the socket and the application:
  * ours:    `digits serve --http-port 0` — `connection.HttpConnection`, an asyncio Protocol on
             httptools that calls the application straight from the parser's callbacks;
  * uvicorn: uvicorn 0.3x with `http="httptools"` and a raw ASGI adapter (no framework): a task,
             a scope dict and receive/send coroutines per request.
h2load (Debian's nghttp2-client) sends the same bytes to both, alternating which goes first; the
script prints req/s and the servers' CPU µs per request (/proc, all their processes), medians.
uvicorn is only needed to run this script (`pip install uvicorn`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.triton_peer import process_tree_cpu_seconds
from service.contract import DEFAULT_MODEL_NAME, FEATURES, INPUT_NAME

SERVING = re.compile(r"serving grpc=\S+ http=(\S+)")
READY = re.compile(r"UVICORN READY (\S+)")
PATH = f"/v2/models/{DEFAULT_MODEL_NAME}/infer"


def binary_body() -> tuple[bytes, int]:
    """One FP32 image in Triton's binary tensor extension, probabilities asked for binary."""
    import numpy as np

    pixels = np.random.default_rng(0).random((1, FEATURES), dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, FEATURES], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(pixels)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return header + pixels, len(header)


# -- the uvicorn candidate (runs in this script's own child processes) ------------------------
def serve_uvicorn(port: int, workers: int) -> None:
    holder = socket.socket()  # bound, never listening: port 0 resolved once for every worker
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", port))
    port = holder.getsockname()[1]
    for _ in range(workers - 1):
        if os.fork() == 0:
            break
    _uvicorn_worker(port)


def _uvicorn_worker(port: int) -> None:
    import asyncio

    import uvicorn

    from service.server.config import ServeConfig
    from service.server.http_api.app import HttpApp
    from service.server.http_api.connection import Exchange, HttpRequest
    from service.server.lifecycle import build_core
    from service.server.policy import RequestPolicy

    core = build_core(ServeConfig(model_repository=str(REPO / "models")))
    core.load()
    state = {"pending": False}

    def compute() -> None:
        state["pending"] = False
        core.compute_due()

    def wake() -> None:
        if not state["pending"]:
            state["pending"] = True
            asyncio.get_running_loop().call_soon(compute)

    # HttpApp takes its RequestPolicy (no token; 256 calls at once, as this bench always allowed)
    application = HttpApp(core, lambda: True, RequestPolicy(core, None, 256), 16 << 20, wake)

    class FutureExchange:
        __slots__ = ("future", "on_abort")

        def __init__(self, future: asyncio.Future) -> None:
            self.future, self.on_abort = future, None

        def respond(self, response) -> None:
            if not self.future.done():
                self.future.set_result(response)

    async def asgi(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        url = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        request = HttpRequest(scope["method"].encode(), url, dict(scope["headers"]), b"".join(chunks),
                              time.perf_counter())
        exchange = FutureExchange(asyncio.get_running_loop().create_future())
        application(request, cast(Exchange, exchange))   # duck-typed: respond and on_abort
        response = await exchange.future
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(b"content-type", response.content_type), *response.headers]})
        await send({"type": "http.response.body", "body": response.body})

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    print(f"UVICORN READY http://127.0.0.1:{port}", flush=True)
    config = uvicorn.Config(asgi, loop="uvloop", http="httptools", lifespan="off", access_log=False,
                            log_level="warning")
    uvicorn.Server(config).run(sockets=[listener])


# -- the comparison ------------------------------------------------------------------------------
def start(command: list[str], pattern: re.Pattern) -> tuple[subprocess.Popen, str]:
    # a session of its own, so that stopping it reaches every worker it forked
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    assert process.stdout is not None   # PIPE
    for line in process.stdout:
        if match := pattern.search(line):  # then keep reading, so a full pipe never blocks the server
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, match.group(1)
    raise RuntimeError(f"{command} did not start")


def run(url: str, pid: int, body: Path, header_length: int, seconds: float) -> tuple[float, float, float]:
    """(req/s, server CPU µs per request, h2load's CPU as % of the machine) of one h2load run; CPU
    read around the whole run, warm-up included, so both candidates pay the same overstatement."""
    command = ["h2load", "--h1", "-c", "32", "-m", "1", "-t", "1", "--warm-up-time=1s",
               "-D", f"{round(seconds * 1000)}ms",
               "-d", str(body), "-H", f"Inference-Header-Content-Length: {header_length}",
               "-H", "Content-Type: application/octet-stream", url + PATH]
    cpu_before, client_before = process_tree_cpu_seconds(pid), _children_cpu_seconds()
    started = time.monotonic()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - started
    cpu = process_tree_cpu_seconds(pid) - cpu_before
    client = _children_cpu_seconds() - client_before
    counted = re.search(r"status codes: (\d+) 2xx", output)
    assert counted is not None, output
    ok = int(counted.group(1))
    return ok / seconds, cpu / ok * 1e6, 100 * client / (elapsed * (os.cpu_count() or 1))


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # h2load, once it has been waited for
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serve-uvicorn", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_uvicorn is not None:
        serve_uvicorn(args.serve_uvicorn, args.workers)
        return 0
    ours = start([sys.executable, "-m", "service.cli", "serve", "--port", "0", "--http-port", "0", "--metrics-port",
                  "0", "--workers", str(args.workers), "--model-repository", str(REPO / "models")], SERVING)
    candidate = start([sys.executable, __file__, "--serve-uvicorn", "0", "--workers", str(args.workers)], READY)
    time.sleep(2)  # every uvicorn worker listening
    peers = {"ours (HttpConnection)": ours, "uvicorn + raw ASGI": candidate}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in peers}
    with tempfile.TemporaryDirectory() as folder:
        body, header_length = binary_body()
        path = Path(folder) / "body"
        path.write_bytes(body)
        try:
            for index in range(args.rounds):
                order = list(peers.items())
                for name, (process, url) in order[index % 2:] + order[:index % 2]:
                    rps, cpu, client = run(url, process.pid, path, header_length, args.seconds)
                    figures[name].append((rps, cpu, client))
                    print(f"round {index + 1} {name:<24} {rps:>8,.0f} req/s {cpu:>6.0f} µs CPU/request  "
                          f"h2load {client:.0f} % CPU", flush=True)
        finally:
            for process, _ in peers.values():
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
    print("medians:")
    for name, runs in figures.items():
        print(f"  {name:<24} {statistics.median(r for r, _, _ in runs):>8,.0f} req/s "
              f"{statistics.median(c for _, c, _ in runs):>6.0f} µs CPU/request  "
              f"h2load {statistics.median(h for _, _, h in runs):.0f} % CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The real `digits serve` in a child process on 127.0.0.1 port 0, what it exposes (log, /metrics, health),
and the processes behind it (workers, their memory and their connections)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from service.generated.grpc.health.v1 import health_pb2, health_pb2_grpc
from tests.support import REPO, wait_for
from tests.support.held_serve import HOLD_ENV

SERVING_LINE = re.compile(r"serving grpc=(\S+) http=(\S+) metrics=(\S+) workers=(\d+)")
HEALTH_SERVICES = ("", "digits.v1.DigitClassifier", "inference.GRPCInferenceService")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
LOCAL_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # channel option: a TCP connection of its own
ANSWERED = re.compile(r"\[(\d+)\] \S+: stopped after answering (\d+) inference calls")


class RunningServer:
    """A `digits serve` child process; its stderr is collected in `log_lines`. Later arguments
    override the defaults (`--host 127.0.0.1 --port 0 --http-port 0 --metrics-port 0`); `http_url` is
"off" when HTTP is turned off."""

    command = [sys.executable, "-m", "service.cli"]

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
                 wait: bool = True, timeout: float = 60.0) -> None:
        command = [*self.command, "serve", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
                   "--metrics-port", "0", *args]
        self.log_lines: list[str] = []
        self.address = ""
        self.http_url = ""
        self.metrics_url = ""
        self._ready = threading.Event()
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready(timeout)

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log_lines.append(line)
            match = SERVING_LINE.search(line)
            if match and not self._ready.is_set():
                self.address, self.http_url, self.metrics_url = match.group(1), match.group(2), match.group(3)
                self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    def sync_log(self) -> str:
        """Everything the server has written so far, once the reader thread has it: a marker line
        written into the server's own stderr pipe comes out after all of it."""
        marker = f"-- log sync {uuid.uuid4().hex} --"
        with open(f"/proc/{self.process.pid}/fd/2", "w") as pipe:
            pipe.write(marker + "\n")
        assert wait_for(lambda: marker in self.log), "the log reader never caught up"
        return self.log

    def metrics_text(self) -> str:
        assert self.metrics_url.startswith("http://127.0.0.1:"), self.metrics_url  # only ever loopback
        return urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()

    def metrics(self) -> dict[str, object]:
        """The scraped /metrics as prometheus-client metric families, by name."""
        return {family.name: family for family in text_string_to_metric_families(self.metrics_text())}

    def metric(self, name: str, fragment: str = "") -> float:
        """Sum of the scraped samples called `name` (any labels) whose line contains `fragment`."""
        return sum(float(line.split()[-1]) for line in self.metrics_text().splitlines()
                   if line.split("{")[0].split(" ")[0] == name and fragment in line)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._reader.join(2)
                raise RuntimeError(f"server did not start (exit {self.process.poll()}):\n{self.log}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def worker_pids(self) -> list[int]:
        """The processes that serve: the supervisor's children, or the server itself with one worker."""
        return children(self.process.pid) or [self.process.pid]

    def answered_by_worker(self) -> dict[int, int]:
        """Successful inference calls each worker (by pid) reports when it stops."""
        return {int(pid): int(count) for pid, count in ANSWERED.findall(self.log)}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait_exit(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.wait_exit(5)


class HeldServer(RunningServer):
    """`digits serve` whose model is held busy until `release()` (see tests/support/held_serve.py):
    hold="compute" keeps queued requests queued, hold="warmup" keeps start-up from finishing."""

    command = [sys.executable, "-m", "tests.support.held_serve"]

    def __init__(self, *args: str, hold: str = "compute", env: dict[str, str] | None = None, **kwargs) -> None:
        delay = ["--max-queue-delay-us", "1"] if hold == "compute" else []  # every request queues
        super().__init__(*delay, *args, env={**(env or {}), HOLD_ENV: hold}, **kwargs)

    def release(self) -> None:
        """Lets every worker compute (or warm up). Only processes of this server are signalled: none
        once it has exited, and a worker only while the supervisor is still its parent."""
        if self.process.poll() is not None:
            return
        for pid in self.worker_pids():
            if pid == self.process.pid or parent(pid) == self.process.pid:
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections_by_process(pids: list[int], port: int) -> dict[int, set[int]]:
    """For each pid, the client ports of the established TCP connections it accepted on `port`
    (read from /proc: which process the kernel handed each connection to)."""
    established = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC listens on 127.0.0.1 as ::ffff:127.0.0.1
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                established[fields[9]] = int(fields[2].split(":")[1], 16)
    return {pid: {established[i] for i in _socket_inodes(pid) if i in established} for pid in pids}


class HealthWatch:
    """A grpc.health.v1 Watch on one service name, read by a thread; `statuses` in arrival order,
    `final` the status code the watch ended with (None while it goes on)."""

    def __init__(self, channel: grpc.Channel, service: str, wait_for_ready: bool = False) -> None:
        self.service = service
        self.statuses: list[int] = []
        self.final: grpc.StatusCode | None = None
        self.call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=120, wait_for_ready=wait_for_ready)
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        try:
            for response in self.call:
                self.statuses.append(response.status)
            self.final = grpc.StatusCode.OK
        except grpc.RpcError as exc:  # cancelled, or the server ended it
            self.final = exc.code()

    def cancel(self) -> None:
        self.call.cancel()
        self._thread.join(10)


def health_status(channel: grpc.Channel, service: str = "", wait_for_ready: bool = False) -> str:
    """The Check answer's status name, or the gRPC status code name of its failure."""
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10, wait_for_ready=wait_for_ready)
    except grpc.RpcError as exc:
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

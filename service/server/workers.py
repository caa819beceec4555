"""`--workers N`: N server processes on one port, one supervisor, one /metrics.

Python serves one core per process, so using every core takes processes. The supervisor forks
the workers before any gRPC object exists (gRPC does not survive a fork), and they all bind the
same port with SO_REUSEPORT, so the kernel spreads connections across them (a port another
process listens on is refused first, so that no other server shares it). The supervisor holds
the port without listening (so port 0 resolves once for everyone), maps the metrics' shared rows
before forking and serves them summed into one /metrics, forwards SIGTERM/SIGINT, and replaces a
worker that dies unexpectedly.
It stays single-threaded so that forking a replacement later is safe.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from dataclasses import replace
from http.server import HTTPServer

from prometheus_client import CollectorRegistry, MetricsHandler

from service.server import lifecycle, metrics, ports
from service.server.config import ServeConfig

log = logging.getLogger("service.server.workers")
READY_TIMEOUT = 60.0


class Supervisor:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._children: dict[int, int] = {}  # pid -> worker index
        self._stopping = False

    def run(self) -> int:
        try:
            lifecycle.check_ports_unused(self.config)  # the ports are shared only among our own workers
            holder = ports.reserve(self.config.host, self.config.grpc_port, "gRPC")
        except OSError as exc:
            log.error("cannot start: %s", exc.strerror)
            return 2
        self.config = replace(self.config, grpc_port=holder.getsockname()[1])
        http_holder = None
        try:  # bound before any worker exists, so a taken port leaves nothing behind
            if self.config.http:
                http_holder = ports.reserve(self.config.host, self.config.http_port, "HTTP")
                self.config = replace(self.config, http_port=http_holder.getsockname()[1])
            try:
                httpd = self._metrics_server()
            except OSError as exc:
                raise OSError(exc.errno, f"metrics port {self.config.metrics_port}: {exc}") from None
        except OSError as exc:
            log.error("cannot start: %s", exc.strerror)
            for sock in (holder, http_holder):
                if sock is not None:
                    sock.close()
            return 2
        self._listening = httpd.socket
        ready_read, self._ready_write = os.pipe()
        metrics.map_shared(self.config.workers)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for index in range(self.config.workers):
            self._spawn(index)
        if not self._wait_ready(ready_read):
            self._stop_children(grace=5.0)
            return 2
        lifecycle.announce(self.config, self.config.grpc_port, self.config.http_port if self.config.http else None,
                           httpd.server_port)
        while not self._stopping:
            httpd.handle_request()  # returns after httpd.timeout at the latest
            self._reap(replace_dead=True)
        httpd.server_close()
        code = self._stop_children(grace=self.config.grace_period + 5.0)
        holder.close()
        if http_holder is not None:
            http_holder.close()
        return code

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid:
            self._children[pid] = index
            return
        code = 2
        try:
            self._listening.close()  # the supervisor's /metrics socket is not the worker's to hold
            for sig in (signal.SIGTERM, signal.SIGINT):  # until the server installs its own handlers,
                signal.signal(sig, _exit_cleanly)         # a stop finds nothing in flight
            code = _worker_main(self.config, index, self._ready_write)
        except BaseException:  # noqa: BLE001 - a child must never return into the supervisor's code
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)

    def _wait_ready(self, ready_read: int) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        ready = 0
        while ready < self.config.workers:
            if self._stopping or time.monotonic() > deadline:
                log.error("cannot start: %d of %d workers became ready", ready, self.config.workers)
                return False
            readable, _, _ = select.select([ready_read], [], [], 0.2)
            if readable:
                ready += len(os.read(ready_read, 64))
            if self._reap(replace_dead=False):
                log.error("cannot start: a worker exited during start-up (see its error above)")
                return False
        return True

    def _reap(self, replace_dead: bool) -> bool:
        """Collects exited workers; returns True if any died. Replaces them when asked."""
        died = False
        while self._children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            index = self._children.pop(pid)
            metrics.worker_exited(index)
            died = True
            if replace_dead and not self._stopping:
                log.warning("worker %d (pid %d) exited with %s; starting a replacement", index, pid,
                            _describe_status(status))
                self._spawn(index)
        return died

    def _metrics_server(self) -> HTTPServer:
        registry = CollectorRegistry()
        metrics.register(registry)
        httpd = HTTPServer((self.config.host.strip("[]"), self.config.metrics_port),
                           MetricsHandler.factory(registry))
        httpd.timeout = 0.2
        return httpd

    def _stop_children(self, grace: float) -> int:
        for pid in self._children:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        failures = 0
        while self._children and time.monotonic() < deadline:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.05)
                continue
            self._children.pop(pid, None)
            failures += os.waitstatus_to_exitcode(status) != 0
        for pid in list(self._children):
            log.error("worker pid %d did not stop within %.1f s; killing it", pid, grace)
            _kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            failures += 1
        self._children.clear()
        return 0 if failures == 0 else 1


def _worker_main(config: ServeConfig, index: int, ready_write: int) -> int:
    metrics.use_slot(index)
    return lifecycle.serve(config, lambda port, http_port: os.write(ready_write, b"1"))


def _exit_cleanly(signum: int, frame: object) -> None:
    os._exit(0)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"

"""The HTTP front end of one worker: a thread with its own event loop, inference core and metrics row.

Why a thread of its own: the gRPC serving loop blocks inside gRPC core's completion queue, which
cannot wait on other sockets, so HTTP gets its own loop (uvloop, libuv in C) on its own thread.
Idle, that thread sleeps in epoll and costs the gRPC path nothing; it holds the GIL only while it
handles HTTP requests. It has its own `InferenceCore` (the core is single-threaded by design),
loaded from the same repository and told of new versions by the same watcher, and its own row of
metrics, so nothing is shared between the two threads but the process's health flag.

Batching works as in the gRPC loop: requests that arrive in one turn of the event loop are
queued with the core, and one callback scheduled for the end of the turn computes them together.
The listening socket (`ports.reserve`) is shared by every worker, and bound in the caller's
thread so that a taken port fails start-up.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import cast

import uvloop

from service.server import metrics, ports
from service.server.config import ServeConfig
from service.server.core import InferenceCore
from service.server.http_api.app import HttpApp
from service.server.http_api.connection import ConnectionSettings, HttpConnection
from service.server.policy import RequestPolicy

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.5   # seconds between looks at timeouts and at a model version to swap in
BACKLOG = 1024
DRAIN_POLL = 0.01


def tls_context(config: ServeConfig) -> ssl.SSLContext | None:
    """The same TLS settings as gRPC's (the files were checked by `security.tls_material`)."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        context.load_verify_locations(cafile=config.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


class HttpFrontEnd:
    def __init__(self, config: ServeConfig, core: InferenceCore, is_serving: Callable[[], bool],
                 token: bytes | None) -> None:
        self._config = config
        self.core = core
        self._is_serving = is_serving
        self._token = token
        self._socket = ports.reserve(config.host, config.http_port, "HTTP")
        self.port: int = self._socket.getsockname()[1]
        # set by _run, on the front end's thread, before anything below uses them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: HttpApp | None = None
        self._policy: RequestPolicy | None = None
        self._settings: ConnectionSettings | None = None
        self._compute_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._ready = threading.Event()
        self._drained = threading.Event()
        self._failure: BaseException | None = None

    # -- the caller's thread ---------------------------------------------------------------
    def start(self) -> None:
        """Starts the thread, which loads its core and listens; raises what made that fail."""
        thread = threading.Thread(target=self._run, name="http-front-end", daemon=True)
        thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def begin_drain(self) -> None:
        """New requests get 503 (and their connection closes) while those in flight finish."""
        cast(asyncio.AbstractEventLoop, self._loop).call_soon_threadsafe(self._drain)

    def wait_drained(self, timeout: float) -> bool:
        return self._drained.wait(max(0.0, timeout))

    # -- the front end's thread ------------------------------------------------------------
    def _run(self) -> None:
        metrics.use_front_end("http")
        try:
            self.core.load()
            self._loop = loop = uvloop.new_event_loop()
            self._policy = RequestPolicy(self.core, self._token, self._config.max_concurrent_rpcs)
            self._app = HttpApp(self.core, self._is_serving, self._policy, self._config.max_receive_message_bytes,
                                self._wake_compute)
            self._settings = ConnectionSettings(self._app, self._config.max_receive_message_bytes,
                                                self._config.http_read_timeout, self._config.http_idle_timeout,
                                                self._config.max_connections)
            context = tls_context(self._config)
            # A client that opens a connection and never finishes the TLS handshake (or the closing
            # one) would hold a descriptor for uvloop's 60 s (30 s): it gets the read timeout instead.
            deadline = self._config.http_read_timeout if context is not None else None
            loop.run_until_complete(loop.create_server(lambda: HttpConnection(self._settings), sock=self._socket,
                                                       backlog=BACKLOG, ssl=context, ssl_handshake_timeout=deadline,
                                                       ssl_shutdown_timeout=deadline))
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._failure = exc
            self._ready.set()
            return
        loop.call_later(SWEEP_INTERVAL, self._sweep)
        self._ready.set()
        loop.run_forever()

    def _wake_compute(self) -> None:
        """Called for each queued request: one compute at the end of this turn serves them all."""
        if not self._compute_pending:
            self._compute_pending = True
            cast(asyncio.AbstractEventLoop, self._loop).call_soon(self._compute)

    def _compute(self) -> None:
        self._compute_pending = False
        core = self.core
        core.compute_due()
        due = core.next_due()
        if due is not None and self._timer is None:  # --max-queue-delay-us: come back when due
            loop = cast(asyncio.AbstractEventLoop, self._loop)
            self._timer = loop.call_later(max(0.0, due - time.monotonic()), self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._compute()

    def _sweep(self) -> None:
        """Timeouts, and a new model version swapped in even when no request comes."""
        self._compute()
        now = time.monotonic()
        for connection in list(cast(ConnectionSettings, self._settings).connections):
            connection.check_timeouts(now)
        cast(asyncio.AbstractEventLoop, self._loop).call_later(SWEEP_INTERVAL, self._sweep)

    def _drain(self) -> None:
        cast(RequestPolicy, self._policy).draining = True
        cast(ConnectionSettings, self._settings).draining = True
        self._check_drained()

    def _check_drained(self) -> None:
        if metrics.inflight() <= 0:
            self._drained.set()
        else:
            cast(asyncio.AbstractEventLoop, self._loop).call_later(DRAIN_POLL, self._check_drained)

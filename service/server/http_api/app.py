"""The HTTP application of one worker: routes, the bearer token, admission, metrics, errors.

What is common to every endpoint lives here, as the serving loop holds it for gRPC: looking the
route up, the token (health and the page's files stay open, like gRPC health), the per-front-end
admission limit (`--max-concurrent-rpcs`, 429 with Retry-After beyond it), 503 while draining,
the `api="kserve_v2_rest"` metrics, and turning every failure into `{"error": ...}` with the
status of `status.HTTP_STATUS`. The adapters (`kserve_v2_rest`, `page_api`) only convert.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from service.server import metrics
from service.server.core_types import Pending
from service.server.errors import InferenceError, ModelNotFound, NotReady, Overloaded
from service.server.http_api import kserve_v2_rest, page_api
from service.server.http_api.connection import Exchange, HttpRequest, Response, error_response
from service.server.http_api.encoding import decoded_body
from service.server.http_api.kserve_v2_rest import KServeV2Rest
from service.server.http_api.status import failure_of
from service.server.security import REFUSAL

if TYPE_CHECKING:
    from service.server.core import InferenceCore

SHUTTING_DOWN = "server is shutting down"
PATHS_REMEMBERED = 1024
OTHER_ROUTES = frozenset(("/v2", kserve_v2_rest.ALL_STATS, kserve_v2_rest.REPOSITORY_INDEX, *page_api.ROUTES))
MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer|/config|/stats)?")
RETRY_AFTER = ((b"Retry-After", b"1"),)
CHALLENGE = ((b"WWW-Authenticate", b'Bearer realm="digit-serving"'),)
LIVE = Response(200, b'{"live":true}')
READY = Response(200, b'{"ready":true}')


class Unauthenticated(InferenceError):
    status = "UNAUTHENTICATED"


class MethodNotAllowed(InferenceError):
    status = "UNIMPLEMENTED"
    http_status = 405


def failure_response(exc: BaseException) -> tuple[str, Response]:
    """(status name for the metrics, the response) for any failure."""
    code, status, message = failure_of(exc)
    headers = RETRY_AFTER if status in (429, 503) else CHALLENGE if status == 401 else ()
    return code, error_response(status, message, headers)


class HttpApp:
    def __init__(self, core: InferenceCore, is_serving: Callable[[], bool], token: bytes | None,
                 max_concurrent: int, max_body: int, wake_compute: Callable[[], None]) -> None:
        self._core = core
        self._max_body = max_body
        self._is_serving = is_serving
        self._expected_authorization = b"Bearer " + token if token else None
        self._limit = max_concurrent
        self._wake_compute = wake_compute
        self._v2 = KServeV2Rest(core)
        self._files = page_api.load_page_files()
        self._samples = page_api.Samples()
        self._observers = {method: metrics.RequestObserver(api, method) for api, method in metrics.OBSERVED_METHODS
                           if api in (kserve_v2_rest.API, page_api.API)}
        self._paths: dict[bytes, tuple[str, tuple[str, str, str | None] | None]] = {}
        self.draining = False

    def __call__(self, request: HttpRequest, exchange: Exchange) -> None:
        raw_path, _, raw_query = request.url.partition(b"?")
        path, match = self._resolve(raw_path)
        method = request.method
        try:
            if path.startswith("/v2/health/"):
                exchange.respond(self._health(path, method))
                return
            if method == b"GET" and path in self._files:
                exchange.respond(self._files[path])
                return
            if path == kserve_v2_rest.ALL_STATS:   # every model's statistics, not a model called "stats"
                match = None
            if match is None and path not in OTHER_ROUTES and not kserve_v2_rest.REPOSITORY_CONTROL.fullmatch(path):
                raise ModelNotFound(f"no such endpoint: {method.decode('latin-1')} {path[:200]}")
            if self._expected_authorization is not None and not self._authorised(request):
                raise Unauthenticated(REFUSAL + "; send 'Authorization: Bearer <token>'")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a precise status
            exchange.respond(failure_response(exc)[1])
            return
        if match is not None:
            name, version, action = match
            if action == "/infer":
                self._observed("ModelInfer", request, exchange, b"POST",
                               lambda: self._v2.infer(name, version, self._body(request),
                                                      request.headers.get(kserve_v2_rest.HEADER_LENGTH)))
            elif action == "/ready":
                self._observed("ModelReady", request, exchange, b"GET", lambda: self._model_ready(name, version))
            elif action == "/config":
                self._observed("ModelConfig", request, exchange, b"GET", lambda: self._v2.model_config(name, version))
            elif action == "/stats":
                self._observed("ModelStatistics", request, exchange, b"GET",
                               lambda: self._v2.model_statistics(name, version))
            else:
                self._observed("ModelMetadata", request, exchange, b"GET",
                               lambda: self._v2.model_metadata(name, version))
        elif path == "/v2":
            self._plain(exchange, method, b"GET", self._v2.server_metadata)
        elif path == kserve_v2_rest.ALL_STATS:
            self._observed("ModelStatistics", request, exchange, b"GET", lambda: self._v2.model_statistics("", ""))
        elif path == kserve_v2_rest.REPOSITORY_INDEX:
            self._observed("RepositoryIndex", request, exchange, b"POST",
                           lambda: self._v2.repository_index(self._body(request)))
        elif path.startswith("/v2/repository/"):
            self._plain(exchange, method, b"POST", lambda: self._v2.repository_control(path))
        elif path == page_api.PREPROCESS:
            self._observed("Preprocess", request, exchange, b"POST",
                           lambda: page_api.preprocess(self._body(request)))
        elif path == page_api.WEIGHTS:
            self._plain(exchange, method, b"GET", lambda: page_api.weights(self._core.model))
        else:
            query = dict(parse_qsl(raw_query.decode("latin-1")))
            self._plain(exchange, method, b"GET", lambda: self._samples.random(query))

    # -- what every route shares -----------------------------------------------------------
    def _resolve(self, raw_path: bytes) -> tuple[str, tuple[str, str, str | None] | None]:
        """The decoded path and, for a model path, (name, version, action); remembered for the
        few paths a server sees again and again."""
        resolved = self._paths.get(raw_path)
        if resolved is None:
            path = unquote(raw_path.decode("latin-1"))
            match = MODEL_PATH.fullmatch(path)
            resolved = path, match and (match.group(1), match.group(2) or "", match.group(3))
            if len(self._paths) < PATHS_REMEMBERED:
                self._paths[raw_path] = resolved
        return resolved

    def _body(self, request: HttpRequest) -> bytes:
        return decoded_body(request.body, request.headers.get(b"content-encoding"), self._max_body)

    def _authorised(self, request: HttpRequest) -> bool:
        return hmac.compare_digest(request.headers.get(b"authorization", b""), self._expected_authorization)

    def _health(self, path: str, method: bytes) -> Response:
        if method != b"GET":
            raise MethodNotAllowed(f"{path} takes GET")
        if path == "/v2/health/live":
            return LIVE
        if path == "/v2/health/ready":
            if not self._is_serving():
                raise NotReady("server is not ready (starting or shutting down)")
            return READY
        raise ModelNotFound(f"no such endpoint: {path[:200]}; health is /v2/health/live and /v2/health/ready")

    def _model_ready(self, name: str, version: str) -> Response:
        response = self._v2.model_ready(name, version)
        if not self._is_serving():
            raise NotReady("server is not ready (starting or shutting down)")
        return response

    @staticmethod
    def _plain(exchange: Exchange, method: bytes, allowed: bytes, answer: Callable[[], Response]) -> None:
        try:
            if method != allowed:
                raise MethodNotAllowed(f"this endpoint takes {allowed.decode()}")
            exchange.respond(answer())
        except Exception as exc:  # noqa: BLE001
            exchange.respond(failure_response(exc)[1])

    def _observed(self, name: str, request: HttpRequest, exchange: Exchange, allowed: bytes,
                  answer: Callable[[], Response | Pending]) -> None:
        """Timed, counted and admitted like a gRPC call of the same method."""
        observe = self._observers[name]
        metrics.request_started()
        finished = False

        def finish(code: str, response: Response | None) -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            metrics.request_finished()
            observe(code, time.perf_counter() - request.started)
            if response is not None:
                exchange.respond(response)

        def fail(exc: BaseException) -> None:
            finish(*failure_response(exc))

        try:
            if request.method != allowed:
                raise MethodNotAllowed(f"this endpoint takes {allowed.decode()}")
            if self.draining:
                raise NotReady(SHUTTING_DOWN)
            if metrics.inflight() > self._limit:
                raise Overloaded(f"server is handling its limit of {self._limit} requests "
                                 "(--max-concurrent-rpcs); retry with backoff or add replicas")
            outcome = answer()
            if type(outcome) is Response:
                finish("OK", outcome)
                return

            def done(result, error: InferenceError | None, encode=outcome.encode) -> None:
                if error is not None:
                    fail(error)
                    return
                try:
                    response = encode(result)
                except Exception as exc:  # noqa: BLE001
                    fail(exc)
                    return
                finish("OK", response)

            ticket = self._core.submit(outcome.request, done)

            def abort() -> None:  # the client left: do not compute for nobody
                ticket.cancel()
                finish("CANCELLED", None)

            exchange.on_abort = abort
            self._wake_compute()
        except Exception as exc:  # noqa: BLE001
            fail(exc)


"""The HTTP application of one worker: routes, and HTTP's side of every request.

What is HTTP's lives here, as the serving loop holds gRPC's: looking the route up, which routes
are open without a token (health and the page's files, like gRPC health), readiness, and turning
every failure into `{"error": ...}` with the status of `status.HTTP_STATUS` (429 and 503 with
Retry-After). What every inference call goes through, over HTTP or gRPC, is the request policy's
(`policy.py`: token, draining, admission, the core, cancellation, counting and answering once).
The adapters (`kserve_v2_rest`, `page_api`) only convert.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from service.server import metrics
from service.server.core_types import Pending
from service.server.errors import InferenceError, ModelNotFound, NotReady
from service.server.http_api import kserve_v2_rest, page_api
from service.server.http_api.connection import Exchange, HttpRequest, Response, error_response
from service.server.http_api.encoding import decoded_body
from service.server.http_api.kserve_v2_rest import KServeV2Rest
from service.server.http_api.status import failure_of
from service.server.http_api.weights import FirstLayers
from service.server.policy import RequestPolicy
from service.server.security import REFUSAL

if TYPE_CHECKING:
    from service.server.core import InferenceCore

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
    """The endpoint exists but takes another method; the 405 says which in `Allow` (RFC 9110 15.5.6)."""

    status = "UNIMPLEMENTED"
    http_status = 405

    def __init__(self, allowed: bytes, what: str = "this endpoint") -> None:
        super().__init__(f"{what} takes {allowed.decode()}")
        # HEAD is answered wherever GET is
        self.allow = b"GET, HEAD" if allowed == b"GET" else allowed


def failure_response(exc: BaseException) -> tuple[str, Response]:
    """(status name for the metrics, the response) for any failure."""
    code, status, message = failure_of(exc)
    if isinstance(exc, MethodNotAllowed):
        headers: tuple[tuple[bytes, bytes], ...] = ((b"Allow", exc.allow),)
    else:
        headers = RETRY_AFTER if status in (429, 503) else CHALLENGE if status == 401 else ()
    return code, error_response(status, message, headers)


class HttpApp:
    def __init__(self, core: InferenceCore, is_serving: Callable[[], bool], policy: RequestPolicy,
                 max_body: int, wake_compute: Callable[[], None]) -> None:
        self._core = core
        self._max_body = max_body
        self._is_serving = is_serving
        self._policy = policy
        self._wake_compute = wake_compute
        self._v2 = KServeV2Rest(core, is_serving)
        self._files = page_api.load_page_files()
        self._samples = page_api.Samples()
        self._first_layers = FirstLayers()
        self._observers = {method: metrics.RequestObserver(api, method) for api, method in metrics.OBSERVED_METHODS
                           if api in (kserve_v2_rest.API, page_api.API)}
        self._paths: dict[bytes, tuple[str, tuple[str, str, str | None] | None]] = {}

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
            if not self._policy.authorised(request.headers.get(b"authorization", b"")):
                raise Unauthenticated(REFUSAL + "; send 'Authorization: Bearer <token>'")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a precise status
            exchange.respond(failure_response(exc)[1])
            return
        if match is not None:
            name, version, action = match
            if action == "/infer":
                self._observed("ModelInfer", request, exchange, b"POST", lambda: self._infer(request, name, version))
            elif action == "/ready":
                self._observed("ModelReady", request, exchange, b"GET", lambda: self._v2.model_ready(name, version))
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
            self._plain(exchange, method, b"GET", lambda: page_api.weights(self._core.model, self._first_layers))
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

    def _infer(self, request: HttpRequest, name: str, version: str) -> Pending:
        headers = request.headers
        kserve_v2_rest.check_content_type(headers.get(b"content-type"))  # before decompressing the body
        return self._v2.infer(name, version, self._body(request), headers.get(kserve_v2_rest.HEADER_LENGTH))

    def _body(self, request: HttpRequest) -> bytes:
        return decoded_body(request.body, request.headers.get(b"content-encoding"), self._max_body)

    def _health(self, path: str, method: bytes) -> Response:
        if method != b"GET":
            raise MethodNotAllowed(b"GET", path)
        if path == "/v2/health/live":
            return LIVE
        if path == "/v2/health/ready":
            if not self._is_serving():
                raise NotReady("server is not ready (starting or shutting down)")
            return READY
        raise ModelNotFound(f"no such endpoint: {path[:200]}; health is /v2/health/live and /v2/health/ready")

    @staticmethod
    def _plain(exchange: Exchange, method: bytes, allowed: bytes, answer: Callable[[], Response]) -> None:
        try:
            if method != allowed:
                raise MethodNotAllowed(allowed)
            exchange.respond(answer())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a precise status
            exchange.respond(failure_response(exc)[1])

    def _observed(self, name: str, request: HttpRequest, exchange: Exchange, allowed: bytes,
                  answer: Callable[[], Response | Pending]) -> None:
        """Through the request policy, like a gRPC call of the same method: admitted, timed,
        counted and answered once; the client leaving cancels it."""
        def checked_answer() -> Response | Pending:
            if request.method != allowed:
                raise MethodNotAllowed(allowed)
            return answer()

        inference = self._policy.serve(self._observers[name], request.started, checked_answer, exchange.respond,
                                       lambda exc: exchange.respond(failure_response(exc)[1]))
        if inference.ticket is not None:
            exchange.on_abort = lambda: inference.cancel("CANCELLED")   # do not compute for nobody
            self._wake_compute()

"""The one table from the core's failures to HTTP statuses.

Every failure is an `InferenceError` whose `status` names a gRPC code (see `service.server.errors`);
REST clients expect HTTP statuses instead, so this table maps each name once. The metrics keep
the gRPC name as their `code` label, so one dashboard reads both APIs alike.
"""

from __future__ import annotations

import logging

from service.server.errors import InferenceError

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error; the server log has the details"
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "DEADLINE_EXCEEDED": 504,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
}


def failure_of(exc: BaseException) -> tuple[str, int, str]:
    """(status name, HTTP status, message) for `exc`; only the server's own bugs are logged. An
    error class may name its own `http_status` where HTTP is finer than gRPC (405)."""
    if isinstance(exc, InferenceError):
        return exc.status, getattr(exc, "http_status", 0) or HTTP_STATUS.get(exc.status, 500), str(exc)
    log.exception("unexpected error while handling an HTTP request", exc_info=exc)
    return "INTERNAL", 500, INTERNAL_MESSAGE


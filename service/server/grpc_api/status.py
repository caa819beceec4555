"""The one place where failures become gRPC statuses, and where request bytes become messages.

Adapters raise the core's `InferenceError`s; `status_of` turns each into the status its class
names, and logs only the server's own bugs (a client's mistake is not a server log event).
"""

from __future__ import annotations

import logging
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from service.server.errors import InferenceError, InvalidInput, bounded

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error; the server log has the details"
M = TypeVar("M", bound=Message)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client receives for `exc`."""
    if isinstance(exc, InferenceError):
        return grpc.StatusCode[exc.status], bounded(str(exc))
    log.exception("unexpected error while handling a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def parse(message_class: type[M], data: bytes) -> M:
    """The message in `data`; bytes that are not one are the client's error, INVALID_ARGUMENT."""
    try:
        return message_class.FromString(data)
    except DecodeError as exc:
        raise InvalidInput(f"request is not a valid protobuf message: {exc}") from None

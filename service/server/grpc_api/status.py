"""The one place where failures become gRPC statuses, and where API calls are admitted, timed and counted.

Servicer methods raise the core's `InferenceError`s; `observed` turns them into the status the
error names, logs only the server's own bugs (a client's mistake is not a server log event),
and records end-to-end latency, the status code and the in-flight count. It also refuses calls
beyond the worker's concurrency limit. gRPC's own `maximum_concurrent_rpcs` does that with an
asyncio.Condition and an extra task per call (without it, 1 × 32 went from 0.76× to 0.83× of the
no-op floor's req/s in bench/run.py); a comparison with the in-flight count we keep anyway costs nothing, and health checks and
reflection are never refused.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from service.server import metrics
from service.server.errors import InferenceError, InvalidInput, Overloaded

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error; the server log has the details"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client receives for `exc`."""
    if isinstance(exc, InferenceError):
        return grpc.StatusCode[exc.status], str(exc)
    log.exception("unexpected error while handling a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


class MalformedRequest:
    """Stands in for request bytes that are not a valid message, so our handler can refuse them
    with INVALID_ARGUMENT; otherwise gRPC answers UNKNOWN and logs a traceback per request."""

    request_id = ""

    def __init__(self, error: DecodeError) -> None:
        self.error = error

    def refusal(self) -> InvalidInput:
        return InvalidInput(f"request is not a valid protobuf message: {self.error}")


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return MalformedRequest(exc)

    return deserialize


def _serializer(response_class: type) -> Callable[[Any], bytes]:
    """A handler may return its response already serialised (see kserve_v2.encode_response)."""
    serialize = response_class.SerializeToString

    def to_bytes(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return to_bytes


_KINDS = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
          (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> str:
    """Registers `servicer` (methods named as in the .proto) with tolerant request parsing."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        make = _KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(getattr(servicer, method.name),
                                     request_deserializer=_tolerant(request_class.FromString),
                                     response_serializer=_serializer(response_class))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
    return service.full_name


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]

_max_concurrent_calls = 256


def limit_concurrent_calls(limit: int) -> None:
    """Inference API calls (stream messages included) one worker handles at once; more are refused."""
    global _max_concurrent_calls
    _max_concurrent_calls = limit


def admit() -> None:
    """Raises Overloaded when this worker already handles its limit of calls, this one included."""
    if metrics.inflight() > _max_concurrent_calls:
        raise Overloaded(f"server is handling its limit of {_max_concurrent_calls} calls (--max-concurrent-rpcs); "
                         "retry with backoff or add replicas")


def observed(api: str, method: str) -> Callable[[Handler], Handler]:
    """Wraps a unary servicer method: statuses from errors, metrics for every call."""

    def decorate(handler: Handler) -> Handler:
        observe = metrics.RequestObserver(api, method)

        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            metrics.request_started()
            code = "OK"
            try:
                admit()
                if isinstance(request, MalformedRequest):
                    raise request.refusal()
                return await handler(self, request, context)
            except asyncio.CancelledError:  # the client went away, or its deadline passed
                remaining = context.time_remaining()
                code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
                raise
            except Exception as exc:  # noqa: BLE001 - every failure must become a precise status
                status, message = status_of(exc)
                code = status.name
                await context.abort(status, message)
            finally:
                metrics.request_finished()
                observe(code, time.perf_counter() - start)

        return wrapper

    return decorate


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the time.monotonic() clock, or None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining

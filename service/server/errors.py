"""The inference core's error family.

The core speaks NumPy and plain Python; it never knows about gRPC or HTTP. Each error class names
the gRPC status it becomes; `grpc_api/status.py` turns them into gRPC statuses and
`http_api/status.py` into HTTP statuses (one table each), so every API, over either protocol,
reports every failure alike by construction.
"""

from __future__ import annotations

# An error's message may quote what the client sent (a shape of 100,001 dimensions made a 300 KB
# answer, more than a gRPC client accepts as trailers): every message a client receives is cut here.
MAX_MESSAGE_CHARS = 1024


def bounded(message: str) -> str:
    """`message`, cut to MAX_MESSAGE_CHARS and then ending with "…"."""
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS - 1] + "…"


class InferenceError(Exception):
    """Base class: `status` is the name of the grpc.StatusCode the client receives."""

    status = "INTERNAL"


class InvalidInput(InferenceError):
    """The request is malformed: the client must change it before retrying."""

    status = "INVALID_ARGUMENT"


class ModelNotFound(InferenceError):
    """The request names a model, version or output this server does not have."""

    status = "NOT_FOUND"


class Overloaded(InferenceError):
    """The queue is full; retrying later (with backoff) may succeed."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExpired(InferenceError):
    """The client's deadline passed before the model got to the request; it was not computed."""

    status = "DEADLINE_EXCEEDED"


class NotReady(InferenceError):
    """The model is not loaded yet or the server is draining; another replica can answer."""

    status = "UNAVAILABLE"

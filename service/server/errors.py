"""The inference core's error family.

The core speaks NumPy and plain Python; it never knows about gRPC. Each error class names the
gRPC status it becomes, and `service.server.grpc_api.status` is the one place that turns them into statuses, so
both APIs report every failure identically by construction.
"""

from __future__ import annotations


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


class Unsupported(InferenceError):
    """The server deliberately does not offer this operation; the message says what to do instead."""

    status = "UNIMPLEMENTED"

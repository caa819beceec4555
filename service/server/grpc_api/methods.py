"""What the serving loop needs to know about each gRPC method: a table, filled by the adapters.

An adapter turns request bytes into either the reply bytes (metadata, health, reflection: no
model involved) or a `Pending` inference — an `InferenceRequest` for the core and the function
that encodes its result. The loop owns everything else (calls, streams, deadlines, admission,
authentication, metrics), so adapters hold no transport logic and every API behaves alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from service.server.core_types import Pending

Answer = bytes | Pending
Handler = Callable[[bytes, "float | None"], Answer]  # (request bytes, deadline) -> answer; raises InferenceError


class Kind(Enum):
    UNARY = "unary"      # one request, one reply
    STREAM = "stream"    # bidirectional: each request message gets its own reply message, in any order
    WATCH = "watch"      # health Watch: one request, then a reply whenever the status changes


@dataclass(frozen=True)
class Method:
    path: str                                   # "/package.Service/Method"
    kind: Kind
    handle: Handler | None = None               # None for WATCH, which the loop serves itself
    # STREAM only: the reply message that carries one message's failure (request bytes, code, text).
    stream_error: Callable[[bytes, str, str], bytes] | None = None
    # (api, method) labels in the metrics; such calls (each stream message) count toward
    # --max-concurrent-rpcs. None: neither counted nor refused (health, reflection, liveness).
    observed: tuple[str, str] | None = None
    protected: bool = False                     # needs the bearer token when one is configured


def method_path(service_full_name: str, name: str) -> str:
    return f"/{service_full_name}/{name}"

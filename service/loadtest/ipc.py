"""Length-prefixed pickle frames over a child process's stdin/stdout.

Client processes are plain `python -m service.loadtest.worker` subprocesses rather than
multiprocessing children: a fresh interpreter never inherits a caller's gRPC runtime (unsafe
after fork), and unlike multiprocessing's spawn it does not re-import the caller's `__main__`,
so `run_load` works from any script, test runner or notebook.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, Protocol

_HEADER = struct.Struct("<Q")


class Readable(Protocol):
    """A binary stream to read: buffered, or raw (whose read may return None when nothing is ready)."""

    def read(self, size: int, /) -> bytes | None: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


def write_frame(stream: Writable, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: Readable) -> Any:
    """The next object, or raises EOFError when the other side has gone. `stream` may be unbuffered
    (a raw pipe returns what has arrived so far, so each part is read until it is whole)."""
    header = _read_exactly(stream, _HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("stream closed")
    size = _HEADER.unpack(header)[0]
    data = _read_exactly(stream, size)
    if len(data) < size:
        raise EOFError("stream closed mid-frame")
    return pickle.loads(data)


def _read_exactly(stream: Readable, size: int) -> bytes:
    """`size` bytes, or fewer only at the end of the stream."""
    parts, missing = [], size
    while missing:
        part = stream.read(missing)
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)

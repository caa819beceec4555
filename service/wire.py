"""Protobuf wire-format helpers for replies built without a message object.

A raw-output V2 response is a serialised head plus one length-delimited field per output tensor;
building it by concatenation avoids a message per reply. The server's V2 adapter and the
benchmark's no-op floor both use it, so it belongs to neither side.
"""

from __future__ import annotations


def length_delimited(number: int, payload: bytes) -> bytes:
    """Protobuf wire bytes of field `number` holding `payload`; appended to a message's bytes they
    set (or, for a repeated field, append to) that field."""
    size, varint = len(payload), bytearray()
    while size > 0x7F:
        varint.append(size & 0x7F | 0x80)
        size >>= 7
    varint.append(size)
    return bytes(((number << 3) | 2,)) + varint + payload

"""Compressed request bodies (`Content-Encoding: gzip` or `deflate`), as Triton accepts them and
`tritonclient.http` sends them (`request_compression_algorithm`).

Decompression stops one byte past the body limit, so a small compressed body cannot make the
server hold a huge one (413); an encoding we do not speak is 415, a corrupt stream 400.
"""

from __future__ import annotations

import zlib

from service.server.errors import InferenceError, InvalidInput

# Content-Encoding -> zlib's wbits for it (RFC 9110: deflate is the zlib format)
WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}


class UnsupportedEncoding(InferenceError):
    status = "INVALID_ARGUMENT"
    http_status = 415


class BodyTooLarge(InferenceError):
    status = "RESOURCE_EXHAUSTED"
    http_status = 413


def decoded_body(body: bytes, content_encoding: bytes | None, limit: int) -> bytes:
    """`body` as sent before compression (itself when not compressed)."""
    if content_encoding is None:
        return body
    encoding = content_encoding.strip().lower()
    if encoding in (b"", b"identity"):
        return body
    wbits = WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedEncoding(f"Content-Encoding {encoding[:40].decode('latin-1')!r} is not supported; "
                                  "send gzip, deflate or an uncompressed body")
    decompressor = zlib.decompressobj(wbits)
    try:
        plain = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding.decode()} data: {exc}") from None
    if len(plain) > limit or decompressor.unconsumed_tail:
        raise BodyTooLarge(f"request body decompresses to more than the server's limit of {limit} bytes "
                           "(--max-receive-message-bytes)")
    if not decompressor.eof:
        raise InvalidInput(f"request body is truncated {encoding.decode()} data")
    return plain

"""Turns the raw pixels of a request into a validated [N, 784] array, or says exactly what is wrong.

Shared by both APIs so they accept and reject the same things. Decoding is one np.frombuffer (a
view on the protobuf's bytes, no copy); the float check is two reductions, so valid input costs
almost nothing and the slower search for the first offending value runs only on failure.
"""

from __future__ import annotations

import numpy as np

from service.errors import InvalidInput

FEATURES = 784
DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype("<f4")}
ONE_AS_UINT32 = int(np.float32(1.0).view(np.uint32))


def pixels_from_bytes(data: bytes, dtype: str, what: str) -> np.ndarray:
    """`data` holds N × 784 packed pixels of `dtype` ('uint8' or 'float32', little-endian)."""
    item = DTYPES[dtype]
    image_bytes = FEATURES * item.itemsize
    if not data:
        raise InvalidInput(f"{what} is empty: expected N × {image_bytes} bytes (784 {dtype} pixels an image)")
    if len(data) % image_bytes:
        raise InvalidInput(f"{what} has {len(data)} bytes, which is not a multiple of {image_bytes} "
                           f"(784 {dtype} pixels an image)")
    pixels = np.frombuffer(data, dtype=item).reshape(-1, FEATURES)
    if item.kind == "f":
        check_unit_range(pixels, what)
    return pixels


def pixels_from_values(values: np.ndarray, what: str) -> np.ndarray:
    """A flat sequence of float pixels in [0, 1] (the typed / convenience forms)."""
    if values.size == 0:
        raise InvalidInput(f"{what} is empty: expected N × 784 values")
    if values.size % FEATURES:
        raise InvalidInput(f"{what} has {values.size} values, which is not a multiple of 784 (28 × 28 an image)")
    pixels = values.reshape(-1, FEATURES)
    if pixels.dtype.kind == "f":
        check_unit_range(pixels, what)
    return pixels


def check_unit_range(pixels: np.ndarray, what: str) -> None:
    """Float pixels must be finite and within [0, 1]; NaN fails both comparisons."""
    # Fast path, one reduction: as unsigned integers the bit patterns of 0.0 to 1.0 are exactly
    # 0 to 0x3F800000; negatives, NaN and infinities all lie above. (-0.0 lands above too and is
    # then accepted by the exact check below.)
    if pixels.dtype == np.float32 and pixels.view(np.uint32).max() <= ONE_AS_UINT32:
        return
    if pixels.min() >= 0.0 and pixels.max() <= 1.0:
        return
    flat = pixels.reshape(-1)
    bad = int(np.flatnonzero(~((flat >= 0.0) & (flat <= 1.0)))[0])
    image, pixel = divmod(bad, FEATURES)
    kind = "non-finite" if not np.isfinite(flat[bad]) else "out-of-range"
    raise InvalidInput(f"{what}: {kind} value {float(flat[bad])!r} at image {image}, pixel {pixel}; "
                       "float32 pixels must be finite and within [0.0, 1.0]")


def check_batch_size(count: int, max_batch_size: int) -> None:
    if count > max_batch_size:
        raise InvalidInput(f"batch of {count} images exceeds the server's maximum of {max_batch_size} "
                           "per request; split it into smaller requests")

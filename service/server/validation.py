"""Turns the pixels of a request into a validated [N, 784] array, or says exactly what is wrong.

Shared by every API so they accept and reject the same things: packed bytes, typed values and
declared tensor shapes are all checked here, and adapters only pick the fields to hand over.
Decoding is one np.frombuffer (a view on the protobuf's bytes, no copy); the float check is two
reductions, so valid input costs almost nothing and the slower search for the first offending
value runs only on failure.
"""

from __future__ import annotations

import numpy as np

from service.contract import FEATURES, IMAGE_SIDE
from service.server.errors import InvalidInput

DTYPES: dict[str, np.dtype] = {"uint8": np.dtype(np.uint8), "float32": np.dtype("<f4")}
ONE_AS_UINT32 = int(np.float32(1.0).view(np.uint32))


def pixels_from_bytes(data: bytes | memoryview, dtype: str, what: str) -> np.ndarray:
    """`data` holds N × 784 packed pixels of `dtype` ('uint8' or 'float32', little-endian)."""
    item = DTYPES[dtype]
    image_bytes = FEATURES * item.itemsize
    if not data:
        raise InvalidInput(f"{what} is empty: expected N × {image_bytes} bytes ({FEATURES} {dtype} pixels an image)")
    if len(data) % image_bytes:
        raise InvalidInput(f"{what} has {len(data)} bytes, which is not a multiple of {image_bytes} "
                           f"({FEATURES} {dtype} pixels an image)")
    pixels = np.frombuffer(data, dtype=item).reshape(-1, FEATURES)
    if item.kind == "f":
        check_unit_range(pixels, what)
    return pixels


def check_tensor_shape(shape: list[int], what: str) -> int:
    """A declared tensor shape must be [N, 784] or [N, 28, 28] with N ≥ 1; returns N."""
    side = IMAGE_SIDE
    if not (len(shape) == 2 and shape[1] == FEATURES or len(shape) == 3 and shape[1:] == [side, side]) \
            or shape[0] < 1:
        raise InvalidInput(f"{what} has shape {shape}; expected [N, {FEATURES}] or [N, {side}, {side}] with N ≥ 1")
    return shape[0]


def pixels_from_typed(values, dtype: str, what: str) -> np.ndarray:
    """Typed values (a repeated protobuf field or a list): float32 pixels in [0, 1], or uint8
    pixels given as integers that must lie within 0..255."""
    if dtype == "uint8":
        array = np.array(values, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InvalidInput(f"{what}: UINT8 values must be within 0..255")
        return pixels_from_values(array.astype(np.uint8), what)
    return pixels_from_values(np.array(values, dtype=np.float32), what)


def pixels_from_values(values: np.ndarray, what: str) -> np.ndarray:
    """A flat array of pixels: float in [0, 1], or uint8 (the typed / convenience forms)."""
    if values.size == 0:
        raise InvalidInput(f"{what} is empty: expected N × {FEATURES} values")
    if values.size % FEATURES:
        raise InvalidInput(f"{what} has {values.size} values, which is not a multiple of {FEATURES} "
                           f"({IMAGE_SIDE} × {IMAGE_SIDE} an image)")
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

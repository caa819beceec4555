"""A minimal reader for MNIST's IDX image files.

The load tester sends real test digits so that payload bytes (and uint8 compressibility on the
wire) match what users send; `service` must not import `model_export`, so it carries its own
few-line reader instead of reusing the training code's.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
TEST_IMAGES_FILE = "t10k-images-idx3-ubyte.gz"


def read_idx_images(path: Path) -> np.ndarray:
    """Reads an IDX3 image file (gzip or raw) into a read-only uint8 array of shape [n, rows*cols]."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 16:
        raise ValueError(f"{path}: too short for an IDX3 header")
    magic, count, rows, cols = np.frombuffer(raw, dtype=">u4", count=4)
    if magic != _IMAGES_MAGIC:
        raise ValueError(f"{path}: magic {int(magic):#010x} is not an IDX3 uint8 image file")
    expected = 16 + int(count) * int(rows) * int(cols)
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, header promises {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(int(count), int(rows) * int(cols))


def load_test_images(mnist_dir: Path) -> np.ndarray | None:
    """The MNIST test images as uint8 [10000, 784], or None when the directory lacks them."""
    path = Path(mnist_dir) / TEST_IMAGES_FILE
    if not path.exists():
        raw_path = path.with_suffix("")
        if not raw_path.exists():
            return None
        path = raw_path
    return read_idx_images(path)

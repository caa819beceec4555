"""Real MNIST test images for the service tests, read straight from the IDX files."""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

import numpy as np

MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


@cache
def mnist_test_images() -> np.ndarray:
    """uint8 [10000, 784]."""
    raw = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784)


@cache
def mnist_test_labels() -> np.ndarray:
    raw = gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, offset=8)

"""Real MNIST test images for the service tests (the project's copy in data/mnist)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from service.client.mnist_files import load_test_set

MNIST_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"


@cache
def _test_set() -> tuple[np.ndarray, np.ndarray]:
    return load_test_set(MNIST_DIR)


def mnist_test_images() -> np.ndarray:
    """uint8 [10000, 784]."""
    return _test_set()[0]


def mnist_test_labels() -> np.ndarray:
    return _test_set()[1]

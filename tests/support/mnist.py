"""Real MNIST test digits: the project's copy in data/mnist, read once with the client's own reader,
and disguised as ordinary pictures. (No protobuf here: tritonclient_check.py imports this module in
a process that holds tritonclient's stubs.)"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

from service.shared.mnist_files import load_test_set
from tests.support import MNIST_DIR


@cache
def _test_set() -> tuple[np.ndarray, np.ndarray]:
    return load_test_set(MNIST_DIR)


def mnist_test_images() -> np.ndarray:
    """uint8 [10000, 784], read-only."""
    return _test_set()[0]


def mnist_test_labels() -> np.ndarray:
    return _test_set()[1]


def mnist_digits() -> np.ndarray:
    """The test images as uint8 [10000, 28, 28]."""
    return mnist_test_images().reshape(-1, 28, 28)


def disguise(digit: np.ndarray, *, scale: int, offset: tuple[int, int],
             canvas: tuple[int, int] = (320, 240), dark_on_light: bool = True) -> Image.Image:
    """An MNIST digit [28, 28] enlarged `scale` times and pasted at `offset` (x, y) on a larger canvas,
    dark ink on white paper unless told otherwise: what a photo or a drawing app gives."""
    big = np.asarray(Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC))
    page = np.zeros(canvas[::-1], dtype=np.uint8)
    x, y = offset
    page[y:y + big.shape[0], x:x + big.shape[1]] = big
    return Image.fromarray(255 - page if dark_on_light else page)

"""A small reader for MNIST's IDX files, for the service's clients and tools.

The classify command and the load tester send real test digits; `service` must not import
`model_export` (the ONNX file is the only contract between them), so it carries this reader of
its own instead of reusing the training code's.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

MNIST_DIR_ENV = "DIGITS_MNIST_DIR"
_SOURCE_TREE_MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"
TEST_IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
TEST_LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
_UNSIGNED_BYTE = 0x08


def default_mnist_dir() -> Path:
    """$DIGITS_MNIST_DIR, else data/mnist of the source tree this package runs from (a clone or an
    editable install), else data/mnist under the current folder: an installed package has no
    source tree, and the tools then say where they looked."""
    if os.environ.get(MNIST_DIR_ENV):
        return Path(os.environ[MNIST_DIR_ENV])
    return _SOURCE_TREE_MNIST if _SOURCE_TREE_MNIST.is_dir() else Path("data") / "mnist"


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or raw, of `ndim` dimensions if given) as a read-only
    uint8 array; images come back as [n, rows * cols]."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != _UNSIGNED_BYTE:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    if ndim is not None and raw[3] != ndim:
        raise ValueError(f"{path}: magic says {raw[3]} dimensions, expected {ndim}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: too short for an IDX header of {ndim} dimensions")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, header promises {expected}")
    shape = dims if ndim < 3 else [dims[0], int(np.prod(dims[1:]))]
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(mnist_dir: Path, name: str) -> Path | None:
    path = Path(mnist_dir) / name
    for candidate in (path, path.with_suffix("")):
        if candidate.exists():
            return candidate
    return None


def load_test_images(mnist_dir: Path) -> np.ndarray | None:
    """The MNIST test images as uint8 [10000, 784], or None when the folder lacks them."""
    path = _find(mnist_dir, TEST_IMAGES_FILE)
    return None if path is None else read_idx(path, 3)


def load_test_set(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Test images [10000, 784] and labels [10000]; raises OSError or ValueError if unreadable."""
    images, labels = (_find(mnist_dir, name) for name in (TEST_IMAGES_FILE, TEST_LABELS_FILE))
    if images is None or labels is None:
        raise FileNotFoundError(f"no MNIST test files ({TEST_IMAGES_FILE}, {TEST_LABELS_FILE}) in {mnist_dir}")
    return read_idx(images, 3), read_idx(labels, 1)

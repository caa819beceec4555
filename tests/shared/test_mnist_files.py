"""service.shared.mnist_files: the IDX reader the client tools and the load tester share."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from service.shared.mnist_files import load_test_set, read_idx
from tests.support import MNIST_DIR


def test_idx_reader_reads_and_rejects(tmp_path):
    images = np.arange(3 * 784, dtype=np.uint32).astype(np.uint8).reshape(3, 784)
    header = np.array([0x803, 3, 28, 28], dtype=">u4").tobytes()
    good = tmp_path / "images-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(header + images.tobytes()))
    assert np.array_equal(read_idx(good), images)
    bad = tmp_path / "labels-idx1-ubyte"
    bad.write_bytes(np.array([0x801, 3, 0, 0], dtype=">u4").tobytes())
    with pytest.raises(ValueError, match="magic says 1 dimensions, expected 3"):
        read_idx(bad, 3)
    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(ValueError, match="promises"):
        read_idx(truncated)


def test_the_shipped_test_set_reads_as_10000_labelled_digits():
    images, labels = load_test_set(MNIST_DIR)
    assert images.shape == (10000, 784) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    with pytest.raises(FileNotFoundError, match="no MNIST test files"):
        load_test_set(MNIST_DIR / "absent")

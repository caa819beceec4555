"""Random translations used as training-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.augment import random_shifts, shift_images


def test_shift_images_by_hand() -> None:
    x = np.arange(3 * 9, dtype=np.float32).reshape(3, 9)  # three 3x3 images
    out = shift_images(x, dy=np.array([1, 0, -1]), dx=np.array([0, 0, 1]), side=3).reshape(3, 3, 3)
    # Image 0 moved down one row; image 1 unchanged; image 2 moved up and right.
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(out[1], [[9, 10, 11], [12, 13, 14], [15, 16, 17]])
    np.testing.assert_array_equal(out[2], [[0, 21, 22], [0, 24, 25], [0, 0, 0]])


def test_shifting_mnist_digits_moves_ink_without_losing_it(mnist_test) -> None:
    # Almost every MNIST digit sits inside an empty one-pixel border, so a one-pixel shift
    # keeps all its ink; the few that touch the edge are left out of this test.
    square = mnist_test.images[:600].reshape(-1, 28, 28)
    border = np.concatenate([square[:, 0], square[:, -1], square[:, :, 0], square[:, :, -1]], axis=1)
    images = mnist_test.images[:600][~border.any(axis=1)]
    assert len(images) > 500
    rng = np.random.default_rng(0)
    dy, dx = rng.integers(-1, 2, len(images)), rng.integers(-1, 2, len(images))
    out = shift_images(images, dy, dx)
    np.testing.assert_allclose(out.sum(axis=1), images.sum(axis=1), rtol=1e-5)
    moved = (dy != 0) | (dx != 0)
    assert np.all(np.any(out[moved] != images[moved], axis=1))
    np.testing.assert_array_equal(out[~moved], images[~moved])
    # Shifting back restores the image exactly.
    np.testing.assert_array_equal(shift_images(out, -dy, -dx), images)


def test_random_shifts_respects_probability_and_seed(mnist_test) -> None:
    images = mnist_test.images[:2000]
    assert random_shifts(images, 0, 1.0, np.random.default_rng(0)) is images
    assert random_shifts(images, 1, 0.0, np.random.default_rng(0)) is images
    a = random_shifts(images, 1, 0.5, np.random.default_rng(5))
    b = random_shifts(images, 1, 0.5, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    changed = np.mean(np.any(a != images, axis=1))
    # Half are picked; of those, 8/9 draw a non-zero offset: expect about 0.44.
    assert 0.38 < changed < 0.50


def test_shift_images_rejects_bad_offsets() -> None:
    x = np.zeros((2, 9), dtype=np.float32)
    with pytest.raises(ValueError, match="one \\(dy, dx\\) per image"):
        shift_images(x, np.zeros(3, dtype=int), np.zeros(2, dtype=int), side=3)
    with pytest.raises(ValueError, match="smaller than the image side"):
        shift_images(x, np.array([3, 0]), np.zeros(2, dtype=int), side=3)

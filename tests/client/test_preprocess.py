"""MNIST-style preprocessing on real MNIST digits disguised as ordinary pictures.

Each MNIST test digit is enlarged, turned dark-on-light and pasted off-centre on a big white
canvas, saved as PNG, then run through `preprocess`: what comes back must look like the
original MNIST image again (high pixel correlation) with its centre of mass at (14, 14).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.mnist_images import MNIST_DIR
from service.client.mnist_files import load_test_images
from service.client.preprocess import (BlankImageError, PreprocessError, centre_of_mass, load_grayscale,
                                preprocess, preprocess_float32, to_float32)

INDICES = range(20)


@pytest.fixture(scope="module")
def mnist_test_images() -> np.ndarray:
    return load_test_images(MNIST_DIR).reshape(-1, 28, 28)


def disguise(digit: np.ndarray, *, scale: int, offset: tuple[int, int],
             canvas: tuple[int, int] = (320, 240), dark_on_light: bool = True) -> Image.Image:
    """An MNIST digit enlarged `scale` times and pasted at `offset` (x, y) on a larger canvas."""
    big = np.asarray(Image.fromarray(digit).resize((28 * scale, 28 * scale),
                                                   Image.Resampling.BICUBIC))
    page = np.zeros(canvas[::-1], dtype=np.uint8)
    x, y = offset
    page[y:y + big.shape[0], x:x + big.shape[1]] = big
    return Image.fromarray(255 - page if dark_on_light else page)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_off_centre_dark_on_light_pngs_become_their_mnist_originals(
        mnist_test_images: np.ndarray, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    correlations = []
    for index in INDICES:
        scale = int(rng.integers(2, 5))
        offset = (int(rng.integers(0, 320 - 28 * scale)), int(rng.integers(0, 240 - 28 * scale)))
        path = tmp_path / f"digit_{index}.png"
        disguise(mnist_test_images[index], scale=scale, offset=offset).save(path)

        result = preprocess(path)

        assert result.shape == (28, 28) and result.dtype == np.uint8
        assert result.max() == 255 and result[0].max() == 0  # full ink range, empty margin
        row, col = centre_of_mass(result)
        assert abs(row - 14) <= 0.51 and abs(col - 14) <= 0.51, (index, row, col)
        correlations.append(correlation(result, mnist_test_images[index]))
    assert min(correlations) > 0.7, correlations
    assert np.median(correlations) > 0.9, correlations


def test_light_on_dark_is_left_uninverted(mnist_test_images: np.ndarray, tmp_path: Path) -> None:
    digit = mnist_test_images[7]
    dark = disguise(digit, scale=3, offset=(150, 20), dark_on_light=False)
    light = disguise(digit, scale=3, offset=(150, 20), dark_on_light=True)
    dark.save(tmp_path / "dark.png")
    light.save(tmp_path / "light.png")
    from_dark = preprocess(tmp_path / "dark.png")
    np.testing.assert_array_equal(from_dark, preprocess(tmp_path / "light.png"))
    assert correlation(from_dark, digit) > 0.8


def test_mnist_images_pass_through_nearly_unchanged(mnist_test_images: np.ndarray) -> None:
    correlations = [correlation(preprocess(mnist_test_images[i]), mnist_test_images[i])
                    for i in INDICES]
    assert np.median(correlations) > 0.99, correlations


def test_jpeg_colour_and_transparent_inputs(mnist_test_images: np.ndarray, tmp_path: Path) -> None:
    digit = mnist_test_images[0]
    gray = disguise(digit, scale=4, offset=(10, 100))
    gray.convert("RGB").save(tmp_path / "digit.jpg", quality=85)
    # blue ink on yellow paper
    ink = 1.0 - np.asarray(gray, dtype=np.float32)[..., None] / 255.0
    paper, blue = np.array([250, 230, 120]), np.array([20, 30, 160])
    colour = (paper * (1 - ink) + blue * ink).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    # black strokes on a transparent page, the usual export of drawing apps
    rgba = np.zeros((*gray.size[::-1], 4), dtype=np.uint8)
    rgba[..., 3] = 255 - np.asarray(gray)
    Image.fromarray(rgba).save(tmp_path / "transparent.png")

    for name in ("digit.jpg", "colour.png", "transparent.png"):
        assert correlation(preprocess(tmp_path / name), digit) > 0.9, name


@pytest.mark.parametrize("tall", [True, False])
def test_aspect_ratio_is_kept_and_long_side_is_20(tall: bool) -> None:
    page = np.full((300, 300), 255, dtype=np.uint8)
    page[40:240, 100:120] = 0                      # a 200 x 20 bar: 10:1
    result = preprocess(page if tall else page.T)
    rows = np.flatnonzero(result.any(axis=1))
    cols = np.flatnonzero(result.any(axis=0))
    assert (len(rows), len(cols)) == ((20, 2) if tall else (2, 20))
    assert centre_of_mass(result) == pytest.approx((14.0, 14.0), abs=0.51)


def test_downscaling_is_antialiased() -> None:
    yy, xx = np.mgrid[:300, :300]
    disc = np.where((yy - 150) ** 2 + (xx - 150) ** 2 < 120 ** 2, 0, 255).astype(np.uint8)
    result = preprocess(disc)                      # a hard-edged black disc on white
    edge = (result > 30) & (result < 225)
    assert edge.sum() >= 12                        # its rim comes out in shades of grey


def test_shift_is_clipped_to_keep_the_whole_digit_inside() -> None:
    page = np.zeros((100, 100), dtype=np.uint8)
    page[10:90, 50:52] = 255                       # a long thin stroke...
    page[10:20, 20:80] = 255                       # ...under a heavy bar: mass far up
    result = preprocess(page)
    rows = np.flatnonzero(result.any(axis=1))
    assert len(rows) == 20 and rows[-1] <= 27       # nothing cut off at the bottom
    assert rows[0] == 8                              # pushed down only as far as it fits
    assert centre_of_mass(result)[0] < 13           # so the mass centre stays above 14


@pytest.mark.parametrize("value", [0, 255, 128])
def test_flat_images_are_blank(value: int, tmp_path: Path) -> None:
    Image.new("L", (64, 48), value).save(tmp_path / "flat.png")
    with pytest.raises(BlankImageError, match="blank"):
        preprocess(tmp_path / "flat.png")


def test_faint_noise_is_blank_not_a_digit() -> None:
    noise = np.random.default_rng(0).integers(240, 256, size=(60, 60), dtype=np.uint8)
    with pytest.raises(BlankImageError):
        preprocess(noise)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(PreprocessError, match="not an image"):
        preprocess(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError):
        preprocess(tmp_path / "missing.png")
    with pytest.raises(PreprocessError, match="2-D"):
        load_grayscale(np.zeros((2, 3, 4, 5)))


def test_float32_helpers(mnist_test_images: np.ndarray) -> None:
    digit = mnist_test_images[1]
    as_float = preprocess_float32(digit)
    assert as_float.dtype == np.float32 and as_float.shape == (28, 28)
    assert as_float.min() == 0.0 and as_float.max() == 1.0
    np.testing.assert_allclose(to_float32(preprocess(digit)) * 255, preprocess(digit), atol=1e-4)
    # a float [0, 1] array in gives the same as its uint8 version
    np.testing.assert_array_equal(preprocess(digit.astype(np.float32) / 255), preprocess(digit))

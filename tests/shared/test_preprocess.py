"""MNIST-style preprocessing on real MNIST digits disguised as ordinary pictures, and on drawn shapes
whose centre of mass is known analytically.

Each MNIST test digit is enlarged, turned dark-on-light and pasted off-centre on a big white
canvas, saved as PNG, then run through `preprocess`: what comes back must look like the
original MNIST image again (high pixel correlation) with its centre of mass at (14, 14). Centres
are measured here with `ink_centroid`, never with the module's own `centre_of_mass`, and the
shapes' expected placement is worked out from their geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.shared.preprocess import (BlankImageError, PreprocessError, centre_of_mass, load_grayscale,
                                       preprocess, preprocess_float32, to_float32)
from tests.support.mnist import disguise, mnist_digits

INDICES = range(20)
Rect = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1
# shapes of disjoint rectangles, neither symmetric nor with a centre that rounds at a half pixel
SHAPES = {
    "T, stem off-centre": [(0, 20, 0, 160), (20, 160, 40, 80)],      # 160 x 160 -> 20 x 20
    "tall, stem right": [(0, 60, 0, 160), (60, 200, 100, 140)],      # 200 x 160 -> 20 x 16
}


@pytest.fixture(scope="module")
def mnist_test_images() -> np.ndarray:
    return mnist_digits()


def ink_centroid(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted mean pixel position: the definition, computed here."""
    weights = image.astype(np.float64)
    rows, cols = np.indices(image.shape)
    return float((weights * rows).sum() / weights.sum()), float((weights * cols).sum() / weights.sum())


def draw(rects: list[Rect], offset: tuple[int, int], page: tuple[int, int] = (300, 320)) -> np.ndarray:
    """Black rectangles on a white page, shifted by `offset` (rows, columns)."""
    image = np.full(page, 255, dtype=np.uint8)
    for r0, r1, c0, c1 in rects:
        image[offset[0] + r0:offset[0] + r1, offset[1] + c0:offset[1] + c1] = 0
    return image


def analytic_centre(rects: list[Rect]) -> tuple[float, float]:
    """Centre of mass of disjoint solid rectangles: the area-weighted mean of their centres
    (pixel-centre coordinates, so a rectangle r0:r1 has its centre at (r0 + r1 - 1) / 2)."""
    areas = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in rects]
    row = sum(a * (r0 + r1 - 1) / 2 for a, (r0, r1, _, _) in zip(areas, rects)) / sum(areas)
    col = sum(a * (c0 + c1 - 1) / 2 for a, (_, _, c0, c1) in zip(areas, rects)) / sum(areas)
    return row, col


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
        row, col = ink_centroid(result)
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
    # a solid bar is symmetric: its centre of mass is the middle of its extent
    assert (rows[0] + rows[-1]) / 2 == pytest.approx(14.0, abs=0.5)
    assert (cols[0] + cols[-1]) / 2 == pytest.approx(14.0, abs=0.5)
    assert ink_centroid(result) == pytest.approx((14.0, 14.0), abs=0.51)


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
    assert ink_centroid(result)[0] < 13             # so the mass centre stays above 14


@pytest.mark.parametrize("name", SHAPES)
def test_centre_of_mass_lands_where_the_geometry_says(name: str) -> None:
    """The ink's bounding box is scaled to fit 20 x 20 (by s = 20 / its longer side), which maps a
    pixel-centre coordinate x to (x + 0.5) s - 0.5, and then shifted by whole pixels to bring the
    centre of mass nearest (14, 14). So the shape's first ink row and column, and its centre, are
    known before preprocessing; wherever it is drawn, the result is the same."""
    rects = SHAPES[name]
    height, width = max(r[1] for r in rects), max(r[3] for r in rects)
    scale = 20 / max(height, width)
    row, col = ((x + 0.5) * scale - 0.5 for x in analytic_centre(rects))
    top, left = round(14 - row), round(14 - col)
    results = [preprocess(draw(rects, offset)) for offset in ((0, 0), (13, 101), (97, 7), (100, 160))]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])  # translation changes nothing
    result = results[0]
    rows, cols = np.flatnonzero(result.any(axis=1)), np.flatnonzero(result.any(axis=0))
    assert (rows[0], cols[0]) == (top, left)
    assert (len(rows), len(cols)) == (round(height * scale), round(width * scale))
    assert ink_centroid(result) == pytest.approx((top + row, left + col), abs=0.05)
    assert ink_centroid(result) == pytest.approx((14.0, 14.0), abs=0.5)
    # light ink on dark paper is already MNIST's polarity: the same digit comes out
    np.testing.assert_array_equal(preprocess(255 - draw(rects, (40, 40))), result)


@pytest.mark.parametrize("name", SHAPES)
def test_centre_of_mass_helper_matches_the_geometry(name: str) -> None:
    ink = 255 - draw(SHAPES[name], (31, 17))
    row, col = analytic_centre(SHAPES[name])
    assert centre_of_mass(ink) == pytest.approx((row + 31, col + 17), abs=1e-9)


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

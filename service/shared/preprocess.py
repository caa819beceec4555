"""MNIST-style preprocessing: turn an arbitrary digit picture into what the network was trained on.

The MLP behind the service only knows MNIST: a light digit on a black 28x28 field, the ink
scaled to fit a 20x20 box (aspect ratio kept, anti-aliased) and shifted so that its centre of
mass sits at pixel (14, 14). A phone photo or a drawing exported from a paint program looks
nothing like that — dark ink on white, off-centre, any size — and the network answers
nonsense for it. This module reproduces the MNIST normalisation so any client (the
`digits classify` command, a notebook, a web front end) sends the model a digit it can read.

Nothing here talks to the server; it only needs NumPy and Pillow. All pixel work is
vectorised NumPy or done by Pillow.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIDE = 28          # MNIST field, pixels
BOX = 20           # the ink is scaled to fit a BOX x BOX square, as in MNIST
CENTRE = 14.0      # row/column where MNIST puts the ink's centre of mass (measured on the test set)

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class PreprocessError(ValueError):
    """The picture cannot be turned into a digit (unreadable file, no ink, wrong shape)."""


class BlankImageError(PreprocessError):
    """The picture has no ink: it is one flat colour (or too faint to tell ink from paper)."""


def load_grayscale(source: ImageSource) -> np.ndarray:
    """Reads a PNG/JPEG (path, bytes or PIL image) or takes a 2-D array; returns uint8 [H, W].

    Transparent pixels are composited onto white, because drawings exported with an alpha
    channel are almost always dark strokes on a transparent page; EXIF rotation is applied so
    phone photos are upright.
    """
    if isinstance(source, np.ndarray):
        return _array_to_gray(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            image.load()
        except FileNotFoundError:
            raise
        except (UnidentifiedImageError, OSError) as exc:
            raise PreprocessError(f"not an image Pillow can read ({exc})") from exc
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(page, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def preprocess(source: ImageSource, *, ink_threshold: float = 0.2,
               min_contrast: int = 32) -> np.ndarray:
    """Returns the MNIST-style uint8 [28, 28] image (0 = background, 255 = ink) for `source`.

    `ink_threshold` (fraction of the ink/paper contrast) decides which pixels count as ink for
    the bounding box; fainter pixels are kept as anti-aliasing but do not widen the crop.
    `min_contrast` (grey levels) is the smallest ink/paper difference accepted as a digit;
    anything flatter raises BlankImageError rather than amplifying noise into a "digit".
    """
    gray = load_grayscale(source)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise PreprocessError(f"expected a 2-D image, got shape {gray.shape}")
    ink = _ink_intensity(gray, min_contrast)
    mask = ink > ink_threshold
    if not mask.any():
        raise BlankImageError("image has no ink above the threshold")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    digit = _fit_box(crop)
    return _centre_by_mass(digit)


def to_float32(image: np.ndarray) -> np.ndarray:
    """uint8 0-255 → float32 0.0-1.0, the scale the model's `pixels` input expects."""
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def preprocess_float32(source: ImageSource, *, ink_threshold: float = 0.2,
                       min_contrast: int = 32) -> np.ndarray:
    """`preprocess` followed by `to_float32`: float32 [28, 28] in [0, 1]."""
    return to_float32(preprocess(source, ink_threshold=ink_threshold, min_contrast=min_contrast))


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre, from the row and column sums."""
    weights = np.asarray(image, dtype=np.float64)
    total = weights.sum()
    if total <= 0:
        raise BlankImageError("image has no ink: its centre of mass is undefined")
    row = float(weights.sum(axis=1) @ np.arange(weights.shape[0])) / total
    col = float(weights.sum(axis=0) @ np.arange(weights.shape[1])) / total
    return row, col


def _array_to_gray(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] in (3, 4):   # HWC colour: let Pillow do the luma weights
        return load_grayscale(Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)))
    if array.ndim != 2:
        raise PreprocessError(f"expected a 2-D grayscale or HxWx3/4 colour array, got {array.shape}")
    if array.dtype == np.uint8:
        return array
    values = np.asarray(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise PreprocessError("image array contains NaN or infinity")
    if values.max(initial=0.0) <= 1.0:                  # float image in [0, 1]
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _ink_intensity(gray: np.ndarray, min_contrast: int) -> np.ndarray:
    """Float [0, 1] image where paper is 0 and the strongest ink is 1.

    The paper colour is the median of the outer frame: a digit rarely covers most of the
    border, so this tells dark-on-light (invert) from MNIST-like light-on-dark (keep) and also
    gives the paper's grey level, which is subtracted so off-white scans end up black.
    """
    frame = max(1, min(gray.shape) // 20)
    border = np.concatenate([gray[:frame].ravel(), gray[-frame:].ravel(),
                             gray[:, :frame].ravel(), gray[:, -frame:].ravel()])
    paper = float(np.median(border))
    values = gray.astype(np.float32)
    if paper > 127.5:                                    # dark ink on light paper
        values = 255.0 - values
        paper = 255.0 - paper
    contrast = float(values.max()) - paper
    if contrast < min_contrast:
        raise BlankImageError(
            f"image is blank: ink and background differ by {contrast:.0f} grey levels "
            f"(at least {min_contrast} needed)")
    return np.clip((values - paper) / contrast, 0.0, 1.0)


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Scales the cropped ink (float [0, 1]) to fit BOX x BOX, aspect kept; uint8 result."""
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))   # Pillow wants (w, h)
    image = Image.fromarray(np.rint(crop * 255.0).astype(np.uint8))
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Pastes `digit` into a SIDE x SIDE field so its centre of mass lands near (14, 14).

    The shift is rounded to whole pixels (no resampling blur) and clipped so the digit stays
    entirely inside the field.
    """
    height, width = digit.shape
    row, col = centre_of_mass(digit)
    top = int(np.clip(round(CENTRE - row), 0, SIDE - height))
    left = int(np.clip(round(CENTRE - col), 0, SIDE - width))
    field = np.zeros((SIDE, SIDE), dtype=np.uint8)
    field[top:top + height, left:left + width] = digit
    return field

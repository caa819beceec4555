"""Shared fixtures: the real MNIST data, loaded and verified once per session."""

from __future__ import annotations

import pytest

from model_export.mnist import MnistSplit, load_split


@pytest.fixture(scope="session")
def mnist_test() -> MnistSplit:
    """The 10,000 real MNIST test images, verified against SHA256SUMS."""
    return load_split("test")


@pytest.fixture(scope="session")
def mnist_train() -> MnistSplit:
    """The 60,000 real MNIST training images, verified against SHA256SUMS."""
    return load_split("train")

"""Where the project's data lives, so that commands work from any folder and from an installed package.

A fresh clone must train offline, so MNIST ships inside the repository at `data/mnist` beside
the packages. An installed package (`pip install .`, as the container image does) has no such
folder, so the default is looked up: the environment variable DIGITS_MNIST_DIR, then the source
tree this package runs from, then `data/mnist` under the current folder. Every command also takes
`--data-dir`; a missing folder is reported with all of these ways to name it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR_ENV = "DIGITS_MNIST_DIR"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "mnist_mlp" / "1"


def default_data_dir() -> Path:
    """The MNIST folder to use when none is given (see the module docstring for the order)."""
    if os.environ.get(MNIST_DIR_ENV):
        return Path(os.environ[MNIST_DIR_ENV])
    for candidate in (REPO_ROOT / "data" / "mnist", Path.cwd() / "data" / "mnist"):
        if candidate.is_dir():
            return candidate
    return Path("data") / "mnist"

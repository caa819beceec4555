"""Where the project's data lives, resolved from this file so that commands work from any cwd.

A fresh clone must train offline, so MNIST ships inside the repository at `data/mnist`
beside the packages; every command also takes `--data-dir` to point elsewhere.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "mnist"
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "mnist_mlp" / "1"

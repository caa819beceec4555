"""Helpers shared by the model_export tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO

DIGITS = Path(sys.executable).parent / "digits"


def run_digits(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed `digits` console script (or the same entry point via -m)."""
    command = [str(DIGITS)] if DIGITS.exists() else [sys.executable, "-m", "service.cli"]
    return subprocess.run(
        [*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )

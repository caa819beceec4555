"""Triton's perf_analyzer, the C++ load generator that ships inside the tritonclient wheel, made
runnable on a CPU-only machine, installing what it lacks.

The binary comes with tritonclient 2.41.0, the version the test extras resolve (later wheels cap
protobuf below 5; we need 7). Wheels up to 2.51 carry it built for Debian 12's glibc; 2.52 to
2.60 carry one that needs glibc 2.38; later wheels carry none. It links two libraries that such a
machine lacks, though nothing of CUDA is used:

- libb64.so.0d: Debian's `libb64-0d`. `.ci/run` installs it; `perf_analyzer()` installs it with
  apt-get when it is missing and we are root, and otherwise skips (outside CI) saying how;
- libcudart.so.12: CUDA's runtime, from PyPI's `nvidia-cuda-runtime-cu12`, installed with pip into
  a scratch folder (`~/.cache/digit-serving/perf-analyzer`, or `$DIGIT_SERVING_PERF_ANALYZER_DIR`)
  and found through LD_LIBRARY_PATH.

If the environment has no perf_analyzer (another tritonclient version), tritonclient 2.41.0 is
installed into the same scratch folder for its binary alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TRITONCLIENT = "tritonclient==2.41.0"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12"
B64_PACKAGE = "libb64-0d"
SCRATCH = Path(os.environ.get("DIGIT_SERVING_PERF_ANALYZER_DIR",
                              Path.home() / ".cache" / "digit-serving" / "perf-analyzer"))


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)


def _pip_install(target: Path, requirement: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), requirement],
                   check=True, capture_output=True, text=True, timeout=600)


def _binary() -> Path:
    for candidate in (Path(sys.prefix) / "bin" / "perf_analyzer", SCRATCH / "tritonclient" / "bin" / "perf_analyzer"):
        if candidate.is_file():
            return candidate
    _pip_install(SCRATCH / "tritonclient", TRITONCLIENT)
    return SCRATCH / "tritonclient" / "bin" / "perf_analyzer"


def _cuda_runtime() -> Path:
    folder = SCRATCH / "cuda-runtime"
    library = folder / "nvidia" / "cuda_runtime" / "lib"
    if not (library / "libcudart.so.12").is_file():
        _pip_install(folder, CUDA_RUNTIME)
    return library


def _missing(binary: Path, env: dict[str, str]) -> list[str]:
    """The shared libraries the dynamic linker cannot find for `binary`."""
    listing = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in listing.splitlines() if "not found" in line]


def perf_analyzer() -> PerfAnalyzer:
    """perf_analyzer and the environment it runs in, after installing what it lacks."""
    binary = _binary()
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        filter(None, [str(_cuda_runtime()), os.environ.get("LD_LIBRARY_PATH", "")]))}
    missing = _missing(binary, env)
    if any(name.startswith("libb64") for name in missing) and os.geteuid() == 0 and shutil.which("apt-get"):
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=apt, check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", B64_PACKAGE], env=apt, check=True, capture_output=True,
                       timeout=600)
        missing = _missing(binary, env)
    if missing:
        message = f"perf_analyzer lacks {missing}: install Debian's {B64_PACKAGE} (as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return PerfAnalyzer(binary, env)

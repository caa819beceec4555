"""The model repository on disk: `<root>/<model name>/<version>/model.onnx`, as Triton lays it out.

Version folders are positive integers; the newest one is served unless a version is pinned.
The package carries the shipped model as a repository of its own (`service/models`), so an
installed `digits serve` has a model to serve from any folder; `./models` wins when it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.server.errors import ModelNotFound

MODEL_FILENAME = "model.onnx"
DEFAULT_ROOT = "models"
PACKAGED_ROOT = Path(__file__).resolve().parent.parent / "models"


def default_root(cwd: Path | None = None) -> Path:
    """`models` of the current folder when there is one, else the repository inside the package."""
    local = (cwd or Path.cwd()) / DEFAULT_ROOT
    return Path(DEFAULT_ROOT) if local.is_dir() or not PACKAGED_ROOT.is_dir() else PACKAGED_ROOT


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path


class ModelRepository:
    def __init__(self, root: Path | str, name: str) -> None:
        self.root = Path(root)
        self.name = name

    @property
    def model_dir(self) -> Path:
        return self.root / self.name

    def versions(self) -> list[str]:
        """Version folders holding a model file, oldest first (numeric order)."""
        if not self.model_dir.is_dir():
            return []
        found = [d.name for d in self.model_dir.iterdir()
                 if d.name.isdigit() and int(d.name) > 0 and (d / MODEL_FILENAME).is_file()]
        return sorted(found, key=int)

    def resolve(self, version: str | None = None) -> ModelVersion:
        """The requested version, or the newest when `version` is None or empty."""
        available = self.versions()
        if not available:
            raise ModelNotFound(
                f"no model versions under {self.model_dir} (expected {self.model_dir}/<version>/{MODEL_FILENAME})")
        chosen = version or available[-1]
        if chosen not in available:
            raise ModelNotFound(
                f"model '{self.name}' has no version '{chosen}' in {self.model_dir}; available: {', '.join(available)}")
        return ModelVersion(self.name, chosen, self.model_dir / chosen / MODEL_FILENAME)

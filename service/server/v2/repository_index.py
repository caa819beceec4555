"""Triton's model repository extension: the index of versions on disk and their state.

The index is answered; load and unload are not. This server serves one model from its repository
folder by a version policy (the newest version, or the one `--model-version` pins) and swaps a
new version in when it appears (hot reload), so a client has nothing to load or unload: the
refusal says so. Versions are those found at the last look at the folder (start-up, then every
`--model-poll-interval`): answering never reads the disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from service.server.errors import ModelNotFound, Unsupported

if TYPE_CHECKING:
    from service.server.core import InferenceCore

READY, UNAVAILABLE = "READY", "UNAVAILABLE"


def _reason(core: InferenceCore, version: str, served: str) -> str:
    """Why `version`, found on disk, is not the served one."""
    rejected = core.rejection(version)
    if rejected is not None:
        return f"failed to load, still serving version {served}: {rejected}"
    pinned = core.pinned_version
    if pinned:
        return f"not served: the server serves only version {pinned} (--model-version)"
    if int(version) < int(served):
        return f"not served: the version policy serves only the newest version, {served}"
    return "found at the last look at the repository; it is served once loaded"


def _check_repository(core: InferenceCore, repository_name: str) -> None:
    root = core.repository.root
    if repository_name and repository_name not in (str(root), root.name):
        raise ModelNotFound(f"unknown repository '{repository_name}'; this server has one, '{root.name}' ({root})")


def repository_index(core: InferenceCore, repository_name: str = "", ready_only: bool = False) -> list[dict]:
    """Every version of the model on disk (and the served one), oldest first, READY or
    UNAVAILABLE with the reason; only the READY ones when `ready_only`."""
    _check_repository(core, repository_name)
    model = core.model
    versions = sorted({*core.available_versions, model.version}, key=int)
    entries = []
    for version in versions:
        if version == model.version:
            entries.append({"name": model.name, "version": version, "state": READY, "reason": ""})
        elif not ready_only:
            entries.append({"name": model.name, "version": version, "state": UNAVAILABLE,
                            "reason": _reason(core, version, model.version)})
    return entries


def refuse_control(core: InferenceCore, action: str, name: str) -> NoReturn:
    """The answer to a load or unload request (`action`): UNIMPLEMENTED, saying how models load here."""
    raise Unsupported(
        f"model {action} is not supported ('{name}'): models are loaded from the repository folder "
        f"{core.repository.model_dir} by the version policy (the newest <version>/model.onnx, or --model-version), "
        "and a new version is swapped in when it appears there (hot reload); add or remove version folders instead")

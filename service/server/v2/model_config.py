"""Triton's model configuration extension: what Triton answers for this ONNX model, from the
served model and the server's real settings (never constants), in Triton's field names.

One input, `pixels`: Triton's configuration has one data type per input and ours is declared
TYPE_FP32 (what the ONNX graph takes); requests may also send UINT8, which the server scales to
0–1 (the metadata and the README say so). With max_batch_size > 0, `dims` leave out the batch
dimension, as Triton's do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.contract import FEATURES, INPUT_NAME
from service.server.repository import MODEL_FILENAME
from service.server.v2.protocol import PLATFORM

if TYPE_CHECKING:
    from service.server.core import InferenceCore

BACKEND = "onnxruntime"


def version_policy(pinned_version: str | None) -> dict:
    """`--model-version` pins one version (Triton's `specific`); otherwise the newest version found
    in the repository is served and swapped for a newer one when it appears (`latest`, one version)."""
    if pinned_version:
        return {"specific": {"versions": [int(pinned_version)]}}
    return {"latest": {"num_versions": 1}}


def model_config(core: InferenceCore, name: str, version: str = "") -> dict:
    """The configuration of the model `name` (`version`: the served one, or empty); raises
    ModelNotFound for another model or version."""
    model = core.find_model(name, version)
    settings = core.settings
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": version_policy(core.pinned_version),
        "max_batch_size": settings.max_batch_size,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [FEATURES],
                   "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}],
        "output": [{"name": output, "data_type": "TYPE_FP32", "dims": [model.output_widths[output]],
                    "label_filename": "", "is_shape_tensor": False} for output in model.output_names],
        # requests that are ready together always share one execution; --max-queue-delay-us waits for more
        "dynamic_batching": {"preferred_batch_size": [],
                             "max_queue_delay_microseconds": round(settings.max_queue_delay * 1e6),
                             "preserve_ordering": False, "priority_levels": 0, "default_priority_level": 0},
        # one copy of the model in each worker process, on the CPU
        "instance_group": [{"name": f"{model.name}_0", "kind": "KIND_CPU", "count": settings.workers, "gpus": [],
                            "profile": [], "passive": False, "host_policy": ""}],
        "default_model_filename": MODEL_FILENAME,
    }

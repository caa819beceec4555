"""Triton's statistics extension, from the shared metrics block that /metrics exports.

Every worker maps the same block, so whichever worker answers sums every worker's rows (gRPC and
HTTP front ends alike): the answer is the server's, not one process's. The counters are this
server run's, since start-up: after a hot reload the served version's entry carries the run's
totals (the block does not split requests by version), so they never go backwards. What each
field is built from is in docs/metrics.md ("Triton's statistics").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.server import metrics

if TYPE_CHECKING:
    from service.server.core import InferenceCore

NO_CACHE = {"count": 0, "ns": 0}   # this server has no response cache


def _duration(count: int, seconds: float) -> dict:
    return {"count": count, "ns": round(seconds * 1e9)}


def model_statistics(core: InferenceCore, name: str = "", version: str = "") -> dict:
    """Statistics of the model `name` (empty: every model, so ours), of `version` (empty: every
    served version, so the one); raises ModelNotFound for another model or version."""
    model = core.find_model(name, version) if name else core.model
    totals = metrics.totals()
    stats = {
        "name": model.name,
        "version": model.version,
        "last_inference": round(totals.last_inference * 1000),
        "inference_count": totals.images,
        "execution_count": totals.executions,
        "inference_stats": {
            "success": _duration(*totals.success),
            "fail": _duration(*totals.fail),
            "queue": _duration(*totals.queue),
            "compute_input": _duration(*totals.phases["input"]),
            "compute_infer": _duration(*totals.phases["infer"]),
            "compute_output": _duration(*totals.phases["output"]),
            "cache_hit": NO_CACHE,
            "cache_miss": NO_CACHE,
        },
        "batch_stats": [],
        "memory_usage": [],
    }
    return {"model_stats": [stats]}

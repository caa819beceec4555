"""The inference core's vocabulary: what a model is, what a request asks and what a result holds.

Protocol adapters speak only these plain dataclasses (and `service.server.errors`), so they can
be imported, tested and read without loading onnxruntime or the batcher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from service.contract import ACTIVATION_PATTERN, LOGITS, PROBABILITIES


@dataclass(frozen=True)
class ModelDescription:
    """What the APIs tell clients about a loaded model; read once from the file."""

    name: str
    version: str
    sha256: str
    output_names: tuple[str, ...]          # probabilities, logits, activation_1..
    output_widths: dict[str, int]
    layer_sizes: tuple[int, ...]
    hidden_activation: str
    parameter_count: int
    test_accuracy: float
    metadata: dict[str, str] = field(default_factory=dict)
    source: Path = field(default=Path(), compare=False)   # the model file it was loaded from

    @cached_property
    def with_activations(self) -> tuple[str, ...]:
        """probabilities, then every layer's activations in network order (hidden layers, logits);
        computed once per model, not per request."""
        hidden = tuple(n for n in self.output_names if ACTIVATION_PATTERN.match(n))
        return (PROBABILITIES, *hidden, *(n for n in (LOGITS,) if n in self.output_names))


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    pixels: np.ndarray              # [N, FEATURES], uint8 (0-255) or float32 (0-1), already validated
    outputs: tuple[str, ...]        # output names wanted, each once
    deadline: float | None = None   # time.monotonic() after which the result is useless


@dataclass(frozen=True, slots=True)
class InferenceResult:
    model: ModelDescription
    outputs: dict[str, np.ndarray]  # name -> [N, width] float32


Reply = TypeVar("Reply")


@dataclass(frozen=True, slots=True)
class Pending(Generic[Reply]):
    """What an adapter hands its transport for an inference: the request for the core, and how to
    turn the result into that transport's reply (bytes for gRPC, a Response for HTTP)."""

    request: InferenceRequest
    encode: Callable[[InferenceResult], Reply]


@dataclass(frozen=True)
class CoreSettings:
    max_batch_size: int = 1024       # images per request and per onnxruntime call
    max_queue_size: int = 8192       # images waiting; beyond this RESOURCE_EXHAUSTED
    max_queue_delay: float = 0.0     # seconds to wait for more requests before computing
    intra_op_threads: int = 1
    graph_optimization: str = "all"

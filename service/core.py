"""The inference core: one model, validated requests in, NumPy results out.

Both gRPC APIs are thin adapters over this class, so they behave identically by construction. It
knows nothing of protobuf or gRPC: requests and results are plain dataclasses of NumPy arrays, and
failures are the exceptions of `service.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service import metrics
from service.batcher import Batcher
from service.errors import InvalidInput, ModelNotFound, NotReady
from service.repository import ModelRepository
from service.runtime import ModelDescription, ModelRuntime
from service.validation import check_batch_size


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    pixels: np.ndarray              # [N, 784], uint8 (0-255) or float32 (0-1), already validated
    outputs: tuple[str, ...]        # output names wanted, each once
    deadline: float | None = None   # time.monotonic() after which the result is useless


@dataclass(frozen=True, slots=True)
class InferenceResult:
    model: ModelDescription
    outputs: dict[str, np.ndarray]  # name -> [N, width] float32


@dataclass(frozen=True)
class CoreSettings:
    max_batch_size: int = 1024       # images per request and per onnxruntime call
    max_queue_size: int = 8192       # images waiting; beyond this RESOURCE_EXHAUSTED
    max_queue_delay: float = 0.0     # seconds to wait for more requests before computing
    intra_op_threads: int = 1
    graph_optimization: str = "all"


class InferenceCore:
    def __init__(self, repository: ModelRepository, version: str | None, settings: CoreSettings) -> None:
        self.repository = repository
        self.settings = settings
        self._version = version
        self._model: ModelDescription | None = None
        self._batcher: Batcher | None = None

    def load(self) -> ModelDescription:
        """Loads and warms up the model; raises ModelLoadError or ModelNotFound if it can't."""
        version = self.repository.resolve(self._version)
        runtime = ModelRuntime(version, intra_op_threads=self.settings.intra_op_threads,
                               graph_optimization=self.settings.graph_optimization)
        runtime.warm_up(self.settings.max_batch_size)
        self._batcher = Batcher(runtime.run, runtime.output_names,
                                max_batch_size=self.settings.max_batch_size,
                                max_queue_size=self.settings.max_queue_size,
                                max_queue_delay=self.settings.max_queue_delay)
        self._model = runtime.description
        metrics.MODEL_INFO.labels(self._model.name, self._model.version, self._model.sha256).set(1)
        return self._model

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> ModelDescription:
        if self._model is None:
            raise NotReady("model is not loaded yet")
        return self._model

    def find_model(self, name: str, version: str = "") -> ModelDescription:
        """The served model if `name`/`version` designate it (empty version: the default)."""
        model = self.model
        if name != model.name:
            raise ModelNotFound(f"unknown model '{name}'; this server serves '{model.name}'")
        if version and version != model.version:
            raise ModelNotFound(f"model '{name}' has no loaded version '{version}'; "
                                f"loaded: {model.version}")
        return model

    def _check_outputs(self, names: tuple[str, ...]) -> None:
        if not names:
            raise InvalidInput("no outputs requested")
        known = self.model.output_names
        for name in names:
            if name not in known:
                raise InvalidInput(f"unknown output '{name}'; this model has {', '.join(known)}")
        if len(set(names)) != len(names):
            raise InvalidInput(f"output names requested more than once: {list(names)}")

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        model = self.model
        check_batch_size(len(request.pixels), self.settings.max_batch_size)
        self._check_outputs(request.outputs)
        arrays = await self._batcher.submit(request.pixels, request.outputs, request.deadline)
        metrics.IMAGES.inc(len(request.pixels))
        return InferenceResult(model, dict(zip(request.outputs, arrays)))

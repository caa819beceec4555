"""The inference core: one model, validated requests in, NumPy results out.

It is driven by one serving loop (not thread-safe): `submit` queues a request, `compute_due`
computes what is ready and calls each request's `done`. Only `reload_if_changed` runs elsewhere,
on the repository watcher's thread: it loads a new version there and hands it over, and the loop
swaps it in at its next `compute_due`.

Every API (digits.v1 and V2, over gRPC and REST) is a thin adapter over this class, so they behave
identically by construction. It knows nothing of protobuf, gRPC or HTTP: requests and results are
the plain dataclasses of `core_types`, and failures are the exceptions of `errors`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

from service.server import metrics
from service.server.batcher import Batcher, Ticket
from service.server.core_types import CoreSettings, InferenceRequest, InferenceResult, ModelDescription
from service.server.errors import InferenceError, InvalidInput, ModelNotFound, NotReady
from service.server.repository import ModelRepository, ModelVersion
from service.server.runtime import ModelLoadError, ModelRuntime
from service.server.validation import check_batch_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Served:
    """A loaded version and its batcher, swapped as one value so a request never mixes two."""

    model: ModelDescription
    batcher: Batcher
    file_key: tuple[int, int]  # (mtime_ns, size) of model.onnx when it was loaded
    count_images: Callable[[int], None] = lambda images: None  # set when installed


class LoadedModels:
    """Each model version loaded once per process, by whichever inference core asks first.

    A worker has one core per front end (each single-threaded, with its own batcher), and both
    serve from the same onnxruntime session, whose `run` is thread-safe: one copy of the model a
    worker, and a hot reload loads a new version once. Entries go when no core holds them.
    """

    def __init__(self, settings: CoreSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()     # the cores load on their own threads, the watcher on its own
        self._loaded: weakref.WeakValueDictionary[tuple[str, tuple[int, int]], ModelRuntime] = \
            weakref.WeakValueDictionary()

    def load(self, version: ModelVersion, file_key: tuple[int, int]) -> ModelRuntime:
        """The warmed-up runtime of `version` as its file was at `file_key`; raises ModelLoadError."""
        key = (str(version.path), file_key)
        with self._lock:
            runtime = self._loaded.get(key)
            if runtime is None:
                settings = self._settings
                runtime = ModelRuntime(version, intra_op_threads=settings.intra_op_threads,
                                       graph_optimization=settings.graph_optimization)
                runtime.warm_up(settings.max_batch_size)
                self._loaded[key] = runtime
            return runtime


class InferenceCore:
    def __init__(self, repository: ModelRepository, version: str | None, settings: CoreSettings,
                 models: LoadedModels | None = None) -> None:
        self.repository = repository
        self.settings = settings
        self._models = models or LoadedModels(settings)
        self._pinned_version = version
        self._served: _Served | None = None
        self._versions: tuple[str, ...] = ()
        self._incoming: _Served | None = None   # loaded by the watcher, installed by the loop
        self._retiring: list[Batcher] = []      # old versions' batchers still holding requests
        self._rejected: dict[tuple[str, tuple[int, int]], str] = {}   # -> why it failed to load

    def _load(self, version: ModelVersion) -> _Served:
        """Loads, checks and warms up one version; raises ModelLoadError if it is unusable."""
        file_key = _file_key(version)
        runtime = self._models.load(version, file_key)
        batcher = Batcher(runtime.run, runtime.output_names, max_batch_size=self.settings.max_batch_size,
                          max_queue_size=self.settings.max_queue_size,
                          max_queue_delay=self.settings.max_queue_delay)
        return _Served(runtime.description, batcher, file_key)

    def _install(self, served: _Served) -> None:
        model = served.model
        served = replace(served, count_images=metrics.model_installed(model.name, model.version, model.sha256))
        self._served = served  # one assignment: a request sees the old version or the new, never a mix

    def load(self) -> ModelDescription:
        """Loads the pinned or newest version at start-up; raises ModelLoadError or ModelNotFound."""
        self._install(self._load(self.repository.resolve(self._pinned_version)))
        self._versions = tuple(self.repository.versions())
        return self.model

    @property
    def available_versions(self) -> tuple[str, ...]:
        """The repository's versions as of the last look (start-up or the last poll), oldest first;
        kept here so that answering a client never scans the disk."""
        return self._versions

    @property
    def pinned_version(self) -> str | None:
        """The version `--model-version` pinned, or None when the newest is served."""
        return self._pinned_version

    def rejection(self, version: str) -> str | None:
        """Why `version` last failed to load, if it did: the watcher keeps serving the previous
        version and tries that file again only once it changes."""
        found = None
        for (rejected, _), reason in tuple(self._rejected.items()):  # a copy: the watcher adds to it
            if rejected == version:
                found = reason
        return found

    def reload_if_changed(self) -> bool:
        """Loads the repository's newest version if it differs from the served one, and hands it
        to the serving loop, which swaps it in at its next `compute_due`.

        Runs on the watcher's thread so requests keep flowing; requests already queued
        finish on the old version. A version that fails to load is logged, remembered (until its
        file changes) and not tried again, and the served version keeps serving.
        """
        try:
            self._versions = tuple(self.repository.versions())
        except OSError as exc:
            log.warning("model repository check failed: %s", exc)
            return False
        if self._pinned_version:
            return False
        try:
            newest = self.repository.resolve(None)
            key = (newest.version, _file_key(newest))
        except (ModelNotFound, OSError) as exc:
            log.warning("model repository check failed, still serving version %s: %s", self.model.version, exc)
            return False
        served = self._incoming or self._served
        assert served is not None   # the watcher polls only once a model is served
        if key == (served.model.version, served.file_key) or key in self._rejected:
            return False
        try:
            candidate = self._load(newest)
        except ModelLoadError as exc:
            self._rejected[key] = str(exc)
            log.error("rejected model version %s, still serving version %s: %s", newest.version,
                      served.model.version, exc)
            return False
        self._incoming = candidate  # one assignment: the loop reads it whole or not at all
        return True

    def _swap_in_incoming(self) -> None:
        # called only when the watcher left a candidate, and after the first model was installed
        candidate, self._incoming = cast(_Served, self._incoming), None
        previous = cast(_Served, self._served)
        self._install(candidate)
        if previous.batcher.queued_images:
            self._retiring.append(previous.batcher)
        log.info("now serving model %s version %s (sha256 %s), was version %s", candidate.model.name,
                 candidate.model.version, candidate.model.sha256[:12], previous.model.version)

    @property
    def model(self) -> ModelDescription:
        if self._served is None:
            raise NotReady("model is not loaded yet")
        return self._served.model

    def find_model(self, name: str, version: str = "") -> ModelDescription:
        """The served model if `name`/`version` designate it (empty version: the default)."""
        model = self.model
        if name != model.name:
            raise ModelNotFound(f"unknown model '{name}'; this server serves '{model.name}'")
        if version and version != model.version:
            raise ModelNotFound(f"model '{name}' has no loaded version '{version}'; "
                                f"loaded: {model.version}")
        return model

    @staticmethod
    def _check_outputs(model: ModelDescription, names: tuple[str, ...]) -> None:
        if not names:
            raise InvalidInput("no outputs requested")
        known = model.output_names
        for name in names:
            if name not in known:
                raise InvalidInput(f"unknown output '{name}'; this model has {', '.join(known)}")
        if len(set(names)) != len(names):
            raise InvalidInput(f"output names requested more than once: {list(names)}")

    def submit(self, request: InferenceRequest,
               done: Callable[[InferenceResult | None, InferenceError | None], None]) -> Ticket:
        """Queues a validated request for the next `compute_due`, which calls `done` once with the
        result or the error; raises at once what can be known now (bad outputs, full queue)."""
        served = self._served
        if served is None:
            raise NotReady("model is not loaded yet")
        check_batch_size(len(request.pixels), self.settings.max_batch_size)
        self._check_outputs(served.model, request.outputs)
        outputs, model, count_images = request.outputs, served.model, served.count_images
        images = len(request.pixels)

        def finished(arrays: list | None, error: InferenceError | None) -> None:
            if error is not None:
                done(None, error)
                return
            count_images(images)  # the version that answered
            done(InferenceResult(model, dict(zip(outputs, cast(list, arrays)))), None)   # set when no error

        return served.batcher.add(request.pixels, outputs, request.deadline, finished)

    def compute_due(self, now: float | None = None) -> None:
        """Computes every request that is due (all queued ones unless a queue delay is set), old
        versions' leftovers first, then swaps in a version the watcher has loaded."""
        if self._retiring:
            for batcher in self._retiring:
                batcher.compute(now)
            self._retiring = [b for b in self._retiring if b.queued_images]
        if self._served is not None:
            self._served.batcher.compute(now)
        if self._incoming is not None:
            self._swap_in_incoming()

    def next_due(self) -> float | None:
        """When `compute_due` next has work (time.monotonic()), or None when nothing is queued."""
        times = [t for t in (b.next_due() for b in self._batchers()) if t is not None]
        return min(times) if times else None

    def _batchers(self) -> list[Batcher]:
        return [*self._retiring, *((self._served.batcher,) if self._served else ())]


def _file_key(version: ModelVersion) -> tuple[int, int]:
    stat = version.path.stat()
    return stat.st_mtime_ns, stat.st_size

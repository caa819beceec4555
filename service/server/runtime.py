"""One onnxruntime session for one model version, and the checks that it is our kind of model.

The runtime is the only code that touches onnxruntime. It is loaded and warmed up once at
start-up; on the request path it is a single `session.run` with the output names the batch needs.
"""

from __future__ import annotations

import hashlib
import re
from typing import cast

import numpy as np
import onnxruntime as ort

from service.contract import ACTIVATION_PATTERN, FEATURES, INPUT_NAME, LOGITS, PROBABILITIES
from service.server.core_types import ModelDescription
from service.server.repository import ModelVersion

GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable, or not the network this service serves."""


def _ordered_outputs(names: list[str]) -> tuple[str, ...]:
    """probabilities, logits, then hidden activations in layer order: the order clients expect."""
    hidden = sorted((n for n in names if ACTIVATION_PATTERN.match(n)),
                    key=lambda n: int(cast("re.Match[str]", ACTIVATION_PATTERN.match(n)).group(1)))  # filtered above
    rest = [n for n in (PROBABILITIES, LOGITS) if n in names]
    return tuple(rest + hidden)


def disable_telemetry() -> None:
    """onnxruntime's telemetry has nothing to report to, and writes files a read-only container
    lacks; the lifecycle code turns it off once per process."""
    ort.disable_telemetry_events()


class ModelRuntime:
    def __init__(self, model: ModelVersion, *, intra_op_threads: int = 1,
                 graph_optimization: str = "all") -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = GRAPH_OPTIMIZATION[graph_optimization]
        options.log_severity_level = 3
        try:
            data = model.path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {model.path}: {exc.strerror or exc}") from exc
        try:
            self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ModelLoadError(f"{model.path} is not a loadable ONNX model: {exc}") from exc
        self.description = self._describe(model, data)
        self.output_names = self.description.output_names
        # The binding's run, without the Python wrapper's per-call input-name validation (our
        # single input's name was checked above): 2.5 µs of an 11 µs call for one image.
        self._run = getattr(self._session, "_sess", self._session).run

    def _describe(self, model: ModelVersion, data: bytes) -> ModelDescription:
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelLoadError(f"{model.path}: expected exactly one input named '{INPUT_NAME}', "
                                 f"found {[i.name for i in inputs]}")
        shape = inputs[0].shape
        if len(shape) != 2 or shape[1] != FEATURES or inputs[0].type != "tensor(float)":
            raise ModelLoadError(f"{model.path}: input '{INPUT_NAME}' must be float32 [batch, {FEATURES}], "
                                 f"found {inputs[0].type} {shape}")
        outputs = {o.name: o for o in self._session.get_outputs()}
        if PROBABILITIES not in outputs:
            raise ModelLoadError(f"{model.path}: no '{PROBABILITIES}' output; outputs are {sorted(outputs)}")
        widths = {}
        for name, out in outputs.items():
            width = out.shape[-1] if out.shape else None
            if not isinstance(width, int):
                raise ModelLoadError(f"{model.path}: output '{name}' has no fixed width: {out.shape}")
            widths[name] = width
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        sizes = meta.get("layer_sizes", "")
        return ModelDescription(
            name=model.name,
            version=model.version,
            sha256=hashlib.sha256(data).hexdigest(),
            output_names=_ordered_outputs(list(outputs)),
            output_widths=widths,
            layer_sizes=tuple(int(s) for s in re.split(r"[,\s\[\]]+", sizes) if s) if sizes else (),
            hidden_activation=meta.get("hidden_activation", ""),
            parameter_count=int(meta.get("parameter_count", "0") or 0),
            test_accuracy=float(meta.get("test_accuracy", "0") or 0.0),
            metadata=meta,
            source=model.path,
        )

    def run(self, pixels: np.ndarray, output_names: tuple[str, ...]) -> list[np.ndarray]:
        """Runs one batch: `pixels` is C-contiguous float32 [N, FEATURES]."""
        return self._run(output_names, {INPUT_NAME: pixels}, None)

    def warm_up(self, max_batch: int) -> None:
        """Runs every output at a few batch sizes so first requests pay no allocation cost."""
        for n in sorted({1, min(64, max_batch), max_batch}):
            outputs = self.run(np.zeros((n, FEATURES), np.float32), self.output_names)
            probabilities = outputs[0]
            if probabilities.shape != (n, self.description.output_widths[PROBABILITIES]) \
                    or not np.all(np.isfinite(probabilities)):
                raise ModelLoadError(f"model {self.description.name} v{self.description.version} "
                                     f"gave bad probabilities on warm-up: shape {probabilities.shape}")


"""Score an exported model on the MNIST test set through onnxruntime.

Evaluating the `.onnx` file - not the NumPy network it came from - measures exactly what
will be served: the same graph, the same runtime, the same float32 arithmetic. The report
has the overall accuracy, the accuracy for each digit and the confusion matrix (rows are
the true digit, columns the predicted one), which shows *which* digits get confused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_export.network import MLP
from model_export.onnx_export import INPUT_NAME, PROBABILITIES, output_names


@dataclass(frozen=True)
class Evaluation:
    """Classification quality on a labelled set."""

    accuracy: float
    per_class_accuracy: np.ndarray  # (num_classes,), NaN for a class with no examples
    confusion: np.ndarray  # (num_classes, num_classes) int64, [true, predicted]

    @property
    def count(self) -> int:
        """Number of examples evaluated."""
        return int(self.confusion.sum())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, for `digits evaluate --json` and scripts."""
        return {
            "count": self.count,
            "accuracy": self.accuracy,
            "per_digit_accuracy": {
                str(d): (None if np.isnan(a) else float(a)) for d, a in enumerate(self.per_class_accuracy)
            },
            "confusion_matrix": self.confusion.tolist(),
        }


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts[true, predicted], computed in one `bincount`."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.shape[0]} labels but {predictions.shape[0]} predictions")
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"every {name} must lie in 0..{num_classes - 1}")
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def summarise(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10) -> Evaluation:
    """Accuracy, per-class accuracy (recall) and confusion matrix of `predictions`."""
    confusion = confusion_matrix(labels, predictions, num_classes)
    per_class_total = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(confusion) / per_class_total
    total = int(confusion.sum())
    accuracy = float(np.trace(confusion) / total) if total else float("nan")
    return Evaluation(accuracy, per_class.astype(np.float64), confusion)


def open_session(model_path: Path | str, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session for `model_path`.

    One intra-op thread by default: the matrices are small, and extra spinning threads on
    a shared 2-core machine cost more than they save.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's exception classes are not part of its public API
        raise ValueError(f"{model_path}: onnxruntime cannot load the model ({exc})") from exc


def predict_probabilities(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The model's `probabilities` output for every image, run in batches."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    if input_names != [INPUT_NAME] or PROBABILITIES not in output_names:
        raise ValueError(
            f"model must have input {INPUT_NAME!r} and output {PROBABILITIES!r}; "
            f"it has inputs {input_names} and outputs {output_names}"
        )
    images = np.ascontiguousarray(images, dtype=np.float32)
    chunks = [
        session.run([PROBABILITIES], {INPUT_NAME: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def output_differences(
    session: ort.InferenceSession, mlp: MLP, images: np.ndarray, batch_size: int = 1000
) -> dict[str, float]:
    """max |onnxruntime - NumPy| for every output of an exported network over `images`.

    This is the export's parity check: the same float32 network computed by two different
    GEMM implementations may only differ by rounding.
    """
    names = output_names(mlp)
    worst = dict.fromkeys(names, 0.0)
    images = np.ascontiguousarray(images, dtype=np.float32)
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        expected = mlp.forward(batch)
        for name, got, want in zip(
            names, session.run(names, {INPUT_NAME: batch}), [expected.probabilities, expected.logits, *expected.hidden]
        ):
            worst[name] = max(worst[name], float(np.max(np.abs(got - want))))
    return worst


def evaluate_onnx(
    model_path: Path | str, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000, threads: int = 1
) -> Evaluation:
    """Evaluate the ONNX model at `model_path` on (images, labels)."""
    session = open_session(model_path, threads)
    probabilities = predict_probabilities(session, images, batch_size)
    num_classes = probabilities.shape[1]
    return summarise(labels, probabilities.argmax(axis=1), num_classes)


def format_report(evaluation: Evaluation, title: str = "test set") -> str:
    """Plain-text report: accuracy, per-digit accuracy, confusion matrix."""
    n = len(evaluation.per_class_accuracy)
    lines = [
        f"{title}: {evaluation.count} images",
        f"accuracy: {evaluation.accuracy:.4f} ({np.trace(evaluation.confusion)}/{evaluation.count} correct)",
        "",
        "per-digit accuracy:",
    ]
    support = evaluation.confusion.sum(axis=1)
    for digit in range(n):
        correct = evaluation.confusion[digit, digit]
        lines.append(f"  {digit}: {evaluation.per_class_accuracy[digit]:.4f}  ({correct}/{support[digit]})")
    width = max(5, len(str(int(evaluation.confusion.max(initial=0)))) + 1)
    lines += ["", "confusion matrix (rows: true digit, columns: predicted digit):"]
    lines.append("true\\pred" + "".join(f"{d:>{width}}" for d in range(n)))
    for digit in range(n):
        lines.append(f"{digit:>9}" + "".join(f"{c:>{width}}" for c in evaluation.confusion[digit]))
    return "\n".join(lines)


def format_json(evaluation: Evaluation) -> str:
    """The evaluation as indented JSON."""
    return json.dumps(evaluation.as_dict(), indent=2)

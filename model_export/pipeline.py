"""The end-to-end jobs behind `digits train` and `digits export`, free of argument parsing.

Training ends by writing a complete model directory - `params.npz`, `model.onnx` and
`MODEL_CARD.md` - after running the exported ONNX file through onnxruntime on the test set:
an export whose outputs do not match the NumPy network's fails the run instead of shipping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from model_export import model_card
from model_export.evaluate import Evaluation, evaluate_onnx, open_session, output_differences
from model_export.mnist import NUM_CLASSES, NUM_PIXELS, dataset_sha256, load_mnist, load_split, sha256_file
from model_export.onnx_export import META_DATASET_SHA256, META_SEED, META_TEST_ACCURACY, export_onnx, model_metadata
from model_export.params import Params, load_params, save_params
from model_export.train import TrainConfig, TrainResult, train

MODEL_FILE = "model.onnx"
PARAMS_FILE = "params.npz"
CARD_FILE = "MODEL_CARD.md"
# float32 rounding makes onnxruntime and NumPy differ by about 1e-6; a wrong export (a
# transposed matrix, a missing bias, the wrong activation) differs by 0.01 or more.
PARITY_LIMIT = 1e-3


class ExportMismatchError(RuntimeError):
    """The ONNX model's outputs differ from those of the NumPy network it was exported from."""


@dataclass
class TrainingOutcome:
    """What one `digits train` run produced."""

    result: TrainResult
    evaluation: Evaluation  # the exported ONNX model on the MNIST test set
    numpy_test_accuracy: float
    paths: dict[str, Path]


def provenance(config: TrainConfig, test_accuracy: float, sha256: str) -> dict[str, str]:
    """Metadata stored in params.npz, from which `export` rebuilds the ONNX metadata."""
    meta = {f"training.{k}": v for k, v in config.settings().items()}
    meta.update({META_SEED: str(config.seed), META_DATASET_SHA256: sha256, META_TEST_ACCURACY: f"{test_accuracy:.4f}"})
    return meta


def _split_provenance(meta: dict[str, str]) -> tuple[str | None, str | None, float | None, dict[str, str]]:
    """(seed, dataset sha, test accuracy, training settings) out of params metadata."""
    training = {k.removeprefix("training."): v for k, v in meta.items() if k.startswith("training.")}
    accuracy = meta.get(META_TEST_ACCURACY)
    return meta.get(META_SEED), meta.get(META_DATASET_SHA256), float(accuracy) if accuracy else None, training


def train_and_export(
    config: TrainConfig,
    data_dir: Path,
    out_dir: Path,
    reproduce_command: str,
    log: Callable[[str], None] = print,
    blas_threads: int | None = 1,
) -> TrainingOutcome:
    """Train on MNIST, then write params.npz, model.onnx and MODEL_CARD.md into `out_dir`.

    `blas_threads` caps NumPy's BLAS pool for the whole run (see `train.train` for why).
    """
    with threadpool_limits(limits=blas_threads):
        started = time.perf_counter()
        data = load_mnist(data_dir)
        log(f"MNIST: {len(data.train)} training, {len(data.test)} test images (dataset sha256 {data.dataset_sha256})")
        result = train(data.train.images, data.train.labels, config, lambda s: log(s.line()), blas_threads)
        numpy_accuracy = float(np.mean(result.mlp.predict(data.test.images) == data.test.labels))
        log(
            f"best epoch {result.best_epoch}: validation accuracy {result.validation_accuracy:.4f}, "
            f"test accuracy {numpy_accuracy:.4f} (NumPy)"
        )

        meta = provenance(config, numpy_accuracy, data.dataset_sha256)
        params_path = save_params(out_dir / PARAMS_FILE, result.mlp, meta)
        seed, sha, accuracy, training = _split_provenance(meta)
        model_path = export_onnx(
            result.mlp,
            out_dir / MODEL_FILE,
            model_metadata(result.mlp, test_accuracy=accuracy, dataset_sha256=sha, seed=seed, training=training),
        )
        differences = output_differences(open_session(model_path), result.mlp, data.test.images)
        log(
            "export parity, max |onnxruntime - NumPy| over the test set: "
            + ", ".join(f"{name} {diff:.1e}" for name, diff in differences.items())
        )
        if max(differences.values()) > PARITY_LIMIT:
            raise ExportMismatchError(
                f"{model_path}: onnxruntime and NumPy outputs differ by up to {max(differences.values()):.3g}"
            )
        evaluation = evaluate_onnx(model_path, data.test.images, data.test.labels)

        facts = model_card.CardFacts(
            mlp=result.mlp,
            config=config,
            evaluation=evaluation,
            validation_accuracy=result.validation_accuracy,
            best_epoch=result.best_epoch,
            training_seconds=result.seconds,
            train_examples=min(len(data.train), config.train_limit or len(data.train)) - config.validation_size,
            dataset_sha256=data.dataset_sha256,
            file_sha256={MODEL_FILE: sha256_file(model_path), PARAMS_FILE: sha256_file(params_path)},
            reproduce_command=reproduce_command,
            parity=differences,
        )
        card_path = out_dir / CARD_FILE
        card_path.write_text(model_card.render(facts), encoding="utf-8")
        log(f"training took {result.seconds:.1f}s; whole run {time.perf_counter() - started:.1f}s")
    return TrainingOutcome(
        result, evaluation, numpy_accuracy, {"params": params_path, "model": model_path, "card": card_path}
    )


def export_params_file(
    params_path: Path, out_path: Path, data_dir: Path | None, log: Callable[[str], None] = print
) -> dict[str, str]:
    """Export a parameters file to ONNX; returns the metadata written.

    Provenance (seed, settings, dataset SHA-256) comes from the file's own metadata. When the
    network has MNIST's shape (784 inputs, 10 outputs) and `data_dir` is given, the test
    accuracy is measured afresh on the MNIST test set rather than trusted from the file.
    """
    params: Params = load_params(params_path)
    mlp = params.mlp
    seed, sha, accuracy, training = _split_provenance(params.metadata)
    if data_dir is not None and mlp.layer_sizes[0] == NUM_PIXELS and mlp.layer_sizes[-1] == NUM_CLASSES:
        test = load_split("test", data_dir)
        with threadpool_limits(limits=1):
            accuracy = float(np.mean(mlp.predict(test.images) == test.labels))
        current = dataset_sha256(data_dir)
        if sha is None:
            sha = current
        elif sha != current:
            log(f"warning: {params_path} was trained on dataset {sha}, test accuracy measured on {current}")
        log(f"test accuracy {accuracy:.4f} (NumPy, {len(test)} MNIST test images)")
    metadata = model_metadata(mlp, test_accuracy=accuracy, dataset_sha256=sha, seed=seed, training=training)
    export_onnx(mlp, out_path, metadata)
    return metadata

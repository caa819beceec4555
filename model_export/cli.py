"""`digits train`, `digits export`, `digits evaluate`: the model side of the `digits` command.

`service/cli.py` calls `add_commands(subparsers)`; each handler takes the parsed arguments
and returns the process exit code: 0 on success, 1 when the data, the parameters or the
model are unusable (with a one-line reason on stderr), 2 for bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from model_export.mnist import MnistError, load_split
from model_export.network import ACTIVATIONS, parse_layer_sizes
from model_export.params import ParamsError
from model_export.paths import MNIST_DIR_ENV, default_data_dir
from model_export.train import TrainConfig

# The ONNX side (onnx, onnxruntime: modules evaluate, onnx_export, pipeline) is imported by the
# handlers that use it, not here: `digits` builds every command's parser, and a client-only
# install (without the `server` extra) must still run `digits classify` and `digits loadtest`.

_DEFAULTS = TrainConfig()


def _user_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can fix (bad files, bad values): reported in one line, exit code 1."""
    import onnx

    from model_export.pipeline import ExportMismatchError

    return MnistError, ParamsError, ExportMismatchError, ValueError, OSError, onnx.checker.ValidationError


def _layer_sizes(text: str) -> tuple[int, ...]:
    try:
        return parse_layer_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fail(command: str, exc: BaseException) -> int:
    print(f"digits {command}: error: {exc}", file=sys.stderr)
    return 1


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help=f"folder with the four MNIST IDX .gz files and SHA256SUMS (env {MNIST_DIR_ENV}; "
             "default: data/mnist of the source tree or the current folder, here %(default)s)",
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register train, export and evaluate on the `digits` command."""
    p = subparsers.add_parser(
        "train",
        help="train the MLP on MNIST and write params.npz, model.onnx, MODEL_CARD.md",
        description="Train an MLP on MNIST in NumPy (Adam, softmax cross-entropy), then write params.npz, "
        "model.onnx and MODEL_CARD.md into --out-dir. Defaults train the shipped 784-16-16-10 sigmoid model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = _DEFAULTS
    p.add_argument(
        "--layers",
        type=_layer_sizes,
        default=",".join(map(str, d.layer_sizes)),
        metavar="SIZES",
        help="comma-separated layer sizes, input first, e.g. 784,128,64,10",
    )
    p.add_argument("--activation", choices=ACTIVATIONS, default=d.hidden_activation, help="hidden-layer activation")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help="passes over the training images")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="images per Adam step")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam step size at epoch 1")
    p.add_argument(
        "--final-learning-rate",
        type=float,
        default=d.final_learning_rate,
        help="step size the cosine schedule decays to by the last epoch",
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="decoupled (AdamW) weight decay")
    p.add_argument(
        "--label-smoothing", type=float, default=d.label_smoothing, help="train against (1 - e) * one-hot + e / classes"
    )
    p.add_argument(
        "--shift-pixels",
        type=int,
        default=d.shift_pixels,
        help="augmentation: max random translation in pixels (0 = off)",
    )
    p.add_argument(
        "--shift-probability",
        type=float,
        default=d.shift_probability,
        help="augmentation: fraction of training images shifted each epoch",
    )
    p.add_argument(
        "--validation-size",
        type=int,
        default=d.validation_size,
        help="training images held out for validation and best-epoch selection",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seeds initialisation, split, shuffling, augmentation")
    p.add_argument(
        "--train-limit",
        type=_positive_int,
        default=None,
        help="use only the first N training images (quick experiments and smoke tests)",
    )
    p.add_argument(
        "--blas-threads",
        type=_positive_int,
        default=1,
        help="BLAS threads while training; small matrices run fastest on one",
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/mnist_mlp"),
        help="where params.npz, model.onnx and MODEL_CARD.md go (models/mnist_mlp/1 is the shipped model)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    _add_data_dir(p)
    p.set_defaults(handler=run_train)

    p = subparsers.add_parser(
        "export",
        help="export a params.npz to ONNX",
        description="Export a parameters file to ONNX (opset 17, dynamic batch, per-layer outputs), "
        "run the full ONNX checker and record metadata; the MNIST test accuracy is measured afresh.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--params", type=Path, required=True, help="parameters file (.npz)")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument(
        "--no-evaluate",
        action="store_true",
        help="do not measure MNIST test accuracy (keep the one recorded in the parameters file)",
    )
    _add_data_dir(p)
    p.set_defaults(handler=run_export)

    p = subparsers.add_parser(
        "evaluate",
        help="MNIST test accuracy, per-digit accuracy and confusion matrix of an ONNX model",
        description="Evaluate an ONNX model on the 10,000 MNIST test images with onnxruntime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="ONNX model file")
    p.add_argument("--batch-size", type=_positive_int, default=1000, help="images per onnxruntime call")
    p.add_argument("--threads", type=_positive_int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="exit with status 1 if the test accuracy is below this (for CI gates)",
    )
    _add_data_dir(p)
    p.set_defaults(handler=run_evaluate)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the `train` arguments describe."""
    return TrainConfig(
        layer_sizes=args.layers,
        hidden_activation=args.activation,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        final_learning_rate=args.final_learning_rate,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        shift_pixels=args.shift_pixels,
        shift_probability=args.shift_probability,
        validation_size=args.validation_size,
        seed=args.seed,
        train_limit=args.train_limit,
    )


def reproduce_command(config: TrainConfig, out_dir: Path, data_dir: Path | None = None) -> str:
    """The exact `digits train` command line that recreates a model, every setting spelled out."""
    argv = [
        ".venv/bin/digits",
        "train",
        "--layers",
        ",".join(str(s) for s in config.layer_sizes),
        "--activation",
        config.hidden_activation,
        "--epochs",
        str(config.epochs),
        "--batch-size",
        str(config.batch_size),
        "--learning-rate",
        repr(config.learning_rate),
        "--final-learning-rate",
        repr(config.final_learning_rate),
        "--weight-decay",
        repr(config.weight_decay),
        "--label-smoothing",
        repr(config.label_smoothing),
        "--shift-pixels",
        str(config.shift_pixels),
        "--shift-probability",
        repr(config.shift_probability),
        "--validation-size",
        str(config.validation_size),
        "--seed",
        str(config.seed),
    ]
    if config.train_limit is not None:
        argv += ["--train-limit", str(config.train_limit)]
    if data_dir is not None and Path(data_dir).resolve() != default_data_dir().resolve():
        argv += ["--data-dir", str(data_dir)]
    argv += ["--out-dir", str(out_dir)]
    return shlex.join(argv)


def run_train(args: argparse.Namespace) -> int:
    """Handler of `digits train`."""
    from model_export.pipeline import train_and_export

    try:
        config = config_from_args(args)
        log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
        outcome = train_and_export(
            config,
            args.data_dir,
            args.out_dir,
            reproduce_command(config, args.out_dir, args.data_dir),
            log,
            args.blas_threads,
        )
    except _user_errors() as exc:
        return _fail("train", exc)
    print(
        f"test accuracy {outcome.evaluation.accuracy:.4f} (onnxruntime, {outcome.evaluation.count} MNIST test images)"
    )
    for path in outcome.paths.values():
        print(f"wrote {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Handler of `digits export`."""
    from model_export.pipeline import export_params_file

    try:
        metadata = export_params_file(args.params, args.out, None if args.no_evaluate else args.data_dir)
    except _user_errors() as exc:
        return _fail("export", exc)
    print(
        f"wrote {args.out} ({metadata['layer_sizes']} {metadata['hidden_activation']}, "
        f"{metadata['parameter_count']} parameters)"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of `digits evaluate`."""
    from model_export.evaluate import evaluate_onnx, format_report
    from model_export.onnx_export import read_metadata

    try:
        if not args.model.is_file():
            raise OSError(f"{args.model}: model file not found")
        metadata = read_metadata(args.model)
        test = load_split("test", args.data_dir)
        evaluation = evaluate_onnx(args.model, test.images, test.labels, args.batch_size, args.threads)
    except _user_errors() as exc:
        return _fail("evaluate", exc)
    if args.json:
        print(json.dumps({"model": str(args.model), "metadata": metadata, **evaluation.as_dict()}, indent=2))
    else:
        print(f"model: {args.model}")
        if metadata:
            print(
                "  "
                + ", ".join(
                    f"{k}={metadata[k]}"
                    for k in ("layer_sizes", "hidden_activation", "parameter_count", "test_accuracy")
                    if k in metadata
                )
            )
        print(format_report(evaluation, "MNIST test set"))
    if args.min_accuracy is not None and evaluation.accuracy < args.min_accuracy:
        print(
            f"digits evaluate: accuracy {evaluation.accuracy:.4f} is below --min-accuracy {args.min_accuracy}",
            file=sys.stderr,
        )
        return 1
    return 0

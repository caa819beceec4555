"""`digits classify`: ask a running server what digits some pictures show.

Inputs are PNG/JPEG files, which get MNIST-style preprocessing (service.shared.preprocess) because
the network only reads centred, 20x20-scaled light-on-dark digits, and/or MNIST test images by
index (`--mnist-index`), which are already in that form and are sent untouched — handy to check
a deployment against known answers. All images go in one Classify call per `--batch-size`.

Errors end the command with one line on stderr: exit 2 for a bad input (unreadable or blank
picture, index out of range, a TLS or token option that cannot be used), exit 1 when the server
call fails (the gRPC status is shown, e.g. UNAUTHENTICATED when the token is missing or wrong).
TLS and the token come from service.client.security, the same options `digits loadtest` takes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from service.client import security
from service.client.digit_client import DigitClient, Prediction
from service.contract import DEFAULT_TARGET
from service.shared.mnist_files import MNIST_DIR_ENV, default_mnist_dir, load_test_set
from service.shared.preprocess import PreprocessError, load_grayscale, preprocess

EXIT_RPC_ERROR = 1
EXIT_BAD_INPUT = 2


class InputError(Exception):
    """A file or index the command cannot turn into an image; becomes exit code 2."""


@dataclass(frozen=True)
class Item:
    """One image to classify and where it came from (for the output)."""

    source: str
    pixels: np.ndarray            # uint8 [28, 28]
    label: int | None = None      # known answer (MNIST only)


def load_mnist_test(indices: list[int], mnist_dir: Path) -> list[Item]:
    """The requested MNIST test images, as-is (already MNIST-formatted), with their labels."""
    try:
        images, labels = load_test_set(mnist_dir)
    except (OSError, EOFError, ValueError) as exc:
        raise InputError(f"cannot read the MNIST test set in {mnist_dir}: {exc}") from exc
    items = []
    for index in indices:
        if not 0 <= index < len(images):
            raise InputError(f"--mnist-index {index} is out of range (0-{len(images) - 1})")
        items.append(Item(f"mnist-test[{index}]", images[index].reshape(28, 28), int(labels[index])))
    return items


def load_file(path: str, raw: bool) -> Item:
    """A picture file, preprocessed (or, with --raw, checked to be 28x28 already)."""
    try:
        if raw:
            pixels = load_grayscale(path)
            if pixels.shape != (28, 28):
                raise PreprocessError(
                    f"--raw needs a 28x28 image, got {pixels.shape[1]}x{pixels.shape[0]}")
        else:
            pixels = preprocess(path)
    except (OSError, PreprocessError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"{path}: {detail}") from exc
    return Item(path, pixels)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `classify` on the `digits` command (see service/cli.py)."""
    parser = subparsers.add_parser(
        "classify", help="classify PNG/JPEG digits or MNIST test images with a running server",
        description="Ask a running server what digits some pictures show. Files get MNIST-style "
                    "preprocessing (grayscale, dark-on-light inverted, cropped, scaled to 20x20, "
                    "centred by centre of mass); MNIST test images are sent as they are. "
                    "Exit 2 on a bad input, 1 on a failed call.")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="PNG or JPEG files; any size, dark-on-light or light-on-dark")
    parser.add_argument("--mnist-index", type=int, action="append", default=[], metavar="N",
                        help="also classify MNIST test image N (repeatable)")
    parser.add_argument("--data-dir", dest="data_dir", type=Path, default=default_mnist_dir(),
                        help=f"folder with the MNIST test IDX files (env {MNIST_DIR_ENV}; default: %(default)s)")
    # the old name, still accepted; --data-dir is what train/export/evaluate call the same folder
    parser.add_argument("--mnist-dir", dest="data_dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--target", default=None,
                        help=f"server address host:port (env DIGITS_TARGET; default: {DEFAULT_TARGET})")
    parser.add_argument("--model-version", default="",
                        help="model version to ask for (default: the server's default)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="deadline of each call in seconds (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images per Classify request (default: %(default)s)")
    parser.add_argument("--activations", action="store_true",
                        help="also print every layer's activations (hidden layers and logits)")
    parser.add_argument("--raw", action="store_true",
                        help="send files as they are, without MNIST-style preprocessing; they must "
                             "already be 28x28 light-on-dark MNIST-style digits")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    security.add_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Loads every input first (so a bad file costs no call), classifies, prints; exit code."""
    prog = "digits classify"
    if not args.images and not args.mnist_index:
        print(f"{prog}: error: give at least one IMAGE or --mnist-index N", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.batch_size < 1:
        print(f"{prog}: error: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.target = args.target or os.environ.get("DIGITS_TARGET") or DEFAULT_TARGET
    try:
        settings = security.from_args(args)
        items = [load_file(path, args.raw) for path in args.images]
        if args.mnist_index:
            items += load_mnist_test(args.mnist_index, args.data_dir)
    except (InputError, security.SecurityOptionsError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    warning = security.plaintext_token_warning(settings, args.target)
    if warning:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    try:
        model_name, model_version, predictions = _classify(items, args, settings)
    except grpc.RpcError as exc:
        details = " ".join((exc.details() or "").split())  # keep the message on one line
        print(f"{prog}: error: {args.target}: {exc.code().name}: {details}", file=sys.stderr)
        return EXIT_RPC_ERROR
    if args.json:
        document = {"target": args.target, "model_name": model_name, "model_version": model_version,
                    "results": [_as_json(item, p) for item, p in zip(items, predictions, strict=True)]}
        print(json.dumps(document))
    else:
        for item, prediction in zip(items, predictions, strict=True):
            print(_as_text(item, prediction, args.activations))
    return 0


def _classify(items: list[Item], args: argparse.Namespace,
              settings: security.ClientSecurity) -> tuple[str, str, list[Prediction]]:
    pixels = np.stack([item.pixels for item in items])
    predictions: list[Prediction] = []
    name = version = ""
    credentials, metadata = security.grpc_credentials(settings)
    with DigitClient(args.target, timeout=args.timeout, model_version=args.model_version,
                     credentials=credentials, metadata=metadata) as client:
        for start in range(0, len(items), args.batch_size):
            result = client.classify_batch(pixels[start:start + args.batch_size],
                                           include_activations=args.activations)
            name, version = result.model_name, result.model_version
            predictions += result.predictions
    return name, version, predictions


def _as_text(item: Item, prediction: Prediction, activations: bool) -> str:
    label = "" if item.label is None else f"  label {item.label}"
    lines = [f"{item.source}: digit {prediction.digit}  confidence {prediction.confidence:.4f}{label}",
             "  probabilities  " + " ".join(f"{d}:{p:.4f}" for d, p in enumerate(prediction.probabilities))]
    if activations:
        width = max((len(name) for name in prediction.activations), default=0)
        for name, values in prediction.activations.items():
            numbers = np.array2string(values, precision=3, max_line_width=10_000, separator=" ",
                                      suppress_small=True, floatmode="fixed")
            lines.append(f"  {name:<{width}} [{values.size}] {numbers.strip('[]').strip()}")
    return "\n".join(lines)


def _as_json(item: Item, prediction: Prediction) -> dict[str, Any]:
    entry: dict[str, Any] = {"source": item.source, "digit": prediction.digit,
                             "confidence": prediction.confidence,
                             "probabilities": prediction.probabilities.tolist()}
    if item.label is not None:
        entry["label"] = item.label
    if prediction.activations:
        entry["activations"] = {name: values.tolist()
                                for name, values in prediction.activations.items()}
    return entry

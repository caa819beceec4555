"""The model card: a short Markdown file shipped beside a model, for humans.

Platform engineers deciding whether to deploy a model want, on one page: what it is, what
goes in and comes out, how good it is (overall and per digit), what data it saw, how to
rebuild it bit for bit, and where it will fail. Everything in the card is computed from
the training run; nothing is typed in by hand.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import numpy as np

from model_export.evaluate import Evaluation
from model_export.network import MLP
from model_export.onnx_export import INPUT_NAME, IR_VERSION, LOGITS, OPSET, PROBABILITIES, activation_output_name
from model_export.train import TrainConfig


@dataclass(frozen=True)
class CardFacts:
    """Everything the card reports about one trained model."""

    mlp: MLP
    config: TrainConfig
    evaluation: Evaluation  # onnxruntime, MNIST test set
    validation_accuracy: float
    best_epoch: int
    training_seconds: float
    train_examples: int  # images trained on (validation split excluded)
    dataset_sha256: str
    file_sha256: dict[str, str]  # file name -> SHA-256
    reproduce_command: str
    parity: dict[str, float]  # output name -> max |onnxruntime - NumPy| on the test set


def _architecture_rows(mlp: MLP) -> list[str]:
    rows = [
        "| layer | computes | weights W | activation | parameters | ONNX tensor |",
        "|---|---|---|---|---:|---|",
        f"| input | {mlp.layer_sizes[0]} pixel values | - | - | - | `{INPUT_NAME}` [batch, {mlp.layer_sizes[0]}] |",
    ]
    for layer in range(1, mlp.num_layers + 1):
        n_out, n_in = mlp.weights[layer - 1].shape
        last = layer == mlp.num_layers
        act = "softmax" if last else mlp.hidden_activation
        tensor = f"`{LOGITS}`, `{PROBABILITIES}`" if last else f"`{activation_output_name(layer)}`"
        rows.append(
            f"| {layer} ({'output' if last else 'hidden'}) | {act}(W{layer} a + b{layer}) | {n_out}x{n_in} | "
            f"{act} | {n_out * n_in + n_out:,} | {tensor} [batch, {n_out}] |"
        )
    rows.append(f"| **total** | | | | **{mlp.parameter_count:,}** | |")
    return rows


def render(facts: CardFacts) -> str:
    """The card as Markdown."""
    mlp, cfg, ev = facts.mlp, facts.config, facts.evaluation
    sizes = "-".join(str(s) for s in mlp.layer_sizes)
    support = ev.confusion.sum(axis=1)
    lines = [
        f"# Model card: MNIST MLP {sizes} ({mlp.hidden_activation})",
        "",
        f"A fully-connected network that classifies 28x28 handwritten digits: {mlp.layer_sizes[0]} inputs, "
        f"hidden layers of {', '.join(str(s) for s in mlp.layer_sizes[1:-1]) or 'none'} "
        f"{mlp.hidden_activation} neurons, {mlp.layer_sizes[-1]} softmax outputs - "
        f"{mlp.parameter_count:,} weights and biases. Defined, trained and checked in NumPy; "
        f"served from ONNX.",
        "",
        f"**MNIST test accuracy: {ev.accuracy:.2%}** ({np.trace(ev.confusion):,}/{ev.count:,} images, "
        "measured on `model.onnx` with onnxruntime).",
        "",
        "## Files",
        "",
        "| file | content | SHA-256 |",
        "|---|---|---|",
    ]
    descriptions = {
        "model.onnx": f"ONNX model (opset {OPSET}, IR version {IR_VERSION}); what the service loads",
        "params.npz": "NumPy parameters `W1, b1, ...`, `hidden_activation`, `metadata` (JSON)",
    }
    for name, digest in facts.file_sha256.items():
        lines.append(f"| `{name}` | {descriptions.get(name, '')} | `{digest}` |")
    lines += ["", "## Architecture", "", *_architecture_rows(mlp), ""]
    lines += [
        "## Interface",
        "",
        f"- Input `{INPUT_NAME}`: float32 `[batch, {mlp.layer_sizes[0]}]`, dynamic batch. Each row is one "
        "28x28 image in row-major order, pixel intensity scaled to 0.0 (background) .. 1.0 (ink), "
        "i.e. MNIST byte / 255: white digit on black, centred as in MNIST.",
        f"- Output `{PROBABILITIES}`: float32 `[batch, {mlp.layer_sizes[-1]}]`, softmax; argmax is the digit.",
        f"- Output `{LOGITS}`: float32 `[batch, {mlp.layer_sizes[-1]}]`, the values before softmax.",
    ]
    for layer in range(1, mlp.num_layers):
        lines.append(
            f"- Output `{activation_output_name(layer)}`: float32 `[batch, {mlp.layer_sizes[layer]}]`, "
            f"hidden layer {layer} ({mlp.hidden_activation})."
        )
    lines += [
        "- `metadata_props`: layer_sizes, hidden_activation, parameter_count, test_accuracy, "
        "dataset_sha256, seed and `training.*` settings.",
        "",
        "Export parity - the largest difference between onnxruntime and the NumPy forward pass over "
        "the 10,000 test images (float32 rounding only): "
        + ", ".join(f"`{name}` {diff:.1e}" for name, diff in facts.parity.items())
        + ".",
        "",
        "## Accuracy",
        "",
        f"MNIST test set, 10,000 images never used in training or model selection: **{ev.accuracy:.4f}**. "
        f"Validation accuracy {facts.validation_accuracy:.4f} on {cfg.validation_size:,} images held out of the "
        "training set "
        f"(weights of epoch {facts.best_epoch} of {cfg.epochs}, the best on validation).",
        "",
        "| digit | test images | accuracy |",
        "|---:|---:|---:|",
    ]
    for digit, acc in enumerate(ev.per_class_accuracy):
        lines.append(f"| {digit} | {support[digit]:,} | {acc:.4f} |")
    lines += [
        "",
        "Confusion matrix (rows: true digit, columns: predicted digit):",
        "",
        "| true \\ pred | " + " | ".join(str(d) for d in range(len(support))) + " |",
        "|---:|" + "---:|" * len(support),
    ]
    for digit, row in enumerate(ev.confusion):
        lines.append(f"| **{digit}** | " + " | ".join(str(int(c)) for c in row) + " |")
    settings = cfg.settings()
    lines += [
        "",
        "## Training",
        "",
        f"- Data: {facts.train_examples:,} images of the MNIST training set (Yann LeCun and Corinna Cortes, "
        "*The MNIST database of handwritten digits*, CC BY-SA 3.0), the copy in `data/mnist/` with its attribution; "
        f"dataset SHA-256 (of `data/mnist/SHA256SUMS`, which pins all four files) `{facts.dataset_sha256}`.",
        f"- {cfg.validation_size:,} other random training images held out for validation and best-epoch selection; "
        "the training images are reshuffled every epoch.",
        f"- Softmax cross-entropy, mini-batches of {cfg.batch_size}, Adam, learning rate {cfg.learning_rate:g} "
        f"with cosine decay to {cfg.final_learning_rate:g} over {cfg.epochs} epochs, decoupled weight decay "
        f"{cfg.weight_decay:g}, label smoothing {cfg.label_smoothing:g}.",
        f"- Augmentation: each epoch a random {cfg.shift_probability:.0%} of training images shifted by up to "
        f"{cfg.shift_pixels} pixel(s) in each direction.",
        f"- Initialisation: {'He' if mlp.hidden_activation == 'relu' else 'Glorot'}-scaled normal weights, "
        f"zero biases; seed {cfg.seed}.",
        f"- Took {facts.training_seconds:.0f} s on {platform.machine()} with NumPy {np.__version__} (one BLAS thread).",
        "",
        "All settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(settings.items())) + ".",
        "",
        "## Reproduce",
        "",
        "From the repository root of a fresh clone (MNIST ships in `data/mnist/`):",
        "",
        "```",
        facts.reproduce_command,
        "```",
        "",
        "Training is deterministic given the seed: the same command on the same NumPy/OpenBLAS build "
        "writes identical parameters. A different BLAS build may differ in the last bits of float32 "
        "rounding, and so by a few test images.",
        "",
        "## Limitations",
        "",
        "- Trained only on MNIST: centred, size-normalised, white-on-black digits. Photos, dark-on-light "
        "images, uncentred or rotated digits, letters or noise are out of distribution and still get a "
        "confident-looking digit; the softmax probability is not a calibrated confidence.",
        "- A small network for teaching and serving experiments, not a state-of-the-art classifier; "
        "its weakest digits are listed above.",
        "",
    ]
    return "\n".join(lines)

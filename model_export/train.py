"""Training in plain NumPy: backpropagation, softmax cross-entropy, mini-batch Adam.

Everything random (initial weights, the validation split, the shuffling of every epoch)
draws from one `numpy.random.Generator` seeded by `TrainConfig.seed`, so the same seed, data
and NumPy build reproduce the same network. Training runs in float32, which is what the
served ONNX model computes in and twice as fast as float64; the gradient check in the tests
runs the same code in float64.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from model_export.augment import random_shifts
from model_export.network import (
    DEFAULT_ACTIVATION,
    DEFAULT_LAYER_SIZES,
    MLP,
    activation_derivative,
    check_activation,
    initialise,
    log_softmax,
    parse_layer_sizes,
)


@dataclass(frozen=True)
class Gradients:
    """d(loss)/d(parameter) for every layer, same shapes as the network's arrays."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def as_list(self) -> list[np.ndarray]:
        """[dW1, db1, dW2, db2, ...], aligned with `MLP.parameters()`."""
        out: list[np.ndarray] = []
        for w, b in zip(self.weights, self.biases):
            out.extend((w, b))
        return out


def _smoothed_cross_entropy(logits: np.ndarray, labels: np.ndarray, label_smoothing: float) -> float:
    """Mean cross-entropy against targets (1 - e) * one_hot + e / classes."""
    log_p = log_softmax(logits)
    hard = log_p[np.arange(len(labels)), labels]
    if not label_smoothing:
        return float(-np.mean(hard))
    return float(-np.mean((1 - label_smoothing) * hard + label_smoothing * log_p.mean(axis=1)))


def cross_entropy(mlp: MLP, x: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0) -> float:
    """Mean softmax cross-entropy of `mlp` on a batch (labels are class indices)."""
    return _smoothed_cross_entropy(mlp.forward(x).logits, labels, label_smoothing)


def loss_and_gradients(
    mlp: MLP, x: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0
) -> tuple[float, Gradients]:
    """Mean softmax cross-entropy on a batch and its gradient by backpropagation.

    With p = softmax(z_L) and targets q (one-hot, or smoothed: (1 - e) one_hot + e / classes),
    the loss gradient at the logits is (p - q) / batch. Going backwards,
    dW_l = delta_l^T a_{l-1}, db_l = sum over the batch of delta_l, and
    delta_{l-1} = (delta_l W_l) * f'(z_{l-1}), with f' taken from the stored activations
    a_{l-1} = f(z_{l-1}).
    """
    x = x.astype(mlp.dtype, copy=False)
    n = x.shape[0]
    forward = mlp.forward(x)
    rows = np.arange(n)
    loss = _smoothed_cross_entropy(forward.logits, labels, label_smoothing)
    derivative = activation_derivative(mlp.hidden_activation)

    delta = forward.probabilities.copy()
    if label_smoothing:
        delta -= label_smoothing / delta.shape[1]
    delta[rows, labels] -= 1 - label_smoothing
    delta /= n
    inputs = (x,) + forward.hidden  # inputs[l] is the input of layer l+1
    grad_w: list[np.ndarray] = [np.empty(0)] * mlp.num_layers
    grad_b: list[np.ndarray] = [np.empty(0)] * mlp.num_layers
    for layer in range(mlp.num_layers - 1, -1, -1):
        grad_w[layer] = delta.T @ inputs[layer]
        grad_b[layer] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ mlp.weights[layer]) * derivative(inputs[layer])
    return loss, Gradients(grad_w, grad_b)


class Adam:
    """Adam (Kingma & Ba, 2015) with bias correction and optional decoupled weight decay.

    Adam rescales each parameter's step by a running estimate of its gradient's magnitude,
    which lets one learning rate work for sigmoid, tanh and relu networks of any width
    without per-architecture tuning - the point of a library default.
    """

    def __init__(
        self,
        parameters: list[np.ndarray],
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.parameters = parameters
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.m = [np.zeros_like(p) for p in parameters]
        self.v = [np.zeros_like(p) for p in parameters]
        self.steps = 0

    def step(self, grads: list[np.ndarray], learning_rate: float) -> None:
        """Update every parameter in place from its gradient."""
        self.steps += 1
        b1, b2 = self.beta1, self.beta2
        # Fold both bias corrections into the step size (same maths, fewer array passes).
        scale = learning_rate * math.sqrt(1 - b2**self.steps) / (1 - b1**self.steps)
        for p, g, m, v in zip(self.parameters, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            if self.weight_decay and p.ndim > 1:  # decay weights, not biases
                p -= (learning_rate * self.weight_decay) * p
            p -= scale * m / (np.sqrt(v) + self.eps)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting that determines the trained network; recorded in the model's metadata."""

    layer_sizes: tuple[int, ...] = DEFAULT_LAYER_SIZES
    hidden_activation: str = DEFAULT_ACTIVATION
    epochs: int = 80
    batch_size: int = 64
    learning_rate: float = 5e-3
    final_learning_rate: float = 2e-5
    weight_decay: float = 0.03
    label_smoothing: float = 0.0
    shift_pixels: int = 1
    shift_probability: float = 0.5
    validation_size: int = 5000
    seed: int = 0
    train_limit: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_sizes", parse_layer_sizes(self.layer_sizes))
        check_activation(self.hidden_activation)
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and self.final_learning_rate >= 0):
            raise ValueError("learning rates must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label smoothing must be within [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.shift_pixels < 0 or not 0 <= self.shift_probability <= 1:
            raise ValueError("shift pixels must be >= 0 and shift probability within [0, 1]")
        side = math.isqrt(self.layer_sizes[0])
        if self.shift_pixels and (side * side != self.layer_sizes[0] or self.shift_pixels >= side):
            raise ValueError(
                f"shift augmentation needs square images larger than the shift; input size "
                f"{self.layer_sizes[0]} is not (use shift_pixels=0)"
            )
        if self.validation_size < 0:
            raise ValueError(f"validation size must be >= 0, got {self.validation_size}")
        if self.train_limit is not None and self.train_limit < 1:
            raise ValueError(f"train limit must be >= 1, got {self.train_limit}")

    @property
    def image_side(self) -> int:
        """Side of the square input images (28 for MNIST)."""
        return math.isqrt(self.layer_sizes[0])

    def learning_rate_at(self, epoch: int) -> float:
        """Cosine decay from `learning_rate` (epoch 0) towards `final_learning_rate`.

        Large early steps make fast progress; the small late steps settle into a minimum
        instead of bouncing around it, so no early-stopping guesswork is needed.
        """
        progress = epoch / max(self.epochs - 1, 1)
        cos = 0.5 * (1 + math.cos(math.pi * progress))
        return self.final_learning_rate + (self.learning_rate - self.final_learning_rate) * cos

    def settings(self) -> dict[str, str]:
        """The settings as strings, for ONNX metadata_props and the model card."""
        out = {k: ("" if v is None else str(v)) for k, v in asdict(self).items()}
        out["layer_sizes"] = ",".join(str(s) for s in self.layer_sizes)
        out["optimizer"] = "adam"
        out["learning_rate_schedule"] = "cosine"
        out["loss"] = "softmax_cross_entropy"
        return out


@dataclass(frozen=True)
class EpochStats:
    """One line of training progress."""

    epoch: int
    epochs: int
    learning_rate: float
    train_loss: float  # mean mini-batch loss over the epoch
    validation_loss: float  # NaN when there is no validation split
    validation_accuracy: float  # NaN when there is no validation split
    seconds: float  # wall time of this epoch, evaluation included

    def line(self) -> str:
        """Human-readable progress line."""
        return (
            f"epoch {self.epoch:>3}/{self.epochs}  lr {self.learning_rate:.2e}  loss {self.train_loss:.4f}  "
            f"val_loss {self.validation_loss:.4f}  val_acc {self.validation_accuracy:.4f}  {self.seconds:.1f}s"
        )


@dataclass
class TrainResult:
    """The trained network (best validation epoch) and how training went."""

    mlp: MLP
    config: TrainConfig
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    last_mlp: MLP | None = None  # the network after the final epoch, if that was not the best

    @property
    def validation_accuracy(self) -> float:
        """Validation accuracy of the returned network."""
        return self.history[self.best_epoch - 1].validation_accuracy if self.history else math.nan


def split_validation(
    images: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out `size` random training examples: (train_x, train_y, val_x, val_y).

    The test set is never used for any training decision; model selection uses this split.
    """
    if size >= len(labels):
        raise ValueError(f"validation size {size} leaves no training data out of {len(labels)} examples")
    order = rng.permutation(len(labels))
    val, train = order[:size], order[size:]
    return images[train], labels[train], images[val], labels[val]


def accuracy(mlp: MLP, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `images` whose most likely class equals the label."""
    return float(np.mean(mlp.predict(images) == labels)) if len(labels) else math.nan


def train(
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig = TrainConfig(),
    on_epoch: Callable[[EpochStats], None] | None = None,
    blas_threads: int | None = 1,
) -> TrainResult:
    """Train a new network on (images, labels) with mini-batch Adam.

    A validation split of `config.validation_size` examples is held out; after each epoch
    the network is scored on it, and the best-scoring epoch's weights are returned (with no
    validation split, the last epoch's). Each epoch visits the remaining examples in a new
    random order, a random fraction of them shifted by up to `config.shift_pixels` pixels.
    `on_epoch` receives each epoch's statistics.

    `blas_threads` caps the BLAS thread pool while training (None: leave it alone). The
    matrix products of a 64-image batch are far too small to split across threads: on a
    busy 2-core machine two OpenBLAS threads made an epoch 10-20x slower than one, while the
    results are identical either way.
    """
    with threadpool_limits(limits=blas_threads):
        return _train(images, labels, config, on_epoch)


def _train(
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[EpochStats], None] | None,
) -> TrainResult:
    """The body of `train`, run under its thread limit."""
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 2 or images.shape[1] != config.layer_sizes[0]:
        raise ValueError(f"images must have shape (n, {config.layer_sizes[0]}), got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= config.layer_sizes[-1]):
        raise ValueError(f"labels must lie in 0..{config.layer_sizes[-1] - 1}")
    if config.train_limit is not None:
        images, labels = images[: config.train_limit], labels[: config.train_limit]

    mlp = initialise(config.layer_sizes, config.hidden_activation, rng, np.float32)
    if config.validation_size:
        train_x, train_y, val_x, val_y = split_validation(images, labels, config.validation_size, rng)
    else:
        train_x, train_y, val_x, val_y = images, labels, images[:0], labels[:0]
    optimiser = Adam(mlp.parameters(), weight_decay=config.weight_decay)
    result = TrainResult(mlp=mlp, config=config)
    best_accuracy = -1.0

    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        lr = config.learning_rate_at(epoch)
        order = rng.permutation(len(train_y))
        losses = []
        for i in range(0, len(order), config.batch_size):
            # Gather and augment batch by batch: the arrays stay in cache, which measured
            # several times faster than shuffling and shifting a 170 MB epoch copy at once.
            batch = order[i : i + config.batch_size]
            batch_x = random_shifts(
                np.take(train_x, batch, axis=0), config.shift_pixels, config.shift_probability, rng, config.image_side
            )
            loss, grads = loss_and_gradients(mlp, batch_x, np.take(train_y, batch), config.label_smoothing)
            optimiser.step(grads.as_list(), lr)
            losses.append(loss)
        if len(val_y):
            val_loss = cross_entropy(mlp, val_x, val_y)
            val_acc = accuracy(mlp, val_x, val_y)
        else:
            val_loss = val_acc = math.nan
        stats = EpochStats(
            epoch + 1, config.epochs, lr, float(np.mean(losses)), val_loss, val_acc, time.perf_counter() - epoch_start
        )
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if not len(val_y) or val_acc > best_accuracy:
            best_accuracy = val_acc
            result.best_epoch = epoch + 1
            result.mlp = mlp.copy()
    result.last_mlp = mlp
    result.seconds = time.perf_counter() - start
    return result

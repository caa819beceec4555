"""The multi-layer perceptron, in the lesson's notation, as plain NumPy arrays.

Layer l (1-based; layer 1 is the first hidden layer) computes a_l = f(W_l a_{l-1} + b_l) with
`W_l` of shape (n_out, n_in) and `b_l` of shape (n_out,). Batches are rows, so the batched
form is `A @ W.T + b`. Hidden layers use one activation (sigmoid, relu or tanh); the output
layer is a softmax over its logits. Keeping the weights in the (n_out, n_in) orientation
means the arrays in the `.npz`, the maths in the lesson and the ONNX `Gemm(transB=1)` nodes
all read the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_LAYER_SIZES: tuple[int, ...] = (784, 16, 16, 10)
DEFAULT_ACTIVATION = "sigmoid"
ACTIVATIONS: tuple[str, ...] = ("sigmoid", "relu", "tanh")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function computed without overflow for any finite input.

    The textbook 1/(1+exp(-z)) overflows `exp` for z < -88 in float32 and warns; using
    exp(-|z|) keeps every intermediate in (0, 1] and is exact to rounding on both tails.
    """
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def relu(z: np.ndarray) -> np.ndarray:
    """max(z, 0), the rectifier."""
    return np.maximum(z, 0)


def tanh(z: np.ndarray) -> np.ndarray:
    """Hyperbolic tangent."""
    return np.tanh(z)


# Derivatives written in terms of the layer's *output* a = f(z): backprop then only has to
# keep the activations it already computed in the forward pass, not the pre-activations.
# (For relu, a > 0 exactly when z > 0; at the kink z = 0 we use 0, the usual subgradient.)
_FORWARD: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": sigmoid,
    "relu": relu,
    "tanh": tanh,
}
_DERIVATIVE_FROM_OUTPUT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda a: a * (1 - a),
    "relu": lambda a: (a > 0).astype(a.dtype),
    "tanh": lambda a: 1 - a * a,
}


def activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The hidden-layer activation function called `name`."""
    check_activation(name)
    return _FORWARD[name]


def activation_derivative(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """f'(z) expressed through a = f(z), for the hidden-layer activation called `name`."""
    check_activation(name)
    return _DERIVATIVE_FROM_OUTPUT[name]


def check_activation(name: object) -> str:
    """Return `name` if it is a supported hidden activation, else raise ValueError."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown hidden activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return str(name)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large logits cannot overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax; used by the loss so that log(0) never appears."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def parse_layer_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """Parse "784,16,16,10" (or a sequence of ints) into validated layer sizes.

    At least two sizes (input and output) are needed and each must be a positive integer.
    """
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        try:
            sizes = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"layer sizes must be comma-separated integers, got {text!r}") from None
    else:
        sizes = tuple(int(s) for s in text)
    if len(sizes) < 2:
        raise ValueError(f"need at least an input and an output size, got {sizes}")
    if any(s < 1 for s in sizes):
        raise ValueError(f"every layer size must be >= 1, got {sizes}")
    return sizes


def weight_name(layer: int) -> str:
    """Name of layer `layer`'s weight matrix (1-based), as stored in the params file."""
    return f"W{layer}"


def bias_name(layer: int) -> str:
    """Name of layer `layer`'s bias vector (1-based), as stored in the params file."""
    return f"b{layer}"


def check_parameters(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> None:
    """Raise ValueError, naming the offending array, unless the layers form a valid MLP.

    Valid means: as many weights as biases (at least one layer); each W_l is a 2-D floating
    array and b_l a 1-D floating array of length W_l.shape[0]; W_{l+1}.shape[1] equals
    W_l.shape[0] (the shapes chain); and every value is finite.
    """
    if len(weights) == 0:
        raise ValueError("a network needs at least one layer (W1, b1)")
    if len(weights) != len(biases):
        raise ValueError(f"{len(weights)} weight matrices but {len(biases)} bias vectors")
    for index, (w, b) in enumerate(zip(weights, biases), start=1):
        wn, bn = weight_name(index), bias_name(index)
        for name, array, ndim in ((wn, w, 2), (bn, b, 1)):
            if not isinstance(array, np.ndarray):
                raise ValueError(f"{name} must be a NumPy array, got {type(array).__name__}")
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"{name} must have a floating dtype, got {array.dtype}")
            if array.ndim != ndim:
                raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
            if array.size == 0:
                raise ValueError(f"{name} is empty (shape {array.shape})")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"{bn} has length {b.shape[0]} but {wn} has {w.shape[0]} rows (shape {w.shape})")
        if index > 1:
            previous = weights[index - 2]
            if w.shape[1] != previous.shape[0]:
                raise ValueError(
                    f"{wn} has shape {w.shape}: its {w.shape[1]} columns must equal the "
                    f"{previous.shape[0]} outputs of {weight_name(index - 1)} (shape {previous.shape})"
                )
        for name, array in ((wn, w), (bn, b)):
            if not np.all(np.isfinite(array)):
                bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
                raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf)")


@dataclass(frozen=True)
class ForwardPass:
    """Everything one forward pass produces: what the ONNX model exposes as outputs."""

    probabilities: np.ndarray  # (batch, n_out), softmax of logits
    logits: np.ndarray  # (batch, n_out), last layer before softmax
    hidden: tuple[np.ndarray, ...]  # activation_1 .. activation_{L-1}, each (batch, n_l)


@dataclass
class MLP:
    """A fully-connected network: weights[l-1] is W_l, biases[l-1] is b_l.

    The arrays are validated on construction so that every MLP in the program is usable;
    training updates them in place.
    """

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    hidden_activation: str = DEFAULT_ACTIVATION

    def __post_init__(self) -> None:
        self.weights = list(self.weights)
        self.biases = list(self.biases)
        check_parameters(self.weights, self.biases)
        self.hidden_activation = check_activation(self.hidden_activation)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """(n_in, n_hidden_1, ..., n_out)."""
        return (int(self.weights[0].shape[1]),) + tuple(int(w.shape[0]) for w in self.weights)

    @property
    def num_layers(self) -> int:
        """L, the number of weight layers (hidden layers + the output layer)."""
        return len(self.weights)

    @property
    def parameter_count(self) -> int:
        """Total number of weights and biases (13,002 for 784-16-16-10)."""
        return int(sum(w.size + b.size for w, b in zip(self.weights, self.biases)))

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the first weight matrix; training and export keep all layers alike."""
        return self.weights[0].dtype

    def parameters(self) -> list[np.ndarray]:
        """[W1, b1, W2, b2, ...]: the live arrays, in the order optimisers and files use."""
        out: list[np.ndarray] = []
        for w, b in zip(self.weights, self.biases):
            out.extend((w, b))
        return out

    def named_arrays(self) -> dict[str, np.ndarray]:
        """{"W1": W1, "b1": b1, ...}: the parameters under the names used in files."""
        named: dict[str, np.ndarray] = {}
        for index, (w, b) in enumerate(zip(self.weights, self.biases), start=1):
            named[weight_name(index)] = w
            named[bias_name(index)] = b
        return named

    def astype(self, dtype: npt.DTypeLike) -> MLP:
        """A copy with every array converted to `dtype` (float64 for gradient checks)."""
        return MLP(
            [w.astype(dtype, copy=True) for w in self.weights],
            [b.astype(dtype, copy=True) for b in self.biases],
            self.hidden_activation,
        )

    def copy(self) -> MLP:
        """A deep copy, e.g. to keep the best epoch's weights while training continues."""
        return self.astype(self.dtype)

    def forward(self, x: np.ndarray) -> ForwardPass:
        """Run a batch `x` of shape (batch, n_in) through the network.

        Computation happens in the network's dtype (inputs are cast to it), which is what
        makes the NumPy and onnxruntime float32 results comparable to rounding.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.layer_sizes[0]:
            raise ValueError(f"input must have shape (batch, {self.layer_sizes[0]}), got {x.shape}")
        f = activation(self.hidden_activation)
        a = x.astype(self.dtype, copy=False)
        hidden: list[np.ndarray] = []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            a = f(a @ w.T + b)
            hidden.append(a)
        logits = a @ self.weights[-1].T + self.biases[-1]
        return ForwardPass(softmax(logits), logits, tuple(hidden))

    def predict(self, x: np.ndarray, batch_size: int = 10_000) -> np.ndarray:
        """Most likely class per row, computed in chunks to bound memory."""
        chunks = [np.argmax(self.forward(x[i : i + batch_size]).logits, axis=1) for i in range(0, len(x), batch_size)]
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)


def initialise(
    layer_sizes: Sequence[int],
    hidden_activation: str = DEFAULT_ACTIVATION,
    rng: np.random.Generator | None = None,
    dtype: npt.DTypeLike = np.float32,
) -> MLP:
    """A freshly initialised network: scaled normal weights, zero biases.

    ReLU layers use He scaling (std = sqrt(2 / n_in)) so activations keep their variance
    through the rectifier; sigmoid and tanh layers use Glorot scaling
    (std = sqrt(2 / (n_in + n_out))) so they start in the non-saturated region. The output
    layer always uses Glorot: it feeds a softmax, not a rectifier.
    """
    sizes = parse_layer_sizes(layer_sizes)
    check_activation(hidden_activation)
    rng = rng if rng is not None else np.random.default_rng(0)
    weights, biases = [], []
    last = len(sizes) - 2
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        he = hidden_activation == "relu" and index < last
        std = np.sqrt(2.0 / n_in) if he else np.sqrt(2.0 / (n_in + n_out))
        weights.append((rng.standard_normal((n_out, n_in)) * std).astype(dtype))
        biases.append(np.zeros(n_out, dtype=dtype))
    return MLP(weights, biases, hidden_activation)

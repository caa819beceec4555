"""Backpropagation checked against central finite differences, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.network import ACTIVATIONS, initialise
from model_export.train import cross_entropy, loss_and_gradients


def numerical_gradient(mlp, x, labels, h: float = 1e-6, smoothing: float = 0.0) -> list[np.ndarray]:
    """d(loss)/d(p) for every entry of every parameter, by (f(p+h) - f(p-h)) / 2h."""
    grads = []
    for p in mlp.parameters():
        g = np.zeros_like(p)
        flat, gflat = p.reshape(-1), g.reshape(-1)  # views: editing flat edits the network
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + h
            plus = cross_entropy(mlp, x, labels, smoothing)
            flat[i] = saved - h
            minus = cross_entropy(mlp, x, labels, smoothing)
            flat[i] = saved
            gflat[i] = (plus - minus) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("sizes", [(5, 4, 3), (6, 5, 4, 3)])
def test_backprop_matches_finite_differences(activation: str, sizes: tuple[int, ...], smoothing: float) -> None:
    rng = np.random.default_rng(sum(sizes) + len(activation))
    mlp = initialise(sizes, activation, rng, np.float64)
    for b in mlp.biases:  # non-zero biases so every term of the gradient is exercised
        b[:] = rng.normal(0, 0.5, b.shape)
    x = rng.normal(0, 1, (7, sizes[0]))
    labels = rng.integers(0, sizes[-1], 7)

    loss, analytic = loss_and_gradients(mlp, x, labels, smoothing)
    numeric = numerical_gradient(mlp, x, labels, smoothing=smoothing)

    assert loss == pytest.approx(cross_entropy(mlp, x, labels, smoothing), rel=1e-12)
    for name, a, n in zip(mlp.named_arrays(), analytic.as_list(), numeric):
        assert a.shape == n.shape, name
        np.testing.assert_allclose(a, n, rtol=1e-5, atol=1e-8, err_msg=f"gradient of {name}")


def test_gradient_of_the_hand_checked_softmax_layer() -> None:
    # A single softmax layer with zero weights: p = [1/3, 1/3, 1/3] for any input, so for
    # label 0 the logit gradient is p - onehot = [-2/3, 1/3, 1/3], and dW = outer(that, x).
    mlp = initialise((2, 3), "sigmoid", np.random.default_rng(0), np.float64)
    mlp.weights[0][:] = 0
    x = np.array([[2.0, -1.0]])
    loss, grads = loss_and_gradients(mlp, x, np.array([0]))
    assert loss == pytest.approx(np.log(3.0))
    np.testing.assert_allclose(grads.biases[0], [-2 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(grads.weights[0], np.outer([-2 / 3, 1 / 3, 1 / 3], [2.0, -1.0]))


def test_label_smoothing_by_hand() -> None:
    # Zero weights: p = 1/4 for each of 4 classes. With e = 0.2 and label 2 the targets are
    # q = [0.05, 0.05, 0.85, 0.05]; the loss is -sum q log p = ln 4 and dL/db = p - q.
    mlp = initialise((2, 4), "sigmoid", np.random.default_rng(0), np.float64)
    mlp.weights[0][:] = 0
    loss, grads = loss_and_gradients(mlp, np.array([[1.0, 1.0]]), np.array([2]), label_smoothing=0.2)
    assert loss == pytest.approx(np.log(4.0))
    np.testing.assert_allclose(grads.biases[0], [0.2, 0.2, -0.6, 0.2])

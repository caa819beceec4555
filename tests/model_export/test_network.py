"""The forward pass, checked against networks small enough to work out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_export.network import (
    MLP,
    initialise,
    parse_layer_sizes,
    sigmoid,
    softmax,
)


def test_three_input_two_hidden_sigmoid_net_by_hand() -> None:
    # Hidden layer: z1 = W1 x + b1 = [1 - 2 + 1, 1 + 2 - 3 + ln 3] = [0, ln 3]
    #   -> a1 = [sigmoid(0), sigmoid(ln 3)] = [1/2, 3/(3+1)] = [0.5, 0.75].
    # Output layer: logits = W2 a1 + b2 = [2 * 0.5, 4 * 0.75 + ln 3 - 2] = [1, 1 + ln 3]
    #   -> softmax = [e / (e + 3e), 3e / (e + 3e)] = [0.25, 0.75].
    ln3 = math.log(3.0)
    mlp = MLP(
        weights=[np.array([[1.0, -1.0, 1.0 / 3.0], [1.0, 1.0, -1.0]]), np.array([[2.0, 0.0], [0.0, 4.0]])],
        biases=[np.array([0.0, ln3]), np.array([0.0, ln3 - 2.0])],
        hidden_activation="sigmoid",
    )
    out = mlp.forward(np.array([[1.0, 2.0, 3.0]]))
    assert len(out.hidden) == 1
    np.testing.assert_allclose(out.hidden[0], [[0.5, 0.75]], atol=1e-12)
    np.testing.assert_allclose(out.logits, [[1.0, 1.0 + ln3]], atol=1e-12)
    np.testing.assert_allclose(out.probabilities, [[0.25, 0.75]], atol=1e-12)
    assert mlp.layer_sizes == (3, 2, 2)
    assert mlp.parameter_count == 3 * 2 + 2 + 2 * 2 + 2


def test_two_two_one_relu_net_by_hand_batched() -> None:
    # Row 1, x = [1, -2]: z1 = [1 - 2 + 0.5, 2 + 2 - 1] = [-0.5, 3] -> a1 = [0, 3];
    #   logit = 1*0 + 2*3 - 1 = 5.
    # Row 2, x = [3, 1]:  z1 = [3 + 1 + 0.5, 6 - 1 - 1] = [4.5, 4] -> a1 = [4.5, 4];
    #   logit = 4.5 + 8 - 1 = 11.5.
    # A softmax over a single output is always 1.
    mlp = MLP(
        weights=[np.array([[1.0, 1.0], [2.0, -1.0]]), np.array([[1.0, 2.0]])],
        biases=[np.array([0.5, -1.0]), np.array([-1.0])],
        hidden_activation="relu",
    )
    out = mlp.forward(np.array([[1.0, -2.0], [3.0, 1.0]]))
    np.testing.assert_allclose(out.hidden[0], [[0.0, 3.0], [4.5, 4.0]], atol=1e-12)
    np.testing.assert_allclose(out.logits, [[5.0], [11.5]], atol=1e-12)
    np.testing.assert_allclose(out.probabilities, [[1.0], [1.0]], atol=1e-12)
    assert mlp.parameter_count == 9


def test_tanh_layer_by_hand() -> None:
    # z1 = [0, ln 2] -> tanh = [0, (2 - 1/2) / (2 + 1/2)] = [0, 0.6]; logits = [0.6, 0].
    mlp = MLP(
        weights=[np.array([[1.0], [0.0]]), np.array([[0.0, 1.0], [0.0, 0.0]])],
        biases=[np.array([0.0, math.log(2.0)]), np.zeros(2)],
        hidden_activation="tanh",
    )
    out = mlp.forward(np.array([[0.0]]))
    np.testing.assert_allclose(out.hidden[0], [[0.0, 0.6]], atol=1e-12)
    np.testing.assert_allclose(out.logits, [[0.6, 0.0]], atol=1e-12)


def test_default_network_has_13002_parameters() -> None:
    mlp = initialise(parse_layer_sizes("784,16,16,10"))
    assert mlp.layer_sizes == (784, 16, 16, 10)
    assert mlp.parameter_count == 13_002
    assert [w.shape for w in mlp.weights] == [(16, 784), (16, 16), (10, 16)]
    assert [b.shape for b in mlp.biases] == [(16,), (16,), (10,)]
    assert mlp.hidden_activation == "sigmoid"
    assert all(w.dtype == np.float32 for w in mlp.weights)


def test_forward_returns_every_hidden_layer_and_probabilities_sum_to_one() -> None:
    mlp = initialise((784, 7, 5, 3, 10), "tanh", np.random.default_rng(1))
    x = np.random.default_rng(2).random((4, 784), dtype=np.float32)
    out = mlp.forward(x)
    assert [h.shape for h in out.hidden] == [(4, 7), (4, 5), (4, 3)]
    assert out.logits.shape == out.probabilities.shape == (4, 10)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(mlp.predict(x, batch_size=3), out.logits.argmax(axis=1))


def test_batched_forward_equals_one_row_at_a_time() -> None:
    mlp = initialise((784, 16, 16, 10), "sigmoid", np.random.default_rng(3), np.float64)
    x = np.random.default_rng(4).random((5, 784))
    batched = mlp.forward(x).probabilities
    single = np.vstack([mlp.forward(x[i : i + 1]).probabilities for i in range(5)])
    np.testing.assert_allclose(batched, single, atol=1e-14)


def test_sigmoid_is_stable_and_exact_on_both_tails() -> None:
    z = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        got = sigmoid(z)
    reference = 1.0 / (1.0 + np.exp(-z.astype(np.float64).clip(-700, 700)))
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-37)  # float32 tiny
    assert got.dtype == np.float32


def test_softmax_does_not_overflow_on_huge_logits() -> None:
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = softmax(np.array([[1000.0, 1000.0 + math.log(3.0)], [-1e4, -1e4]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]])


def test_initialise_is_deterministic_given_the_generator() -> None:
    a = initialise((784, 16, 10), "relu", np.random.default_rng(7))
    b = initialise((784, 16, 10), "relu", np.random.default_rng(7))
    c = initialise((784, 16, 10), "relu", np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not np.array_equal(a.weights[0], c.weights[0])
    assert all(not b.any() for b in a.biases)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("784", "at least an input and an output"),
        ("784,0,10", ">= 1"),
        ("784,x,10", "comma-separated"),
        ("", "comma-separated"),
    ],
)
def test_parse_layer_sizes_rejects_bad_lists(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_layer_sizes(text)


def test_forward_rejects_wrong_input_width() -> None:
    mlp = initialise((784, 16, 10))
    with pytest.raises(ValueError, match=r"\(batch, 784\)"):
        mlp.forward(np.zeros((2, 783), dtype=np.float32))


def test_unknown_activation_is_rejected() -> None:
    with pytest.raises(ValueError, match="softplus"):
        initialise((4, 2, 2), "softplus")

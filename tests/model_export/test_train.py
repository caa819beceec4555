"""Training: it learns real MNIST, it is deterministic, and its parts do what they claim."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_export.network import initialise
from model_export.train import Adam, TrainConfig, accuracy, cross_entropy, split_validation, train

SMALL = dict(layer_sizes=(784, 16, 16, 10), epochs=8, batch_size=32, validation_size=500, train_limit=2500)


def test_training_lowers_the_loss_on_real_mnist(mnist_train, mnist_test) -> None:
    config = TrainConfig(**SMALL, seed=11)
    subset_x, subset_y = mnist_train.images[:2500], mnist_train.labels[:2500]
    # train() draws the initial weights first from a generator seeded with config.seed.
    initial = initialise(config.layer_sizes, config.hidden_activation, np.random.default_rng(11))
    lines = []
    result = train(mnist_train.images, mnist_train.labels, config, lambda s: lines.append(s.line()))

    before = cross_entropy(initial, subset_x, subset_y)
    after = cross_entropy(result.mlp, subset_x, subset_y)
    assert before > 2.0  # about ln 10 for an untrained network
    assert after < 0.5 * before
    losses = [s.train_loss for s in result.history]
    assert losses[-1] < losses[0]
    assert result.validation_accuracy > 0.80
    assert accuracy(result.mlp, mnist_test.images[:2000], mnist_test.labels[:2000]) > 0.70
    assert len(lines) == 8 and "val_acc" in lines[0] and "loss" in lines[0]


def test_training_is_deterministic_given_the_seed(mnist_train) -> None:
    config = TrainConfig(**{**SMALL, "epochs": 1, "train_limit": 1200, "validation_size": 200}, seed=5)
    a = train(mnist_train.images, mnist_train.labels, config)
    b = train(mnist_train.images, mnist_train.labels, config)
    c = train(
        mnist_train.images,
        mnist_train.labels,
        TrainConfig(**{**SMALL, "epochs": 1, "train_limit": 1200, "validation_size": 200}, seed=6),
    )
    assert all(np.array_equal(x, y) for x, y in zip(a.mlp.parameters(), b.mlp.parameters()))
    assert not np.array_equal(a.mlp.weights[0], c.mlp.weights[0])


def test_best_validation_epoch_is_returned(mnist_train) -> None:
    config = TrainConfig(**{**SMALL, "epochs": 3, "train_limit": 1500}, hidden_activation="relu", seed=2)
    result = train(mnist_train.images, mnist_train.labels, config)
    accuracies = [s.validation_accuracy for s in result.history]
    assert result.best_epoch == 1 + int(np.argmax(accuracies))
    assert result.validation_accuracy == max(accuracies)
    assert result.mlp.hidden_activation == "relu"


def test_training_without_validation_split_keeps_the_last_epoch(mnist_train) -> None:
    config = TrainConfig(**{**SMALL, "epochs": 2, "train_limit": 600, "validation_size": 0}, hidden_activation="tanh")
    result = train(mnist_train.images, mnist_train.labels, config)
    assert result.best_epoch == 2
    assert math.isnan(result.history[-1].validation_accuracy)


def test_adam_first_step_has_the_learning_rate_as_size_and_it_converges() -> None:
    # Adam's bias-corrected first step is lr * g / |g| per coordinate, whatever the scale of g.
    p = np.array([5.0, -3.0])
    opt = Adam([p])
    opt.step([np.array([100.0, -1.0])], learning_rate=0.1)
    np.testing.assert_allclose(p, [4.9, -2.9], atol=1e-6)
    for _ in range(2000):  # minimise |p|^2
        opt.step([2 * p], learning_rate=0.05)
    np.testing.assert_allclose(p, 0.0, atol=1e-2)


def test_adam_weight_decay_shrinks_weights_but_not_biases() -> None:
    w, b = np.ones((2, 2)), np.ones(2)
    opt = Adam([w, b], weight_decay=0.5)
    opt.step([np.zeros((2, 2)), np.zeros(2)], learning_rate=0.1)
    np.testing.assert_allclose(w, 0.95)
    np.testing.assert_allclose(b, 1.0)


def test_split_validation_is_a_disjoint_partition() -> None:
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.arange(100)
    tx, ty, vx, vy = split_validation(x, y, 30, np.random.default_rng(0))
    assert len(vy) == 30 and len(ty) == 70
    assert sorted(np.concatenate([ty, vy]).tolist()) == list(range(100))
    np.testing.assert_array_equal(tx[:, 0], ty)
    with pytest.raises(ValueError, match="leaves no training data"):
        split_validation(x, y, 100, np.random.default_rng(0))


def test_learning_rate_decays_from_initial_to_final() -> None:
    config = TrainConfig(epochs=11, learning_rate=1e-2, final_learning_rate=1e-4)
    rates = [config.learning_rate_at(e) for e in range(11)]
    assert rates[0] == pytest.approx(1e-2)
    assert rates[-1] == pytest.approx(1e-4)
    assert rates[5] == pytest.approx((1e-2 + 1e-4) / 2)
    assert all(a > b for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch size"),
        ({"learning_rate": 0.0}, "learning rates"),
        ({"hidden_activation": "gelu"}, "gelu"),
        ({"layer_sizes": (10,)}, "at least an input"),
        ({"layer_sizes": (30, 5, 10)}, "square images"),
        ({"shift_probability": 1.5}, "shift probability"),
        ({"validation_size": -1}, "validation size"),
        ({"train_limit": 0}, "train limit"),
        ({"weight_decay": -0.1}, "weight decay"),
    ],
)
def test_config_rejects_bad_settings(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_train_rejects_inputs_that_do_not_fit_the_network() -> None:
    config = TrainConfig(layer_sizes=(4, 3), shift_pixels=0, validation_size=0, epochs=1)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        train(np.zeros((5, 3)), np.zeros(5, dtype=int), config)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        train(np.zeros((5, 4)), np.full(5, 3), config)


def test_config_settings_are_strings_for_metadata() -> None:
    settings = TrainConfig(seed=9).settings()
    assert settings["seed"] == "9"
    assert settings["layer_sizes"] == "784,16,16,10"
    assert settings["optimizer"] == "adam"
    assert all(isinstance(v, str) for v in settings.values())

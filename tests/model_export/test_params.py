"""The parameters file: round trip, and a clear error naming the array for every defect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_export.network import initialise
from model_export.params import ParamsError, load_params, params_from_arrays, save_params


def good_arrays() -> dict[str, np.ndarray]:
    """A valid 784-16-16-10 sigmoid parameter set, as stored in a file."""
    mlp = initialise((784, 16, 16, 10), "sigmoid", np.random.default_rng(0))
    return {**mlp.named_arrays(), "hidden_activation": np.array("sigmoid")}


def write(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "params.npz"
    np.savez(path, **arrays)
    return path


def test_round_trip_keeps_arrays_activation_and_metadata(tmp_path: Path) -> None:
    mlp = initialise((784, 9, 10), "tanh", np.random.default_rng(1))
    path = save_params(tmp_path / "p.npz", mlp, {"seed": "4", "test_accuracy": "0.9"})
    loaded = load_params(path)
    assert loaded.mlp.hidden_activation == "tanh"
    assert loaded.mlp.layer_sizes == (784, 9, 10)
    assert loaded.metadata == {"seed": "4", "test_accuracy": "0.9"}
    for a, b in zip(mlp.parameters(), loaded.mlp.parameters()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    with np.load(path) as npz:  # the documented layout, readable by plain NumPy
        assert sorted(npz.files) == ["W1", "W2", "b1", "b2", "hidden_activation", "metadata"]
        assert npz["hidden_activation"].shape == ()


def test_saving_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    mlp = initialise((784, 16, 10), "relu", np.random.default_rng(2))
    a = save_params(tmp_path / "a.npz", mlp, {"seed": "1"}).read_bytes()
    b = save_params(tmp_path / "b.npz", mlp, {"seed": "1"}).read_bytes()
    assert a == b


def test_a_file_written_by_np_savez_loads(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, good_arrays()))
    assert params.mlp.parameter_count == 13_002
    assert params.metadata == {}


def _without(key: str):
    return lambda a: {k: v for k, v in a.items() if k != key}


def _with(**changes):
    return lambda a: {**a, **changes}


INVALID = [
    # (case id, change to a valid set of arrays, text the error must contain)
    ("missing-W2", _without("W2"), "missing array W2"),
    ("missing-b1", _without("b1"), "missing array b1"),
    ("missing-last-bias", _without("b3"), "missing array b3"),
    ("gap-in-layers", _with(W5=np.zeros((10, 10)), b5=np.zeros(10)), "missing array W4"),
    ("no-layers", lambda a: {"hidden_activation": a["hidden_activation"]}, "missing array W1"),
    ("unexpected-array", _with(extra=np.zeros(3)), "unexpected array 'extra'"),
    ("layer-zero", _with(W0=np.zeros((2, 2))), "unexpected array 'W0'"),
    ("missing-activation", _without("hidden_activation"), "missing array hidden_activation"),
    ("activation-not-0d", _with(hidden_activation=np.array(["sigmoid"])), "hidden_activation must be a 0-d string"),
    ("activation-not-string", _with(hidden_activation=np.array(1.0)), "hidden_activation must be a 0-d string"),
    (
        "activation-unknown",
        _with(hidden_activation=np.array("softplus")),
        "hidden_activation: unknown hidden activation 'softplus'",
    ),
    ("W1-int-dtype", _with(W1=np.zeros((16, 784), dtype=np.int32)), "W1 must have a floating dtype"),
    ("b2-complex-dtype", _with(b2=np.zeros(16, dtype=np.complex64)), "b2 must have a floating dtype"),
    ("W2-bool-dtype", _with(W2=np.zeros((16, 16), dtype=bool)), "W2 must have a floating dtype"),
    ("W2-not-2d", _with(W2=np.zeros(16 * 16, dtype=np.float32)), "W2 must be 2-D"),
    ("W3-3d", _with(W3=np.zeros((10, 16, 1), dtype=np.float32)), "W3 must be 2-D"),
    ("b1-not-1d", _with(b1=np.zeros((16, 1), dtype=np.float32)), "b1 must be 1-D"),
    ("b1-wrong-length", _with(b1=np.zeros(15, dtype=np.float32)), "b1 has length 15 but W1 has 16 rows"),
    (
        "shapes-do-not-chain",
        _with(W2=np.zeros((16, 15), dtype=np.float32)),
        "W2 has shape (16, 15): its 15 columns must equal the 16 outputs of W1",
    ),
    ("empty-W1", _with(W1=np.zeros((0, 784), dtype=np.float32), b1=np.zeros(0, dtype=np.float32)), "W1 is empty"),
    (
        "nan-in-W2",
        lambda a: {**a, "W2": np.where(np.eye(16) > 0, np.nan, a["W2"]).astype(np.float32)},
        "W2 has 16 non-finite value(s)",
    ),
    ("inf-in-b3", _with(b3=np.array([np.inf] + [0.0] * 9, dtype=np.float32)), "b3 has 1 non-finite value(s)"),
    ("metadata-not-json", _with(metadata=np.array("{not json")), "metadata is not valid JSON"),
    ("metadata-not-object", _with(metadata=np.array(json.dumps(["a"]))), "metadata must be a JSON object of strings"),
    (
        "metadata-not-strings",
        _with(metadata=np.array(json.dumps({"seed": 1}))),
        "metadata must be a JSON object of strings",
    ),
    ("metadata-not-0d", _with(metadata=np.array(["{}", "{}"])), "metadata must be a 0-d string"),
]


@pytest.mark.parametrize(("change", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_parameters_fail_naming_the_array(tmp_path: Path, change, message: str) -> None:
    arrays = change(good_arrays())
    with pytest.raises(ParamsError) as raised:
        params_from_arrays(arrays)
    assert message in str(raised.value)
    # Through a real file the message is the same, prefixed with the file's path.
    path = write(tmp_path, arrays)
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="parameters file not found"):
        load_params(tmp_path / "nope.npz")


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "params.npz"
    path.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(ParamsError, match="not a readable .npz"):
        load_params(path)


def test_truncated_npz(tmp_path: Path) -> None:
    path = write(tmp_path, good_arrays())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ParamsError, match="not a readable .npz|cannot be read"):
        load_params(path)


def test_single_npy_array_is_not_a_params_file(tmp_path: Path) -> None:
    path = tmp_path / "params.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((3, 3)))
    with pytest.raises(ParamsError, match="single array"):
        load_params(path)


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    arrays = {**good_arrays(), "W1": np.array([{"evil": 1}], dtype=object)}
    path = write(tmp_path, arrays)  # np.savez pickles object arrays; load must refuse them
    with pytest.raises(ParamsError, match="array W1 cannot be read"):
        load_params(path)

"""The parameters file: a NumPy `.npz` holding one network's weights.

Layout: arrays `W1, b1, ..., WL, bL` (layer 1 = first hidden layer, `W_l` of shape
(n_out, n_in)), a 0-d string array `hidden_activation`, and optionally a 0-d string array
`metadata` holding a JSON object of strings (training provenance: seed, settings, dataset
SHA-256, test accuracy) so that `digits export` can re-create the full ONNX metadata from
the file alone.

A parameters file is an input from outside the program, so loading trusts nothing: it is
opened without pickle, and every structural problem - a missing or unexpected array, shapes
that do not chain, a non-float dtype, NaN or inf - raises `ParamsError` naming the array.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from model_export.files import atomic_write
from model_export.network import MLP, bias_name, check_activation, check_parameters, weight_name

ACTIVATION_KEY = "hidden_activation"
METADATA_KEY = "metadata"
_LAYER_KEY = re.compile(r"^([Wb])([1-9][0-9]*)$")


class ParamsError(ValueError):
    """A parameters file is missing, unreadable or does not describe a valid network."""


@dataclass
class Params:
    """A network loaded from (or to be saved to) a parameters file, with its provenance."""

    mlp: MLP
    metadata: dict[str, str] = field(default_factory=dict)


def save_params(path: Path | str, mlp: MLP, metadata: Mapping[str, str] | None = None) -> Path:
    """Write `mlp` (and optional string metadata) to `path`, atomically.

    The file is written beside its destination and renamed into place, so a crash never
    leaves a half-written parameters file where a loader would find it.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = dict(mlp.named_arrays())
    arrays[ACTIVATION_KEY] = np.array(mlp.hidden_activation)
    if metadata:
        arrays[METADATA_KEY] = np.array(json.dumps({str(k): str(v) for k, v in metadata.items()}, sort_keys=True))
    return atomic_write(path, lambda handle: _write_npz(handle, arrays))


def _write_npz(handle: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an .npz that `np.load` reads, byte-for-byte reproducible.

    `np.savez` stamps every member with the current time, so retraining the same network
    would produce a file with a different SHA-256; a fixed timestamp and member order make
    the bytes depend on the arrays alone.
    """
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def load_params(path: Path | str) -> Params:
    """Read and validate a parameters file; every failure is a ParamsError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameters file not found")
    unreadable = (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error)
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise ParamsError(f"{path}: not a readable .npz parameters file ({exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ParamsError(f"{path}: holds a single array (.npy), not an .npz archive of named arrays")
    arrays: dict[str, np.ndarray] = {}
    with loaded as npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except unreadable as exc:  # object arrays (need pickle, refused) or a damaged member
                raise ParamsError(f"{path}: array {key} cannot be read ({exc})") from None
    try:
        return params_from_arrays(arrays)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None


def _string_scalar(arrays: Mapping[str, np.ndarray], key: str) -> str:
    """The value of a 0-d string array, or ParamsError naming `key`."""
    value = arrays[key]
    if value.ndim != 0 or value.dtype.kind != "U":
        raise ParamsError(f"{key} must be a 0-d string array, got dtype {value.dtype} and shape {value.shape}")
    return str(value[()])


def params_from_arrays(arrays: Mapping[str, np.ndarray]) -> Params:
    """Validate named arrays (as stored in a parameters file) and build the network."""
    layers: dict[str, set[int]] = {"W": set(), "b": set()}
    for key in arrays:
        match = _LAYER_KEY.match(key)
        if match:
            layers[match.group(1)].add(int(match.group(2)))
        elif key not in (ACTIVATION_KEY, METADATA_KEY):
            raise ParamsError(
                f"unexpected array {key!r}; a parameters file holds W1, b1, ..., WL, bL, "
                f"{ACTIVATION_KEY} and optionally {METADATA_KEY}"
            )
    count = max(layers["W"] | layers["b"], default=0)
    if count == 0:
        raise ParamsError("no layers: missing array W1")
    for index in range(1, count + 1):
        for name in (weight_name(index), bias_name(index)):
            if name not in arrays:
                raise ParamsError(f"missing array {name} (the file has layers up to {count})")
    if ACTIVATION_KEY not in arrays:
        raise ParamsError(f"missing array {ACTIVATION_KEY} (0-d string: one of sigmoid, relu, tanh)")
    activation = _string_scalar(arrays, ACTIVATION_KEY)
    try:
        check_activation(activation)
    except ValueError as exc:
        raise ParamsError(f"{ACTIVATION_KEY}: {exc}") from None

    metadata: dict[str, str] = {}
    if METADATA_KEY in arrays:
        text = _string_scalar(arrays, METADATA_KEY)
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParamsError(f"{METADATA_KEY} is not valid JSON ({exc})") from None
        if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
            raise ParamsError(f"{METADATA_KEY} must be a JSON object of strings")
        metadata = decoded

    weights = [np.asarray(arrays[weight_name(i)]) for i in range(1, count + 1)]
    biases = [np.asarray(arrays[bias_name(i)]) for i in range(1, count + 1)]
    try:
        check_parameters(weights, biases)
    except ValueError as exc:
        raise ParamsError(str(exc)) from None
    return Params(MLP(weights, biases, activation), metadata)

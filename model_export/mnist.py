"""MNIST from the four original IDX files, verified before anyone trains on them.

The files ship in the repository (`data/mnist`, with SHA256SUMS and the CC BY-SA 3.0
attribution) so a fresh clone trains offline. A model is only as trustworthy as its data, so
loading checks the IDX structure (magic number, element type, dimensions, exact payload
length) and the SHA-256 of each file against SHA256SUMS, and every failure is an `MnistError`
that names the file and says what is wrong - never a bare `struct.error` or a silently short
array.

IDX layout (big-endian): two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one uint32 per dimension, then the row-major payload.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.paths import MNIST_DIR_ENV, default_data_dir

IMAGE_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions (count, rows, cols)
LABEL_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension (count)
IMAGE_ROWS = IMAGE_COLS = 28
NUM_PIXELS = IMAGE_ROWS * IMAGE_COLS
NUM_CLASSES = 10
SHA256SUMS = "SHA256SUMS"
SPLITS = ("train", "test")
FILES: dict[str, tuple[str, str]] = {
    # split: (images file, labels file)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_UBYTE = 0x08


class MnistError(Exception):
    """The MNIST data is missing, truncated, corrupt or does not match SHA256SUMS."""


@dataclass(frozen=True)
class MnistSplit:
    """One split: `images` float32 (n, 784) in [0, 1], `labels` int64 (n,) in 0..9."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Mnist:
    """Both splits plus the fingerprint recorded in every model trained on them."""

    train: MnistSplit
    test: MnistSplit
    dataset_sha256: str


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_sha256sums(data_dir: Path) -> dict[str, str]:
    """Parse `sha256sum`-style lines ("<hex>  <name>", optional '*' binary marker)."""
    path = Path(data_dir or default_data_dir()) / SHA256SUMS
    if not path.is_file():
        raise MnistError(f"{path}: checksum file not found; the MNIST folder must contain {SHA256SUMS}")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise MnistError(f"{path}:{number}: malformed line {line!r}; expected '<sha256 hex>  <file name>'")
        sums[parts[1].strip().lstrip("*")] = digest
    return sums


def dataset_sha256(data_dir: Path | str | None = None) -> str:
    """The dataset's fingerprint: SHA-256 of its SHA256SUMS file.

    SHA256SUMS pins every IDX file and the loader verifies each file against it, so hashing
    it identifies the exact bytes trained on; anyone can recompute it with `sha256sum`.
    """
    path = Path(data_dir or default_data_dir()) / SHA256SUMS
    if not path.is_file():
        raise MnistError(f"{path}: checksum file not found; the MNIST folder must contain {SHA256SUMS}")
    return sha256_file(path)


def parse_idx(raw: bytes, source: str = "<bytes>", expected_magic: int | None = None) -> np.ndarray:
    """Parse one uncompressed IDX blob of unsigned bytes into an array of its stated shape.

    `expected_magic` pins the kind of file (images or labels) so that swapped files fail
    on their magic number rather than on a confusing size mismatch later.
    """
    if len(raw) < 4:
        raise MnistError(f"{source}: truncated: {len(raw)} bytes is shorter than the 4-byte IDX magic number")
    zero, type_code, ndim = int.from_bytes(raw[0:2], "big"), raw[2], raw[3]
    magic = int.from_bytes(raw[0:4], "big")
    if expected_magic is not None and magic != expected_magic:
        kind = "images" if expected_magic == IMAGE_MAGIC else "labels"
        raise MnistError(f"{source}: bad magic number 0x{magic:08x}; expected 0x{expected_magic:08x} ({kind})")
    if zero != 0 or type_code != _UBYTE or ndim == 0:
        raise MnistError(
            f"{source}: bad magic number 0x{magic:08x}; expected an unsigned-byte IDX file "
            f"(0x{IMAGE_MAGIC:08x} for images, 0x{LABEL_MAGIC:08x} for labels)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise MnistError(f"{source}: truncated header: {ndim} dimensions need {header_len} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header_len
    if actual < expected:
        raise MnistError(f"{source}: truncated: dimensions {dims} need {expected} data bytes, file has {actual}")
    if actual > expected:
        raise MnistError(f"{source}: {actual - expected} unexpected bytes after the {expected} data bytes of {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping `.gz`, turning every I/O or gzip failure into MnistError."""
    if not path.is_file():
        raise MnistError(f"{path}: file not found (expected the original MNIST IDX file here)")
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise MnistError(f"{path}: truncated gzip stream ({len(raw)} bytes); the download is incomplete") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise MnistError(f"{path}: corrupt gzip data ({exc})") from None


def read_idx_file(
    path: Path | str, expected_sha256: str | None = None, expected_magic: int | None = None
) -> np.ndarray:
    """Read and parse one IDX file (optionally gzipped), then check its SHA-256.

    Structure is checked first because "truncated" or "bad magic" says more than a
    checksum mismatch; the checksum then catches the corruptions structure cannot see.
    """
    path = Path(path)
    array = parse_idx(_read_bytes(path), str(path), expected_magic)
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise MnistError(
                f"{path}: SHA-256 mismatch: file has {actual}, {SHA256SUMS} expects {expected_sha256}; "
                "the file is corrupt or not the original MNIST file"
            )
    return array


def load_split(split: str, data_dir: Path | str | None = None, verify: bool = True) -> MnistSplit:
    """Load the "train" or "test" split: images scaled to float32 [0, 1], labels int64.

    With `verify` (the default) each file must match its SHA256SUMS entry; turning it off
    is only for deliberately modified copies of the data.
    """
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir or default_data_dir())
    if not data_dir.is_dir():
        raise MnistError(f"{data_dir}: MNIST folder not found; pass --data-dir or set {MNIST_DIR_ENV} to the "
                         "folder of IDX files (data/mnist in the repository)")
    sums = read_sha256sums(data_dir) if verify else {}
    images_name, labels_name = FILES[split]
    arrays = []
    for name, magic in ((images_name, IMAGE_MAGIC), (labels_name, LABEL_MAGIC)):
        if verify and name not in sums:
            raise MnistError(f"{data_dir / SHA256SUMS}: no checksum listed for {name}")
        arrays.append(read_idx_file(data_dir / name, sums.get(name), magic))
    images, labels = arrays
    images_path, labels_path = data_dir / images_name, data_dir / labels_name
    if images.ndim != 3 or images.shape[1:] != (IMAGE_ROWS, IMAGE_COLS):
        raise MnistError(
            f"{images_path}: bad dimensions {images.shape}; expected (count, {IMAGE_ROWS}, {IMAGE_COLS}) images"
        )
    if labels.ndim != 1:
        raise MnistError(f"{labels_path}: bad dimensions {labels.shape}; expected (count,) labels")
    if labels.shape[0] != images.shape[0]:
        raise MnistError(f"{labels_path}: {labels.shape[0]} labels but {images_path.name} has {images.shape[0]} images")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise MnistError(f"{labels_path}: label {int(labels.max())} is outside 0..{NUM_CLASSES - 1}")
    pixels = images.reshape(images.shape[0], NUM_PIXELS).astype(np.float32) / np.float32(255.0)
    return MnistSplit(pixels, labels.astype(np.int64))


def load_mnist(data_dir: Path | str | None = None, verify: bool = True) -> Mnist:
    """Load and verify both splits of MNIST from `data_dir`."""
    return Mnist(
        train=load_split("train", data_dir, verify),
        test=load_split("test", data_dir, verify),
        dataset_sha256=dataset_sha256(data_dir),
    )

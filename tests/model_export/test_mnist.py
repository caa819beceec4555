"""The MNIST loader: real data loads and verifies; every kind of damaged file fails clearly."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_export.mnist import (
    FILES,
    IMAGE_MAGIC,
    LABEL_MAGIC,
    SHA256SUMS,
    MnistError,
    dataset_sha256,
    load_mnist,
    load_split,
    parse_idx,
)
from tests.support import MNIST_DIR

TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # from data/mnist/README.md
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_real_test_split(mnist_test) -> None:
    assert mnist_test.images.shape == (10_000, 784) and mnist_test.images.dtype == np.float32
    assert mnist_test.labels.shape == (10_000,) and mnist_test.labels.dtype == np.int64
    assert mnist_test.images.min() == 0.0 and mnist_test.images.max() == 1.0
    assert np.bincount(mnist_test.labels).tolist() == TEST_COUNTS
    # Pixels are exactly byte / 255.
    np.testing.assert_array_equal(np.round(mnist_test.images * 255) / 255, mnist_test.images)


def test_real_train_split(mnist_train) -> None:
    assert mnist_train.images.shape == (60_000, 784)
    assert np.bincount(mnist_train.labels).tolist() == TRAIN_COUNTS
    assert mnist_train.images.min() >= 0.0 and mnist_train.images.max() <= 1.0


def test_dataset_fingerprint_is_the_sha256_of_sha256sums() -> None:
    expected = hashlib.sha256((MNIST_DIR / SHA256SUMS).read_bytes()).hexdigest()
    assert dataset_sha256() == expected


def test_parse_idx_by_hand() -> None:
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3]) + bytes(range(6))
    np.testing.assert_array_equal(parse_idx(raw), np.arange(6, dtype=np.uint8).reshape(2, 1, 3))


# --- a miniature but well-formed MNIST folder, damaged one way per test -----------------------


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def write_sums(folder: Path) -> None:
    lines = [
        f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}"
        for n in sorted(p.name for p in folder.glob("*.gz"))
    ]
    (folder / SHA256SUMS).write_text("\n".join(lines) + "\n")


def write_gz(path: Path, raw: bytes) -> None:
    path.write_bytes(gzip.compress(raw, mtime=0))


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    """Three 28x28 images and labels per split, gzipped, with a matching SHA256SUMS."""
    rng = np.random.default_rng(0)
    for images_name, labels_name in FILES.values():
        write_gz(
            tmp_path / images_name,
            idx_bytes(IMAGE_MAGIC, (3, 28, 28), rng.integers(0, 256, 3 * 784, dtype=np.uint8).tobytes()),
        )
        write_gz(tmp_path / labels_name, idx_bytes(LABEL_MAGIC, (3,), bytes([7, 0, 9])))
    write_sums(tmp_path)
    return tmp_path


def test_the_miniature_folder_loads(mini: Path) -> None:
    data = load_mnist(mini)
    assert data.train.images.shape == (3, 784) and data.test.labels.tolist() == [7, 0, 9]
    assert data.dataset_sha256 == hashlib.sha256((mini / SHA256SUMS).read_bytes()).hexdigest()


TRAIN_IMAGES, TRAIN_LABELS = FILES["train"]


def replace(folder: Path, name: str, raw: bytes, gz: bool = True, fix_sums: bool = True) -> None:
    """Replace one file; by default SHA256SUMS is updated so only the structure is wrong."""
    if gz:
        write_gz(folder / name, raw)
    else:
        (folder / name).write_bytes(raw)
    if fix_sums:
        write_sums(folder)


def _pixels(n: int) -> bytes:
    return bytes(n * 784)


DAMAGE = [
    # (case id, damage to the folder, text the error must contain)
    ("missing-file", lambda d: (d / TRAIN_LABELS).unlink(), "file not found"),
    ("missing-sha256sums", lambda d: (d / SHA256SUMS).unlink(), "checksum file not found"),
    (
        "sums-lack-entry",
        lambda d: (d / SHA256SUMS).write_text(
            "".join(line for line in (d / SHA256SUMS).read_text().splitlines(True) if TRAIN_LABELS not in line)
        ),
        "no checksum listed for",
    ),
    ("sums-malformed", lambda d: (d / SHA256SUMS).write_text("abc  x\n"), "malformed line"),
    (
        "truncated-gzip",
        lambda d: replace(d, TRAIN_IMAGES, (d / TRAIN_IMAGES).read_bytes()[:-20], gz=False),
        "truncated gzip stream",
    ),
    ("not-gzip", lambda d: replace(d, TRAIN_IMAGES, b"plain bytes, not gzip", gz=False), "corrupt gzip data"),
    (
        "gzip-crc-broken",
        lambda d: replace(d, TRAIN_LABELS, (d / TRAIN_LABELS).read_bytes()[:-8] + bytes(8), gz=False),
        "corrupt gzip data",
    ),
    (
        "truncated-payload",
        lambda d: replace(d, TRAIN_IMAGES, idx_bytes(IMAGE_MAGIC, (3, 28, 28), _pixels(3)[:-100])),
        "truncated: dimensions (3, 28, 28) need 2352 data bytes, file has 2252",
    ),
    (
        "truncated-header",
        lambda d: replace(d, TRAIN_IMAGES, idx_bytes(IMAGE_MAGIC, (), b"\0\0\0\3\0\0")),
        "truncated header",
    ),
    ("shorter-than-magic", lambda d: replace(d, TRAIN_LABELS, b"\0\0"), "shorter than the 4-byte IDX magic"),
    (
        "trailing-bytes",
        lambda d: replace(d, TRAIN_LABELS, idx_bytes(LABEL_MAGIC, (3,), bytes([1, 2, 3, 4]))),
        "1 unexpected bytes after",
    ),
    (
        "bad-magic",
        lambda d: replace(d, TRAIN_IMAGES, idx_bytes(0x00000D03, (3, 28, 28), _pixels(3))),
        "bad magic number 0x00000d03; expected 0x00000803",
    ),
    (
        "labels-in-images-file",
        lambda d: replace(d, TRAIN_IMAGES, idx_bytes(LABEL_MAGIC, (3,), bytes(3))),
        "bad magic number 0x00000801; expected 0x00000803 (images)",
    ),
    (
        "bad-dims",
        lambda d: replace(d, TRAIN_IMAGES, idx_bytes(IMAGE_MAGIC, (3, 27, 28), bytes(3 * 27 * 28))),
        "bad dimensions (3, 27, 28)",
    ),
    ("count-mismatch", lambda d: replace(d, TRAIN_LABELS, idx_bytes(LABEL_MAGIC, (2,), bytes([1, 2]))), "2 labels but"),
    (
        "label-out-of-range",
        lambda d: replace(d, TRAIN_LABELS, idx_bytes(LABEL_MAGIC, (3,), bytes([1, 10, 2]))),
        "label 10 is outside 0..9",
    ),
    (
        "sha-mismatch",
        lambda d: replace(d, TRAIN_LABELS, idx_bytes(LABEL_MAGIC, (3,), bytes([7, 0, 8])), fix_sums=False),
        "SHA-256 mismatch",
    ),
]


@pytest.mark.parametrize(("damage", "message"), [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_damaged_files_fail_clearly(mini: Path, damage, message: str) -> None:
    damage(mini)
    with pytest.raises(MnistError) as raised:
        load_split("train", mini)
    assert message in str(raised.value)
    assert str(mini) in str(raised.value)  # says which file
    if (mini / SHA256SUMS).is_file() and "malformed" not in message:
        load_split("test", mini)  # the untouched split still loads: the damage is pinpointed


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MnistError, match="MNIST folder not found"):
        load_mnist(tmp_path / "nowhere")


def test_verification_can_be_turned_off_for_modified_copies(mini: Path) -> None:
    replace(mini, TRAIN_LABELS, idx_bytes(LABEL_MAGIC, (3,), bytes([7, 0, 8])), fix_sums=False)
    assert load_split("train", mini, verify=False).labels.tolist() == [7, 0, 8]


def test_real_files_detect_a_single_flipped_byte(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    shutil.copytree(MNIST_DIR, folder, ignore=shutil.ignore_patterns("train-*"))
    name = FILES["test"][1]
    raw = bytearray(gzip.decompress((folder / name).read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # still a valid label file, just one wrong label
    (folder / name).write_bytes(gzip.compress(bytes(raw), mtime=0))
    with pytest.raises(MnistError, match="SHA-256 mismatch"):
        load_split("test", folder)

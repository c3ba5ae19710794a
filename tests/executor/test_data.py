"""executor.data and executor.loaders: real files written byte by byte from known arrays and
read back exactly; every malformed file a DataError naming it; shards that partition; batches
that repeat.

The writers here follow the published formats directly (``struct`` big-endian headers, CIFAR-10
records of one label byte and 3072 CHW pixel bytes), independently of the reader under test.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from executor.data import DataError, Dataset, TextDataset, digits, synthetic
from executor.loaders import load_cifar10, load_idx, load_npz, load_text, open_dataset

RNG = np.random.default_rng(1234)
IMAGES = RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
IMAGES[0, 0, 0], IMAGES[0, 27, 27] = 0, 255  # both ends of the pixel range
LABELS = np.array([7, 2, 1, 0, 4], dtype=np.uint8)


def idx_images(path: Path, images: np.ndarray, magic: int = 0x00000803) -> Path:
    path.write_bytes(struct.pack(">IIII", magic, *images.shape) + images.tobytes())
    return path


def idx_labels(path: Path, labels: np.ndarray, magic: int = 0x00000801) -> Path:
    path.write_bytes(struct.pack(">II", magic, len(labels)) + labels.tobytes())
    return path


def gzipped(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    return out


def cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path.write_bytes(b"".join(bytes([int(k)]) + im.tobytes() for im, k in zip(images, labels)))
    return path


@pytest.fixture
def mnist(tmp_path: Path) -> tuple[Path, Path]:
    return (
        idx_images(tmp_path / "train-images.idx3-ubyte", IMAGES),
        idx_labels(tmp_path / "train-labels.idx1-ubyte", LABELS),
    )


@contextmanager
def expect_error(file: Path | str, *fragments: str) -> Iterator[None]:
    """Expect a DataError whose message names ``file`` and says each of ``fragments``."""
    with pytest.raises(DataError) as info:
        yield
    message = str(info.value)
    assert Path(file).name in message, message
    for fragment in fragments:
        assert fragment in message, message


# ---- IDX ---------------------------------------------------------------------------------------


def test_idx_reads_back_exactly(mnist):
    d = load_idx(*mnist)
    assert d.x.shape == (5, 1, 28, 28) and d.x.dtype == np.float32
    assert d.y.dtype == np.int64 and d.y.tolist() == [7, 2, 1, 0, 4]
    np.testing.assert_array_equal(d.x[:, 0], IMAGES.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(np.rint(d.x[:, 0] * 255).astype(np.uint8), IMAGES)
    assert d.x[0, 0, 0, 0] == 0.0 and d.x[0, 0, 27, 27] == 1.0
    assert d.name == "mnist" and len(d) == 5


def test_idx_gz_is_transparent(mnist):
    images, labels = mnist
    plain = load_idx(images, labels)
    for pair in [(gzipped(images), gzipped(labels)), (gzipped(images), labels)]:
        d = load_idx(*pair)
        np.testing.assert_array_equal(d.x, plain.x)
        np.testing.assert_array_equal(d.y, plain.y)


def test_idx_other_image_sizes(tmp_path):
    small = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    d = load_idx(idx_images(tmp_path / "i", small), idx_labels(tmp_path / "l", LABELS[:2]))
    assert d.x.shape == (2, 1, 3, 4)
    assert d.x[1, 0, 2, 3] == np.float32(23) / np.float32(255)


def test_idx_wrong_magic_message(tmp_path, mnist):
    _, labels = mnist
    images = idx_images(tmp_path / "train-images.idx3-ubyte", IMAGES, magic=0x00000801)
    with pytest.raises(DataError) as info:
        load_idx(images, labels)
    assert str(info.value) == (
        f"{images}: magic number 0x00000801 is not an IDX image file (0x00000803)"
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


IMAGE_HEADER = struct.pack(">IIII", 0x803, 5, 28, 28)
BAD_IMAGES = {
    "labels magic": (struct.pack(">II", 0x801, 5) + LABELS.tobytes(), ["0x00000801"]),
    "float IDX": (struct.pack(">IIII", 0xD03, 5, 28, 28) + bytes(5 * 784 * 4), ["0x00000d03"]),
    "empty": (b"", ["truncated", "0 bytes"]),
    "short magic": (b"\x00\x00\x08", ["truncated"]),
    "short header": (IMAGE_HEADER[:10], ["truncated", "16-byte header"]),
    "short pixels": (IMAGE_HEADER + IMAGES.tobytes()[:-1], ["truncated", "5x28x28 = 3920"]),
    "extra bytes": (IMAGE_HEADER + IMAGES.tobytes() + b"\x00\x00", ["2 unexpected bytes"]),
    "no images": (struct.pack(">IIII", 0x803, 0, 28, 28), ["no image"]),
    "zero rows": (struct.pack(">IIII", 0x803, 5, 0, 28), ["0x28"]),
    "bad gzip": (b"\x1f\x8b\x08\x00garbage", ["gzip"]),
    "truncated gzip": (gzip.compress(IMAGE_HEADER + IMAGES.tobytes())[:-20], ["gzip"]),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_idx_malformed_images(tmp_path, mnist, case):
    data, fragments = BAD_IMAGES[case]
    images = _write(tmp_path / "bad-images.idx3-ubyte", data)
    with expect_error(images, *fragments):
        load_idx(images, mnist[1])


BAD_LABELS = {
    "images magic": (IMAGE_HEADER + IMAGES.tobytes(), ["0x00000803", "label"]),
    "short labels": (struct.pack(">II", 0x801, 5) + LABELS.tobytes()[:-1], ["truncated"]),
    "count mismatch": (struct.pack(">II", 0x801, 4) + LABELS[:4].tobytes(), ["4 labels", "5"]),
}


@pytest.mark.parametrize("case", BAD_LABELS)
def test_idx_malformed_labels(tmp_path, mnist, case):
    data, fragments = BAD_LABELS[case]
    labels = _write(tmp_path / "bad-labels.idx1-ubyte", data)
    with expect_error(labels, *fragments):
        load_idx(mnist[0], labels)


def test_idx_missing_file_and_directory(tmp_path, mnist):
    with expect_error("nowhere-images.idx3-ubyte", "no such file"):
        load_idx(tmp_path / "nowhere-images.idx3-ubyte", mnist[1])
    (tmp_path / "adir").mkdir()
    with expect_error("adir", "directory"):
        load_idx(mnist[0], tmp_path / "adir")


# ---- CIFAR-10 ----------------------------------------------------------------------------------

CIFAR = RNG.integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
CIFAR_LABELS = np.array([3, 9, 0, 6, 1], dtype=np.uint8)


def test_cifar_reads_back_exactly_in_order(tmp_path):
    one = cifar_batch(tmp_path / "data_batch_1.bin", CIFAR[:3], CIFAR_LABELS[:3])
    two = cifar_batch(tmp_path / "data_batch_2.bin", CIFAR[3:], CIFAR_LABELS[3:])
    d = load_cifar10([one, two])
    assert d.x.shape == (5, 3, 32, 32) and d.x.dtype == np.float32
    assert d.y.dtype == np.int64 and d.y.tolist() == [3, 9, 0, 6, 1]
    np.testing.assert_array_equal(d.x, CIFAR.astype(np.float32) / np.float32(255))
    assert d.name == "cifar10"
    np.testing.assert_array_equal(load_cifar10(str(two)).y, [6, 1])  # a single path is fine


def test_cifar_layout_is_label_then_chw(tmp_path):
    # record 0: label 4, then red plane, green plane, blue plane; green pixel (row 2, col 3) = 200
    record = bytearray(3073)
    record[0] = 4
    record[1 + 1024 + 2 * 32 + 3] = 200
    path = _write(tmp_path / "one.bin", bytes(record))
    d = load_cifar10([path])
    assert d.y.tolist() == [4]
    assert d.x[0, 1, 2, 3] == np.float32(200) / np.float32(255)
    assert np.count_nonzero(d.x) == 1


def test_cifar_gz(tmp_path):
    path = gzipped(cifar_batch(tmp_path / "data_batch_1.bin", CIFAR, CIFAR_LABELS))
    np.testing.assert_array_equal(load_cifar10([path]).y, CIFAR_LABELS)


@pytest.mark.parametrize(
    "data, fragments",
    [
        (b"", ["0 bytes", "3073-byte"]),
        (bytes(3073 * 2 - 1), ["6145 bytes", "truncated"]),
        (bytes(3074 * 3), ["9222 bytes"]),  # CIFAR-100 records
        (bytes([10]) + bytes(3072), ["label 10", "CIFAR-100"]),
    ],
    ids=["empty", "truncated", "cifar100 size", "label 10"],
)
def test_cifar_malformed(tmp_path, data, fragments):
    good = cifar_batch(tmp_path / "data_batch_1.bin", CIFAR[:1], CIFAR_LABELS[:1])
    bad = _write(tmp_path / "data_batch_2.bin", data)
    with expect_error(bad, *fragments):
        load_cifar10([good, bad])


def test_cifar_missing_and_none(tmp_path):
    with expect_error("data_batch_9.bin", "no such file"):
        load_cifar10([tmp_path / "data_batch_9.bin"])
    with expect_error("cifar10", "no batch files"):
        load_cifar10([])


# ---- npz ---------------------------------------------------------------------------------------


def test_npz_float_uint8_and_keys(tmp_path):
    x = RNG.random((4, 2, 3, 3)).astype(np.float64)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0, 1, 2, 1]))
    d = load_npz(tmp_path / "f.npz")
    np.testing.assert_array_equal(d.x, x.astype(np.float32))
    assert d.y.dtype == np.int64 and d.y.tolist() == [0, 1, 2, 1]

    np.savez(tmp_path / "u.npz", images=IMAGES, targets=LABELS)
    d = load_npz(tmp_path / "u.npz", x_key="images", y_key="targets")
    np.testing.assert_array_equal(d.x, IMAGES.astype(np.float32) / np.float32(255))
    assert d.y.tolist() == LABELS.tolist()


BAD_NPZ = {
    "missing key": (dict(images=IMAGES, y=LABELS), ["no array 'x'", "images"]),
    "y length": (dict(x=IMAGES, y=LABELS[:4]), ["'y' has shape (4,)", "(5,)"]),
    "y 2-D": (dict(x=IMAGES, y=LABELS[:, None]), ["'y' has shape (5, 1)"]),
    "y float": (dict(x=IMAGES, y=LABELS.astype(np.float32)), ["float32", "integer labels"]),
    "y negative": (dict(x=IMAGES, y=np.array([0, -1, 2, 3, 4])), ["negative label (-1)"]),
    "x 1-D": (dict(x=LABELS, y=LABELS), ["'x' has shape (5,)"]),
    "x int64": (dict(x=IMAGES.astype(np.int64), y=LABELS), ["int64", "uint8 pixels or floats"]),
    "x NaN": (dict(x=np.full((5, 2), np.nan), y=LABELS), ["NaN"]),
    "x object": (dict(x=np.array([None] * 5, dtype=object), y=LABELS), ["cannot read"]),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_npz_malformed(tmp_path, case):
    arrays, fragments = BAD_NPZ[case]
    np.savez(tmp_path / "bad.npz", **arrays)
    with expect_error("bad.npz", *fragments):
        load_npz(tmp_path / "bad.npz")


def test_npz_not_an_archive(tmp_path):
    with expect_error("gone.npz", "no such file"):
        load_npz(tmp_path / "gone.npz")
    with expect_error("text.npz", "not a readable .npz"):
        load_npz(_write(tmp_path / "text.npz", b"hello, world"))
    np.save(tmp_path / "single.npy", IMAGES)
    with expect_error("single.npy", "not an .npz archive"):
        load_npz(tmp_path / "single.npy")


# ---- bundled and generated data ----------------------------------------------------------------


def test_digits_is_sklearn_real_data():
    from sklearn.datasets import load_digits

    d = digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == np.float32 and d.y.dtype == np.int64
    assert d.x.min() == 0.0 and d.x.max() == 1.0
    assert sorted(set(d.y.tolist())) == list(range(10))
    np.testing.assert_array_equal(d.x.reshape(1797, 64) * 16, load_digits().data)
    np.testing.assert_array_equal(d.y, load_digits().target)


def test_sklearn_is_imported_only_when_digits_are_asked_for():
    code = "import sys, executor.loaders; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_synthetic_shape_balance_and_determinism():
    d = synthetic(100, (3, 4, 4), classes=4, seed=5)
    assert d.x.shape == (100, 3, 4, 4) and d.x.dtype == np.float32 and d.y.dtype == np.int64
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0
    assert np.bincount(d.y).tolist() == [25, 25, 25, 25]
    again = synthetic(100, (3, 4, 4), classes=4, seed=5)
    np.testing.assert_array_equal(d.x, again.x)
    np.testing.assert_array_equal(d.y, again.y)
    assert not np.array_equal(d.x, synthetic(100, (3, 4, 4), classes=4, seed=6).x)


def test_synthetic_is_learnable():
    # nearest class mean, fitted on one half and scored on the other: far above chance (10%)
    d = synthetic(2000, (1, 8, 8), classes=10, seed=0).flatten()
    train, test = d.shard(0, 2), d.shard(1, 2)
    means = np.stack([train.x[train.y == k].mean(axis=0) for k in range(10)])
    guess = ((test.x[:, None, :] - means) ** 2).sum(axis=-1).argmin(axis=1)
    assert (guess == test.y).mean() > 0.85


def test_synthetic_rejects_nonsense():
    with pytest.raises(ValueError):
        synthetic(0)
    with pytest.raises(ValueError):
        synthetic(10, classes=1)
    with pytest.raises(ValueError):
        synthetic(10, shape=(1, 0, 8))


# ---- Dataset -----------------------------------------------------------------------------------


def numbered(n: int) -> Dataset:
    """Sample i holds the value i everywhere and has label i: shards and batches read by eye."""
    return Dataset(
        np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2)),
        np.arange(n),
        "numbered",
    )


@pytest.mark.parametrize("n", [1, 9, 10, 11])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_partition_the_data(n, size):
    d = numbered(n)
    shards = [d.shard(rank, size) for rank in range(size)]
    np.testing.assert_array_equal(np.concatenate([s.x for s in shards]), d.x)
    np.testing.assert_array_equal(np.concatenate([s.y for s in shards]), d.y)
    labels = [set(s.y.tolist()) for s in shards]
    assert sum(len(s) for s in labels) == n and set().union(*labels) == set(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_shard_boundaries_by_hand():
    d = numbered(10)
    assert [d.shard(r, 3).y.tolist() for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert d.shard(1, 3).name == "numbered[1/3]"
    for rank, size in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError):
            d.shard(rank, size)


def test_batches_wrap_around_deterministically():
    d = numbered(5)
    steps = [y.tolist() for _, y in d.batches(2, steps=4)]
    assert steps == [[0, 1], [2, 3], [4, 0], [1, 2]]
    assert [y.tolist() for _, y in d.batches(2, start_step=2, steps=2)] == steps[2:]
    assert [y.tolist() for _, y in d.batches(7, steps=1)] == [[0, 1, 2, 3, 4, 0, 1]]
    for (xa, ya), (xb, yb) in zip(d.batches(3, steps=6), d.batches(3, steps=6)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    x, y = next(d.batches(2, start_step=2))
    assert x.shape == (2, 1, 2, 2) and x[:, 0, 0, 0].tolist() == [4.0, 0.0]


def test_batches_endless_and_bad_arguments():
    it = numbered(3).batches(2)
    assert [next(it)[1].tolist() for _ in range(4)] == [[0, 1], [2, 0], [1, 2], [0, 1]]
    for batch, start in [(0, 0), (2, -1)]:
        with pytest.raises(ValueError):
            next(numbered(3).batches(batch, start))
    with pytest.raises(ValueError):
        next(numbered(3).shard(3, 4).batches(1))  # an empty shard


def test_flatten_and_immutability():
    d = numbered(4)
    flat = d.flatten()
    assert flat.x.shape == (4, 4) and flat.x[3].tolist() == [3.0] * 4
    np.testing.assert_array_equal(flat.y, d.y)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "other"
    with pytest.raises(ValueError):
        d.x[0] = 1.0
    with pytest.raises(ValueError):
        Dataset(np.zeros((3, 2)), np.zeros(2), "mismatch")


# ---- open_dataset ------------------------------------------------------------------------------


def test_open_dataset_every_kind_relative_paths(tmp_path, mnist):
    (tmp_path / "cifar").mkdir()
    cifar_batch(tmp_path / "cifar" / "data_batch_1.bin", CIFAR[:2], CIFAR_LABELS[:2])
    cifar_batch(tmp_path / "cifar" / "data_batch_2.bin", CIFAR[2:], CIFAR_LABELS[2:])
    np.savez(tmp_path / "set.npz", a=IMAGES, b=LABELS)
    gzipped(mnist[0])
    (tmp_path / "elsewhere").mkdir()

    d = open_dataset(
        {
            "kind": "mnist",
            "images": "train-images.idx3-ubyte.gz",
            "labels": "train-labels.idx1-ubyte",
        },
        tmp_path,
    )
    assert d.y.tolist() == LABELS.tolist() and d.name == "mnist"
    d = open_dataset(
        {
            "kind": "fashion_mnist",
            "images": str(mnist[0]),  # absolute path
            "labels": "../train-labels.idx1-ubyte",
        },
        tmp_path / "elsewhere",
    )
    assert d.name == "fashion_mnist" and len(d) == 5
    d = open_dataset(
        {"kind": "cifar10", "batches": ["cifar/data_batch_1.bin", "cifar/data_batch_2.bin"]},
        tmp_path,
    )
    assert d.y.tolist() == CIFAR_LABELS.tolist()
    d = open_dataset({"kind": "npz", "path": "set.npz", "x_key": "a", "y_key": "b"}, tmp_path)
    assert d.x.shape == (5, 28, 28)
    assert len(open_dataset({"kind": "digits"}, tmp_path)) == 1797
    d = open_dataset(
        {"kind": "synthetic", "samples": 12, "classes": 3, "seed": 1, "shape": [2, 4, 4]}, tmp_path
    )
    assert d.x.shape == (12, 2, 4, 4)
    np.testing.assert_array_equal(d.x, synthetic(12, (2, 4, 4), 3, 1).x)
    d = open_dataset({"kind": "synthetic", "samples": 12, "classes": 3, "seed": 1}, tmp_path)
    assert d.x.shape == (12, 1, 8, 8)


BAD_SPECS = {
    "not a mapping": (["mnist"], ["expected a mapping"]),
    "no kind": ({"images": "a"}, ["unknown dataset kind None"]),
    "unknown kind": ({"kind": "imagenet"}, ["data.kind", "'imagenet'", "cifar10"]),
    "missing key": ({"kind": "mnist", "images": "a"}, ["needs labels"]),
    "unknown key": ({"kind": "digits", "path": "x"}, ["unknown key(s) path"]),
    "batches not a list": ({"kind": "cifar10", "batches": "a.bin"}, ["data.batches"]),
    "empty batches": ({"kind": "cifar10", "batches": []}, ["data.batches"]),
    "path not a string": ({"kind": "npz", "path": 3}, ["data.path", "3"]),
    "x_key not a string": ({"kind": "npz", "path": "a.npz", "x_key": 1}, ["data.x_key"]),
    "samples zero": (
        {"kind": "synthetic", "samples": 0, "classes": 2, "seed": 0},
        ["data.samples", ">= 1", "0"],
    ),
    "classes bool": (
        {"kind": "synthetic", "samples": 4, "classes": True, "seed": 0},
        ["data.classes"],
    ),
    "seed float": ({"kind": "synthetic", "samples": 4, "classes": 2, "seed": 1.5}, ["data.seed"]),
    "bad shape": (
        {"kind": "synthetic", "samples": 4, "classes": 2, "seed": 0, "shape": [1, 0]},
        ["data.shape"],
    ),
}


@pytest.mark.parametrize("case", BAD_SPECS)
def test_open_dataset_bad_specs(tmp_path, case):
    spec, fragments = BAD_SPECS[case]
    with expect_error("run.yaml", *fragments):
        open_dataset(spec, tmp_path, where="run.yaml: data")


def test_open_dataset_names_the_resolved_file(tmp_path):
    with expect_error("t10k-images.idx3-ubyte", str(tmp_path / "mnist"), "no such file"):
        open_dataset(
            {
                "kind": "mnist",
                "images": "mnist/t10k-images.idx3-ubyte",
                "labels": "mnist/t10k-labels.idx1-ubyte",
            },
            tmp_path,
        )


# ---- text --------------------------------------------------------------------------------------

CORPUS = Path(__file__).resolve().parents[2] / "scenarios" / "data" / "kjv_luke.txt"
# the 61 characters scenarios/data/README.md lists, in code point order (= token ids 0..60)
CORPUS_VOCAB = "\n !'(),.:;?ABCDEFGHIJKLMNOPRSTUVWYZabcdefghijklmnopqrstuvwxyz"

# "abracadabra": a=0 b=1 c=2 d=3 r=4, ids 0 1 4 0 2 0 3 0 1 4 0
ABRACADABRA = [0, 1, 4, 0, 2, 0, 3, 0, 1, 4, 0]


def text_file(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_shipped_corpus_is_what_its_readme_says():
    raw = CORPUS.read_bytes()
    readme = (CORPUS.parent / "README.md").read_text(encoding="utf-8")
    assert 50_000 <= len(raw) <= 150_000
    assert hashlib.sha256(raw).hexdigest() in readme
    assert f"{len(raw):,} bytes" in readme
    text = raw.decode("ascii")  # plain ASCII, as the README says
    assert text.startswith("Forasmuch as many have taken in hand to set forth in order")
    assert text.endswith("praising and blessing God. Amen.\n")
    d = load_text(CORPUS, seq_len=64)
    assert "".join(d.vocab) == CORPUS_VOCAB
    assert f"{len(d.vocab)} distinct characters" in readme and len(d.vocab) == 61


def test_shipped_corpus_loads_from_a_scenario_spec_and_decodes_to_its_text():
    text = CORPUS.read_text(encoding="ascii")
    spec = {"kind": "text", "path": "data/kjv_luke.txt", "seq_len": 128, "vocab": 64}
    d = open_dataset(spec, CORPUS.parent.parent, where="gpt.yaml: data")
    # windows start at 0, 128, ...; the last whole one starts at 1051 * 128 (+ 129 <= 134697)
    assert isinstance(d, TextDataset) and d.name == "text"
    assert d.x.shape == d.y.shape == (1052, 128)
    assert d.x.dtype == np.float32 and d.y.dtype == np.int64
    assert "".join(d.decode(row) for row in d.x) == text[: 1052 * 128]
    assert d.decode(d.y[-1]) == text[1051 * 128 + 1 : 1051 * 128 + 129]
    np.testing.assert_array_equal(d.x[:, 1:], d.y[:, :-1])  # y is x shifted by one
    np.testing.assert_array_equal(d.encode(text[:128]), d.x[0])
    assert int(d.y.max()) < 64


def test_text_windows_by_hand(tmp_path):
    path = text_file(tmp_path / "abra.txt", "abracadabra")
    d = load_text(path, seq_len=4)
    assert d.vocab == ("a", "b", "c", "d", "r")
    assert d.x.tolist() == [[0, 1, 4, 0], [2, 0, 3, 0]]  # starts 0, 4; 8 + 5 > 11 is left out
    assert d.y.tolist() == [[1, 4, 0, 2], [0, 3, 0, 1]]
    assert [d.decode(row) for row in d.x] == ["abra", "cada"]
    assert [d.decode(row) for row in d.y] == ["brac", "adab"]

    d = load_text(path, seq_len=4, stride=3)  # starts 0, 3, 6
    assert d.x.tolist() == [ABRACADABRA[i : i + 4] for i in (0, 3, 6)]
    assert d.y.tolist() == [ABRACADABRA[i + 1 : i + 5] for i in (0, 3, 6)]
    d = load_text(path, seq_len=4, stride=1)  # every start 0..6
    assert d.y.tolist() == [ABRACADABRA[i + 1 : i + 5] for i in range(7)]
    d = load_text(path, seq_len=10)  # exactly one window: 10 + 1 characters
    assert d.decode(d.x[0]) == "abracadabr" and d.decode(d.y[0]) == "bracadabra"
    with pytest.raises(ValueError):
        d.x[0, 0] = 1.0


def test_text_ids_are_sorted_code_points_and_unicode_is_fine(tmp_path):
    text = "naïve café, Ärger\r\n"
    d = load_text(text_file(tmp_path / "u.txt", text), seq_len=len(text) - 1, vocab_size=64)
    assert d.vocab == tuple(sorted(set(text)))
    assert d.vocab[:3] == ("\n", "\r", " ") and d.vocab[-2:] == ("é", "ï")
    assert d.decode(d.x[0]) + text[-1] == text
    gz = text_file(tmp_path / "u.txt.gz", gzip.compress(text.encode("utf-8")))
    np.testing.assert_array_equal(load_text(gz, seq_len=4).y, load_text(tmp_path / "u.txt", 4).y)


def test_text_decode_and_encode_reject_what_is_not_in_the_vocabulary(tmp_path):
    d = load_text(text_file(tmp_path / "abra.txt", "abracadabra"), seq_len=4)
    assert d.decode([4, 0]) == "ra" and d.decode([]) == ""
    assert d.encode("cab").tolist() == [2, 0, 1]
    for ids in ([5], [-1], [1.5], d.x):  # out of range, negative, not whole, 2-D
        with pytest.raises(ValueError):
            d.decode(ids)
    with pytest.raises(ValueError, match="'z'"):
        d.encode("zebra")


def test_text_vocab_limit(tmp_path):
    path = text_file(tmp_path / "abra.txt", "abracadabra")
    assert load_text(path, seq_len=4, vocab_size=5).vocab == ("a", "b", "c", "d", "r")
    with expect_error(path, "5 distinct characters", "vocab: 4"):
        load_text(path, seq_len=4, vocab_size=4)
    with expect_error(path, "5 distinct characters", "vocab: 3"):
        open_dataset({"kind": "text", "path": "abra.txt", "seq_len": 4, "vocab": 3}, tmp_path)


BAD_TEXT = {
    "empty": (b"", ["is empty"]),
    "latin-1": ("café au lait".encode("latin-1"), ["not UTF-8", "0xe9", "offset 3"]),
    "utf-16": ("hello world".encode("utf-16"), ["not UTF-8", "0xff", "offset 0"]),
    "too short": (b"abc", ["3 characters", "seq_len 3", "needs 4"]),
    "bad gzip": (b"\x1f\x8b\x08\x00garbage", ["gzip"]),
}


@pytest.mark.parametrize("case", BAD_TEXT)
@pytest.mark.parametrize("via", ["load_text", "open_dataset"])
def test_text_malformed(tmp_path, case, via):
    data, fragments = BAD_TEXT[case]
    path = text_file(tmp_path / "corpus.txt", data)
    with expect_error(path, *fragments):
        if via == "load_text":
            load_text(path, seq_len=3)
        else:
            open_dataset({"kind": "text", "path": "corpus.txt", "seq_len": 3}, tmp_path)


def test_text_missing_file_and_directory(tmp_path):
    with expect_error("gone.txt", "no such file"):
        load_text(tmp_path / "gone.txt", seq_len=8)
    (tmp_path / "texts").mkdir()
    with expect_error("texts", "directory"):
        open_dataset({"kind": "text", "path": "texts", "seq_len": 8}, tmp_path)


def test_text_errors_are_data_errors_without_a_chained_traceback(tmp_path):
    # the CLIs print a DataError's message alone; nothing of the UnicodeDecodeError shows
    text_file(tmp_path / "corpus.txt", "café".encode("latin-1"))
    with pytest.raises(DataError) as info:
        open_dataset({"kind": "text", "path": "corpus.txt", "seq_len": 2}, tmp_path)
    assert type(info.value) is DataError
    assert info.value.__cause__ is None and info.value.__suppress_context__


BAD_TEXT_SPECS = {
    "no seq_len": ({"kind": "text", "path": "a.txt"}, ["needs seq_len"]),
    "no path": ({"kind": "text", "seq_len": 8}, ["needs path"]),
    "seq_len zero": ({"kind": "text", "path": "a.txt", "seq_len": 0}, ["data.seq_len", ">= 1"]),
    "seq_len string": ({"kind": "text", "path": "a.txt", "seq_len": "8"}, ["data.seq_len"]),
    "stride zero": (
        {"kind": "text", "path": "a.txt", "seq_len": 8, "stride": 0},
        ["data.stride", ">= 1", "0"],
    ),
    "vocab bool": ({"kind": "text", "path": "a.txt", "seq_len": 8, "vocab": True}, ["data.vocab"]),
    "vocab float": ({"kind": "text", "path": "a.txt", "seq_len": 8, "vocab": 64.0}, ["data.vocab"]),
    "unknown key": (
        {"kind": "text", "path": "a.txt", "seq_len": 8, "vocab_size": 64},
        ["unknown key(s) vocab_size"],
    ),
}


@pytest.mark.parametrize("case", BAD_TEXT_SPECS)
def test_open_dataset_bad_text_specs(tmp_path, case):
    spec, fragments = BAD_TEXT_SPECS[case]
    text_file(tmp_path / "a.txt", "abracadabra")
    with expect_error("run.yaml", *fragments):
        open_dataset(spec, tmp_path, where="run.yaml: data")


# ---- per-position labels -----------------------------------------------------------------------


def test_dataset_takes_per_position_labels():
    # sample i: x all i, labels [10 i, 10 i + 1, 10 i + 2]
    d = Dataset(
        np.arange(5, dtype=np.float32)[:, None] * np.ones(3), np.arange(15).reshape(5, 3), "seq"
    )
    assert d.y.shape == (5, 3) and len(d) == 5
    assert [s.y.tolist() for s in (d.shard(0, 2), d.shard(1, 2))] == [
        [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
        [[9, 10, 11], [12, 13, 14]],
    ]
    _, y = next(d.batches(3, start_step=1))  # samples 3, 4, 0
    assert y.tolist() == [[9, 10, 11], [12, 13, 14], [0, 1, 2]]
    np.testing.assert_array_equal(d.flatten().y, d.y)
    for y in (np.zeros((4, 3)), np.zeros(())):  # wrong count, no sample axis
        with pytest.raises(ValueError):
            Dataset(np.zeros((5, 3)), y, "bad")


def test_text_labels_survive_shard_batches_and_the_executors_indexing(tmp_path):
    d = load_text(text_file(tmp_path / "abra.txt", "abracadabra"), seq_len=4, stride=1)
    shards = [d.shard(rank, 2) for rank in range(2)]  # 7 windows: 4 + 3
    assert all(isinstance(s, TextDataset) and s.vocab == d.vocab for s in shards)
    assert [s.name for s in shards] == ["text[0/2]", "text[1/2]"]
    np.testing.assert_array_equal(np.concatenate([s.y for s in shards]), d.y)
    assert [shards[1].decode(row) for row in shards[1].y] == ["adab", "dabr", "abra"]
    x, y = next(shards[1].batches(2, start_step=1))  # samples 2, 0 of the shard
    assert x.shape == y.shape == (2, 4) and x.dtype == np.float32 and y.dtype == np.int64
    assert [d.decode(r) for r in x] == ["dabr", "cada"]
    assert [d.decode(r) for r in y] == ["abra", "adab"]
    flat = d.flatten()
    assert isinstance(flat, TextDataset) and flat.x.shape == (7, 4) and flat.vocab == d.vocab
    # executor/interpreter/execute.py's _period_batch reads a period's samples exactly so
    idx = (1 * 3 + np.arange(3)) % len(d.y)
    xb, yb = np.ascontiguousarray(d.x[idx], dtype=np.float32), d.y[idx].astype(np.int64)
    np.testing.assert_array_equal(xb[:, 1:], yb[:, :-1])
    assert [d.decode(r) for r in yb] == ["cada", "adab", "dabr"]  # windows 3, 4, 5


# ---- hostile files -----------------------------------------------------------------------------

def test_a_forged_idx_header_names_its_exact_promise(tmp_path: Path):
    path = tmp_path / "forged.idx"
    path.write_bytes(struct.pack(">IIII", 0x803, 2**32 - 1, 2**32 - 1, 2**16 - 1) + b"x" * 10)
    promised = (2**32 - 1) ** 2 * (2**16 - 1)  # past int64: no negative count in the message
    with expect_error(path, f"= {promised} bytes", "holds 10"):
        load_idx(path, path)


def test_a_device_or_a_folder_is_not_read(tmp_path: Path):
    if Path("/dev/zero").exists():  # would never end
        with expect_error("/dev/zero", "not a regular file"):
            load_idx("/dev/zero", "/dev/zero")
    with expect_error(tmp_path, "is a directory"):
        load_idx(tmp_path, tmp_path)


def test_a_gzip_bomb_is_refused_and_members_are_joined(tmp_path: Path, mnist, monkeypatch):
    import executor.loaders as loaders

    images, labels = mnist
    two = tmp_path / "two-members.gz"  # a gzip file of two members (as `cat a.gz b.gz`)
    raw = images.read_bytes()
    two.write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]))
    assert load_idx(two, labels).x.shape == (5, 1, 28, 28)
    monkeypatch.setattr(loaders, "MAX_UNZIPPED", 1000)
    with expect_error(two, "unzips to more than"):
        load_idx(two, labels)


def test_data_that_does_not_fit_the_model_is_an_error():
    from executor.interpreter.execute import check_samples
    from executor.interpreter.model import ExecutorError
    from simulator.model import build_zoo

    graph = build_zoo("mlp", {"sizes": [64, 16, 10]})
    fake = type("Scenario", (), {"file": "run.yaml"})()
    check_samples(fake, graph, digits())  # 1x8x8 images feed 64 inputs, labels 0..9
    wide = Dataset(np.zeros((4, 1, 9, 9), np.float32), np.zeros(4, np.int64), "wide")
    with pytest.raises(ExecutorError, match=r"run.yaml: data: the samples are 1x9x9 \(81 "
                       r"values\) but the model takes 64 \(64 values\)"):
        check_samples(fake, graph, wide)
    past = Dataset(np.zeros((4, 64), np.float32), np.array([0, 3, 10, 2]), "past")
    with pytest.raises(ExecutorError, match=r"labels run from 0 to 10 but the model has 10 "
                       r"classes \(0 to 9\)"):
        check_samples(fake, graph, past)

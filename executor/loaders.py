"""Datasets from the files a user names: each real format's reader, and ``open_dataset``, which
turns a scenario's ``data`` mapping into a ``Dataset`` (``executor/data.py``).

Formats read:

- IDX (MNIST, Fashion-MNIST): a big-endian ``uint32`` magic number ``0x000008NN`` (``08`` = unsigned
  bytes, ``NN`` = number of dimensions), one big-endian ``uint32`` per dimension, then the bytes
  row-major. Images are ``0x00000803`` (count, rows, cols), labels ``0x00000801`` (count). A file
  that starts with the gzip signature is decompressed first, whatever its name.
- CIFAR-10 binary batches (``data_batch_1.bin``...): 3073-byte records, one label byte then
  1024 red, 1024 green and 1024 blue pixel bytes (CHW, rows top to bottom).
- ``.npz`` archives holding an image array and a label array (no pickled objects).
- UTF-8 text, for character-level language models (``load_text``): each distinct character is a
  token, the sorted characters (by code point) getting ids ``0..C-1``; sample ``j`` is the
  ``seq_len`` ids from offset ``j * stride`` and its labels are the same window shifted one
  character on (the next-character targets). ``scenarios/data/kjv_luke.txt`` is a shipped corpus.

Bad input raises ``DataError`` naming the file and what is wrong with it. Whole files are read
into memory (MNIST is 47 MB, a CIFAR-10 batch 31 MB); memory mapping and streaming are left out.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from executor.data import DataError, Dataset, PathLike, TextDataset, digits, synthetic

IDX_IMAGES = 0x00000803
IDX_LABELS = 0x00000801
CIFAR_SHAPE = (3, 32, 32)
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_CLASSES = 10
GZIP_SIGNATURE = b"\x1f\x8b"
# the executor holds a dataset in memory: a file that unzips past this is refused (MNIST's
# training images are 47 MB, a CIFAR-10 batch 31 MB)
MAX_UNZIPPED = 4 * 2**30


# ---- file readers ------------------------------------------------------------------------------


def _read(path: PathLike) -> bytes:
    """A file's bytes, gunzipped when it starts with the gzip signature."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise DataError(f"{path}: is not a regular file (a device or a pipe)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if raw[:2] != GZIP_SIGNATURE:
        return raw
    parts, size = [], 0
    try:
        while raw:  # member by member (a gzip file may hold several), never past the cap
            unzip = zlib.decompressobj(wbits=31)
            part = unzip.decompress(raw, MAX_UNZIPPED + 1 - size)
            size += len(part)
            if unzip.unconsumed_tail or size > MAX_UNZIPPED:
                raise DataError(f"{path}: unzips to more than {MAX_UNZIPPED // 2**30} GiB, "
                                "more than the executor reads into memory")
            if not unzip.eof:
                raise DataError(f"{path}: is not a valid gzip file (it ends early)")
            parts.append(part)
            raw = unzip.unused_data
    except zlib.error as e:
        raise DataError(f"{path}: is not a valid gzip file ({e})") from None
    return b"".join(parts)


def _idx(path: PathLike, magic: int, what: str) -> tuple[tuple[int, ...], bytes]:
    """The dimensions and body of an IDX file whose magic number must be ``magic``."""
    data = _read(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes, shorter than an IDX magic number")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(
            f"{path}: magic number 0x{found:08x} is not an IDX {what} file (0x{magic:08x})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated: {len(data)} bytes, shorter than its {header}-byte header"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    body = data[header:]
    expected = math.prod(dims)  # exact: a forged header may promise more than 2**63 bytes
    shape = "x".join(str(d) for d in dims)
    if len(body) < expected:
        raise DataError(
            f"{path}: truncated: header promises {shape} = {expected} bytes of data "
            f"but the file holds {len(body)}"
        )
    if len(body) > expected:
        raise DataError(
            f"{path}: {len(body) - expected} unexpected bytes after the {shape} = {expected} "
            "bytes of data its header promises"
        )
    if dims[0] == 0:
        raise DataError(f"{path}: holds no {what}s (count 0 in its header)")
    return dims, body


def _pixels(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float32) / np.float32(255.0)


def load_idx(images_path: PathLike, labels_path: PathLike, name: str = "mnist") -> Dataset:
    """MNIST-style IDX images ``(N, 1, rows, cols)`` in ``[0, 1]`` and their labels."""
    dims, body = _idx(images_path, IDX_IMAGES, "image")
    n, rows, cols = dims
    if rows == 0 or cols == 0:
        raise DataError(f"{images_path}: images of {rows}x{cols} pixels hold nothing")
    (n_labels,), labels = _idx(labels_path, IDX_LABELS, "label")
    if n_labels != n:
        raise DataError(f"{labels_path}: {n_labels} labels for the {n} images in {images_path}")
    x = _pixels(np.frombuffer(body, dtype=np.uint8).reshape(n, 1, rows, cols))
    return Dataset(x, np.frombuffer(labels, dtype=np.uint8), name)


def load_cifar10(paths: PathLike | Sequence[PathLike], name: str = "cifar10") -> Dataset:
    """CIFAR-10 binary batches, concatenated in the order given: ``(N, 3, 32, 32)``, ``[0, 1]``."""
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise DataError("cifar10: no batch files given")
    xs, ys = [], []
    for path in paths:
        data = _read(path)
        if len(data) == 0 or len(data) % CIFAR_RECORD:
            raise DataError(
                f"{path}: {len(data)} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 "
                f"records (truncated, or not a CIFAR-10 binary batch)"
            )
        records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
        labels = records[:, 0]
        bad = np.flatnonzero(labels >= CIFAR_CLASSES)
        if bad.size:
            raise DataError(
                f"{path}: record {bad[0]} has label {labels[bad[0]]}, not a CIFAR-10 class "
                f"(0-{CIFAR_CLASSES - 1}); is this a CIFAR-100 file?"
            )
        xs.append(_pixels(records[:, 1:].reshape(-1, *CIFAR_SHAPE)))
        ys.append(labels)
    return Dataset(np.concatenate(xs), np.concatenate(ys), name)


def load_npz(path: PathLike, x_key: str = "x", y_key: str = "y", name: str = "npz") -> Dataset:
    """Images ``x_key`` (``uint8`` pixels, scaled to ``[0, 1]``, or floats, kept as they are;
    ``(N, ...)``) and integer labels ``y_key`` ``(N,)`` from an ``.npz`` archive."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: is not a readable .npz archive ({e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, not an .npz archive")
    with archive:
        for key in (x_key, y_key):
            if key not in archive.files:
                raise DataError(f"{path}: no array {key!r} (it holds {sorted(archive.files)})")
        try:
            x, y = archive[x_key], archive[y_key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"{path}: cannot read its arrays ({e})") from None
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{path}: {x_key!r} has shape {x.shape}; expected (N, ...) with N >= 1")
    if x.dtype == np.uint8:
        x = _pixels(x)
    elif np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise DataError(f"{path}: {x_key!r} holds NaN or infinite values")
    else:
        raise DataError(f"{path}: {x_key!r} has dtype {x.dtype}; expected uint8 pixels or floats")
    if y.shape != (x.shape[0],):
        raise DataError(
            f"{path}: {y_key!r} has shape {y.shape}; expected ({x.shape[0]},), one label per sample"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {y_key!r} has dtype {y.dtype}; expected integer labels")
    if y.min() < 0:
        raise DataError(f"{path}: {y_key!r} holds a negative label ({y.min()})")
    return Dataset(x, y, name)


def load_text(
    path: PathLike,
    seq_len: int,
    stride: int | None = None,
    vocab_size: int | None = None,
    name: str = "text",
) -> TextDataset:
    """A UTF-8 text file as next-character samples: ``x[j] = ids[i : i + seq_len]`` and
    ``y[j] = ids[i + 1 : i + seq_len + 1]`` for ``i = j * stride`` (``stride`` defaults to
    ``seq_len``: windows that do not overlap) while ``i + seq_len + 1 <= len(text)``; a tail too
    short for one more window is left out. Ids are the sorted distinct characters' positions;
    with ``vocab_size`` the text may hold at most that many. No newline translation (a carriage
    return is a character like any other); a gzipped file is decompressed first."""
    stride = seq_len if stride is None else stride
    if seq_len < 1 or stride < 1 or (vocab_size is not None and vocab_size < 1):
        raise ValueError(
            f"load_text: seq_len, stride and vocab_size must be at least 1; "
            f"got {seq_len}, {stride}, {vocab_size}"
        )
    raw = _read(path)
    if not raw:
        raise DataError(f"{path}: is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None
    if len(text) < seq_len + 1:
        raise DataError(
            f"{path}: holds {len(text)} characters; one sample of seq_len {seq_len} "
            f"needs {seq_len + 1}"
        )
    # UTF-32 gives one code point per character; np.unique sorts them as Python sorts str
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    chars, ids = np.unique(codes, return_inverse=True)
    if vocab_size is not None and len(chars) > vocab_size:
        raise DataError(
            f"{path}: holds {len(chars)} distinct characters, more than vocab: {vocab_size}"
        )
    # windows are strided views of the id sequence: O(len(text)) memory whatever the stride
    n = (len(text) - seq_len - 1) // stride + 1
    windows = np.lib.stride_tricks.sliding_window_view
    x = windows(ids.astype(np.float32), seq_len)[::stride][:n]
    y = windows(ids.astype(np.int64)[1:], seq_len)[::stride][:n]
    return TextDataset(x, y, name, tuple(chr(c) for c in chars))


# ---- scenario specs ----------------------------------------------------------------------------

# kind -> (required keys, optional keys), besides "kind"
_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "mnist": (frozenset({"images", "labels"}), frozenset()),
    "fashion_mnist": (frozenset({"images", "labels"}), frozenset()),
    "cifar10": (frozenset({"batches"}), frozenset()),
    "npz": (frozenset({"path"}), frozenset({"x_key", "y_key"})),
    "digits": (frozenset(), frozenset()),
    "synthetic": (frozenset({"samples", "classes", "seed"}), frozenset({"shape"})),
    "text": (frozenset({"path", "seq_len"}), frozenset({"vocab", "stride"})),
}


def open_dataset(spec: Mapping, base_dir: PathLike = ".", where: str = "dataset") -> Dataset:
    """The dataset a scenario-style mapping describes, e.g. ``{kind: mnist, images: PATH,
    labels: PATH}``, ``{kind: cifar10, batches: [PATH, ...]}``, ``{kind: npz, path: PATH}``,
    ``{kind: digits}``, ``{kind: synthetic, samples: N, classes: K, seed: S, shape: [C, H, W]}``
    (shape optional, default ``[1, 8, 8]``) or ``{kind: text, path: PATH, seq_len: S}`` with
    optional ``vocab: V`` (at most V distinct characters) and ``stride: K`` (default S).
    Relative paths are resolved against ``base_dir``; ``where`` names the spec in error messages
    (e.g. ``"run.yaml: data"``)."""
    if not isinstance(spec, Mapping):
        raise DataError(f"{where}: expected a mapping with a 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _KEYS:
        raise DataError(f"{where}.kind: unknown dataset kind {kind!r} (known: {', '.join(_KEYS)})")
    required, optional = _KEYS[kind]
    missing = sorted(required - spec.keys())
    if missing:
        raise DataError(f"{where}: a {kind} dataset needs {', '.join(missing)}")
    unknown = sorted(str(k) for k in spec.keys() - required - optional - {"kind"})
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)} for a {kind} dataset")

    def path(key: str, value: object) -> Path:
        if not isinstance(value, str | Path) or not str(value):
            raise DataError(f"{where}.{key}: expected a file path, got {value!r}")
        return Path(base_dir) / Path(value).expanduser()

    def integer(key: str, low: int) -> int:
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"{where}.{key}: expected an integer >= {low}, got {value!r}")
        return value

    def text(key: str, default: str) -> str:
        value = spec.get(key, default)
        if not isinstance(value, str):
            raise DataError(f"{where}.{key}: expected a string, got {value!r}")
        return value

    if kind in ("mnist", "fashion_mnist"):
        return load_idx(path("images", spec["images"]), path("labels", spec["labels"]), kind)
    if kind == "cifar10":
        batches = spec["batches"]
        if not isinstance(batches, list | tuple) or not batches:
            raise DataError(f"{where}.batches: expected a non-empty list of paths, got {batches!r}")
        return load_cifar10([path(f"batches[{i}]", p) for i, p in enumerate(batches)])
    if kind == "npz":
        return load_npz(path("path", spec["path"]), text("x_key", "x"), text("y_key", "y"))
    if kind == "digits":
        return digits()
    if kind == "text":
        seq_len = integer("seq_len", 1)
        stride = integer("stride", 1) if "stride" in spec else None
        vocab = integer("vocab", 1) if "vocab" in spec else None
        return load_text(path("path", spec["path"]), seq_len, stride, vocab)
    shape = spec.get("shape", [1, 8, 8])
    if (
        not isinstance(shape, list | tuple)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise DataError(f"{where}.shape: expected a list of positive integers, got {shape!r}")
    return synthetic(integer("samples", 1), tuple(shape), integer("classes", 2), integer("seed", 0))

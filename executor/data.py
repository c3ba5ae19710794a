"""Training data for the executor: the ``Dataset`` (and ``TextDataset``) the executor trains
on, with its shards and batches, and small bundled and generated sets for tests and demos
(scikit-learn's digits, ``synthetic``). Files in real formats are read by
``executor/loaders.py``. Nothing is ever downloaded.

Every image dataset is ``float32`` images NCHW (or ``(N, features)`` after ``flatten``) and
``int64`` class labels ``(N,)``; a text dataset is ``float32`` token ids ``(N, seq_len)`` and
``int64`` per-position labels ``(N, seq_len)``. Byte pixels become ``[0, 1]`` by dividing by 255.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from simulator.errors import UserError

SEPARATION = 6.0  # synthetic(): mean distance between class centres, in noise std devs

PathLike = str | Path


class DataError(UserError):
    """A dataset file or dataset spec is missing or malformed; the message names which and why."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Samples ``x`` (float32, ``(N, ...)`` with ndim >= 2) and their labels ``y`` (int64): either
    ``(N,)``, one class per sample, or ``(N, ...)``, a row of labels per sample (per-position
    targets such as next tokens). Only the first axes must agree.

    The arrays are stored as read-only views so that a frozen Dataset stays what it was.
    ``shard``, ``batches`` and ``flatten`` slice along the first axis and keep the labels' shape.
    """

    x: np.ndarray
    y: np.ndarray
    name: str

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float32).view()
        y = np.asarray(self.y, dtype=np.int64).view()
        if x.ndim < 2:
            raise ValueError(
                f"{self.name}: x has shape {x.shape}; expected (N, ...) with ndim >= 2"
            )
        n = x.shape[0]
        if y.ndim < 1 or y.shape[0] != n:
            raise ValueError(
                f"{self.name}: y has shape {y.shape}; expected ({n},) or ({n}, ...), "
                "one label or one row of labels per sample"
            )
        x.flags.writeable = False
        y.flags.writeable = False
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def shard(self, rank: int, size: int) -> Dataset:
        """Rank ``rank``'s contiguous slice of ``size`` near-equal parts (the first ``N % size``
        ranks get one sample more, as ``np.array_split`` does); the shards partition the data."""
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"shard: rank {rank} is not in [0, {size})")
        n = len(self)
        lo = rank * (n // size) + min(rank, n % size)
        hi = lo + n // size + (1 if rank < n % size else 0)
        # replace() keeps a subclass and its extra fields (a TextDataset's vocab)
        return dataclasses.replace(
            self, x=self.x[lo:hi], y=self.y[lo:hi], name=f"{self.name}[{rank}/{size}]"
        )

    def batches(
        self,
        batch: int,
        start_step: int = 0,
        steps: int | None = None,
        part: tuple[int, int] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(x, y)`` batches in file order, wrapping around at the end: step ``s`` holds samples
        ``(s * batch + i) % N`` for ``i < batch``. Starts at step ``start_step`` (a resumed run
        starts where its checkpoint stopped); endless unless ``steps`` is given. With
        ``part=(offset, count)`` each batch is only its samples ``offset .. offset + count - 1``
        (a rank's share of the global batch: it touches no other sample). No shuffling, so
        every run sees the same batches."""
        n = len(self)
        if batch < 1:
            raise ValueError(f"{self.name}: batch {batch} must be at least 1")
        if start_step < 0:
            raise ValueError(f"{self.name}: start_step {start_step} must not be negative")
        if n == 0:
            raise ValueError(f"{self.name}: no samples to batch")
        offset, count = part if part is not None else (0, batch)
        if offset < 0 or count < 0 or offset + count > batch:
            raise ValueError(f"{self.name}: part {part} is not within a batch of {batch}")
        step = start_step
        while steps is None or step < start_step + steps:
            index = (np.arange(offset, offset + count) + (step * batch) % n) % n
            yield self.x.take(index, axis=0), self.y.take(index, axis=0)
            step += 1

    def flatten(self) -> Dataset:
        """The same samples as ``(N, features)`` rows, for MLPs."""
        return dataclasses.replace(self, x=self.x.reshape(len(self), -1))


@dataclasses.dataclass(frozen=True, eq=False)
class TextDataset(Dataset):
    """Character windows of a text: ``x`` token ids ``(N, seq_len)`` as float32, ``y`` the
    next-character ids ``(N, seq_len)``; ``vocab[i]`` is the character of id ``i``."""

    vocab: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        vocab = tuple(self.vocab)
        single = all(isinstance(c, str) and len(c) == 1 for c in vocab)
        if not single or len(set(vocab)) < len(vocab):
            raise ValueError(f"{self.name}: vocab must be distinct single characters")
        object.__setattr__(self, "vocab", vocab)

    def decode(self, ids: Sequence[float] | np.ndarray) -> str:
        """The text a 1-D sequence of token ids (a row of ``x`` or ``y``) spells."""
        ids = np.asarray(ids)
        whole = ids.astype(np.int64)
        valid = np.all(whole == ids) and np.all((whole >= 0) & (whole < len(self.vocab)))
        if ids.ndim != 1 or not valid:
            raise ValueError(
                f"{self.name}: decode needs a 1-D sequence of whole ids in [0, {len(self.vocab)})"
            )
        return "".join(self.vocab[i] for i in whole)

    def encode(self, text: str) -> np.ndarray:
        """The int64 token ids of ``text`` (every character must be in the vocabulary)."""
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(f"{self.name}: characters {unknown} are not in the vocabulary")
        return np.array([index[c] for c in text], dtype=np.int64)


# ---- bundled and generated data ----------------------------------------------------------------


def digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 samples, 10 classes, shipped inside
    the package: no download), ``(1797, 1, 8, 8)`` scaled from 0-16 to ``[0, 1]``."""
    from sklearn.datasets import load_digits  # a dev/test dependency: imported only when asked

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / np.float32(16.0)
    return Dataset(x, bunch.target, "digits")


def synthetic(
    n: int, shape: Sequence[int] = (1, 8, 8), classes: int = 10, seed: int = 0
) -> Dataset:
    """A learnable generated dataset: each class is a unit Gaussian blob in a 16-dimensional
    latent space, projected linearly to ``shape`` and squashed into ``(0, 1)`` with a sigmoid.
    Classes are balanced and shuffled; the same arguments give the same data."""
    shape = tuple(int(d) for d in shape)
    if n < 1 or classes < 2 or not shape or min(shape) < 1:
        raise ValueError(
            f"synthetic: need samples >= 1, classes >= 2 and a shape of positive sizes; "
            f"got samples={n}, classes={classes}, shape={shape}"
        )
    latent = 16
    # random centres lie SEPARATION noise standard deviations apart on average: with 10 classes
    # a nearest-centroid classifier reaches about 93%, so there is something left to learn
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=SEPARATION / np.sqrt(2 * latent), size=(classes, latent))
    projection = rng.normal(size=(latent, int(np.prod(shape)))) / np.sqrt(latent)
    y = rng.permutation(np.arange(n) % classes)
    z = centres[y] + rng.normal(size=(n, latent))
    x = 1.0 / (1.0 + np.exp(-(z @ projection)))
    return Dataset(x.reshape(n, *shape), y, f"synthetic-{classes}c-s{seed}")

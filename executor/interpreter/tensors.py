"""Where a rank's part of a tensor sits in the whole: the plan's split axes as array axes, the
local shape of a layer's output, and cutting a whole tensor to it.

A tensor is ``(N, ...)`` per the layer's per-sample shape. A plan's collective ``axis`` names
how members' parts fit together: ``batch`` (axis 0), ``feature`` (the channels of an image or a
vector, axis 1; the last axis of a sequence ``(N, seq, features)``), ``sequence`` (axis 1 of a
sequence tensor, sequence parallelism) or ``flat`` (a flat buffer of parameters, ZeRO). Every
split is contiguous: member r of p holds ``chunk(n, p, r)``.
"""

from __future__ import annotations

import numpy as np

from executor.interpreter.model import chunk


def axis_index(axis: str, ndim: int) -> int:
    """The array axis a plan's split axis names, for a tensor of ``ndim`` dimensions."""
    if axis == "batch":
        return 0
    if axis == "sequence":
        return 1
    if axis == "feature":
        return ndim - 1 if ndim == 3 else 1
    raise ValueError(f"no array axis for a split along {axis!r}")


def local_shape(per_sample: tuple[int, ...], samples: int, *, feature: tuple[int, int] | None,
                sequence: tuple[int, int] | None) -> tuple[int, ...]:
    """The shape a rank holds of ``samples`` samples: the features it holds (``(shard,
    shards)``) and the part of the sequence (sequence parallelism)."""
    shape = [samples, *per_sample]
    if feature is not None and feature[1] > 1:
        ax = axis_index("feature", len(shape))
        lo, hi = chunk(shape[ax], feature[1], feature[0])
        shape[ax] = hi - lo
    if sequence is not None and sequence[1] > 1:
        lo, hi = chunk(shape[1], sequence[1], sequence[0])
        shape[1] = hi - lo
    return tuple(shape)


def cut(x: np.ndarray, want: tuple[int, ...], *, feature: tuple[int, int] | None,
        sequence: tuple[int, int] | None) -> np.ndarray:
    """A host array ``x`` cut to the shape ``want`` where it is whole along a split axis (a
    whole gradient for a layer that holds a slice of its output)."""
    if tuple(x.shape) == tuple(want):
        return x
    index = [slice(None)] * x.ndim
    if feature is not None and feature[1] > 1:
        ax = axis_index("feature", x.ndim)
        if x.shape[ax] != want[ax]:
            index[ax] = slice(*chunk(x.shape[ax], feature[1], feature[0]))
    if sequence is not None and sequence[1] > 1 and x.shape[1] != want[1]:
        index[1] = slice(*chunk(x.shape[1], sequence[1], sequence[0]))
    return np.ascontiguousarray(x[tuple(index)])

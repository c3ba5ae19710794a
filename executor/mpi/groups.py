"""Communicators for the plan's groups, and tensors cut into members' parts and put back.

A split tensor is cut along the samples, the features or the sequence
(``executor.interpreter.tensors``) into
contiguous parts, member r of p holding part r (the first ``total % p`` parts one row longer), as
the plan's strategies split layers and batches.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from executor.interpreter.model import chunk
from executor.interpreter.tensors import axis_index
from executor.mpi import collectives as xcomm
from simulator.plan import Plan


def _rows(group: MPI.Comm, total: int, per_row: int) -> list[tuple[int, int]]:
    """Element bounds of every member's rows when ``total`` rows are split as the plan splits
    features and samples (contiguous, the first ``total % p`` one longer)."""
    p = group.Get_size()
    return [(a * per_row, b * per_row) for a, b in (chunk(total, p, r) for r in range(p))]


def group_communicators(comm: MPI.Comm, plan: Plan) -> dict[str, MPI.Comm]:
    """One communicator per plan group (this rank's), created collectively in sorted group
    order: every rank of ``comm`` must call it, members or not."""
    rank = comm.Get_rank()
    out = {}
    for name in sorted(plan.groups):
        members = plan.groups[name]
        color = 0 if rank in members else MPI.UNDEFINED
        sub = comm.Split(color, members.index(rank) if rank in members else 0)
        if sub != MPI.COMM_NULL:
            out[name] = sub
    return out


def gather_parts(group: MPI.Comm, local: np.ndarray, axis: str, total: int) -> np.ndarray:
    """Members' parts put back together along the samples (``batch``), the features or the
    sequence (``executor.interpreter.tensors.axis_index``); ``total`` is the whole length of that
    axis."""
    ax = axis_index(axis, local.ndim)
    moved = np.ascontiguousarray(np.moveaxis(local, ax, 0)) if ax else local
    per_row = int(np.prod(moved.shape[1:]))
    out = xcomm.allgather(group, moved.ravel(), total * per_row, _rows(group, total, per_row))
    full = out.reshape(total, *moved.shape[1:])
    return np.ascontiguousarray(np.moveaxis(full, 0, ax)) if ax else full


def scatter_parts(group: MPI.Comm, whole: np.ndarray, axis: str) -> np.ndarray:
    """The sum over members of a whole tensor, cut to this member's samples, features or part
    of the sequence."""
    ax = axis_index(axis, whole.ndim)
    moved = np.ascontiguousarray(np.moveaxis(whole, ax, 0)) if ax else whole
    total, per_row = moved.shape[0], int(np.prod(moved.shape[1:]))
    part = xcomm.reduce_scatter(group, moved.ravel().copy(), _rows(group, total, per_row))
    local = part.reshape(-1, *moved.shape[1:]).copy()
    return np.ascontiguousarray(np.moveaxis(local, 0, ax)) if ax else local

"""Collectives as phases of concurrent flows: the abstraction that keeps large rings linear.

A ring all-reduce of S bytes over p ranks is 2(p-1) steps of S/p bytes to the next rank. Played
message by message it costs p * 2(p-1) events; here each ring edge carries *one* flow of
2(p-1)/p * S bytes and the phase pays 2(p-1) times the slowest edge's latency:

    T_ring = 2(p-1) * alpha + 2(p-1)/p * S / B            (Thakur, Rabenseifner & Gropp 2005)

Kept: every edge's bandwidth is shared with all other traffic at that moment (max-min fair), the
slowest edge bounds the ring, per-step latency. Dropped: step-level lock-step jitter (a rate
change mid-collective is averaged over the whole phase rather than felt step by step).

Tree: binomial reduce then broadcast, ceil(log2 p) rounds each way of full-size messages:
    T_tree = 2 * ceil(log2 p) * (alpha + S / B)
Hierarchical: intra-node ring reduce-scatter, inter-node ring all-reduce of S/p_local among the
ranks with the same local index (p_local rings share the NICs), intra-node ring all-gather.
``mpi``: MPICH's large-message all-reduce (Rabenseifner: reduce-scatter by recursive halving plus
all-gather by recursive doubling): ring-equal bandwidth term, 2*ceil(log2 p) latency terms.
All-gather / reduce-scatter (S = the full gathered buffer): T = (p-1) * alpha + (p-1)/p * S / B.
Broadcast: binomial tree, ceil(log2 p) * (alpha + S/B).

Reductions on CPU ranks: the sum is computed on the host after each receive, not inside the
transfer as NCCL's GPU kernels do, so a CPU rank also pays for adding what it received (read two
buffers, write one: 3 bytes moved per byte reduced, at the device's memory bandwidth).
``reduced_bytes`` is what one rank adds: (p-1)/p * S for ring, Rabenseifner (``mpi``) and
reduce-scatter, ceil(log2 p) * S on a binomial tree's critical path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Pair = tuple[str, str]  # (source device, destination device)


@dataclass(frozen=True)
class Phase:
    """Concurrent point-to-point flows that all finish before the next phase starts."""

    pairs: tuple[Pair, ...]
    bytes_per_flow: float
    latency_steps: int  # how many times the slowest pair's latency this phase pays


def _ring(devs: Sequence[str]) -> tuple[Pair, ...]:
    p = len(devs)
    return tuple((devs[i], devs[(i + 1) % p]) for i in range(p))


def _tree_rounds(devs: Sequence[str], nbytes: float, reduce: bool) -> list[Phase]:
    p = len(devs)
    rounds = []
    k = 1
    while k < p:
        pairs = tuple((devs[i], devs[i - k]) for i in range(k, p, 2 * k))
        rounds.append(Phase(pairs, nbytes, 1))
        k *= 2
    if not reduce:
        rounds = [Phase(tuple((b, a) for a, b in ph.pairs), nbytes, 1) for ph in reversed(rounds)]
    return rounds


def phases(collective: str, algorithm: str, devs: Sequence[str], nbytes: float,
           node_of) -> list[Phase]:  # noqa: ANN001
    """The flow phases of one collective over ``devs`` (in group order)."""
    p = len(devs)
    if p <= 1 or nbytes <= 0:
        return []
    if collective in ("allgather", "reduce_scatter"):
        return [Phase(_ring(devs), (p - 1) / p * nbytes, p - 1)]
    if collective == "broadcast":
        return _tree_rounds(devs, nbytes, reduce=False)
    if collective != "allreduce":
        raise ValueError(f"unknown collective {collective!r}")
    if algorithm == "ring":
        return [Phase(_ring(devs), 2 * (p - 1) / p * nbytes, 2 * (p - 1))]
    if algorithm == "mpi":
        return [Phase(_ring(devs), 2 * (p - 1) / p * nbytes, 2 * math.ceil(math.log2(p)))]
    if algorithm == "tree":
        return _tree_rounds(devs, nbytes, True) + _tree_rounds(devs, nbytes, False)
    if algorithm == "hierarchical":
        return _hierarchical(devs, nbytes, node_of)
    raise ValueError(f"unknown all-reduce algorithm {algorithm!r}")


def allreduce_terms(algorithm: str, p: int, nbytes: float) -> tuple[int, float]:
    """(latency steps, bytes one rank moves) of an all-reduce: the terms a measured fit
    (``parasim calibrate``) prices as steps x latency + volume / bandwidth."""
    log = math.ceil(math.log2(p)) if p > 1 else 0
    if algorithm == "tree":
        return 2 * log, 2 * log * nbytes
    return (2 * (p - 1) if algorithm == "ring" else 2 * log), 2 * (p - 1) / p * nbytes


def fit_allreduce(terms: Sequence[tuple[float, float]], seconds: Sequence[float]
                  ) -> tuple[float, float]:
    """(seconds per step, seconds per byte) of ``steps x latency + volume / bandwidth`` fitted
    to measured all-reduces (``terms``: ``allreduce_terms`` of each), least squares of the
    relative error (small messages count as much as large ones), latency at least 0."""
    import numpy as np

    a, t = np.asarray(terms, float), np.asarray(seconds, float)
    w = 1.0 / t
    (lat, per_byte), *_ = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)
    if lat < 0:
        lat, per_byte = 0.0, float(np.median(t / a[:, 1]))
    if per_byte <= 0:
        per_byte = float(t.max() / a[:, 1].max())
    return float(lat), float(per_byte)


def reduced_bytes(collective: str, algorithm: str, p: int, nbytes: float) -> float:
    """Bytes one rank adds into its buffer during the collective (see the module docstring)."""
    if p <= 1 or collective not in ("allreduce", "reduce_scatter"):
        return 0.0
    if collective == "allreduce" and algorithm == "tree":
        return math.ceil(math.log2(p)) * nbytes
    return (p - 1) / p * nbytes


def _hierarchical(devs: Sequence[str], nbytes: float, node_of) -> list[Phase]:  # noqa: ANN001
    by_node: dict[int, list[str]] = {}
    for d in devs:
        by_node.setdefault(node_of(d), []).append(d)
    groups = list(by_node.values())
    local = min(len(g) for g in groups)
    if len(groups) == 1 or local != max(len(g) for g in groups):
        return [Phase(_ring(devs), 2 * (len(devs) - 1) / len(devs) * nbytes,
                      2 * (len(devs) - 1))]
    n = len(groups)
    out = []
    if local > 1:
        intra = tuple(pair for g in groups for pair in _ring(g))
        out.append(Phase(intra, (local - 1) / local * nbytes, local - 1))
    inter = tuple(pair for i in range(local) for pair in _ring([g[i] for g in groups]))
    out.append(Phase(inter, 2 * (n - 1) / n * nbytes / local, 2 * (n - 1)))
    if local > 1:
        out.append(Phase(intra, (local - 1) / local * nbytes, local - 1))
    return out


@dataclass
class Rendezvous:
    """The members of one collective (or barrier) of one iteration arriving: how many are
    expected, how many came, when it started, and the event that fires when it is done."""

    size: int
    done: Any  # a simpy.Event
    arrived: int = 0
    start: float = 0.0

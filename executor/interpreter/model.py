"""The model's layers as real tensors on one rank: parameters (whole or a shard), forward and
backward through a kernel backend.

Every rank draws every layer's *whole* initial weights from the scenario's seed in the same
order, then keeps its shard, so a partitioned model starts exactly where the unpartitioned one
does. Shards follow the plan's split states (``simulator/strategies/sharding.py``): ``col`` keeps
a slice of the outputs (neurons / filters), ``row`` a slice of the inputs (its output is a
partial sum; only shard 0 adds the bias), ``local`` works on a slice of a split input, ``rep`` is
whole. Slices are contiguous, rank r of K owning ``chunk_bounds`` r.

Executable layer kinds: dense, conv, pool, act (relu, sigmoid, tanh, GELU), flatten, dropout,
softmax (the loss, over classes or over a sequence's tokens), rbm (a sigmoid dense layer for
fine-tuning), and the transformer's: embedding (token and position tables), layer norm,
attention (the causal multi-head core) and add (a residual connection, several inputs). Others
are a clear error. Transformer tensors are ``(N, seq, features)``: split features are the last
axis, a split sequence (sequence parallelism) the second.

An embedding's parameters are ``w`` (the token table, ``(vocab, hidden)``; split by vocabulary
rows, as a ``row`` layer's weight is) and ``b`` (the position table, held whole by shard 0, as a
``row`` layer's bias is); a layer norm's are ``w`` (gamma) and ``b`` (beta). The output layer tied
to the embedding (``tied_to``) owns none: it uses the embedding's token table on its rank, or a
copy of it held on a later pipeline stage (``w`` of its own, kept equal by the plan's ``tied``
all-reduce).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from simulator.errors import UserError

EXECUTABLE = frozenset({"dense", "conv", "pool", "act", "flatten", "dropout", "softmax", "rbm",
                        "embedding", "norm", "attention", "add"})


class ExecutorError(UserError):
    """A plan or model the executor cannot run, with the reason (a user-facing message)."""


def chunk(n: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous chunk ``index`` of ``n`` items in ``parts`` (the first n % parts one longer)."""
    base, extra = divmod(n, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


@dataclass
class Layer:
    name: str
    node: dict[str, Any]
    state: str = "rep"
    shard: int = 0
    shards: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    grads: dict[str, Any] = field(default_factory=dict)
    velocity: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.node["kind"]

    @property
    def split(self) -> bool:
        return self.state in ("col", "local")

    def out_slice(self) -> tuple[int, int]:
        """The slice of this layer's output features (channels) this rank holds."""
        full = feature_count(self.node["out_shape"])
        return chunk(full, self.shards, self.shard) if self.split else (0, full)


def feature_count(shape: tuple[int, ...]) -> int:
    """Features of a per-sample shape: channels of an image, the last axis of a sequence."""
    return shape[-1] if len(shape) == 2 else shape[0]


def check_executable(graph: nx.DiGraph) -> None:
    for n, node in graph.nodes(data=True):
        if node["kind"] not in EXECUTABLE:
            raise ExecutorError(f"layer {n!r} is a {node['kind']} layer, which the executor "
                                f"cannot run yet (it runs: {', '.join(sorted(EXECUTABLE))})")
        if node["kind"] == "norm" and node.get("norm_type", "batch") != "layer":
            raise ExecutorError(f"layer {n!r} is a batch norm, which the executor cannot run "
                                "yet (it runs layer norms)")
        if graph.in_degree(n) > 1 and node["kind"] != "add":
            raise ExecutorError(f"layer {n!r} has several inputs; the executor joins branches "
                                "only by adding them (residual connections)")
        # the kernels take KH x KW from the weights but one stride and one padding for both
        # axes (``executor/kernels/base.py``); a pool's window is square too
        keys = {"conv": ("stride", "padding"), "pool": ("kernel", "stride", "padding")}
        for key in keys.get(node["kind"], ()):
            if len(set(node[key])) != 1:
                raise ExecutorError(
                    f"layer {n!r} has {key} {tuple(node[key])}; the executor runs a "
                    f"{node['kind']} only with the same {key} along height and width"
                    + (" (a rectangular kernel is fine)" if node["kind"] == "conv" else ""))


def init_weights(graph: nx.DiGraph, order: list[str], seed: int) -> dict[str, dict[str, Any]]:
    """Whole initial weights of every layer, drawn in model order from ``seed`` (He-uniform for
    ReLU networks' dense and conv layers, Glorot-uniform otherwise; zero biases)."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for n in order:
        node = graph.nodes[n]
        kind = node["kind"]
        if node.get("tied_to"):  # uses another layer's weight
            continue
        if kind == "dense" or kind == "rbm":
            fan_in, fan_out = node["in_shape"][-1], node["out_shape"][-1]
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
            out[n] = {"w": w, "b": np.zeros(fan_out, np.float32)}
            if kind == "rbm":
                out[n]["b_vis"] = np.zeros(fan_in, np.float32)
        elif kind == "conv":
            oc, cin = node["out_shape"][0], node["in_shape"][0] // node["groups"]
            kh, kw = node["kernel"]
            fan_in = cin * kh * kw
            limit = np.sqrt(6.0 / fan_in)
            w = rng.uniform(-limit, limit, (oc, cin, kh, kw)).astype(np.float32)
            out[n] = {"w": w, "b": np.zeros(oc, np.float32)}
        elif kind == "embedding":
            # GPT-2's initialisation: token table N(0, 0.02), position table N(0, 0.01)
            (seq, hidden) = node["out_shape"]
            out[n] = {"w": rng.normal(0, 0.02, (node["vocab"], hidden)).astype(np.float32),
                      "b": rng.normal(0, 0.01, (seq, hidden)).astype(np.float32)}
        elif kind == "norm":
            width = node["out_shape"][-1]
            out[n] = {"w": np.ones(width, np.float32), "b": np.zeros(width, np.float32)}
    return out


def shard_params(layer: Layer, whole: dict[str, Any]) -> dict[str, Any]:
    """This rank's part of a layer's whole parameters."""
    if not whole:
        return {}
    kind, state, k, s = layer.kind, layer.state, layer.shards, layer.shard
    w, b = whole["w"], whole["b"]
    if state == "rep" or k == 1:
        return {key: v.copy() for key, v in whole.items()}
    if kind in ("dense", "rbm"):
        if state == "col":
            lo, hi = chunk(w.shape[1], k, s)
            return {"w": w[:, lo:hi].copy(), "b": b[lo:hi].copy()}
        if state == "row":
            lo, hi = chunk(w.shape[0], k, s)
            out = {"w": w[lo:hi].copy()}
            if s == 0:
                out["b"] = b.copy()
            return out
    if kind == "conv" and state in ("col", "local"):
        lo, hi = chunk(w.shape[0], k, s)
        return {"w": w[lo:hi].copy(), "b": b[lo:hi].copy()}
    if kind == "embedding" and state == "row":  # a slice of the vocabulary
        lo, hi = chunk(w.shape[0], k, s)
        out = {"w": w[lo:hi].copy()}
        if s == 0:
            out["b"] = b.copy()
        return out
    raise ExecutorError(f"layer {layer.name!r}: a {kind} layer cannot be split as {state!r}")


def pair(v: Any) -> int:
    """A square kernel / stride / padding (the executor's kernels take one size)."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ExecutorError(f"non-square kernel, stride or padding {v} is not supported")
        return int(v[0])
    return int(v)

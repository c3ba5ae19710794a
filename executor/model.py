"""The model's layers as real tensors on one rank: parameters (whole or a shard), forward and
backward through a kernel backend.

Every rank draws every layer's *whole* initial weights from the scenario's seed in the same
order, then keeps its shard, so a partitioned model starts exactly where the unpartitioned one
does. Shards follow the plan's split states (``simulator/strategies/sharding.py``): ``col`` keeps
a slice of the outputs (neurons / filters), ``row`` a slice of the inputs (its output is a
partial sum; only shard 0 adds the bias), ``local`` works on a slice of a split input, ``rep`` is
whole. Slices are contiguous, rank r of K owning ``chunk_bounds`` r.

Executable layer kinds: dense, conv, pool, act (relu, sigmoid, tanh), flatten, dropout, softmax
(the loss), rbm (a sigmoid dense layer for fine-tuning). Others are a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

EXECUTABLE = frozenset({"dense", "conv", "pool", "act", "flatten", "dropout", "softmax", "rbm"})


class ExecutorError(Exception):
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
        full = self.node["out_shape"][0]
        return chunk(full, self.shards, self.shard) if self.split else (0, full)


def check_executable(graph: nx.DiGraph) -> None:
    for n, node in graph.nodes(data=True):
        if node["kind"] not in EXECUTABLE:
            raise ExecutorError(f"layer {n!r} is a {node['kind']} layer, which the executor "
                                f"cannot run yet (it runs: {', '.join(sorted(EXECUTABLE))})")
        if graph.in_degree(n) > 1:
            raise ExecutorError(f"layer {n!r} has several inputs; the executor runs "
                                "sequential networks")


def init_weights(graph: nx.DiGraph, order: list[str], seed: int) -> dict[str, dict[str, Any]]:
    """Whole initial weights of every layer, drawn in model order from ``seed`` (He-uniform for
    ReLU networks' dense and conv layers, Glorot-uniform otherwise; zero biases)."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for n in order:
        node = graph.nodes[n]
        kind = node["kind"]
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
    raise ExecutorError(f"layer {layer.name!r}: a {kind} layer cannot be split as {state!r}")


def pair(v: Any) -> int:
    """A square kernel / stride / padding (the executor's kernels take one size)."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ExecutorError(f"non-square kernel, stride or padding {v} is not supported")
        return int(v[0])
    return int(v)


class Forward:
    """Forward and backward of one layer on one rank through a backend."""

    def __init__(self, backend: Any):
        self.k = backend

    def forward(self, layer: Layer, x: Any, *, mask: Any = None) -> tuple[Any, Any]:
        """(output, saved-for-backward)."""
        k, node, p = self.k, layer.node, layer.params
        kind = layer.kind
        if kind in ("dense", "rbm"):
            x2 = x.reshape(x.shape[0], -1)
            y = k.gemm(x2, p["w"])
            if "b" in p:
                y = y + p["b"]
            if kind == "rbm":
                y = k.act_forward(y, "sigmoid")
            return y, x2
        if kind == "conv":
            groups = 1 if layer.state == "local" else node["groups"]
            y = k.conv_forward(x, p["w"], p["b"], pair(node["stride"]), pair(node["padding"]),
                               groups)
            return y, x
        if kind == "pool":
            y, argmax = k.pool_forward(x, pair(node["kernel"]), pair(node["stride"]),
                                       pair(node["padding"]), node["mode"])
            return y, (x.shape, argmax)
        if kind == "act":
            y = k.act_forward(x, node["fn"])
            return y, y
        if kind == "flatten":
            return x.reshape(x.shape[0], -1), x.shape
        if kind == "dropout":
            return (x * mask, mask) if mask is not None else (x, None)
        if kind == "softmax":
            return x, None  # the loss head: see ``loss``
        raise ExecutorError(f"cannot run layer kind {kind!r}")

    def backward(self, layer: Layer, dy: Any, saved: Any, y: Any) -> Any:
        """The input gradient; weight gradients are *added* to ``layer.grads``."""
        k, node, p = self.k, layer.node, layer.params
        kind = layer.kind
        if kind in ("dense", "rbm"):
            if kind == "rbm":
                dy = k.act_backward(y, dy, "sigmoid")
            x2 = saved
            dx, dw, db = k.dense_backward(x2, p["w"], dy)
            self._accumulate(layer, "w", dw)
            if "b" in p:
                self._accumulate(layer, "b", db)
            return dx
        if kind == "conv":
            groups = 1 if layer.state == "local" else node["groups"]
            dx, dw, db = k.conv_backward(saved, p["w"], dy, pair(node["stride"]),
                                         pair(node["padding"]), groups)
            self._accumulate(layer, "w", dw)
            self._accumulate(layer, "b", db)
            return dx
        if kind == "pool":
            shape, argmax = saved
            return k.pool_backward(dy, shape, pair(node["kernel"]), pair(node["stride"]),
                                   pair(node["padding"]), node["mode"], argmax)
        if kind == "act":
            return k.act_backward(saved, dy, node["fn"])
        if kind == "flatten":
            return dy.reshape(saved)
        if kind == "dropout":
            return dy * saved if saved is not None else dy
        if kind == "softmax":
            return dy
        raise ExecutorError(f"cannot run layer kind {kind!r}")

    def _accumulate(self, layer: Layer, key: str, g: Any) -> None:
        if key in layer.grads:
            self.k.axpy(1.0, g, layer.grads[key])
        else:
            layer.grads[key] = g

    def loss(self, logits: Any, labels: Any, normaliser: int) -> tuple[float, int, Any]:
        """Cross-entropy summed over these samples / ``normaliser`` (the global batch, so that
        every gradient reduction in the plan is a plain sum); returns (loss sum, correct
        predictions, d logits)."""
        n = logits.shape[0]
        mean, grad = self.k.softmax_xent(logits, labels)
        self.k.scale(n / normaliser, grad)
        host = np.asarray(self.k.to_host(logits))
        correct = int((host.argmax(axis=1) == np.asarray(self.k.to_host(labels))).sum())
        return mean * n, correct, grad

"""Forward and backward of one layer (or a rank's shard of it) through a kernel backend, and
the loss: the arithmetic of a layer, whatever plan it runs under (``executor/interpreter/model.py``
says how
parameters are split; the runner moves the tensors).

Sequence tensors ``(N, seq, features)`` go through the dense kernels as ``N x seq`` rows. The
loss is the mean cross-entropy over every prediction of the global batch: a sample's class, or
every token of a sequence (its next token). A rank whose output layer holds a slice of the
vocabulary computes its slice's per-token statistics (``loss_partial``); once every slice's
statistics are gathered (the plan's ``xent:`` collective), ``loss_combine`` gives the loss and
each slice's gradient, as Megatron-LM's vocabulary-parallel cross entropy does.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from executor.interpreter.model import ExecutorError, Layer, chunk, pair


def rows(x: Any) -> Any:
    """A sequence tensor's ``(N * seq, features)`` view; other tensors as they are. (Shapes are
    indexed from the front: a GPU backend's arrays take no negative indices.)"""
    return x.reshape(x.shape[0] * x.shape[1], x.shape[2]) if x.ndim == 3 else x


def like(y: Any, x: Any) -> Any:
    """Rows ``y`` (N * seq, features) back in the sequence layout of ``x``."""
    return y.reshape(x.shape[0], x.shape[1], y.shape[1]) if x.ndim == 3 else y


def flat(a: Any) -> Any:
    """A 1-d view of a contiguous array."""
    size = 1
    for d in a.shape:
        size *= d
    return a.reshape(size)


class Forward:
    """Forward and backward of one layer on one rank through a backend."""

    def __init__(self, backend: Any):
        self.k = backend
        self._pos: dict[tuple[int, int], Any] = {}
        # a layer's gradients are added to here (the compute stream) and taken away by a
        # collective on the comm stream (ZeRO's per-micro-batch reduce-scatter, while the next
        # micro-batch's backward runs): an add and a take never interleave, or a gradient
        # added into an array already taken would be lost
        self.grad_lock = threading.Lock()

    def forward(self, layer: Layer, x: Any, *, mask: Any = None,
                table: Any = None) -> tuple[Any, Any]:
        """(output, saved-for-backward). ``x`` is a list for an ``add`` layer; ``table`` the
        token table a tied output layer uses (the embedding's, or its copy)."""
        k, node, p = self.k, layer.node, layer.params
        kind = layer.kind
        if kind == "dense" and table is not None:  # the output layer tied to the embedding
            x2 = rows(x)
            y = k.gemm(x2, table, trans_b=True)
            return like(y, x), x2
        if kind in ("dense", "rbm"):
            x2 = rows(x) if x.ndim == 3 else x.reshape(x.shape[0], -1)
            y = k.gemm(x2, p["w"])
            if "b" in p:
                y = y + p["b"]
            if kind == "rbm":
                y = k.act_forward(y, "sigmoid")
            return like(y, x), x2
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
            if node["fn"] == "gelu":
                return k.gelu_forward(x), x
            y = k.act_forward(x, node["fn"])
            return y, y
        if kind == "flatten":
            return x.reshape(x.shape[0], -1), x.shape
        if kind == "dropout":
            return (x * mask, mask) if mask is not None else (x, None)
        if kind == "softmax":
            return x, None  # the loss head: see ``loss``
        if kind == "norm":
            x2 = rows(x)
            y, mean, rstd = k.layer_norm_forward(x2, p["w"], p["b"])
            return y.reshape(x.shape), (x2, mean, rstd)
        if kind == "attention":
            heads = node["heads"] // layer.shards if layer.split else node["heads"]
            y, probs = k.attention_forward(x, heads, node.get("causal", True))
            return y, (x, probs, heads)
        if kind == "embedding":
            ids = k.to_device(np.asarray(k.to_host(x)).astype(np.int64))
            # a split embedding holds a slice of the vocabulary's rows (a sequence-split one,
            # replicated, the whole table)
            lo = chunk(node["vocab"], layer.shards, layer.shard)[0] if layer.state == "row" else 0
            y = k.embedding_forward(ids, p["w"], lo)
            if "b" in p:  # the position table, on shard 0 (a partial sum elsewhere): looked
                # up by position as the token table is by id, on the device
                y = k.add(y, k.embedding_forward(self._positions(ids), p["b"], 0))
            return y, (ids, lo)
        if kind == "add":
            y = x[0]
            for other in x[1:]:
                y = k.add(y, other)
            return y, None
        raise ExecutorError(f"cannot run layer kind {kind!r}")

    def backward(self, layer: Layer, dy: Any, saved: Any, y: Any, *,
                 table: Any = None, sink: Layer | None = None) -> Any:
        """The input gradient; weight gradients are *added* to ``layer.grads`` (a tied output
        layer's to the table's owner, ``sink``: the embedding, or the layer's own copy)."""
        k, node, p = self.k, layer.node, layer.params
        kind = layer.kind
        if kind == "dense" and table is not None:
            x2, dy2 = saved, rows(dy)
            dx = k.gemm(dy2, table)
            self._accumulate(sink or layer, "w", k.gemm(dy2, x2, trans_a=True))
            return like(dx, dy)
        if kind in ("dense", "rbm"):
            if kind == "rbm":
                dy = k.act_backward(y, dy, "sigmoid")
            x2 = saved
            dx, dw, db = k.dense_backward(x2, p["w"], rows(dy))
            self._accumulate(layer, "w", dw)
            if "b" in p:
                self._accumulate(layer, "b", db)
            return like(dx, dy)
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
            if node["fn"] == "gelu":
                return k.gelu_backward(saved, dy)
            return k.act_backward(saved, dy, node["fn"])
        if kind == "flatten":
            return dy.reshape(saved)
        if kind == "dropout":
            return dy * saved if saved is not None else dy
        if kind in ("softmax", "add"):
            return dy
        if kind == "norm":
            x2, mean, rstd = saved
            dx, dg, db = k.layer_norm_backward(x2, p["w"], rows(dy), mean, rstd)
            self._accumulate(layer, "w", dg)
            self._accumulate(layer, "b", db)
            return dx.reshape(dy.shape)
        if kind == "attention":
            qkv, probs, heads = saved
            return k.attention_backward(qkv, probs, dy, heads)
        if kind == "embedding":
            ids, lo = saved
            self._accumulate(layer, "w", k.embedding_backward(ids, dy, lo, p["w"].shape[0]))
            if "b" in p:  # the position table's gradient: summed over the batch
                self._accumulate(layer, "b", k.embedding_backward(
                    self._positions(ids), dy, 0, p["b"].shape[0]))
            return None
        raise ExecutorError(f"cannot run layer kind {kind!r}")

    def _positions(self, ids: Any) -> Any:
        """Every token's position, (N, seq) ids on the device, made once per shape."""
        shape = (ids.shape[0], ids.shape[1])
        pos = self._pos.get(shape)
        if pos is None:
            pos = self._pos[shape] = self.k.to_device(
                np.broadcast_to(np.arange(shape[1], dtype=np.int64), shape).copy())
        return pos

    def _accumulate(self, layer: Layer, key: str, g: Any) -> None:
        with self.grad_lock:
            if key in layer.grads:
                self.k.axpy(1.0, g, layer.grads[key])
            else:
                layer.grads[key] = g

    def loss(self, logits: Any, labels: Any, normaliser: int) -> tuple[float, int, Any]:
        """Cross-entropy summed over these predictions / ``normaliser`` (the global batch's
        predictions, so that every gradient reduction in the plan is a plain sum); returns
        (loss sum, correct predictions, d logits)."""
        z, lab = rows(logits), flat(labels)
        n = z.shape[0]
        mean, grad = self.k.softmax_xent(z, lab)
        self.k.scale(n / normaliser, grad)
        host = np.asarray(self.k.to_host(z))
        correct = int((host.argmax(axis=1) == np.asarray(self.k.to_host(lab))).sum())
        return mean * n, correct, grad.reshape(logits.shape)

    def loss_partial(self, logits: Any, labels: Any, lo: int) -> np.ndarray:
        """This vocabulary slice's per-prediction (max, sum of exp(logit - max), target logit
        or 0), as a (3, rows) host array."""
        mx, se, tg = self.k.xent_partial(rows(logits), flat(labels), lo)
        return np.stack([np.asarray(self.k.to_host(v), np.float32) for v in (mx, se, tg)])

    def loss_combine(self, stats: np.ndarray, logits: Any, labels: Any, lo: int,
                     normaliser: int) -> tuple[float, int, Any]:
        """From every slice's statistics ``(slices, 3, rows)``: the loss sum, the correct
        predictions (the target's logit is the largest) and this slice's gradient."""
        mx, se, tg = stats[:, 0], stats[:, 1], stats[:, 2]
        gmax = mx.max(axis=0)
        gsum = (se.astype(np.float64) * np.exp(mx.astype(np.float64) - gmax)).sum(axis=0)
        target = tg.sum(axis=0)  # only the slice holding the label gives it
        loss = float((np.log(gsum) + gmax - target).sum())
        correct = int((target >= gmax).sum())
        k = self.k
        grad = k.xent_partial_grad(rows(logits), flat(labels), lo,
                                   k.to_device(gmax.astype(np.float32)),
                                   k.to_device(gsum.astype(np.float32)), 1.0 / normaliser)
        return loss, correct, grad.reshape(logits.shape)

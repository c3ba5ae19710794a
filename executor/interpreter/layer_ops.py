"""A rank's layers in a period: what each reads (the data, a producer's output as this rank holds
it, a gathered whole), forward, backward, and the gradient of an output summed over its consumers
(residual connections make a layer's output feed several). Mixed into RankRunner, whose state
(``store`` of tensors by (kind, layer, micro-batch), ``layers``, ``graph``) it uses.

Store kinds: ``act`` (a layer's output as this rank holds it), ``act_full`` (gathered whole over
the features or the sequence), ``saved`` (what its backward needs), ``din`` (the gradient of its
input), ``dout`` (of its output, summed), ``dout_in`` (that gradient received from another stage),
``dout_full`` (gathered over the sequence), ``xent`` (a vocabulary slice's loss statistics).

Recomputation: a layer that a ``recompute`` op runs again drops what it keeps for backward after
its first forward, and its output once every consumer on this rank has read it when they are all
run again with it (inside its checkpoint unit); the recomputed forward makes them again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from executor.interpreter.model import ExecutorError, Layer, chunk
from executor.interpreter.tensors import cut, local_shape
from executor.mpi import collectives as xcomm
from simulator.plan import Compute


class LayerOps:
    def _preds(self, name: str) -> list[str]:
        return list(self.graph.predecessors(name))

    def _here(self, name: str) -> list[str]:
        """``name``'s consumers computed on this rank."""
        return [s for s in self.graph.successors(name) if s in self.layers]

    def _split_of(self, name: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """How this rank holds ``name``'s output: (feature shard, shards), (sequence shard,
        shards), each None when whole."""
        layer = self.layers.get(name)
        if layer is None:
            return None, None
        feature = (layer.shard, layer.shards) if layer.split else None
        sequence = (layer.shard, layer.shards) if name in self.seq else None
        return feature, sequence

    def _fit(self, name: str, value: Any) -> Any:
        """A tensor for ``name``'s output cut to the part this rank holds of it."""
        feature, sequence = self._split_of(name)
        if feature is None and sequence is None:
            return value
        per_sample = tuple(self.graph.nodes[name]["out_shape"])
        want = local_shape(per_sample, value.shape[0], feature=feature, sequence=sequence)
        if tuple(value.shape) == want:
            return value
        host = np.asarray(self._to_host(value), np.float32)
        return self._to_device(cut(host, want, feature=feature, sequence=sequence))

    def _input(self, layer: Layer, pred: str | None, op: Compute) -> Any:
        if pred is None:
            lo = op.micro_batch * op.samples
            return self.inputs[lo:lo + op.samples]
        # a whole consumer reads the gathered tensor (over features or the sequence, or over
        # the batch in the hybrid scheme); a shard-by-shard consumer reads this rank's slice
        full = ("act_full", pred, op.micro_batch)
        if layer.state in ("col", "rep") and layer.name not in self.seq and full in self.store:
            return self.store[full]
        x = self._get(("act", pred, op.micro_batch), layer.name)
        if layer.state in ("local", "row") and pred not in self.layers:
            per_sample = tuple(self.graph.nodes[pred]["out_shape"])
            want = local_shape(per_sample, x.shape[0], feature=(layer.shard, layer.shards),
                               sequence=None)
            if tuple(x.shape) != want:
                x = self._to_device(cut(np.asarray(self._to_host(x), np.float32), want,
                                        feature=(layer.shard, layer.shards), sequence=None))
        return x

    def _await_inputs(self, op: Compute) -> None:
        """Complete the receives this compute op reads, before its timed span starts."""
        mb = op.micro_batch
        if op.phase == "fwd":
            keys = [("act", p, mb) for p in self._preds(op.layer)]
        else:
            keys = [("dout_in", op.layer, mb)]
        for key in keys:
            if key in self.pending:
                self._get(key, op.layer)

    def _get(self, key: tuple[str, str, int], who: str) -> Any:
        if key in self.pending:
            buf, req = self.pending.pop(key)
            xcomm.wait(req)
            self.store[key] = self._to_device(buf)
        if key not in self.store:
            raise ExecutorError(f"rank {self.rank}: {who} needs {key[0]}:{key[1]} of micro-batch "
                                f"{key[2]}, which the plan never produced here")
        return self.store[key]

    def _table(self, layer: Layer) -> tuple[Any, Layer | None]:
        """A tied output layer's token table and the layer its gradient goes to: its own copy,
        or the embedding's table on this rank; (None, None) for other layers."""
        owner = layer.node.get("tied_to")
        if not owner:
            return None, None
        if "w" in layer.params:
            return layer.params["w"], layer
        return self.layers[owner].params["w"], self.layers[owner]

    def _forward(self, op: Compute) -> None:
        layer = self.layers[op.layer]
        preds = self._preds(op.layer)
        xs = [self._input(layer, p, op) for p in preds] or [self._input(layer, None, op)]
        x = xs if layer.kind == "add" else xs[0]
        mask = self._dropout_mask(layer, op, x) if layer.kind == "dropout" else None
        table, _ = self._table(layer)
        y, saved = self.fwd.forward(layer, x, mask=mask, table=table)
        mb = op.micro_batch
        self.store[("act", op.layer, mb)] = y
        self.store[("saved", op.layer, mb)] = saved
        if layer.kind == "softmax" and not op.recompute:
            lo = mb * op.samples  # labels hold this rank's samples only
            labels = self.labels[lo:lo + op.samples]
            normaliser = self.step_samples * self.per_sample
            if layer.state == "local" and layer.shards > 1:  # a slice of the vocabulary
                first = chunk(layer.node["out_shape"][-1], layer.shards, layer.shard)[0]
                self.store[("xent", op.layer, mb)] = (
                    self.fwd.loss_partial(y, labels, first), labels, first, normaliser)
                return
            loss, correct, grad = self.fwd.loss(y, labels, normaliser)
            self._count(loss, correct, labels)
            self.store[("dout", op.layer, mb)] = grad
        if not op.recompute:
            self._drop(op.layer, preds, mb)

    def _count(self, loss: float, correct: int, labels: Any) -> None:
        self.loss_sum += loss
        self.correct += correct
        self.counted += int(np.prod(labels.shape))

    def _drop(self, name: str, preds: list[str], mb: int) -> None:
        """After a first forward: what recomputation will make again is not kept. A layer run
        again drops what it keeps for backward at once, and its output once every consumer
        on this rank has read it, when they are all run again with it (it is inside their
        checkpoint unit; a unit's output, its next unit's input, stays)."""
        self._fwd_done.add((name, mb))
        if (name, mb) in self.redo:
            self.store.pop(("saved", name, mb), None)
        for p in preds:
            if (p, mb) not in self.redo:
                continue
            here = self._here(p)
            block = self.graph.nodes[p].get("block") or p
            if all((c, mb) in self._fwd_done and (c, mb) in self.redo
                   and (self.graph.nodes[c].get("block") or c) == block for c in here):
                self.store.pop(("act", p, mb), None)
                self.store.pop(("act_full", p, mb), None)

    def _dropout_mask(self, layer: Layer, op: Compute, x: Any) -> Any:
        """None: the executor trains with dropout as the identity (its inference-time form), so
        that any partition of the batch computes the same function (docs/executor.md)."""
        return None

    def _dout(self, name: str, mb: int) -> Any:
        """The gradient of ``name``'s output, as this rank holds the output: the sum of what
        its consumers on this rank gave back and what came from another rank."""
        key = ("dout", name, mb)
        if key in self.store:
            return self.store[key]
        total = None
        if ("dout_in", name, mb) in self.store or ("dout_in", name, mb) in self.pending:
            total = self._get(("dout_in", name, mb), name)
        for c in self._here(name):
            part = self._fit(name, self._get(("din", c, mb), name))
            total = part if total is None else self.k.add(total, part)
        if total is None:
            raise ExecutorError(f"rank {self.rank}: no gradient reaches {name}'s output in "
                                f"micro-batch {mb}")
        self.store[key] = total
        return total

    def _backward(self, op: Compute) -> None:
        layer = self.layers[op.layer]
        mb = op.micro_batch
        full = ("dout_full", op.layer, mb)  # gathered over the sequence (sequence parallelism)
        dy = self.store[full] if full in self.store else self._dout(op.layer, mb)
        saved = self.store[("saved", op.layer, mb)]
        y = self.store.get(("act", op.layer, mb))
        table, sink = self._table(layer)
        dx = self.fwd.backward(layer, dy, saved, y, table=table, sink=sink)
        if dx is not None:
            self.store[("din", op.layer, mb)] = dx

"""What a rank's tensors do between ranks: pipeline messages (several layers' tensors packed
flat where a boundary carries them), the collectives of tensor and sequence parallelism, the
vocabulary-parallel loss's statistics, gradient all-reduces (data parallelism, the layer norms
of sequence parallelism, a tied embedding and its copy), and ZeRO's segments (``zero``). Mixed
into RankRunner.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from executor.interpreter.model import ExecutorError, feature_count
from executor.interpreter.tensors import local_shape
from executor.mpi import collectives as xcomm
from executor.mpi.groups import gather_parts, scatter_parts
from simulator.plan import Collective, Recv, Send


class TensorExchange:
    def _tensor(self, name: str, mb: int) -> tuple[tuple[str, str, int], Any]:
        kind, _, layers = name.partition(":")
        first = layers.split(",")[0]
        if kind == "dout":  # the gradient of L's output, as this rank holds L's output
            return ("dout", first, mb), self._dout(first, mb)
        key = (kind, first, mb)
        return key, self._get(key, name)

    def _boundary(self, name: str, mb: int) -> np.ndarray:
        """What crosses a pipeline boundary: one layer's tensor, or several packed flat."""
        kind, _, layers = name.partition(":")
        names = layers.split(",")
        parts = [np.asarray(self._to_host(self._tensor(f"{kind}:{n}", mb)[1]), np.float32)
                 for n in names]
        return np.ascontiguousarray(parts[0] if len(parts) == 1 else
                                    np.concatenate([p.ravel() for p in parts]))

    def _send(self, op: Send) -> None:
        host = self._boundary(op.tensor, op.micro_batch)
        self.sends.append(xcomm.send_tensor(self.comm, host, op.peer, xcomm.tag_of(op.tag)))

    def _post_recv(self, op: Recv) -> None:
        kind, _, layers = op.tensor.partition(":")
        names = layers.split(",")
        # the tensor as this rank holds it: a sequence split stays split across the boundary
        shapes = []
        for n in names:
            per_sample = tuple(self.graph.nodes[n]["out_shape"])
            feature, sequence = self._receiving_split(n, kind)
            shapes.append(local_shape(per_sample, 1, feature=feature, sequence=sequence)[1:])
        per = sum(int(np.prod(s)) for s in shapes)
        samples = int(op.bytes) // 4 // max(1, per)  # fp32 on the wire
        store = "act" if kind == "act" else "dout_in"
        if len(names) == 1:
            buf, req = xcomm.recv_tensor(self.comm, (samples, *shapes[0]), op.peer,
                                         xcomm.tag_of(op.tag))
            self.pending[(store, names[0], op.micro_batch)] = (buf, req)
            return
        buf, req = xcomm.recv_tensor(self.comm, samples * per, op.peer, xcomm.tag_of(op.tag))
        xcomm.wait(req)
        at = 0
        for n, shape in zip(names, shapes):
            size = samples * int(np.prod(shape))
            self.store[(store, n, op.micro_batch)] = self._to_device(
                buf[at:at + size].reshape(samples, *shape))
            at += size

    def _receiving_split(self, name: str, kind: str) -> tuple:
        """How a tensor from another stage arrives: sequence-split when the layer that made it
        is sequence-split there (its consumers here are too), else whole."""
        if kind == "dout":
            return self._split_of(name)
        seq = name in self.seq
        layer = next(iter(self._here(name)), None)
        shard = self.layers[layer].shard if layer else 0
        shards = self.layers[layer].shards if layer else 1
        return None, ((shard, shards) if seq else None)

    def _collective(self, op: Collective) -> None:
        group = self.groups[op.group]
        kind = op.tensor.partition(":")[0]
        if op.axis == "flat":  # ZeRO's segments
            if op.collective == "reduce_scatter":
                self._zero_scatter(op)
            else:
                self._zero_gather(op)
            return
        if kind == "wgrad" and self.averaging:
            self._average_params(group, op)
            return
        if kind == "wgrad":
            self._allreduce_grads(group, op)
            return
        if kind == "tied":  # the token table of an embedding and of its copy: their sum
            self._allreduce_grads(group, op, keys=("w",))
            return
        if kind == "xent":
            self._loss_stats(group, op)
            return
        key, value = self._tensor(op.tensor, op.micro_batch)
        host = np.ascontiguousarray(self._to_host(value), dtype=np.float32)
        p = group.Get_size()
        if op.collective == "allreduce":
            xcomm.allreduce(group, host, op.algorithm)
            self.store[key] = self._to_device(host)
        elif op.collective == "allgather":
            node = self.graph.nodes[key[1]]
            total = (host.shape[0] * p if op.axis == "batch" else
                     node["out_shape"][0] if op.axis == "sequence" else
                     feature_count(node["out_shape"]))
            whole = self._to_device(gather_parts(group, host, op.axis, total))
            self.store[("dout_full" if kind == "dout" else "act_full", key[1], key[2])] = whole
        elif op.collective == "reduce_scatter":
            self.store[key] = self._to_device(scatter_parts(group, host, op.axis))
        else:
            raise ExecutorError(f"collective {op.collective!r} is not supported")

    def _loss_stats(self, group: MPI.Comm, op: Collective) -> None:
        """A loss over a split vocabulary: every slice's per-prediction statistics gathered,
        then the loss and this slice's gradient."""
        name = op.tensor.partition(":")[2]
        stats, labels, first, normaliser = self.store.pop(("xent", name, op.micro_batch))
        p = group.Get_size()
        flat = xcomm.allgather(group, stats.ravel(), stats.size * p)
        logits = self.store[("act", name, op.micro_batch)]
        loss, correct, grad = self.fwd.loss_combine(flat.reshape(p, *stats.shape), logits,
                                                    labels, first, normaliser)
        self._count(loss, correct, labels)
        self.store[("dout", name, op.micro_batch)] = grad

    def _average_params(self, group: MPI.Comm, op: Collective) -> None:
        """Model averaging (``local_steps`` > 1): the replicas take their last local step, then
        their parameters are summed by the plan's all-reduce and divided by their number: the
        same bytes as the gradients' all-reduce, and every replica leaves with the mean model
        (as a DBN's master averages; Stich 2019's local SGD). Momentum stays each replica's."""
        names = [n for n in op.tensor.partition(":")[2].split(",") if n]
        self._update(names)
        parts = [(layer, key) for n in names if (layer := self.layers.get(n)) is not None
                 for key in sorted(layer.params)]
        hosts = [np.asarray(self._to_host(layer.params[key]), dtype=np.float32).ravel()
                 for layer, key in parts]
        flat = np.concatenate(hosts) if hosts else np.empty(0, np.float32)
        xcomm.allreduce(group, flat, op.algorithm)
        flat /= np.float32(group.Get_size())
        at = 0
        for (layer, key), h in zip(parts, hosts):
            w = layer.params[key]
            mean = flat[at:at + h.size].reshape(w.shape)
            if isinstance(w, np.ndarray):
                w[...] = mean  # in place: the kernels and the state keep this array
            else:
                layer.params[key] = self._to_device(np.ascontiguousarray(mean))
            at += h.size

    def _allreduce_grads(self, group: MPI.Comm, op: Collective,
                         keys: tuple[str, ...] | None = None) -> None:
        names = [n for n in op.tensor.partition(":")[2].split(",") if n]
        # an RBM layer's visible bias gets no gradient from back-propagation: not exchanged
        parts = [(layer, key) for n in names if (layer := self.layers.get(n)) is not None
                 for key in sorted(layer.params if keys is None else keys)
                 if key in layer.grads]
        hosts = [np.asarray(self._to_host(layer.grads[key]), dtype=np.float32).ravel()
                 for layer, key in parts]
        size = sum(h.size for h in hosts)
        flat = self._flat_bufs.get(op.id)
        if flat is None or flat.size != size:  # kept across periods: no fresh pages each time
            flat = self._flat_bufs[op.id] = np.empty(size, np.float32)
        if hosts:
            np.concatenate(hosts, out=flat)
        xcomm.allreduce(group, flat, op.algorithm)
        at = 0
        for (layer, key), h in zip(parts, hosts):
            shape = layer.grads[key].shape
            layer.grads[key] = self._to_device(flat[at:at + h.size].reshape(shape))
            at += h.size

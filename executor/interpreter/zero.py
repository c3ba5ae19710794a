"""ZeRO on a rank (Rajbhandari et al. 2020): its 1/N of the optimizer state, the gradients and,
at stage 3, the parameters, over the plan's data-parallel group. Mixed into RankRunner.

The plan names every segment it shards (``simulator/strategies/zero.py``): a gradient bucket
(stages 1, 2) or a unit's layers (stage 3), as ``wgrad:L1,L2,...`` reduce-scatters and
``param:L1,L2,...`` all-gathers along the ``flat`` axis. A segment's flat buffer is its layers'
parameters in that order, each layer's in its keys' sorted order; rank r of N owns the
contiguous chunk ``chunk(size, N, r)``. After a reduce-scatter a rank holds the sum of its chunk
of the gradients (added up over micro-batches); the update runs SGD with momentum on its chunk
of the parameters with its chunk of the velocity, and an all-gather gives every rank the updated
parameters (stages 1, 2), or gathers them for a unit's forward or backward only (stage 3, which
keeps nothing else of them: a gathered unit's parameters are freed after its last forward of a
micro-batch and after its gradients are scattered). The arithmetic is the one-device update's,
element by element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from executor.interpreter.model import chunk
from executor.mpi import collectives as xcomm
from simulator.plan import Collective, Compute


@dataclass
class Segment:
    layers: list[str]
    keys: list[tuple[str, str, tuple[int, ...]]]  # (layer, parameter, shape) in flat order
    size: int
    lo: int = 0
    hi: int = 0
    grad: Any = None  # this rank's chunk of the summed gradients
    param: Any = None  # this rank's chunk of the parameters (stage 3: the only copy)
    velocity: Any = None


class ZeroState:
    def _zero_setup(self) -> None:
        """Segments from the plan's flat collectives; at stage 3 the rank keeps only its
        chunks of the parameters."""
        self.zero = int(self.plan.options.get("zero", 0) or 0)
        self.segments: dict[str, Segment] = {}
        self.free_after: dict[int, list[str]] = {}  # op id -> segments whose gathered params go
        if not self.zero:
            return
        last_fwd: dict[tuple[str, int], int] = {}
        for op in self.prog.ops:
            if isinstance(op, Collective) and op.axis == "flat":
                seg = op.tensor.split(":", 1)[1]
                if seg not in self.segments:
                    names = [n for n in seg.split(",") if n]
                    keys = [(n, k, self.shapes[n][k]) for n in names for k in
                            sorted(self.shapes.get(n, {}))]
                    size = sum(int(np.prod(s)) for _, _, s in keys)
                    group = self.groups[op.group]
                    lo, hi = chunk(size, group.Get_size(), group.Get_rank())
                    self.segments[seg] = Segment(names, keys, size, lo, hi)
                    self.segment_group = op.group
            if isinstance(op, Compute) and op.phase == "fwd" and not op.recompute:
                for seg, s in self.segments.items():
                    if op.layer in s.layers:
                        last_fwd[seg, op.micro_batch] = op.id
        # a table a tied output layer reads later stays gathered until its gradients are
        # scattered (FSDP keeps a shared parameter in the outer unit)
        owners = {layer.node.get("tied_to") for layer in self.layers.values()} - {None}
        if self.zero >= 3:
            for (seg, _), op_id in last_fwd.items():
                if not owners & set(self.segments[seg].layers):
                    self.free_after.setdefault(op_id, []).append(seg)
        for s in self.segments.values():
            flat = self._flat_params(s)
            s.param = self.k.to_device(flat[s.lo:s.hi].copy())
            s.velocity = self.k.zeros((s.hi - s.lo,))
        if self.zero >= 3:
            for s in self.segments.values():
                for n in s.layers:
                    self.layers[n].params.clear()

    def _flat_params(self, s: Segment) -> np.ndarray:
        parts = [np.asarray(self._to_host(self.layers[n].params[k]), np.float32).ravel()
                 for n, k, _ in s.keys]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _unpack(self, s: Segment, flat: np.ndarray) -> None:
        at = 0
        for n, k, shape in s.keys:
            size = int(np.prod(shape))
            self.layers[n].params[k] = self._to_device(flat[at:at + size].reshape(shape))
            at += size

    def _zero_scatter(self, op: Collective) -> None:
        """Reduce-scatter a segment's gradients; keep this rank's chunk of the sum."""
        s = self.segments[op.tensor.split(":", 1)[1]]
        group = self.groups[op.group]
        with self.fwd.grad_lock:  # taken whole: the next micro-batch adds to fresh arrays
            taken = [self.layers[n].grads.pop(k, None) for n, k, _ in s.keys]
        parts = []
        for (_, _, shape), g in zip(s.keys, taken):
            parts.append(np.zeros(int(np.prod(shape)), np.float32) if g is None else
                         np.asarray(self._to_host(g), np.float32).ravel())
        flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        bounds = [chunk(s.size, group.Get_size(), r) for r in range(group.Get_size())]
        mine = self._to_device(xcomm.reduce_scatter(group, flat, bounds).copy())
        if s.grad is None:
            s.grad = mine
        else:
            self.k.axpy(1.0, mine, s.grad)
        if self.zero >= 3:
            self._free(s)

    def _zero_gather(self, op: Collective) -> None:
        """All-gather a segment's parameters from every rank's chunk."""
        self._gather(self.segments[op.tensor.split(":", 1)[1]], self.groups[op.group])

    def _gather(self, s: Segment, group: Any) -> None:
        bounds = [chunk(s.size, group.Get_size(), r) for r in range(group.Get_size())]
        local = np.asarray(self._to_host(s.param), np.float32)
        self._unpack(s, xcomm.allgather(group, local, s.size, bounds))

    def _zero_update(self) -> None:
        """SGD with momentum on this rank's chunks; parameters outside every segment (none in
        the plans ZeRO builds) as without ZeRO."""
        for s in self.segments.values():
            if s.grad is not None:
                self.k.sgd_momentum(s.param, s.grad, s.velocity, self.lr, self.momentum)
                s.grad = None
        sharded = {n for s in self.segments.values() for n in s.layers}
        for name, layer in self.layers.items():
            if name in sharded:
                continue
            for key, w in layer.params.items():
                g = layer.grads.get(key)
                if g is not None:
                    self.k.sgd_momentum(w, g, layer.velocity[key], self.lr, self.momentum)
            layer.grads.clear()

    def _free(self, s: Segment) -> None:
        for n in s.layers:
            self.layers[n].params.clear()

    def _after_op(self, op_id: int) -> None:
        for seg in self.free_after.get(op_id, ()):
            self._free(self.segments[seg])

    def _zero_materialise(self) -> None:
        """Every segment's whole parameters on this rank (stage 3, for ``whole_weights``)."""
        if self.zero < 3:
            return
        for s in self.segments.values():
            self._gather(s, self.groups[self.segment_group])

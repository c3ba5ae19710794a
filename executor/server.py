"""Parameter-server ranks of the synchronous PS variant: each holds one shard of the model's
flattened parameters, receives every worker's gradient shard, sums them, applies SGD with
momentum, and sends the new parameters back (the same update data parallel applies, so the two
end with the same weights).

The flattened layout, shared with the workers: layers in model order, each layer's parameters
in sorted key order, raveled; shard j is ``chunk(total, shards, j)``.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np
from mpi4py import MPI

from executor import comm as xcomm
from executor.model import chunk, init_weights
from simulator.plan import Plan


def flat_layout(graph: nx.DiGraph, order: list[str], seed: int
                ) -> tuple[np.ndarray, list[tuple[str, str, tuple[int, ...]]]]:
    """The whole initial parameters flattened, and (layer, key, shape) in flattening order."""
    whole = init_weights(graph, order, seed)
    parts, layout = [], []
    for n in order:
        for key in sorted(whole.get(n, {})):
            parts.append(whole[n][key].ravel())
            layout.append((n, key, whole[n][key].shape))
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), layout


class ServerRunner:
    """One parameter-server shard rank."""

    def __init__(self, comm: MPI.Comm, plan: Plan, graph: nx.DiGraph, seed: int,
                 learning_rate: float, momentum: float):
        from executor.runner import group_communicators

        self.comm, self.plan = comm, plan
        group_communicators(comm, plan)  # collective: the workers create theirs
        self.workers = [r.rank for r in plan.workers()]
        servers = [r.rank for r in plan.ranks if r.role == "server"]
        self.shard = servers.index(comm.Get_rank())
        order = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
        flat, _ = flat_layout(graph, order, seed)
        lo, hi = chunk(flat.size, len(servers), self.shard)
        self.w = flat[lo:hi].copy()
        self.v = np.zeros_like(self.w)
        self.lr, self.momentum = learning_rate, momentum
        self.busy = 0.0

    def serve_period(self) -> None:
        """Receive every worker's gradient shard, update, send the parameters back."""
        bufs, reqs = [], []
        for w in self.workers:
            buf, req = xcomm.recv_tensor(self.comm, self.w.shape, w,
                                         xcomm.tag_of(f"grad{self.shard}"))
            bufs.append(buf)
            reqs.append(req)
        MPI.Request.Waitall(reqs)
        start = MPI.Wtime()
        g = np.sum(bufs, axis=0, dtype=np.float32)
        self.v *= np.float32(self.momentum)
        self.v += g
        self.w -= np.float32(self.lr) * self.v
        self.busy += MPI.Wtime() - start
        sends = [xcomm.send_tensor(self.comm, self.w, w, xcomm.tag_of(f"param{self.shard}"))
                 for w in self.workers]
        MPI.Request.Waitall(sends)


def push_pull_layout(total: int, shards: int) -> list[tuple[int, int]]:
    return [chunk(total, shards, j) for j in range(shards)]


def unflatten(flat: np.ndarray, layout: list[tuple[str, str, tuple[int, ...]]]
              ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    at = 0
    for n, key, shape in layout:
        size = int(np.prod(shape))
        out.setdefault(n, {})[key] = flat[at:at + size].reshape(shape)
        at += size
    return out

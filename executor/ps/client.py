"""A worker's side of the parameter servers: versioned pushes and pulls (the protocol is in
executor/ps/server.py), and Sandblaster's work loop. Mixed into RankRunner, whose state it uses."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from executor.mpi import collectives as xcomm
from executor.ps.server import (
    TAG_DONE,
    TAG_PARAM,
    TAG_PORTION,
    TAG_PULL,
    TAG_PUSH,
    TAG_WORK,
    unflatten,
)
from simulator.plan import Compute, PSPull, PSPush, WorkLoop


class ParameterServerClient:
    # ---- Sandblaster: work portions from the coordinator --------------------------------------
    def _work_loop(self, op: WorkLoop) -> None:
        """Ask the coordinator for a portion, run the body on its samples, until none is left;
        then tell every server this worker's pushes for the batch are all sent."""
        ask, portion = np.zeros(1, np.float32), np.zeros(1, np.int64)
        while True:
            xcomm.send(self.comm, ask, op.coordinator, TAG_WORK)
            xcomm.recv(self.comm, portion, op.coordinator, TAG_PORTION)
            p = int(portion[0])
            if p < 0:
                break
            for body_op in op.body:  # the portion's samples are "micro-batch" p of the batch
                self._run(replace(body_op, micro_batch=p) if isinstance(body_op, Compute)
                          else body_op)
        for server in self.ps_ranks:
            xcomm.send(self.comm, ask, server, TAG_DONE)

    # ---- parameter servers (executor/ps/server.py has the protocol) -----------------------------
    def _push_messages(self) -> np.ndarray:
        """The gradients accumulated since the last push, packed once into every shard's push
        message: shard j's message is ``buf[lo_j + j : hi_j + j + 1]``, its first element the
        parameter version the gradients were computed on. The buffer is kept across periods."""
        if self._push_packed:
            return self._push_buf
        buf, at = self._push_buf, 0
        for n, k, _ in self.layout:
            g = np.asarray(self._to_host(self.layers[n].grads[k]), np.float32).ravel()
            for j, (lo, hi) in enumerate(self.ps_chunks):
                a, b = max(lo, at), min(hi, at + g.size)
                if a < b:
                    buf[a + j + 1:b + j + 1] = g[a - at:b - at]
            at += g.size
        self._push_packed = True
        return buf

    def _ps_push(self, op: PSPush) -> None:
        """Send this shard's slice of the gradients accumulated since the last push, headed by
        the parameter version they were computed on; after the last shard, start afresh."""
        buf = self._push_messages()
        lo, hi = self.ps_chunks[op.shard]
        msg = buf[lo + op.shard:hi + op.shard + 1]
        msg[0] = self.versions[op.shard]
        xcomm.send(self.comm, msg, self.ps_ranks[op.shard], TAG_PUSH)
        self._pushed.add(op.shard)
        if len(self._pushed) == len(self.ps_ranks):
            self._pushed.clear()
            self._push_packed = False
            for layer in self.layers.values():
                layer.grads.clear()

    def _ps_pull(self, op: PSPull) -> None:
        """Ask the shard for its parameters and wait for them: the next step needs them."""
        lo, hi = self.ps_chunks[op.shard]
        server = self.ps_ranks[op.shard]
        xcomm.send(self.comm, np.zeros(1, np.float32), server, TAG_PULL)
        msg = self._pull_bufs[op.shard]
        xcomm.recv(self.comm, msg, server, TAG_PARAM)
        self.versions[op.shard] = int(msg[0])
        self._pulled[lo:hi] = msg[1:]
        self._pulled_shards.add(op.shard)
        if len(self._pulled_shards) == len(self.ps_ranks):
            self._pulled_shards.clear()
            for n, params in unflatten(self._pulled, self.layout).items():
                for k, v in params.items():
                    self.layers[n].params[k] = self._to_device(np.ascontiguousarray(v))

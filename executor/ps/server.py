"""Parameter-server shard ranks: each holds one shard of the model's flattened parameters.

Protocol (two-sided messages; the server always sits in MPI, so progress is guaranteed, see
docs/downpour.md): a worker *pushes* ``[version, gradient shard]`` (tag PUSH) and *pulls* by
sending a request (tag PULL) and receiving ``[version, parameter shard]`` (tag PARAM). Messages
from one worker arrive in order (MPI's non-overtaking rule), so a worker's pull after its push
sees its push applied. ``version`` counts the updates the shard has applied.

* synchronous (data parallel with ``exchange: ps``): per period, wait for every worker's push,
  sum, apply SGD with momentum (the update data parallel applies, so both end with the same
  weights), then answer every worker's pull;
* asynchronous (Downpour, Dean et al. 2012): serve messages in arrival order; apply each push at
  once (SGD, or Adagrad as DistBelief used), recording its staleness = updates applied since the
  pushing worker's fetch; stop when every worker has said it is done or is lost (the watchdog's
  heartbeats say which: a lost worker does not stop Downpour); running to a target, every
  worker says when its warm-up periods are over (tag WARM), and once every live worker has, the
  shard goes back to its initial parameters, optimizer state, version and records and answers
  each of them (WARM): their target periods start from the initial model;
* batch (Sandblaster): answer pulls, accumulate every pushed portion gradient; the first server
  is also the coordinator and hands out work portions (tag WORK) to whichever worker asks; once
  every worker has said its loop is over, the shards take one L-BFGS step together (Nocedal &
  Wright, *Numerical Optimization*, algorithm 7.4: two-loop recursion over the last ``history``
  pairs; the dot products are summed over the shards; a fixed step of the learning rate along
  the direction, no line search).

The flattened layout, shared with the workers: layers in model order, each layer's parameters
in sorted key order, raveled; shard j is ``chunk(total, shards, j)``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection
from typing import Any

import networkx as nx
import numpy as np
from mpi4py import MPI

from executor.interpreter.model import chunk, init_weights
from executor.kernels.cpu import CpuBackend
from executor.mpi import collectives as xcomm
from simulator.plan import Plan

TAG_PUSH, TAG_PULL, TAG_PARAM, TAG_DONE, TAG_RESULT = 7101, 7102, 7103, 7104, 7105
TAG_WORK, TAG_PORTION = 7107, 7108
TAG_WARM = 7110


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


class ServerRunner:
    """One parameter-server shard rank."""

    def __init__(self, comm: MPI.Comm, plan: Plan, graph: nx.DiGraph, seed: int,
                 learning_rate: float, momentum: float):
        from executor.mpi.groups import group_communicators

        self.comm, self.plan = comm, plan
        self.groups = group_communicators(comm, plan)  # collective: every rank creates its own
        self.workers = [r.rank for r in plan.workers()]
        servers = [r.rank for r in plan.ranks if r.role == "server"]
        self.shard = servers.index(comm.Get_rank())
        order = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
        flat, self.layout = flat_layout(graph, order, seed)
        self.lo, self.hi = chunk(flat.size, len(servers), self.shard)
        self.w = flat[self.lo:self.hi].copy()
        self.v = np.zeros_like(self.w)  # momentum velocity, or Adagrad's sum of squares
        self._out = np.empty(self.w.size + 1, np.float32)  # the reply to a pull
        # the update runs on the host's CPU kernels, their prange builds (as many threads as
        # Numba is given; with one, still a vectorised loop, which the serial build of
        # Adagrad's sqrt and division is not)
        self.k = CpuBackend(parallel=True)
        self.lr, self.momentum = learning_rate, momentum
        self.updater = plan.options.get("updater", "sgd")
        # compile (or load from Numba's cache) the update now, not inside the first push's
        # service: that took 0.2-0.3 s on the test machine, counted as busy and making the
        # workers that pushed first wait
        one = np.zeros(1, np.float32)
        (self.k.adagrad(one, one, one.copy(), 0.0) if self.updater == "adagrad"
         else self.k.sgd_momentum(one, one, one.copy(), 0.0, 0.0))
        self.version = 0
        self.staleness: list[int] = []
        self.busy = 0.0
        self.lost: list[int] = []
        self.pushes: dict[int, int] = {}  # Downpour: pushes applied, per worker
        self.handed: dict[int, int] = {}  # Sandblaster: portions each worker took
        self.prev: tuple[np.ndarray, np.ndarray] | None = None  # L-BFGS: last (w, g)
        self.pairs: list[tuple[np.ndarray, np.ndarray, float]] = []

    # ---- updates --------------------------------------------------------------------------
    def _apply(self, g: np.ndarray) -> None:
        start = MPI.Wtime()
        # one pass of a CPU kernel over the shard, as the simulator's server model has it
        if self.updater == "adagrad":  # Duchi et al. 2011, as DistBelief used
            self.k.adagrad(self.w, g, self.v, self.lr)
        else:  # SGD with the training's momentum (0 for plain SGD)
            self.k.sgd_momentum(self.w, g, self.v, self.lr, self.momentum)
        self.version += 1
        self.busy += MPI.Wtime() - start

    def _reply(self, worker: int) -> None:
        msg = self._out  # kept: a blocking send is done with it when it returns
        msg[0] = self.version
        msg[1:] = self.w
        xcomm.send(self.comm, msg, worker, TAG_PARAM)

    def forget(self) -> None:
        """Drop the records of the work served so far (the parameters, velocity and version
        go back with ``checkpoint.load_state``, or ``serve_async``'s restart)."""
        self.staleness.clear()
        self.busy = 0.0
        self.pushes = {w: 0 for w in self.workers}
        self.handed.clear()
        self.prev, self.pairs = None, []

    # ---- synchronous ----------------------------------------------------------------------
    def serve_period(self) -> None:
        """Every worker's push, one update, then every worker's pull."""
        msg = np.empty(self.w.size + 1, np.float32)
        total = np.zeros_like(self.w)
        # named sources, not MPI.ANY_SOURCE: with shared memory inside a node and the network
        # between nodes, MPICH's any-source receives were seen to stall (a worker's send never
        # matched); receiving from each worker in turn costs nothing here
        for w in self.workers:
            xcomm.recv(self.comm, msg, w, TAG_PUSH)
            total += msg[1:]
        self._apply(total)
        ping = np.empty(1, np.float32)
        for w in self.workers:
            xcomm.recv(self.comm, ping, w, TAG_PULL)
            self._reply(w)

    # ---- asynchronous (Downpour) ----------------------------------------------------------
    def serve_async(self, lost: Callable[[], Collection[int]], restart: bool = False) -> None:
        """Serve until every worker has said it is done or is lost (``lost()``: the ranks the
        watchdog has counted out, see executor/mpi/watchdog.py). A message from or to a worker
        that is lost meanwhile is given up; ``lost`` then lists the workers that never said
        done, and ``pushes`` counts every worker's pushes applied. With ``restart`` (a run to
        a target after warm-up periods), once every live worker has said its warm-up is over,
        go back to the initial state and answer them: the records are of what follows."""
        msg = np.empty(self.w.size + 1, np.float32)
        ping = np.empty(1, np.float32)
        done: set[int] = set()
        self.pushes = {w: 0 for w in self.workers}
        initial = (self.w.copy(), self.v.copy()) if restart else None
        warmed: set[int] = set()
        status = MPI.Status()
        turn = 0
        while True:
            gone = lost()
            live = [w for w in self.workers if w not in done and w not in gone]
            if not live:
                break
            if initial is not None and warmed.issuperset(live):
                self._restart(initial, live, lost)
                initial = None
            # poll each worker in turn (named sources: see serve_period), fairly
            found = None
            for i in range(len(live)):
                w = live[(turn + i) % len(live)]
                if self.comm.Iprobe(w, MPI.ANY_TAG, status):
                    found = w
                    break
            turn += 1
            if found is None:
                time.sleep(0.0002)
                continue
            src, tag = status.Get_source(), status.Get_tag()
            if tag == TAG_PUSH:
                if not self._finish(self.comm.Irecv(msg, src, TAG_PUSH), src, lost):
                    msg = np.empty_like(msg)  # the abandoned receive keeps the old buffer
                    continue
                self.staleness.append(self.version - int(msg[0]))
                self._apply(msg[1:])
                self.pushes[src] += 1
            elif tag == TAG_PULL:
                self.comm.Recv(ping, src, TAG_PULL)
                self._out[0] = self.version
                self._out[1:] = self.w
                if not self._finish(self.comm.Isend(self._out, src, TAG_PARAM), src, lost):
                    self._out = np.empty_like(self._out)
            elif tag == TAG_DONE:
                self.comm.Recv(ping, src, TAG_DONE)
                done.add(src)
            elif tag == TAG_WARM and initial is not None:
                self.comm.Recv(ping, src, TAG_WARM)
                warmed.add(src)
            else:
                raise RuntimeError(f"parameter server {self.comm.Get_rank()}: unexpected tag "
                                   f"{tag} from rank {src}")
        self.lost = sorted(w for w in self.workers if w not in done)

    def _restart(self, initial: tuple[np.ndarray, np.ndarray], workers: list[int],
                 lost: Callable[[], Collection[int]]) -> None:
        """The initial shard and optimizer state, version 0, no records; then the answer to
        each waiting worker (one lost meanwhile is left)."""
        self.w[...], self.v[...] = initial
        self.version = 0
        self.forget()
        ping = np.zeros(1, np.float32)
        for w in workers:
            self._finish(self.comm.Isend(ping, w, TAG_WARM), w, lost)

    @staticmethod
    def _finish(req: MPI.Request, peer: int, lost: Callable[[], Collection[int]]) -> bool:
        """Wait for ``req`` (as ``xcomm.wait`` does) unless ``peer`` is lost meanwhile: a
        message from or to a dead rank may never complete, so it is left (False)."""
        quiet = xcomm.quiet_waits()
        while not req.Test():
            if peer in lost():
                with contextlib.suppress(MPI.Exception):
                    req.Cancel()
                return False
            if quiet:
                time.sleep(xcomm.POLL_S)
        return True

    # ---- batch (Sandblaster) --------------------------------------------------------------
    def serve_batch(self, portions: int, coordinator: bool, peers: MPI.Comm,
                    history: int) -> None:
        msg = np.empty(self.w.size + 1, np.float32)
        ping = np.empty(1, np.float32)
        g = np.zeros_like(self.w)
        done: set[int] = set()
        handed = 0
        status = MPI.Status()
        while len(done) < len(self.workers):
            found = False
            for w in self.workers:
                if w in done or not self.comm.Iprobe(w, MPI.ANY_TAG, status):
                    continue
                found = True
                tag = status.Get_tag()
                if tag == TAG_PUSH:
                    xcomm.recv(self.comm, msg, w, TAG_PUSH)
                    g += msg[1:]
                elif tag == TAG_PULL:
                    self.comm.Recv(ping, w, TAG_PULL)
                    self._reply(w)
                elif tag == TAG_WORK and coordinator:
                    self.comm.Recv(ping, w, TAG_WORK)
                    portion = handed if handed < portions else -1
                    handed += portion >= 0
                    self.handed[w] = self.handed.get(w, 0) + (portion >= 0)
                    xcomm.send(self.comm, np.array([portion], np.int64), w, TAG_PORTION)
                elif tag == TAG_DONE:
                    self.comm.Recv(ping, w, TAG_DONE)
                    done.add(w)
                else:
                    raise RuntimeError(f"parameter server {self.comm.Get_rank()}: unexpected "
                                       f"tag {tag} from rank {w}")
            if not found:
                time.sleep(0.0002)
        self._lbfgs_step(g, peers, history)

    def _lbfgs_step(self, g: np.ndarray, peers: MPI.Comm, history: int) -> None:
        def dot(a: np.ndarray, b: np.ndarray) -> float:  # over the whole parameter vector
            return peers.allreduce(float(np.dot(a.astype(np.float64), b)), op=MPI.SUM)

        start = MPI.Wtime()
        if self.prev is not None:
            s, y = self.w - self.prev[0], g - self.prev[1]
            sy = dot(s, y)
            if sy > 1e-12:  # keep curvature pairs that keep the approximation positive
                self.pairs.append((s, y, 1.0 / sy))
                self.pairs = self.pairs[-history:]
        q = g.astype(np.float64)
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * dot(s, q)
            q -= a * y
            alphas.append(a)
        gamma = (dot(self.pairs[-1][0], self.pairs[-1][1]) / dot(self.pairs[-1][1],
                                                                self.pairs[-1][1])
                 if self.pairs else 1.0)
        r = gamma * q
        for (s, y, rho), a in zip(self.pairs, reversed(alphas)):
            b = rho * dot(y, r)
            r += s * (a - b)
        self.prev = (self.w.copy(), g.copy())
        self.w -= np.float32(self.lr) * r.astype(np.float32)
        self.version += 1
        self.busy += MPI.Wtime() - start

"""The communication half of ``parasim calibrate`` (``executor/calibration/calibrate.py``): one-way
message times, and the all-reduce as a gradient exchange runs it, with the fits the simulator
uses. ``CommCalibration`` is mixed into ``Calibration``, whose state it uses (``comm``,
``rank``, ``size``, ``hosts``, ``cores``, ``grid``, ``repeats``, ``timing``)."""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from executor.calibration.kernels import spill_buffer
from executor.mpi import collectives as xcomm
from simulator.engine.collectives import fit_allreduce

F32 = np.float32
P2P_SIZES = {"tiny": [8, 4096, 1 << 18], "small": [8, 1024, 1 << 14, 1 << 18, 1 << 21, 1 << 23],
             "full": [8, 256, 4096, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]}
ALLREDUCE_SIZES = {"tiny": [1 << 12, 1 << 18], "small": [1 << 12, 1 << 16, 1 << 20, 1 << 23],
                   "full": [1 << 12, 1 << 15, 1 << 18, 1 << 20, 1 << 22, 1 << 24]}


def quiet_barrier(comm: MPI.Comm) -> None:
    """A barrier that waits without polling hard, so a rank being measured has its core."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


class CommCalibration:
    # ---- point to point -------------------------------------------------------------------------
    def p2p(self) -> dict[str, Any]:
        """One-way message times from rank 0 to the first other rank on its node (intra) and
        on another node (inter); every other rank waits quietly."""
        peers = {}
        same = [r for r in range(1, self.size) if self.hosts[r] == self.hosts[0]]
        other = [r for r in range(1, self.size) if self.hosts[r] != self.hosts[0]]
        if same:
            peers["intra"] = same[0]
        if other:
            peers["inter"] = other[0]
        sizes = P2P_SIZES[self.grid]
        reps = 5 if self.grid == "tiny" else 20
        out = {}
        for scope, peer in peers.items():
            acked = [self.timing(f"point-to-point {scope} {s} B",
                                 lambda s=s, peer=peer: self._send_acked(
                                     peer, np.zeros(max(1, s // 4), F32), reps), lambda: None)
                     for s in sizes]
            # a send and its 8-byte acknowledgement, less one way of the acknowledgement
            times = [t - acked[0] / 2 for t in acked] if sizes[0] <= 8 else acked
            eager = self._eager_limit(peer)
            if self.rank == 0:
                out[scope] = {"peer": peer, "bytes": sizes, "seconds": times,
                              "eager_limit_bytes": eager, **fit_link(sizes, times)}
        return self.comm.bcast(out, root=0)

    def _send_acked(self, peer: int, buf: np.ndarray, reps: int) -> list[float]:
        """Seconds from rank 0 sending ``buf`` to ``peer`` until ``peer``'s 8-byte
        acknowledgement arrives, as a training step sends (the message was just written by
        the sender, and the receiver's buffer is out of its caches), ``reps`` times; none on
        the other ranks."""
        comm = self.comm
        if self.rank not in (0, peer):
            quiet_barrier(comm)
            return []
        other = peer if self.rank == 0 else 0
        ack, spill = np.zeros(2, F32), spill_buffer()
        samples = []
        for i in range(reps + 2):
            np.add(spill, 1.0, out=spill)
            if self.rank == 0:
                buf.fill(float(i))
            comm.Sendrecv(ack, other, 13, ack, other, 13)  # both ready
            t = MPI.Wtime()
            if self.rank == 0:
                comm.Send(buf, dest=other, tag=11)
                comm.Recv(ack, source=other, tag=12)
            else:
                comm.Recv(buf, source=other, tag=11)
                comm.Send(ack, dest=other, tag=12)
            if i >= 2:
                samples.append(MPI.Wtime() - t)
        quiet_barrier(comm)
        return samples

    def _eager_limit(self, peer: int, hold: float = 0.003) -> int:
        """The largest message (of 0, 256 B, 512 B, ... 4 MiB) whose blocking send from rank
        0 to ``peer`` returns before ``peer`` posts its receive, ``hold`` seconds later: MPI's
        eager limit on that path. A larger send waits for its receiver (rendezvous), as a
        parameter-server push waits for its shard."""
        comm = self.comm
        if self.rank not in (0, peer):
            quiet_barrier(comm)
            return 0
        limit, ready = 0, np.zeros(1, F32)
        for size in [256 << k for k in range(15)]:
            buf = np.zeros(size // 4, F32)
            other = 0 if self.rank else peer
            comm.Sendrecv(ready, other, 14, ready, other, 14)  # both ready
            if self.rank == 0:
                t = MPI.Wtime()
                comm.Send(buf, peer, 15)
                eager = MPI.Wtime() - t < hold / 2
            else:
                time.sleep(hold)
                comm.Recv(buf, 0, 15)
                eager = True
            if not self._agree_pair(eager, peer):
                break
            limit = size
        quiet_barrier(comm)
        return limit

    def _agree_pair(self, value: bool, peer: int) -> bool:
        """Rank 0's ``value``, on rank 0 and ``peer``."""
        got = np.array([value], np.int8)
        other = peer if self.rank == 0 else 0
        mine = got.copy()
        self.comm.Sendrecv(mine, other, 16, got, other, 16)
        return bool(mine[0]) if self.rank == 0 else bool(got[0])

    # ---- all-reduce ------------------------------------------------------------------------------
    def allreduce(self) -> list[dict[str, Any]]:
        """Every algorithm at every size on the first ``p`` ranks, for p = 2, 4, 8, ... and
        all of them; the others wait quietly, so a row's ``ranks_per_core`` is the group's
        busiest node's ranks over its cores (above 1: ranks time-share cores)."""
        counts = sorted({p for p in (2, 4, 8, 16, 32, 64) if p <= self.size} | {self.size})
        rows = []
        for p in counts:
            group = self.comm.Split(0 if self.rank < p else MPI.UNDEFINED, self.rank)
            busiest = max(self.hosts[:p].count(h) for h in set(self.hosts[:p]))
            shared = busiest > self.cores
            for algorithm in ALGORITHMS:
                for s in ALLREDUCE_SIZES[self.grid]:

                    def once(group=group, s=s, algorithm=algorithm, shared=shared
                             ) -> tuple[float, list]:
                        t, samples = 0.0, []
                        if group != MPI.COMM_NULL:
                            # waiting as a run of the group's ranks on these cores would
                            xcomm.wait_quietly(shared)
                            samples = self._collective(group, s // 4, algorithm, shared)
                            xcomm.wait_quietly(False)
                            t = trimmed_mean(samples) if shared else statistics.median(samples)
                        else:
                            quiet_barrier(self.comm)
                        return self.comm.allreduce(t, op=MPI.MAX), samples

                    # on time-shared cores the spread is the effect measured: not checked
                    t = once()[0] if shared else self.repeats.measure(
                        f"all-reduce {algorithm} on {p} ranks, {s} B", once,
                        agree=lambda x: self.comm.allreduce(x, op=MPI.MAX))
                    rows.append({"ranks": p, "ranks_per_core": busiest / self.cores,
                                 "algorithm": algorithm, "bytes": s, "seconds": t})
            if group != MPI.COMM_NULL:
                group.Free()
        return rows

    def _collective(self, group: MPI.Comm, n: int, algorithm: str, shared: bool
                    ) -> list[float]:
        """Seconds of each of the repeated all-reduces of ``n`` floats as the executor runs a
        gradient exchange: the caches hold other data (a training step's working set is larger than
        them), the gradients were just written in pieces and packed into one buffer, and the
        all-reduce runs in a thread beside a waiting main thread (the plan's comm stream). Each
        of these makes it slower than a back-to-back loop on one hot buffer (up to 2x at
        8 MiB on 2 ranks of this project's test machine). The caller keeps the median of the
        repeats, robust to a disturbance from outside; but on time-shared cores (``shared``:
        three times the repeats) a step waits for its peer's next time slice, the spread is
        the effect itself, and the mean without the fastest and slowest tenth is what a run
        pays."""
        reps = (3 if self.grid == "tiny" else 10) * (3 if shared else 1)
        pieces = [np.empty(len(c), F32) for c in np.array_split(np.empty(n, F32), 4)]
        buf = np.empty(n, F32)
        spill = spill_buffer()
        worker = CommThread()
        samples = []
        for i in range(reps + 1):
            np.add(spill, 1.0, out=spill)
            for piece in pieces:
                piece.fill(1.0)  # no overflow, however many repeats
            np.concatenate(pieces, out=buf)
            group.Barrier()
            took = worker.time(lambda: xcomm.allreduce(group, buf, algorithm))
            if i:
                samples.append(took)
        worker.close()
        quiet_barrier(self.comm)
        return samples


def trimmed_mean(samples: list[float]) -> float:
    """The mean without the fastest and slowest tenth (at least one each from 5 samples)."""
    ordered = sorted(samples)
    cut = max(1, len(ordered) // 10) if len(ordered) >= 5 else 0
    return statistics.fmean(ordered[cut:len(ordered) - cut])


class CommThread:
    """A thread that runs what it is handed and times it from inside, as the executor's comm
    stream runs its collectives beside a main thread that waits."""

    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (fn := self.jobs.get()) is not None:
            try:
                t = MPI.Wtime()
                fn()
                self.done.put(MPI.Wtime() - t)
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                self.done.put(e)

    def time(self, fn: Callable[[], Any]) -> float:
        self.jobs.put(fn)
        took = self.done.get()
        if isinstance(took, BaseException):
            raise took
        return took

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()


ALGORITHMS = ("ring", "tree", "mpi")


def steps_and_volume(algorithm: str, p: int, nbytes: float) -> tuple[float, float]:
    from simulator.engine.collectives import allreduce_terms

    return allreduce_terms(algorithm, p, nbytes)


def fit_collectives(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per algorithm, T = steps x latency + volume / bandwidth fitted (least squares of the
    relative error, latency at least 0) to the measured all-reduces: what one step and one
    byte cost in the executor's collectives, transfers, sums and coherence traffic together."""
    out = {}
    for algorithm in ALGORITHMS:
        pts = [(*steps_and_volume(algorithm, r["ranks"], r["bytes"]), r["seconds"])
               for r in rows if r["algorithm"] == algorithm]
        if not pts:
            continue
        lat, per_byte = fit_allreduce([(s, v) for s, v, _ in pts], [x for _, _, x in pts])
        out[algorithm] = {"latency_us": lat * 1e6, "bandwidth_GBps": 1e-9 / per_byte,
                          "ranks": sorted({r["ranks"] for r in rows})}
    return out


def fit_link(sizes: list[int], times: list[float]) -> dict[str, float]:
    """Latency: the smallest message's time; bandwidth: least squares of T = a + S / B over the
    messages of at least 64 KiB (all of them when fewer than two are that large)."""
    pts = [(s, t) for s, t in zip(sizes, times) if s >= 1 << 16]
    if len(pts) < 2:
        pts = list(zip(sizes, times))
    xs, ys = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(pts) > 1 else ys[0] / xs[0]
    bandwidth = 1.0 / slope if slope > 0 else xs.max() / ys.max()
    return {"latency_s": float(times[0]), "bandwidth_Bps": bandwidth}


def predicted_allreduce(p: int, nbytes: float, algorithm: str, latency: float,
                        bandwidth: float, memory_bandwidth: float) -> float:
    """The simulator's cost of one all-reduce on one node from the point-to-point link alone
    (``simulator/engine/collectives``): what the fitted collective terms improve on."""
    from simulator.engine.collectives import reduced_bytes

    steps, volume = steps_and_volume(algorithm, p, nbytes)
    return (steps * latency + volume / bandwidth
            + 3 * reduced_bytes("allreduce", algorithm, p, nbytes) / memory_bandwidth)


"""The part of ``parasim calibrate`` (``executor/calibration/calibrate.py``) about ranks that wait
on
time-shared cores: how soon a rank that slept in the executor's quiet wait has its message, and
how long a core that a rank leaves idles while other ranks wait in other cores' run queues.
``SharingCalibration`` is mixed into ``Calibration``, whose state it uses (``comm``, ``node``,
``rank``, ``local``, ``size``, ``hosts``, ``cores``, ``ranks_per_node``, ``grid``, ``k``)."""

from __future__ import annotations

import statistics
import time

import numpy as np
from mpi4py import MPI

from executor.calibration.comm import quiet_barrier, trimmed_mean
from executor.calibration.kernels import timed
from executor.mpi import collectives as xcomm

F32 = np.float32


class SharingCalibration:
    def message_wakeup(self) -> list[dict[str, float]]:
        """Seconds from a small message's send to its receiver, waiting in the executor's quiet
        wait (``executor/mpi/collectives.py``), having it, to a rank on rank 0's node: with nothing
        else
        running (1 rank per core), and, when the node has more ranks than cores, while as many
        of its other ranks as it has cores compute. What a rank that waited for a message pays
        on time-shared cores, and an idle parameter server polling for one. A process that
        slept gets a core sooner than a thread handed work inside a busy process (``wakeup``):
        0.1-0.2 ms against about 1 ms at 2 ranks per core on the test machine."""
        same = [r for r in range(1, self.size) if self.hosts[r] == self.hosts[0]]
        if not same:
            return []
        peer, rounds = same[0], (8 if self.grid == "tiny" else 40)
        loads = [1.0] + ([self.ranks_per_node / self.cores]
                         if self.ranks_per_node > self.cores else [])
        rows = []
        for load in loads:
            busy = same[1:1 + self.cores] if load > 1 else []
            took = self._quiet_receives(peer, busy, rounds)
            if self.rank == peer:
                self.comm.send(took, dest=0, tag=17)
            elif self.rank == 0:
                took = self.comm.recv(source=peer, tag=17)
                rows.append({"ranks_per_core": load, "latency_us": trimmed_mean(took) * 1e6,
                             "messages": len(took)})
            quiet_barrier(self.comm)
        return self.comm.bcast(rows, root=0)

    def _quiet_receives(self, peer: int, busy: list[int], rounds: int) -> list[float]:
        stamp, stop = np.zeros(1, np.float64), np.zeros(1, F32)
        took: list[float] = []
        quiet_barrier(self.comm)
        if self.rank == 0:
            rng = np.random.default_rng(0)
            for _ in range(rounds):
                time.sleep(float(rng.uniform(0.001, 0.003)))  # while the receiver sleeps
                stamp[0] = MPI.Wtime()
                self.comm.Send(stamp, peer, 18)
            for r in busy:
                self.comm.Send(stop, r, 19)
        elif self.rank == peer:
            xcomm.wait_quietly(True)
            for _ in range(rounds):
                xcomm.recv(self.comm, stamp, 0, 18)
                took.append(MPI.Wtime() - stamp[0])  # one host: one clock
            xcomm.wait_quietly(False)
        elif self.rank in busy:
            n = 256 if self.grid == "tiny" else 1024
            a, w = self.k.to_device(np.ones((256, n), F32)), self.k.to_device(np.ones((n, n), F32))
            req = self.comm.Irecv(stop, 0, 19)
            while not req.Test():
                self.k.gemm(a, w)
            self.k.synchronize()
        return took

    # ---- bursts between waits ----------------------------------------------------------------
    def migration(self) -> list[dict[str, float]]:
        """With more ranks than cores: every rank of each node runs a GEMM loop (about 13 ms on
        a core of the test machine), then sleeps about half that (0.5-1.5x, at random), for a
        few seconds. The ranks get less of the cores than processor sharing gives them (three
        ranks on 2 cores pausing 4 ms took 1.10-1.14x what it gives: ``mpiexec -n 4 python
        benchmarks/machine_effects.py``): the OS's run queues are per core, and a core that a
        rank leaves idles while another rank waits in a busy core's queue, until the scheduler
        moves it. The idle time that makes the engine's model of the same pattern
        (``simulator.engine.node.bursts``) give the measured mean loop is the profile's
        ``migration`` lag."""
        if self.ranks_per_node <= self.cores:
            return []
        n, reps = (256, 4) if self.grid == "tiny" else (1024, 8)
        a, w = self.k.to_device(np.ones((85, n), F32)), self.k.to_device(np.ones((n, n), F32))

        def work() -> None:
            for _ in range(reps):
                self.k.gemm(a, w)
            self.k.synchronize()

        alone = timed(work, lambda: None, 10, 0.05) if self.local == 0 else 0.0
        quiet_barrier(self.node)
        alone = self.node.bcast(alone, root=0)
        pause, runs = alone / 2, []
        rng = np.random.default_rng(self.local)
        end = MPI.Wtime() + (0.5 if self.grid == "tiny" else 3.0)
        while MPI.Wtime() < end:
            t = MPI.Wtime()
            work()
            runs.append(MPI.Wtime() - t)
            time.sleep(pause * float(rng.uniform(0.5, 1.5)))
        means = self.node.gather(statistics.fmean(runs), root=0)
        quiet_barrier(self.comm)
        rows = []
        if self.rank == 0:
            ratio = statistics.fmean(means) / alone
            lag, shared = fit_migration(self.ranks_per_node, self.cores, alone, pause, ratio)
            rows.append({"ranks_per_core": self.ranks_per_node / self.cores,
                         "latency_us": lag * 1e6, "work_us": alone * 1e6,
                         "pause_us": pause * 1e6, "measured_ratio": ratio,
                         "processor_sharing_ratio": shared})
        return self.comm.bcast(rows, root=0)


def fit_migration(ranks: int, cores: int, work: float, pause: float, measured: float
                  ) -> tuple[float, float]:
    """The migration lag (seconds, at least 0) with which the engine's model of the burst
    pattern gives the ``measured`` mean loop over ``work`` (bisection), and what it gives
    without one."""
    from simulator.engine.node import bursts

    shared = bursts(ranks, cores, work, pause)
    if measured <= shared:
        return 0.0, shared
    lo, hi = 0.0, 2 * work
    for _ in range(25):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bursts(ranks, cores, work, pause, mid) < measured else (lo, mid)
    return (lo + hi) / 2, shared

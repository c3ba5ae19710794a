"""The part of ``parasim calibrate`` (``executor/calibration/calibrate.py``) about ranks that
share cores: the slowdown of a kernel while the node's other ranks compute or wait
(``core_sharing``), how long a thread handed work waits for a core (``wakeup``), how unevenly
equal work finishes across ranks (``spread``), how soon a rank that slept in the executor's
quiet wait has its message, and how long a core that a rank leaves idles while other ranks wait
in other cores' run queues. ``SharingCalibration`` is mixed into ``Calibration``, whose state it
uses (``comm``, ``node``, ``rank``, ``local``, ``size``, ``hosts``, ``cores``,
``ranks_per_node``, ``grid``, ``k``, ``timing``)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from executor.calibration.comm import quiet_barrier, trimmed_mean
from executor.calibration.kernels import timed, timed_samples
from executor.mpi import collectives as xcomm

F32 = np.float32


class SharingCalibration:
    def core_sharing(self) -> dict[str, Any]:
        """The slowdown of one GEMM-bound kernel while the node's other ranks compute too
        (as many as there are cores), and, with more ranks than cores, while they wait. The
        times alone, together and beside quiet waits are checked for their spread (the ranks
        that measure together measure again together); beside MPI's polling waits the
        spread is what is measured (a wait polls or not)."""
        n = 512 if self.grid == "tiny" else 1024
        a = self.k.to_device(np.ones((256, n), F32))
        w = self.k.to_device(np.ones((n, n), F32))
        reps, min_s = (3, 0.02) if self.grid == "tiny" else (5, 0.2)

        def kernel() -> list[float]:
            return timed_samples(lambda: self.k.gemm(a, w), self.k.synchronize, reps, min_s)

        def nothing() -> list[float]:
            return []

        together = min(self.ranks_per_node, self.cores)
        alone = self.timing("core sharing: a GEMM alone", kernel if self.rank == 0 else nothing,
                            lambda: quiet_barrier(self.comm))

        def met() -> None:
            if self.local >= together:
                quiet_barrier(self.node)
            else:
                self.node.Barrier() if together == self.ranks_per_node else \
                    quiet_barrier(self.node)

        co = self.timing(f"core sharing: {together} GEMMs at once",
                         kernel if self.local < together else nothing, met)
        co_times = [t for t in self.comm.allgather(co) if t]
        out = {"alone_s": alone, "together_ranks": together,
               "together_s": statistics.median(co_times)}
        alone = self.comm.bcast(alone, root=0)
        if self.ranks_per_node > self.cores:
            # rank 0 computes while its node's other ranks wait in a barrier: the executor's
            # quiet wait (what a run on these cores does), then MPI's own, which polls
            for key, quiet in (("waiting_slowdown", True), ("polling_wait_slowdown", False)):
                xcomm.wait_quietly(quiet)
                waiting = self.timing(f"core sharing: a GEMM beside {'quiet' if quiet else 'MPI'}"
                                      " waits", kernel if self.rank == 0 else nothing,
                                      lambda: xcomm.barrier(self.comm), check=quiet)
                out[key] = self.comm.bcast(waiting, root=0) / alone
            xcomm.wait_quietly(False)
        out["alone_s"] = alone
        out["co_run_slowdown"] = max(1.0, out["together_s"] / alone)
        return out

    def wakeup(self) -> list[dict[str, float]]:
        """Seconds from one thread of a rank handing over to another (an event, as the
        executor's comm stream and main thread hand over) to the other thread running, while
        ``k`` ranks of every node compute, for k = the cores and all the node's ranks. With
        more ranks than cores the woken thread waits for a core, about a time slice."""
        # the main thread works about as long as a backward pass (two GEMMs of 256x1024 by
        # 1024x1024, 9 ms on a core of this project's test machine), the helper an eighth of
        # that, as a comm thread's all-reduce
        n = 256 if self.grid == "tiny" else 1024
        a = self.k.to_device(np.ones((256, n), F32))
        w = self.k.to_device(np.ones((n, n), F32))
        half_a = self.k.to_device(np.ones((256, n // 2), F32))
        half_w = self.k.to_device(np.ones((n // 2, n // 2), F32))
        rounds = 4 if self.grid == "tiny" else 24

        def work() -> None:
            self.k.gemm(a, w)
            self.k.gemm(a, w)

        rows = []
        for k in sorted({min(self.ranks_per_node, self.cores), self.ranks_per_node}):
            mine = (handoffs(work, lambda: self.k.gemm(half_a, half_w), self.k.synchronize,
                             rounds) if self.local < k else [])
            quiet_barrier(self.comm)
            every = [t for ts in self.comm.allgather(mine) for t in ts]
            rows.append({"ranks_per_core": k / self.cores, "latency_us":
                         trimmed_mean(every) * 1e6, "handoffs": len(every)})
        return rows

    def spread(self) -> list[dict[str, float]]:
        """How unevenly equal work finishes across ranks: ``k`` ranks of every node start the
        same run of GEMMs together (k = the cores, and all the node's ranks), and the standard
        deviation of their times, each against its round's mean (a change that slows every
        rank alike moves no rank ahead of another). A data-parallel all-reduce waits for the
        last rank. With more ranks than cores the spread comes from who ran last in a time
        slice: a time that grows with the work only up to about a slice (tried as a share of
        any work, it overstated the wait after a long LeNet step 2x), so the work's own
        duration is kept with it."""
        n = 256 if self.grid == "tiny" else 512
        a = self.k.to_device(np.ones((256, n), F32))
        w = self.k.to_device(np.ones((n, n), F32))
        rounds, calls = (4, 2) if self.grid == "tiny" else (24, 8)
        rows = []
        for k in sorted({min(self.ranks_per_node, self.cores), self.ranks_per_node}):
            busy = self.local < k
            group = self.comm.Split(0 if busy else MPI.UNDEFINED, self.rank)
            mine = []
            if busy:
                for _ in range(rounds):
                    group.Barrier()
                    t = MPI.Wtime()
                    for _ in range(calls):
                        self.k.gemm(a, w)
                    self.k.synchronize()
                    mine.append(MPI.Wtime() - t)
                group.Free()
            quiet_barrier(self.comm)
            every = [ts for ts in self.comm.allgather(mine) if ts]
            deviations = [t - statistics.fmean(rnd) for rnd in zip(*every) for t in rnd]
            rows.append({"ranks_per_core": k / self.cores,
                         "std_us": float(np.sqrt(np.mean(np.square(deviations)))) * 1e6,
                         "work_s": statistics.fmean(t for ts in every for t in ts),
                         "ranks": len(every), "rounds": rounds})
        return rows

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


def handoffs(work: Callable[[], Any], short: Callable[[], Any], sync: Callable[[], None],
             rounds: int) -> list[float]:
    """Wake-up latencies of ``rounds`` handovers each way between this thread, which runs
    ``work`` between handovers, and a helper thread, which runs ``short``; both block on
    events in between, as the executor's main thread and comm thread do."""
    go, back = threading.Event(), threading.Event()
    stamp = [0.0]
    woke: list[float] = []

    def helper() -> None:
        for _ in range(rounds):
            go.wait()
            go.clear()
            woke.append(time.perf_counter() - stamp[0])
            short()
            sync()
            stamp[0] = time.perf_counter()
            back.set()

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    for _ in range(rounds):
        work()
        sync()
        stamp[0] = time.perf_counter()
        go.set()
        back.wait()
        back.clear()
        woke.append(time.perf_counter() - stamp[0])
    thread.join()
    return woke

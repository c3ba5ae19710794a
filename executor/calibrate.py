"""``parasim calibrate``: measure this allocation and write a profile the simulator reads.

Run under ``mpiexec`` with at least two ranks. Measured, in this order:

* kernels (rank 0, the other ranks waiting without polling): every executor kernel over a grid
  of shapes (``executor/calibrate_kernels.py``), giving efficiency curves against FLOPs; the
  executor's own per-op cost (dependencies, timing, bookkeeping) as the launch overhead, from a
  real one-rank period of a model whose kernels are nearly free;
* memory bandwidth of one rank (a streaming add, 3 bytes moved per byte summed);
* host-device copy bandwidth, on a GPU backend;
* core sharing: the cores each node gives this job, ranks per node, the slowdown of a kernel
  while the node's other ranks run the same kernel (``co_run``), and, when ranks outnumber
  cores, the slowdown while they wait inside MPI (whether MPI's waits poll);
* thread wake-up latency, per ranks per core: how long a thread that blocked waits for a core
  once another thread hands over to it (the executor's comm stream and main thread);
* point-to-point one-way times (a send and its acknowledgement, less the acknowledgement's way)
  from rank 0 to a rank on its node, and one on another node when there is one, as a training
  step sends (a freshly written message into a receive buffer out of the caches): latency (the
  smallest message) and bandwidth (a least-squares fit of T = latency + S / bandwidth over
  large messages);
* all-reduce time against size, rank count and ranks per core (ring, tree and MPI's own), as a
  gradient exchange runs it, next to what the simulator predicts for it from the measured link
  and memory bandwidth, and the per-algorithm fit the simulator uses instead.

The profile (``simulator/profile.py``) is written by rank 0.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from executor import comm as xcomm
from executor.calibrate_kernels import GRIDS, measure_kernels, spill_buffer, timed
from simulator.predict import code_version

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


class Calibration:
    def __init__(self, comm: MPI.Comm, backend: Any, grid: str):
        self.comm, self.k, self.grid = comm, backend, grid
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        hosts = comm.allgather(MPI.Get_processor_name())
        self.hosts = hosts
        self.local = self.node.Get_rank()
        self.ranks_per_node = self.node.Get_size()
        self.cores = min(comm.allgather(len(os.sched_getaffinity(0))))
        self.measured: dict[str, Any] = {}

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    # ---- kernels and memory (rank 0) ------------------------------------------------------
    def kernels(self) -> dict[str, list[tuple[float, float]]]:
        out = measure_kernels(self.k, self.grid) if self.rank == 0 else {}
        quiet_barrier(self.comm)
        return out

    def launch_overhead(self) -> float:
        """Seconds the executor spends per op beyond the kernel: a one-rank period of a deep
        model of 4-wide layers, less the same kernels called directly, per op."""
        value = 0.0
        if self.rank == 0:
            value = _runner_overhead(self.k, GRIDS[self.grid])
        quiet_barrier(self.comm)
        return self.comm.bcast(value, root=0)

    def memory_bandwidth(self) -> float:
        value = 0.0
        if self.rank == 0:
            n = 1 << 24
            a, b = np.ones(n, F32), np.ones(n, F32)
            t = timed(lambda: np.add(a, b, out=a), lambda: None, 5, 0.05)
            value = 3 * 4 * n / t
        quiet_barrier(self.comm)
        return self.comm.bcast(value, root=0)

    def copies(self) -> dict[str, Any] | None:
        """Host-to-device and device-to-host bandwidth (GPU backends only)."""
        if self.k.name != "cuda":
            return None
        out = None
        if self.rank == 0:
            sizes = [1 << 16, 1 << 20, 1 << 24]
            h2d, d2h = [], []
            for s in sizes:
                host = np.ones(s // 4, F32)
                dev = self.k.to_device(host)
                h2d.append(timed(lambda host=host: self.k.to_device(host), self.k.synchronize,
                                 3, 0.02))
                d2h.append(timed(lambda dev=dev: self.k.to_host(dev), self.k.synchronize,
                                 3, 0.02))
            out = {"bytes": sizes, "host_to_device_s": h2d, "device_to_host_s": d2h,
                   "host_to_device_GBps": sizes[-1] / h2d[-1] / 1e9,
                   "device_to_host_GBps": sizes[-1] / d2h[-1] / 1e9}
        quiet_barrier(self.comm)
        return self.comm.bcast(out, root=0)

    # ---- core sharing -----------------------------------------------------------------------
    def core_sharing(self) -> dict[str, Any]:
        """The slowdown of one GEMM-bound kernel while the node's other ranks compute too
        (as many as there are cores), and, with more ranks than cores, while they wait in MPI."""
        n = 512 if self.grid == "tiny" else 1024
        a = self.k.to_device(np.ones((256, n), F32))
        w = self.k.to_device(np.ones((n, n), F32))
        reps, min_s = (3, 0.02) if self.grid == "tiny" else (5, 0.2)

        def kernel() -> float:
            return timed(lambda: self.k.gemm(a, w), self.k.synchronize, reps, min_s)

        together = min(self.ranks_per_node, self.cores)
        alone = kernel() if self.rank == 0 else 0.0
        quiet_barrier(self.comm)
        co = kernel() if self.local < together else 0.0
        if self.local >= together:
            quiet_barrier(self.node)
        else:
            self.node.Barrier() if together == self.ranks_per_node else quiet_barrier(self.node)
        co_times = [t for t in self.comm.allgather(co) if t]
        out = {"alone_s": alone, "together_ranks": together,
               "together_s": statistics.median(co_times)}
        if self.ranks_per_node > self.cores:
            # rank 0 computes while its node's other ranks sit in a blocking MPI barrier
            waiting = kernel() if self.rank == 0 else 0.0
            self.comm.Barrier()
            out["waiting_neighbours_s"] = self.comm.bcast(waiting, root=0)
        alone = self.comm.bcast(alone, root=0)
        out["alone_s"] = alone
        out["co_run_slowdown"] = max(1.0, out["together_s"] / alone)
        if "waiting_neighbours_s" in out:
            out["waiting_slowdown"] = out["waiting_neighbours_s"] / alone
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
            acked = [self._send_acked(peer, np.zeros(max(1, s // 4), F32), reps) for s in sizes]
            # a send and its 8-byte acknowledgement, less one way of the acknowledgement
            times = [t - acked[0] / 2 for t in acked] if sizes[0] <= 8 else acked
            if self.rank == 0:
                out[scope] = {"peer": peer, "bytes": sizes, "seconds": times,
                              **fit_link(sizes, times)}
        return self.comm.bcast(out, root=0)

    def _send_acked(self, peer: int, buf: np.ndarray, reps: int) -> float:
        """Median seconds from rank 0 sending ``buf`` to ``peer`` until ``peer``'s 8-byte
        acknowledgement arrives, as a training step sends: the message was just written by
        the sender, and the receiver's buffer is out of its caches."""
        comm = self.comm
        if self.rank not in (0, peer):
            quiet_barrier(comm)
            return 0.0
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
        return statistics.median(samples)

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
            for algorithm in ALGORITHMS:
                for s in ALLREDUCE_SIZES[self.grid]:
                    t = 0.0
                    if group != MPI.COMM_NULL:
                        t = self._collective(group, s // 4, algorithm, busiest > self.cores)
                    else:
                        quiet_barrier(self.comm)
                    t = self.comm.allreduce(t, op=MPI.MAX)
                    rows.append({"ranks": p, "ranks_per_core": busiest / self.cores,
                                 "algorithm": algorithm, "bytes": s, "seconds": t})
            if group != MPI.COMM_NULL:
                group.Free()
        return rows

    def _collective(self, group: MPI.Comm, n: int, algorithm: str, shared: bool) -> float:
        """Seconds of one all-reduce of ``n`` floats as the executor runs a gradient
        exchange: the caches hold other data (a training step's working set is larger than
        them), the gradients were just written in pieces and packed into one buffer, and the
        all-reduce runs in a thread beside a waiting main thread (the plan's comm stream). Each
        of these makes it slower than a back-to-back loop on one hot buffer (up to 2x at
        8 MiB on 2 ranks of this project's test machine). The median of the repeats, robust
        to a disturbance from outside; but on time-shared cores (``shared``: three times the
        repeats) a step waits for its peer's next time slice, the spread is the effect itself,
        and the mean without the fastest and slowest tenth is what a run pays."""
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
        return trimmed_mean(samples) if shared else statistics.median(samples)


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
        a = np.array([[s, v] for s, v, _ in pts], float)
        t = np.array([x for _, _, x in pts], float)
        w = 1.0 / t  # relative errors: small messages count as much as large ones
        (lat, per_byte), *_ = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)
        if lat < 0:
            lat, per_byte = 0.0, float(np.median(t / a[:, 1]))
        if per_byte <= 0:
            per_byte = float(t.max() / a[:, 1].max())
        out[algorithm] = {"latency_us": float(lat) * 1e6, "bandwidth_GBps": 1e-9 / per_byte,
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


def _runner_overhead(backend: Any, grid: dict[str, Any]) -> float:
    """Per-op time of a real one-rank period (``RankRunner``) beyond its kernels' own time."""
    from collections import defaultdict

    from executor.calibrate_kernels import KernelTimer
    from executor.runner import RankRunner
    from simulator.catalogue import devices, links
    from simulator.cluster import build_cluster
    from simulator.model import build_custom
    from simulator.specs import ClusterSpec, StrategySpec, TrainingSpec
    from simulator.strategies import build_plan
    from simulator.strategies.common import Context

    layers = ([{"kind": "dense", "units": 4}, {"kind": "act", "fn": "relu"}] * 11
              + [{"kind": "dense", "units": 2}, {"kind": "softmax"}])
    graph = build_custom(layers, [4])
    cluster = build_cluster(ClusterSpec(nodes=1, devices_per_node=1,
                                        device=devices()["cpu_core"], intra_link=links()["shm"],
                                        inter_link=links()["eth_10g"]))
    batch = 4
    ctx = Context(graph, cluster, TrainingSpec(batch_size=batch, precision="fp32",
                                               optimizer="momentum", iterations=1,
                                               warmup_iterations=0))
    plan = build_plan(ctx, StrategySpec("one", "data_parallel",
                                        {"devices": 1, "exchange": "ring", "bucket_MiB": 0.0,
                                         "overlap": False, "local_steps": 1}))
    runner = RankRunner(MPI.COMM_SELF, plan, graph, backend, 0, 0.0, 0.0)
    x = np.ones((batch, 4), F32)
    y = np.zeros(batch, np.int64)
    period = timed(lambda: runner.run_period(x, y), backend.synchronize, grid["repeats"] * 3,
                   grid["min_s"])
    direct: dict[str, list[tuple[float, float]]] = defaultdict(list)
    # back to back like the period's own kernels (their data stays in the caches)
    KernelTimer(backend, grid, evict=False).case(layers, [4], batch, direct)
    kernels = sum(t for points in direct.values() for _, t in points)
    return max(0.0, (period - kernels) / len(plan.ranks[0].ops))


def versions(backend: Any) -> dict[str, str]:
    import numba

    lib = MPI.Get_library_version().strip().splitlines()[0]
    return {"parasim": code_version(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "mpi4py": __import__("mpi4py").__version__, "mpi": lib, "backend": backend.name,
            "platform": platform.platform(), "argv": " ".join(sys.argv[1:])}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def calibrate(comm: MPI.Comm, backend: Any, grid: str, name: str) -> tuple[str, list[str]]:
    """Measure everything (every rank takes part); rank 0 gets the profile's text and a
    summary, the others ``("", [])``."""
    cal = Calibration(comm, backend, grid)
    cal.say(f"calibrating {comm.Get_size()} rank(s) on {', '.join(sorted(set(cal.hosts)))} "
            f"({backend.name} backend, {grid} grid)")
    curves = cal.kernels()
    kinds = [k for k in curves if "@" not in k]
    cal.say(f"  kernels: {sum(len(curves[k]) for k in kinds)} points over {len(kinds)} kinds "
            f"and {len(curves) - len(kinds)} layer shapes")
    launch = cal.launch_overhead()
    membw = cal.memory_bandwidth()
    copies = cal.copies()
    sharing = cal.core_sharing()
    cal.say(f"  core sharing: {cal.ranks_per_node} rank(s) per node on {cal.cores} core(s); "
            f"co-running slowdown {sharing['co_run_slowdown']:.2f}x")
    wakeup = cal.wakeup()
    cal.say("  thread wake-up: " + ", ".join(f"{r['latency_us']:.0f} us at "
                                              f"{r['ranks_per_core']:g} rank(s) per core"
                                              for r in wakeup))
    spread = cal.spread()
    cal.say("  rank spread: " + ", ".join(f"{r['std_us']:.0f} us at {r['ranks_per_core']:g} "
                                           "rank(s) per core" for r in spread))
    links = cal.p2p()
    rows = cal.allreduce()
    if comm.Get_rank() != 0:
        return "", []
    peak = max(f / t for points in curves.values() for f, t in points)
    kernels = {key: {"flops": [float(f) for f, _ in pts],
                     "efficiency": [round(min(1.0, f / t / peak), 5) for f, t in pts]}
               for key, pts in sorted(curves.items())}
    intra = links.get("intra") or links.get("inter")
    loads = sorted({r["ranks_per_core"] for r in rows if r["ranks_per_core"] > 1})
    fits = fit_collectives([r for r in rows if r["ranks_per_core"] <= 1])
    shared = {load: fit_collectives([r for r in rows if r["ranks_per_core"] == load])
              for load in loads}
    for row in rows:
        row["link_model_seconds"] = predicted_allreduce(
            row["ranks"], row["bytes"], row["algorithm"], intra["latency_s"],
            intra["bandwidth_Bps"], membw)
        f = (shared[row["ranks_per_core"]] if row["ranks_per_core"] > 1 else fits)[
            row["algorithm"]]
        steps, volume = steps_and_volume(row["algorithm"], row["ranks"], row["bytes"])
        row["fitted_seconds"] = (steps * f["latency_us"] * 1e-6
                                 + volume / (f["bandwidth_GBps"] * 1e9))
    date = now()
    hosts = sorted(set(cal.hosts))
    where = f"measured by parasim calibrate on {', '.join(hosts)} at {date}"
    dense = curves.get("dense.fwd") or next(iter(curves.values()))
    device = {
        "kind": "gpu" if backend.name == "cuda" else "cpu",
        "sms": int(getattr(backend, "sm_count", 1)),
        "peak_TFLOPS": {"fp32": peak / 1e12},
        "memory_GiB": _memory_per_rank(cal.ranks_per_node) / 2**30,
        "memory_bandwidth_GBps": membw / 1e9,
        "launch_overhead_us": launch * 1e6,
        "compute_efficiency": round(min(1.0, dense[-1][0] / dense[-1][1] / peak), 5),
        "memory_efficiency": 1.0,
        "blocks_per_sm": 1,
        "comm_sms": 0,
        "kernels": kernels,
        "source": f"{where} ({backend.name} backend): peak is the fastest kernel rate "
                  "measured; efficiencies per kernel kind against it",
    }
    link_entries = {}
    for scope, m in links.items():
        link_entries[f"{name}_{scope}"] = {
            "scope": scope, "bandwidth_GBps": m["bandwidth_Bps"] / 1e9,
            "latency_us": m["latency_s"] * 1e6, "efficiency": 1.0,
            "source": f"{where}: MPI one-way message times, latency of the smallest "
                      "message, bandwidth fitted over large messages"}
    measured = {"kernels_s": {k: [[f, t] for f, t in v] for k, v in sorted(curves.items())},
                "memory_bandwidth_GBps": membw / 1e9, "launch_overhead_s": launch,
                "core_sharing": sharing, "wakeup": wakeup, "spread": spread, "p2p": links,
                "allreduce": rows}
    if copies:
        measured["host_device_copy"] = copies
    calibration = {"date": date, "hosts": hosts, "ranks": comm.Get_size(),
                   "ranks_per_node": cal.ranks_per_node, "cores_per_node": cal.cores,
                   "co_run": {"ranks": sharing["together_ranks"],
                              "slowdown": round(sharing["co_run_slowdown"], 4)},
                   "wakeup": [{"ranks_per_core": r["ranks_per_core"],
                               "latency_us": round(r["latency_us"], 2)} for r in wakeup],
                   "spread": [{"ranks_per_core": r["ranks_per_core"],
                               "std_us": round(r["std_us"], 2),
                               "work_us": round(r["work_s"] * 1e6, 1)} for r in spread],
                   "collectives": {"scope": "inter" if len(set(cal.hosts)) > 1 else "intra",
                                   **fits,
                                   **({"oversubscribed": [{"ranks_per_core": load, **f}
                                                          for load, f in shared.items()]}
                                      if shared else {})},
                   "backend": backend.name, "versions": versions(backend),
                   "measured": measured}
    from simulator.profile import dump_profile

    text = dump_profile(calibration, (name, device), link_entries)
    return text, summary(device, link_entries, rows, sharing, cal)


def _memory_per_rank(ranks_per_node: int) -> float:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2**30
    return total / max(1, ranks_per_node)


def summary(device: dict, links: dict, rows: list[dict], sharing: dict, cal: Calibration
            ) -> list[str]:
    out = [f"  peak {device['peak_TFLOPS']['fp32'] * 1e3:.1f} GFLOP/s per rank, launch "
           f"overhead {device['launch_overhead_us']:.1f} us, memory "
           f"{device['memory_bandwidth_GBps']:.1f} GB/s"]
    shaped = sum("@" in key for key in device["kernels"])
    out.append(f"  kernel curves: {len(device['kernels']) - shaped} kinds, {shaped} layer shapes")
    for key, c in device["kernels"].items():
        if "@" in key:
            continue
        e = c["efficiency"]
        out.append(f"  {key:<18} efficiency {min(e):.3f} .. {max(e):.3f} over "
                   f"{c['flops'][0]:.3g} .. {c['flops'][-1]:.3g} FLOPs")
    for n, lk in links.items():
        out.append(f"  {n}: latency {lk['latency_us']:.2f} us, bandwidth "
                   f"{lk['bandwidth_GBps']:.2f} GB/s")
    out.append("  all-reduce ranks per-core      bytes  measured ms   link model   error   fitted"
               "   error")
    for r in rows:
        e1 = (r["link_model_seconds"] - r["seconds"]) / r["seconds"]
        e2 = (r["fitted_seconds"] - r["seconds"]) / r["seconds"]
        out.append(f"  {r['algorithm']:<10} {r['ranks']:>5} {r['ranks_per_core']:>8.3g} "
                   f"{r['bytes']:>10} "
                   f"{r['seconds'] * 1e3:>12.3f} {r['link_model_seconds'] * 1e3:>12.3f} "
                   f"{e1:>+7.0%} {r['fitted_seconds'] * 1e3:>8.3f} {e2:>+7.0%}")
    return out

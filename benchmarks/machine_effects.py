"""The machine effects the calibration and the model were built around, measured side by side.

    python benchmarks/machine_effects.py              # one process: caches, tanh, Adagrad
    mpiexec -n 4 python benchmarks/machine_effects.py # also: waiting ranks on shared cores

Printed, each as a ratio of two timings taken in the same run:

* the momentum update of a 1024x1024 layer back to back, and after a buffer twice the
  last-level cache was written (how a training step leaves the caches for it);
* tanh over LeNet-5's first activation at batch 256 (1.2 M floats): the C library's scalar
  ``tanhf`` in a Numba loop (what ``np.tanh`` compiles to) on uniform [0, 1) and on standard
  normal inputs, and the CPU backend's kernel on both;
* the parameter server's Adagrad over the MLP's 1.86 M parameters: the NumPy formula, and the
  CPU backend's one-pass kernel;
* with 2 or more ranks: rank 0's GEMM alone, and while every other rank waits in a blocking
  ``MPI_Recv`` or ``MPI_Barrier`` (on fewer cores than ranks, whether waiting ranks give up
  their cores or spin on them), or in the executor's quiet wait (``executor/mpi/collectives.py``:
  test the
  request, sleep, test again), which the executor uses when ranks outnumber cores;
* with 3 or more ranks: 3 ranks that each compute about 12 ms, then pause 0, 4 or 8 ms, on the
  machine's cores (2 on the test machine): their runs' time over the time alone, against what
  the simulator's processor sharing gives for the same pattern.

Run it with one BLAS/Numba thread per process (OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from numba import njit

from executor.calibration.kernels import timed
from executor.kernels.cpu import CpuBackend

F32 = np.float32


@njit(cache=True)
def libm_tanh(x, y):  # noqa: ANN001, ANN201
    for i in range(x.size):
        y[i] = np.tanh(x[i])


def single() -> None:
    be, par = CpuBackend(), CpuBackend(parallel=True)
    w, g, v = (np.ones((1024, 1024), F32) for _ in range(3))
    hot = timed(lambda: be.sgd_momentum(w, g, v, 0.0, 0.9), lambda: None, 20, 0.2)
    cold = timed(lambda: be.sgd_momentum(w, g, v, 0.0, 0.9), lambda: None, 20, 0.2,
                 evict=True)
    print(f"momentum update 1024x1024: back to back {hot * 1e3:.3f} ms, after a cache spill "
          f"{cold * 1e3:.3f} ms: {cold / hot:.2f}x")

    rng = np.random.default_rng(0)
    shape = (256, 6, 28, 28)
    inputs = {"uniform [0, 1)": rng.random(shape, dtype=F32).ravel(),
              "standard normal": rng.standard_normal(shape, dtype=F32).ravel()}
    out = np.empty_like(inputs["uniform [0, 1)"])
    for name, x in inputs.items():
        libm = timed(lambda x=x: libm_tanh(x, out), lambda: None, 10, 0.2)
        kernel = timed(lambda x=x: be.act_forward(x, "tanh"), lambda: None, 10, 0.2)
        print(f"tanh over 1.2 M floats, {name}: tanhf loop {libm * 1e3:.2f} ms, kernel "
              f"{kernel * 1e3:.2f} ms: {libm / kernel:.2f}x")

    n = 1863690
    w, v = rng.standard_normal(n, dtype=F32), np.zeros(n, F32)
    g = rng.standard_normal(n, dtype=F32)
    lr, eps = F32(0.01), F32(1e-8)

    def numpy_adagrad() -> None:
        v[:] += g * g
        w[:] -= lr * g / (np.sqrt(v) + eps)

    slow = timed(numpy_adagrad, lambda: None, 10, 0.2)
    fast = timed(lambda: par.adagrad(w, g, v, 0.01), lambda: None, 10, 0.2)
    print(f"Adagrad over 1.86 M parameters: NumPy {slow * 1e3:.3f} ms, kernel "
          f"{fast * 1e3:.3f} ms: {slow / fast:.2f}x")


def quiet(comm) -> None:  # noqa: ANN001
    """A barrier that sleeps while it waits: the rank being timed keeps its core."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def waiting(comm) -> None:  # noqa: ANN001
    """Rank 0's GEMM alone (the others sleep), then while they block in Recv, in Barrier, and
    in the executor's quiet receive."""
    from executor.mpi import collectives as xcomm

    a, w = np.ones((256, 1024), F32), np.ones((1024, 1024), F32)

    def gemm() -> float:
        ts = []
        for _ in range(20):
            t = time.perf_counter()
            a @ w
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    alone = gemm() if comm.rank == 0 else 0.0
    quiet(comm)
    token = np.zeros(1, F32)
    if comm.rank == 0:
        in_recv = gemm()
        for r in range(1, comm.size):
            comm.Send(token, r, 5)
    else:
        comm.Recv(token, 0, 5)
    quiet(comm)
    in_barrier = gemm() if comm.rank == 0 else 0.0
    comm.Barrier()
    quiet(comm)
    xcomm.wait_quietly(True)
    if comm.rank == 0:
        in_quiet = gemm()
        for r in range(1, comm.size):
            xcomm.send(comm, token, r, 6)
    else:
        xcomm.recv(comm, token, 0, 6)
    xcomm.wait_quietly(False)
    if comm.rank == 0:
        import os

        cores = len(os.sched_getaffinity(0))
        print(f"GEMM on rank 0 with {comm.size - 1} other rank(s) on {cores} core(s): alone "
              f"{alone * 1e3:.2f} ms; others in MPI_Recv {in_recv * 1e3:.2f} ms "
              f"({in_recv / alone:.2f}x); others in MPI_Barrier {in_barrier * 1e3:.2f} ms "
              f"({in_barrier / alone:.2f}x); others in the executor's quiet wait "
              f"{in_quiet * 1e3:.2f} ms ({in_quiet / alone:.2f}x)")


def fluid_ratio(ranks: int, cores: int, work: float, pause: float) -> float:
    """What the simulator's processor sharing (its fluid network model) gives for ``ranks``
    ranks on ``cores`` cores, each running ``work`` seconds of kernels (alone) then pausing
    0.5-1.5 x ``pause`` (seeded per rank as the measurement is): the mean run over ``work``."""
    import simpy

    from simulator.engine.network import Network

    env = simpy.Environment()
    cpus = Network(env, {("cores", 0): float(cores), **{("core", i): 1.0 for i in range(ranks)}})
    runs: list[float] = []

    def rank(i: int):  # noqa: ANN202
        rng = np.random.default_rng(i)
        for _ in range(200):
            start = env.now
            yield cpus.transfer((("core", i), ("cores", 0)), work)
            runs.append(env.now - start)
            yield env.timeout(pause * rng.uniform(0.5, 1.5))

    for i in range(ranks):
        env.process(rank(i))
    env.run()
    return statistics.fmean(runs) / work


def bursts(comm, busy: int, pause: float) -> None:  # noqa: ANN001
    """``busy`` ranks (the others wait quietly) each run a GEMM loop, then sleep about
    ``pause`` seconds, for 4 s: the mean run's time over the loop's time alone, against the
    simulator's processor sharing of the same pattern."""
    import os

    a, w = np.ones((85, 1024), F32), np.ones((1024, 1024), F32)

    def work() -> None:
        for _ in range(8):
            a @ w

    alone = timed(work, lambda: None, 20, 0.0) if comm.rank == 0 else 0.0
    quiet(comm)
    runs: list[float] = []
    if comm.rank < busy:
        rng = np.random.default_rng(comm.rank)
        end = time.perf_counter() + 4.0
        while time.perf_counter() < end:
            t = time.perf_counter()
            work()
            runs.append(time.perf_counter() - t)
            time.sleep(pause * rng.uniform(0.5, 1.5))
    means = comm.gather(statistics.fmean(runs) if runs else None, root=0)
    quiet(comm)
    if comm.rank == 0:
        cores = len(os.sched_getaffinity(0))
        measured = statistics.fmean(m for m in means if m is not None) / alone
        fluid = fluid_ratio(busy, cores, alone, pause)
        print(f"{busy} ranks on {cores} core(s) computing {alone * 1e3:.1f} ms at a time, pausing "
              f"{pause * 1e3:.0f} ms: runs take {measured:.3f}x their time alone, processor "
              f"sharing gives {fluid:.3f}x ({measured / fluid:.3f})")


def main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        single()
    quiet(comm)
    if comm.size > 1:
        waiting(comm)
    if comm.size > 2:  # ranks that compute in bursts on fewer cores than they are
        for pause in (0.0, 0.004, 0.008):
            bursts(comm, 3, pause)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does MPI passive-target RMA progress while the target rank computes? Downpour SGD's
parameter server as an MPI window, measured against a two-sided service loop.

    python benchmarks/rma_progress.py [--busy 1.0] [--repeat 3] [--window allocate|create]

Launches ``mpiexec -n 2`` children (each with a timeout and a process-group kill). Rank 0 (the
target, a parameter-server shard) owns a float32 window of 16 MiB; rank 1 (the origin, a worker)
moves 1 MiB and 16 MiB of it and times each operation:

* ``Get``: the parameters (a fetch); ``Accumulate`` (``MPI.SUM``): a gradient (a push).
* sync ``lock``: ``Lock(0, LOCK_SHARED)``, the operation, ``Unlock(0)``;
  sync ``lockall``: one ``Lock_all`` epoch held open, the operation, ``Flush(0)``.

in these target states:

* (a) idle: the target waits inside MPI (a ``Barrier``) while the origin works;
* (b) busy: the target runs a ``numpy`` matmul loop for ``--busy`` seconds with no MPI call; the
  origin issues each operation in the first half of that period and also reports how much of
  the target's compute was left when it did (``left``): an operation that waits for the target
  has latency ~ ``left``;
* (c) busy + async: as (b) with ``MPIR_CVAR_ASYNC_PROGRESS=1`` on both ranks (mpi4py initialises
  MPI with ``THREAD_MULTIPLE``, which MPICH's progress thread needs); (c0): on rank 0 only
  (Hydra's per-executable ``-env``), shm and ``lock`` only;
* (d) two-sided: the target is a dedicated server in a service loop, sync ``probe``: blocking in
  ``Probe``; sync ``poll``: ``Iprobe`` and a 0.5 ms sleep when nothing is there (what
  ``executor/ps/server.py`` runs); a fetch is a request and a ``Recv`` of the parameters, a push a
  ``Send`` of the gradient that the server adds in and acknowledges.

over two transports: ``shm``, MPICH's default between ranks of one host (with ``Win_allocate``
the window is shared memory both processes map); ``netmod``, ``MPIR_CVAR_NOLOCAL=1``, which makes
MPICH use its network module (UCX in the ``mpich`` wheel) between the two ranks, as it does between
hosts, where a Downpour parameter server lives.

Then the cost of async progress: the time of a fixed amount of matmul work on both ranks at once
(no MPI calls), with and without ``MPIR_CVAR_ASYNC_PROGRESS=1`` (on both ranks, and on rank 0
only), and the target's matmul rate during the busy periods of (b), (c) and (c0); and the CPU
time a waiting target uses. Medians of ``--repeat`` runs (busy periods) and of three times that
(the rest). The conclusions are computed from the numbers. About 50 s on two idle cores; other
load on the machine shows in the latencies (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
SIZES = (1 * MiB, 16 * MiB)
OPS = ("get", "acc")
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                            "NUMBA_NUM_THREADS")}
ASYNC = {"MPIR_CVAR_ASYNC_PROGRESS": "1"}
NOLOCAL = {"MPIR_CVAR_NOLOCAL": "1"}
MATMUL_N = 256
# (label, environment of both ranks, extra environment of rank 0 only, phases)
RUNS = (
    ("shm", {}, {}, ("idle-lock", "idle-lockall", "busy-lock", "busy-lockall", "twosided-probe",
                     "twosided-poll", "work")),
    ("shm+async", ASYNC, {}, ("busy-lock", "busy-lockall", "work")),
    ("shm+async0", {}, ASYNC, ("busy-lock", "work")),  # a progress thread on the target only
    ("netmod", NOLOCAL, {}, ("idle-lock", "idle-lockall", "busy-lock", "busy-lockall",
                             "twosided-probe", "twosided-poll")),
    ("netmod+async", {**NOLOCAL, **ASYNC}, {}, ("busy-lock", "busy-lockall")),
)
TAG_GET, TAG_ACC, TAG_REPLY, TAG_STOP = 11, 12, 13, 14
IDLE_WAIT = 0.3  # seconds a target waits with nothing to do, to measure the CPU it burns


# ----------------------------------------------------------------------------- the MPI child

def child(args: argparse.Namespace) -> None:
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    assert comm.Get_size() == 2, "run with mpiexec -n 2"
    nmax = max(SIZES) // 4
    a = np.random.default_rng(rank).random((MATMUL_N, MATMUL_N), dtype=np.float32)
    me: dict = {
        "rank": rank,
        "thread_level": {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
                         MPI.THREAD_SERIALIZED: "serialized",
                         MPI.THREAD_MULTIPLE: "multiple"}[MPI.Query_thread()],
        "threads": _threads(),
        "library": MPI.Get_library_version().splitlines()[0].strip(),
        "phases": {},
    }
    if args.window == "allocate":
        win = MPI.Win.Allocate(nmax * 4 if rank == 0 else 0, 4, comm=comm)
        shard = np.frombuffer(win.tomemory(), np.float32) if rank == 0 else None
    else:
        shard = np.zeros(nmax if rank == 0 else 0, np.float32)
        win = MPI.Win.Create(shard, 4, comm=comm)
    if rank == 0:
        shard[:] = 1.0
    comm.Barrier()
    me["threads_after_window"] = _threads()
    buf = np.empty(nmax, np.float32)
    grad = np.full(nmax, 1e-6, np.float32)

    def rma(op: str, n: int, sync: str) -> tuple[float, float]:
        s = time.monotonic()
        if sync == "lock":
            win.Lock(0, MPI.LOCK_SHARED)
        if op == "get":
            win.Get([buf, n, MPI.FLOAT], 0, target=(0, n, MPI.FLOAT))
        else:
            win.Accumulate([grad, n, MPI.FLOAT], 0, target=(0, n, MPI.FLOAT), op=MPI.SUM)
        if sync == "lock":
            win.Unlock(0)
        else:
            win.Flush(0)
        return s, time.monotonic()

    def compute(seconds: float) -> tuple[float, int]:
        """Matmuls for ``seconds`` with no MPI call; returns (end time, matmuls done)."""
        t0, k = time.monotonic(), 0
        while time.monotonic() - t0 < seconds:
            a @ a
            k += 1
        return time.monotonic(), k

    one_round = [(size // 4, op) for size in SIZES for op in OPS]
    busy_ops = one_round * args.repeat
    fast_ops = one_round * (3 * args.repeat)  # cheap phases: three times the runs

    def two_sided(n: int, op: str) -> tuple[float, float]:
        s = time.monotonic()
        if op == "get":
            req[0] = n
            comm.Send(req, 0, TAG_GET)
            comm.Recv([buf, n, MPI.FLOAT], 0, TAG_REPLY)
        else:
            comm.Send([grad, n, MPI.FLOAT], 0, TAG_ACC)
            comm.Recv(req, 0, TAG_REPLY)
        return s, time.monotonic()

    req = np.zeros(1, np.int64)
    for phase in args.phases.split(","):
        kind, _, sync = phase.partition("-")
        out: dict = {}
        rma_phase = kind in ("idle", "busy")
        if rma_phase and rank == 1 and sync == "lockall":
            win.Lock_all()
        if rma_phase and rank == 1:  # one untimed round first: page faults, registration
            for n, op in one_round:
                rma(op, n, sync)
        comm.Barrier()
        if kind == "idle":
            # the CPU a rank waiting in a Barrier uses: the origin sleeps (outside MPI) first
            c0, w0 = time.process_time(), time.monotonic()
            if rank == 1:
                time.sleep(IDLE_WAIT)
            comm.Barrier()
            out["cpu_waiting"] = (time.process_time() - c0) / (time.monotonic() - w0)
            if rank == 1:
                out["ops"] = [(n, op, *rma(op, n, sync)) for n, op in fast_ops]
            comm.Barrier()  # the target waits here, inside MPI, while the origin works
        elif kind == "busy":
            todo, done, periods = list(busy_ops), [], []
            while comm.bcast(bool(todo), root=1):
                comm.Barrier()
                t0 = time.monotonic()
                if rank == 0:
                    t_end, k = compute(args.busy)
                    periods.append({"seconds": t_end - t0, "matmuls": k})
                else:
                    time.sleep(0.05)  # the target is in its loop
                    issued = []
                    while todo and time.monotonic() - t0 < args.busy / 2:
                        n, op = todo.pop(0)
                        issued.append((n, op, *rma(op, n, sync)))
                t_end = comm.bcast(t_end if rank == 0 else None, root=0)
                if rank == 1:  # with the target's compute left when each was issued
                    done += [(n, op, s, e, t_end - s) for n, op, s, e in issued]
                comm.Barrier()
            out["ops"], out["periods"] = done, periods
        elif kind == "twosided":
            if rank == 0:
                out["cpu_waiting"] = _serve(comm, shard, MPI, poll=sync == "poll")
            else:
                time.sleep(IDLE_WAIT)  # nothing to serve yet: what does the server burn?
                for n, op in one_round:  # untimed
                    two_sided(n, op)
                out["ops"] = [(n, op, *two_sided(n, op)) for n, op in fast_ops]
                comm.Send(req, 0, TAG_STOP)
        elif kind == "work":  # fixed matmul work on both ranks at once, no MPI calls
            t0 = time.perf_counter()
            for _ in range(args.work):
                a @ a
            out["seconds"] = time.perf_counter() - t0
        else:
            raise SystemExit(f"unknown phase {phase}")
        if rma_phase and rank == 1 and sync == "lockall":
            win.Unlock_all()
        comm.Barrier()
        me["phases"][phase] = out
    win.Free()
    everyone = comm.gather(me, root=0)
    if rank == 0:
        Path(args.out).write_text(json.dumps(everyone))


def _serve(comm, shard, MPI, poll: bool) -> float:  # noqa: ANN001
    """The parameter-server service loop. ``poll=False``: blocks in ``Probe`` (always inside
    MPI); ``poll=True``: ``Iprobe``, and a 0.5 ms sleep when nothing is there (inside MPI at
    least every 0.5 ms). Returns the CPU it used, as a fraction of a core, while it waited for
    its first message."""
    import numpy as np

    st = MPI.Status()
    req = np.zeros(1, np.int64)
    rbuf = np.empty_like(shard)
    c0, w0, cpu = time.process_time(), time.monotonic(), None
    while True:
        if poll:
            if not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, st):
                time.sleep(0.0005)
                continue
        else:
            comm.Probe(MPI.ANY_SOURCE, MPI.ANY_TAG, st)
        if cpu is None:
            cpu = (time.process_time() - c0) / (time.monotonic() - w0)
        src, tag = st.Get_source(), st.Get_tag()
        if tag == TAG_STOP:
            comm.Recv(req, src, TAG_STOP)
            return cpu
        if tag == TAG_GET:
            comm.Recv(req, src, TAG_GET)
            comm.Send([shard, int(req[0]), MPI.FLOAT], src, TAG_REPLY)
        else:
            n = st.Get_count(MPI.FLOAT)
            comm.Recv([rbuf, n, MPI.FLOAT], src, TAG_ACC)
            np.add(shard[:n], rbuf[:n], out=shard[:n])
            comm.Send(req, src, TAG_REPLY)


def _threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


# ----------------------------------------------------------------------------- the launcher

def launch(args: argparse.Namespace, env_extra: dict, env_rank0: dict, phases: tuple[str, ...],
           work: int, tmp: Path, label: str) -> list[dict]:
    out = tmp / f"{label}.json"
    prog = [sys.executable, str(Path(__file__).resolve()), "--child", "--phases",
            ",".join(phases), "--out", str(out), "--busy", str(args.busy), "--repeat",
            str(args.repeat), "--window", args.window, "--work", str(work)]
    if env_rank0:  # MPMD: rank 0 gets its own variables (Hydra's per-executable -env)
        cmd = ["mpiexec", "-n", "1"] + [x for k, v in env_rank0.items() for x in ("-env", k, v)]
        cmd += prog + [":", "-n", "1"] + prog
    else:
        cmd = ["mpiexec", "-n", "2"] + prog
    env = {**os.environ, **THREADS, **env_extra}
    for k in ("MPIR_CVAR_ASYNC_PROGRESS", "MPIR_CVAR_NOLOCAL"):
        if k not in env_extra:
            env.pop(k, None)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        text, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise SystemExit(f"{label}: no result within {args.timeout} s (killed)") from None
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{label}: mpiexec failed ({proc.returncode}):\n{text}")
    return json.loads(out.read_text())


def calibrate(seconds: float) -> tuple[int, float]:
    """Matmuls that take about ``seconds`` in this (single, MPI-free) process; and the rate."""
    import numpy as np

    a = np.random.default_rng(0).random((MATMUL_N, MATMUL_N), dtype=np.float32)
    a @ a
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.3:
        a @ a
        k += 1
    rate = k / (time.perf_counter() - t0)
    return max(1, int(rate * seconds)), rate


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--busy", type=float, default=1.0,
                    help="seconds the target computes per busy period (default 1.0)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; median kept")
    ap.add_argument("--window", choices=("allocate", "create"), default="allocate",
                    help="MPI.Win.Allocate (default) or MPI.Win.Create over a numpy array")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per mpiexec run")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phases", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=int, default=1000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for k, v in THREADS.items():
        os.environ.setdefault(k, v)
    if args.child:
        child(args)
        return
    if subprocess.run(["which", "mpiexec"], capture_output=True).returncode != 0:
        raise SystemExit("mpiexec is not on PATH (pip install mpi4py mpich)")

    t_start = time.monotonic()
    load0 = Path("/proc/loadavg").read_text().split()[0]
    work, alone_rate = calibrate(0.5)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, env_extra, env_rank0, phases in RUNS:
            results[label] = launch(args, env_extra, env_rank0, phases, work, Path(tmp), label)
    load1 = Path("/proc/loadavg").read_text().split()[0]
    report(args, results, work, alone_rate, time.monotonic() - t_start, (load0, load1))


# ----------------------------------------------------------------------------- the report

CASES = (  # (case, run label suffix, phase kind)
    ("(a) idle in MPI", "", "idle"),
    ("(b) busy", "", "busy"),
    ("(c) busy+async", "+async", "busy"),
    ("(c0) +async rank 0", "+async0", "busy"),  # the progress thread on the target only
    ("(d) 2-sided loop", "", "twosided"),
)


def samples(results: dict, transport: str, case: str, sync: str, op: str,
            size: int | None = None) -> list[tuple[float, float | None]]:
    """(latency s, target compute left s or None) of every timed operation of a case."""
    suffix, kind = next((sfx, k) for c, sfx, k in CASES if c.split()[0] == case)
    phase = f"{kind}-{sync}"
    out = results[transport + suffix][1]["phases"][phase]
    return [(x[3] - x[2], x[4] if len(x) > 4 else None) for x in out["ops"]
            if x[1] == op and (size is None or x[0] * 4 == size)]


def waits(pairs: list[tuple[float, float | None]]) -> int:
    """How many operations took at least 80% of the target's compute left when issued."""
    return sum(left is not None and lat >= 0.8 * left for lat, left in pairs)


def report(args: argparse.Namespace, results: dict[str, list[dict]], work: int,
           alone_rate: float, wall: float, load: tuple[str, str]) -> None:
    r0 = results["shm"][0]
    print(f"{r0['library']}; mpi4py thread level: {r0['thread_level']}; window: "
          f"MPI.Win.{args.window.capitalize()} 16 MiB; busy period {args.busy:g} s; median of "
          f"{args.repeat} (busy) / {3 * args.repeat} (others)")
    print(f"load average before / after: {load[0]} / {load[1]} ({os.cpu_count()} cores)")
    for label, ranks in results.items():
        print(f"  {label:<13} threads per rank after MPI init: "
              + ", ".join(str(r["threads_after_window"]) for r in ranks))
    print()
    print(f"{'case':<18} {'transport':<9} {'sync':<10} {'size':>6} {'Get ms':>9} "
          f"{'Acc ms':>9} {'left ms':>8}")
    for transport in ("shm", "netmod"):
        for case, sfx, kind in CASES:
            if transport + sfx not in results:
                continue
            phases = results[transport + sfx][1]["phases"]
            syncs = [p.partition("-")[2] for p in phases if p.partition("-")[0] == kind]
            for sync in syncs:
                for size in SIZES:
                    g, a = (samples(results, transport, case.split()[0], sync, op, size)
                            for op in OPS)
                    left = [x for _, x in g + a if x is not None]
                    lat = [med([t for t, _ in g]) * 1e3, med([t for t, _ in a]) * 1e3]
                    print(f"{case:<18} {transport:<9} {sync:<10} {size // MiB:>4}Mi "
                          f"{lat[0]:>9.2f} {lat[1]:>9.2f} "
                          f"{f'{med(left) * 1e3:.0f}' if left else '':>8}")
    print("shm = MPICH's default path on one host; netmod = MPIR_CVAR_NOLOCAL=1 (UCX), the "
          "path between hosts")
    print("lock = Lock(0, SHARED)/op/Unlock(0); lockall = Lock_all epoch held, op, Flush(0); "
          "left = target compute still to run when the op was issued")
    print()

    # the cost of async progress
    def work_s(label: str, rank: int) -> float:
        return results[label][rank]["phases"]["work"]["seconds"]

    def rate(label: str, phase: str) -> float:
        ps = results[label][0]["phases"][phase]["periods"]
        return med([p["matmuls"] / p["seconds"] for p in ps])

    print(f"cost of async progress: {work} matmuls {MATMUL_N}x{MATMUL_N} (one process alone: "
          f"{work / alone_rate:.2f} s)")
    print(f"{'':<46} {'async off':>9} {'on, both':>9} {'slowdown':>9} {'on, rank 0':>10} "
          f"{'slowdown':>9}")
    slowdowns = []
    for rank in (0, 1):
        off, on, on0 = (work_s(x, rank) for x in ("shm", "shm+async", "shm+async0"))
        slowdowns += [on / off] + ([on0 / off] if rank == 0 else [])
        print(f"{f'fixed work, both ranks computing: rank {rank} (s)':<46} {off:>9.2f} "
              f"{on:>9.2f} {on / off:>8.2f}x {on0:>10.2f} {on0 / off:>8.2f}x")
    for sync in ("lock", "lockall"):
        off, on = rate("shm", f"busy-{sync}"), rate("shm+async", f"busy-{sync}")
        slowdowns.append(off / on)
        line = (f"{f'target matmuls/s in the busy periods, {sync}':<46} {off:>9.0f} {on:>9.0f} "
                f"{off / on:>8.2f}x")
        if f"busy-{sync}" in results["shm+async0"][0]["phases"]:
            on0 = rate("shm+async0", f"busy-{sync}")
            slowdowns.append(off / on0)
            line += f" {on0:>10.0f} {off / on0:>8.2f}x"
        print(line)
    phases = results["shm"][0]["phases"]
    print(f"CPU a target with nothing to do uses ({IDLE_WAIT:g} s): "
          f"{phases['idle-lock']['cpu_waiting']:.0%} of a core waiting in a Barrier, "
          f"{phases['twosided-probe']['cpu_waiting']:.0%} in a service loop blocked in Probe, "
          f"{phases['twosided-poll']['cpu_waiting']:.0%} in one polling Iprobe + 0.5 ms sleep")
    print()

    print("conclusions (from the numbers above):")
    big = max(SIZES)
    fixed, as_fast, waiting = True, True, []
    for transport in ("shm", "netmod"):
        for sync in ("lock", "lockall"):
            parts = []
            for op in OPS:
                b = samples(results, transport, "(b)", sync, op)
                c = samples(results, transport, "(c)", sync, op)
                if transport == "shm" and sync == "lock":
                    c += samples(results, transport, "(c0)", sync, op)
                b16 = med([t for t, _ in samples(results, transport, "(b)", sync, op, big)])
                c16 = med([t for t, _ in samples(results, transport, "(c)", sync, op, big)])
                d16 = med([t for t, _ in samples(results, transport, "(d)", "poll", op, big)])
                fixed &= waits(c) == 0
                as_fast &= c16 <= 1.5 * d16
                name = "Get" if op == "get" else "Accumulate"
                verdict = ("WAITS for the target's compute" if waits(b) > len(b) / 2 else
                           "progresses without the target")
                if waits(b) > len(b) / 2:
                    waiting.append(f"{transport} {sync} {name}")
                parts.append(f"{name} {verdict} ({waits(b)}/{len(b)} took >= 80% of the compute "
                             f"left; 16 MiB: {b16 * 1e3:.1f} ms), with async progress "
                             f"{c16 * 1e3:.1f} ms ({waits(c)}/{len(c)} waited), service "
                             f"loop (poll) {d16 * 1e3:.1f} ms")
            print(f"  {transport}, {sync}: " + "; ".join(parts))
    slow = max(slowdowns)
    print(f"  async progress {'removes' if fixed else 'does not remove'} the wait, at a cost of "
          f"{slow:.2f}x on the target's compute time on {os.cpu_count()} cores (worst of the "
          f"{len(slowdowns)} measurements above, best {min(slowdowns):.2f}x); its 16 MiB "
          "operations are " + ("within" if as_fast else "not within")
          + " 1.5x of the polling service loop's")
    as_good = fixed and as_fast and slow < 1.1
    print("  choice: " + (
        "passive-target RMA with async progress (no wait, as fast, and no core lost)" if as_good
        else "dedicated parameter-server ranks serving two-sided messages in a service loop: "
        f"without async progress these wait for a computing target: {', '.join(waiting)}"
        + ("" if not fixed else f"; async progress, which removes the wait, costs the target "
           f"{min(slowdowns):.2f}x-{slow:.2f}x its compute time")))
    print(f"total {wall:.0f} s")


if __name__ == "__main__":
    main()

"""Checks of ``executor.mpi.collectives`` with real ranks; run under mpiexec
(tests/executor/test_comm.py).

    mpiexec -n 4 python tests/executor/mpi_cases/comm_cases.py          # all checks
    mpiexec -n 2 python tests/executor/mpi_cases/comm_cases.py fail 1   # rank 1 raises
    mpiexec -n 4 python tests/executor/mpi_cases/comm_cases.py quiet    # all, waiting quietly
    mpiexec -n 2 python tests/executor/mpi_cases/comm_cases.py one-core # oversubscribed?

Every expected value is a closed form of the rank and the element index, exact in float32
except the sums, which are checked to float32 tolerance. Rank 0 prints ``nodes <layout>`` then
``OK <checks>``; a mismatch raises inside ``abort_on_error``, so the job exits non-zero.
"""

from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np
from mpi4py import MPI

from executor.mpi.collectives import (
    ALGORITHMS,
    abort_on_error,
    allgather,
    allreduce,
    barrier,
    broadcast,
    chunk_bounds,
    node_layout,
    oversubscribed,
    quiet_waits,
    recv,
    recv_tensor,
    reduce_scatter,
    send,
    send_tensor,
    tag_of,
    wait_quietly,
)


def base(n: int) -> np.ndarray:
    return ((np.arange(n) % 97) + 1) * 0.01  # float64; rank r contributes base + r / 2


def contribution(n: int, r: int) -> np.ndarray:
    return (base(n) + 0.5 * r).astype(np.float32)


def expected_sum(n: int, p: int) -> np.ndarray:
    return p * base(n) + 0.5 * p * (p - 1) / 2


def owner_values(n: int, p: int) -> np.ndarray:
    """Element g of a split buffer is g + owner(g) / 4: exact in float32 for n < 2**22."""
    out = np.empty(n)
    for r in range(p):
        a, b = chunk_bounds(n, p, r)
        out[a:b] = np.arange(a, b) + 0.25 * r
    return out


class Checks:
    def __init__(self, comm: MPI.Comm):
        self.comm, self.count = comm, 0

    def close(self, what: str, got: np.ndarray, want: np.ndarray, exact: bool = False) -> None:
        ok = (np.array_equal(got, want) if exact
              else np.allclose(got, want, rtol=2e-6 * self.comm.size, atol=1e-5))
        if got.shape != np.shape(want) or not ok:
            bad = np.flatnonzero(~np.isclose(got.ravel(), np.ravel(want)))[:5]
            raise AssertionError(f"{what}: shape {got.shape}, first bad elements {bad.tolist()}")
        self.count += 1

    def same_everywhere(self, what: str, a: np.ndarray) -> None:
        crcs = self.comm.allgather(zlib.crc32(a.tobytes()))
        if len(set(crcs)) != 1:
            raise AssertionError(f"{what}: ranks hold different bits ({crcs})")
        self.count += 1


def run_checks(comm: MPI.Comm) -> int:
    p, r = comm.size, comm.rank
    ck = Checks(comm)
    sizes = sorted({0, 1, 5, p - 1, 1000, 100003})
    for n in sizes:
        for alg in ALGORITHMS:
            buf = contribution(n, r)
            out = allreduce(comm, buf, alg)
            if out is not buf:
                raise AssertionError(f"allreduce {alg} is not in place")
            ck.close(f"allreduce {alg} n={n}", buf, expected_sum(n, p))
            if alg != "mpi":
                ck.same_everywhere(f"allreduce {alg} n={n}", buf)

        a, b = chunk_bounds(n, p, r)
        mine = reduce_scatter(comm, contribution(n, r))
        ck.close(f"reduce_scatter n={n}", mine, expected_sum(n, p)[a:b])

        want = owner_values(n, p)
        got = allgather(comm, want[a:b].astype(np.float32), n)
        ck.close(f"allgather n={n}", got, want, exact=True)

        for root in range(p):
            buf = (np.arange(n) + 0.25 * root).astype(np.float32) if r == root else \
                np.full(n, -1, np.float32)
            broadcast(comm, buf, root)
            ck.close(f"broadcast root={root} n={n}", buf, np.arange(n) + 0.25 * root, True)

        # a shaped tensor around the ring, string tags hashed the same on every rank
        right, left = (r + 1) % p, (r - 1) % p
        shape = (n // 5, 5) if n % 5 == 0 else (n,)
        mine_t = (np.arange(n) + 0.25 * r).astype(np.float32).reshape(shape)
        got, rreq = recv_tensor(comm, shape, left, tag_of(f"act.{left}->{r}"))
        sreq = send_tensor(comm, mine_t, right, tag_of(f"act.{r}->{right}"))
        MPI.Request.Waitall([rreq, sreq])
        ck.close(f"send/recv n={n}", got, (np.arange(n) + 0.25 * left).reshape(shape), True)

    # the whole-buffer layout: a 2-D all-reduce sums elementwise whatever the shape
    buf = contribution(3 * 7, r).reshape(3, 7)
    allreduce(comm, buf, "ring")
    ck.close("allreduce 2-D", buf, expected_sum(21, p).reshape(3, 7))

    # blocking send and receive around the ring (even ranks send first: no cycle of sends)
    right, left = (r + 1) % p, (r - 1) % p
    got = np.empty(1000, np.float32)
    for step in (0, 1):
        if (r % 2 == 0) == (step == 0) and p > 1:
            send(comm, np.full(1000, r, np.float32), right, 9)
        elif p > 1:
            recv(comm, got, left, 9)
    if p > 1:
        ck.close("send/recv (blocking)", got, np.full(1000, left, np.float32), True)

    # the barrier holds every rank until the last one enters it
    if r == 0:
        time.sleep(0.2)
    t = MPI.Wtime()
    barrier(comm)
    if r != 0 and MPI.Wtime() - t < 0.15:
        raise AssertionError(f"rank {r} left the barrier before rank 0 entered it")
    ck.count += 1

    tags = [tag_of(name) for name in ("stage0.fwd", "stage1.bwd", "")]
    if comm.allgather(tags) != [tags] * p or not all(
            0 <= t <= comm.Get_attr(MPI.TAG_UB) for t in tags):
        raise AssertionError(f"tag_of not stable or out of range on rank {r}: {tags}")
    ck.count += 1
    return comm.allreduce(ck.count, op=MPI.SUM)


def main(argv: list[str]) -> None:
    comm = MPI.COMM_WORLD
    with abort_on_error(comm):
        if argv[:1] == ["fail"]:
            if comm.rank == int(argv[1]):
                raise ValueError("injected failure")
            allreduce(comm, np.ones(4, np.float32), "ring")  # would wait forever without Abort
            return
        if argv[:1] == ["one-core"]:  # every rank on the first core the job may use
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
            if comm.rank == 0:
                print(f"oversubscribed {oversubscribed(comm)}", flush=True)
            else:
                oversubscribed(comm)
            return
        wait_quietly(argv[:1] == ["quiet"])
        if quiet_waits() != (argv[:1] == ["quiet"]):
            raise AssertionError("wait_quietly did not take")
        layout = node_layout(comm)
        total = run_checks(comm)
        if comm.rank == 0:
            print(f"nodes {layout[0]}x{layout[1]}" if layout else "nodes uneven", flush=True)
            print(f"OK {total}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

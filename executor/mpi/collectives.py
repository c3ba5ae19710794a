"""Collectives and point-to-point transfers of the executor, over MPI (mpi4py).

Every collective runs the algorithm the Plan names, so that the executor measures what the
simulator predicted (``simulator/engine/collectives.py``). For ``p`` ranks, per rank:

- ``ring`` all-reduce: ring reduce-scatter then ring all-gather over ``p`` contiguous chunks,
  ``2(p-1)`` ``Sendrecv`` with the neighbours, each of one chunk (about ``S/p``).
- ``tree`` all-reduce: binomial-tree reduce to rank 0 then binomial broadcast from it,
  ``ceil(log2 p)`` rounds each way of full-size ``Send``/``Recv`` (a rank sends once in the
  reduce and receives once in the broadcast; rank 0 receives and sends ``ceil(log2 p)`` times).
- ``hierarchical`` all-reduce: ring reduce-scatter inside the node (``p_local - 1`` messages),
  ring all-reduce of the rank's shard (``S/p_local``) among the ranks with the same local index on
  every node (``2(n-1)`` messages for ``n`` nodes), ring all-gather inside the node
  (``p_local - 1``). Nodes come from ``Split_type(COMM_TYPE_SHARED)``; when nodes hold different
  numbers of ranks it runs the plain ring, as the simulator does.
- ``mpi`` all-reduce: the library's own ``Allreduce`` (MPICH: Rabenseifner for large messages).
- ``allgather`` / ``reduce_scatter``: ring, ``p-1`` ``Sendrecv`` of one chunk each.
- ``broadcast``: binomial tree from any root, ``ceil(log2 p)`` rounds of full-size messages.

Layout of split buffers: a buffer of ``n`` elements is flattened (C order) and cut along that
single axis into ``p`` contiguous chunks; rank ``r`` owns chunk ``r``, the elements
``chunk_bounds(n, p, r)``. The first ``n % p`` chunks hold one element more (``np.array_split``).

Buffers are C-contiguous NumPy float32 arrays; all-reduces work in place and compute the *sum*
(the caller scales to a mean). Collective traffic runs on a private duplicate of the
communicator (created on first use, cached as an MPI attribute with the node communicators), so
it never matches the caller's point-to-point messages; as with any MPI collective, every rank of
the communicator calls the same collectives in the same order. Floating-point sums are taken in
algorithm order, so the algorithms agree to float32 rounding, not bit for bit; within one
algorithm every rank ends with identical bits (except ``mpi``, which is up to the library).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

ALGORITHMS = ("ring", "tree", "hierarchical", "mpi")

_TAG = 0  # every collective message; contexts separate it from user traffic, order matches it


def chunk_bounds(n: int, p: int, r: int) -> tuple[int, int]:
    """``(start, stop)`` of chunk ``r`` when ``n`` elements are split into ``p`` contiguous
    chunks, the first ``n % p`` of them one element longer."""
    q, extra = divmod(n, p)
    start = r * q + min(r, extra)
    return start, start + q + (1 if r < extra else 0)


# ---- per-communicator cache (an MPI attribute, freed with the communicator) ---------------


@dataclass
class _Cache:
    private: MPI.Comm  # Dup of the user's communicator: collective traffic only
    node: MPI.Comm | None = None  # ranks sharing memory with this one
    cross: MPI.Comm | None = None  # ranks with this one's local index, one per node
    uniform: bool = False  # every node holds the same number of ranks
    comms: list[MPI.Comm] = field(default_factory=list)


def _free_cache(comm: MPI.Comm, keyval: int, cache: _Cache) -> None:
    if not MPI.Is_finalized():
        for c in cache.comms:
            c.Free()


_keyval: int | None = None  # created once per process, as MPI libraries do for their caches


def _cache(comm: MPI.Comm) -> _Cache:
    global _keyval
    if _keyval is None:
        _keyval = MPI.Comm.Create_keyval(delete_fn=_free_cache)
    cache = comm.Get_attr(_keyval)
    if cache is None:
        private = comm.Dup()
        cache = _Cache(private, comms=[private])
        comm.Set_attr(_keyval, cache)
    return cache


def _nodes(comm: MPI.Comm) -> _Cache:
    cache = _cache(comm)
    if cache.node is None:
        c = cache.private
        node = c.Split_type(MPI.COMM_TYPE_SHARED, key=c.rank)
        cross = c.Split(color=node.rank, key=c.rank)
        sizes = np.array([node.size, -node.size], dtype=np.int64)
        c.Allreduce(MPI.IN_PLACE, sizes, op=MPI.MAX)  # (largest node, -smallest node)
        cache.node, cache.cross, cache.uniform = node, cross, bool(sizes[0] == -sizes[1])
        cache.comms += [node, cross]
    return cache


def node_layout(comm: MPI.Comm) -> tuple[int, int] | None:
    """``(nodes, ranks per node)`` that ``hierarchical`` uses, or None when node sizes differ
    (then it runs the ring). Collective on first call."""
    cache = _nodes(comm)
    assert cache.node is not None and cache.cross is not None
    return (cache.cross.size, cache.node.size) if cache.uniform else None


# ---- waiting ------------------------------------------------------------------------------
#
# MPICH waits by polling: a rank blocked in a receive, a send or a barrier keeps running. With a
# core per rank that is the fastest way to wait; with more ranks than cores it takes the core
# from a rank that has work (measured: a Downpour worker's pushes and pulls took 6.9-7.7 ms per
# step polling against 5.6-6.4 ms waiting quietly, 3 workers and a server on 2 cores). So when a
# node's ranks outnumber its cores every wait below tests its request and sleeps between tests:
# the waiting rank leaves its share of the cores, as the simulator's node model assumes.

POLL_S = 1e-4  # between tests of a quiet wait; the kernel's timer slack adds about 50 us


_quiet = False  # one setting per process: every thread of a rank waits alike


def oversubscribed(comm: MPI.Comm) -> bool:
    """Whether the node of this rank has more of ``comm``'s ranks than cores they may run on
    (the union of the ranks' CPU affinities, so ranks bound to a core each still count once).
    Collective over ``comm``."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    cores = set().union(*node.allgather(sorted(os.sched_getaffinity(0))))
    ranks = node.size
    node.Free()
    return ranks > len(cores)


def wait_quietly(quiet: bool) -> None:
    """Make this process's waits quiet (sleep between tests) or MPI's own (polling)."""
    global _quiet
    _quiet = quiet


def quiet_waits() -> bool:
    return _quiet


def choose_waits(comm: MPI.Comm) -> str:
    """Wait quietly when a node runs more of ``comm``'s ranks than it has cores, MPI's own way
    otherwise; returns "quiet" or "polling" (a Result records it). Collective."""
    quiet = oversubscribed(comm)
    wait_quietly(quiet)
    return "quiet" if quiet else "polling"


def wait(req: MPI.Request) -> None:
    """``req.Wait()``, quietly when waits are quiet."""
    if not quiet_waits():
        req.Wait()
        return
    while not req.Test():
        time.sleep(POLL_S)


def waitall(reqs: list[MPI.Request]) -> None:
    """``Request.Waitall(reqs)``, quietly when waits are quiet."""
    if not quiet_waits():
        MPI.Request.Waitall(reqs)
        return
    while not MPI.Request.Testall(reqs):
        time.sleep(POLL_S)


def send(comm: MPI.Comm, buf: np.ndarray, dest: int, tag: int) -> None:
    """A blocking send that waits as :func:`wait` does."""
    if quiet_waits():
        wait(comm.Isend(buf, dest, tag))
    else:
        comm.Send(buf, dest, tag)


def recv(comm: MPI.Comm, buf: np.ndarray, source: int, tag: int) -> None:
    """A blocking receive that waits as :func:`wait` does."""
    if quiet_waits():
        wait(comm.Irecv(buf, source, tag))
    else:
        comm.Recv(buf, source, tag)


def sendrecv(comm: MPI.Comm, sbuf: np.ndarray, dest: int, rbuf: np.ndarray,
             source: int, tag: int) -> None:
    """``comm.Sendrecv`` (one tag both ways), waiting as :func:`wait` does."""
    if quiet_waits():
        waitall([comm.Irecv(rbuf, source, tag), comm.Isend(sbuf, dest, tag)])
    else:
        comm.Sendrecv(sbuf, dest, tag, rbuf, source, tag)


def barrier(comm: MPI.Comm) -> None:
    """``comm.Barrier()``, waiting as :func:`wait` does."""
    if quiet_waits():
        wait(comm.Ibarrier())
    else:
        comm.Barrier()


# ---- ring building blocks -----------------------------------------------------------------


_local = threading.local()


def _scratch(n: int) -> np.ndarray:
    """A float32 receive buffer of ``n`` elements, kept per thread and grown as needed: a fresh
    multi-megabyte buffer per call costs a page fault per 4 KiB page on first touch, which
    measured as most of a 2-rank ring all-reduce of 8 MB on one host (1.3 ms against 0.4)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n:
        buf = _local.buf = np.empty(max(n, 1024), dtype=np.float32)
    return buf[:n]


def _flat(buf: np.ndarray) -> np.ndarray:
    if not isinstance(buf, np.ndarray) or buf.dtype != np.float32:
        raise TypeError(f"expected a float32 numpy array, got {getattr(buf, 'dtype', type(buf))}")
    if not buf.flags.c_contiguous:
        raise ValueError("expected a C-contiguous buffer (MPI sends it as one block)")
    return buf.reshape(-1)


Bounds = list[tuple[int, int]]


def _bounds(n: int, p: int, bounds: Bounds | None) -> Bounds:
    """Every rank's chunk: the default contiguous split, or the caller's (uneven) one."""
    return bounds if bounds is not None else [chunk_bounds(n, p, r) for r in range(p)]


def _ring_reduce_scatter(comm: MPI.Comm, flat: np.ndarray, bounds: Bounds | None = None
                         ) -> None:
    # Step s: send the partial sum of chunk (r-s-1) right, add chunk (r-s-2) from the left;
    # after p-1 steps rank r holds chunk r summed over every rank.
    p, r = comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    chunks = _bounds(flat.size, p, bounds)
    tmp = _scratch(max(b - a for a, b in chunks))
    for s in range(p - 1):
        a, b = chunks[(r - s - 1) % p]
        c, d = chunks[(r - s - 2) % p]
        sendrecv(comm, flat[a:b], right, tmp[: d - c], left, _TAG)
        flat[c:d] += tmp[: d - c]


def _ring_allgather(comm: MPI.Comm, flat: np.ndarray, bounds: Bounds | None = None) -> None:
    # Step s: pass chunk (r-s) right, receive chunk (r-s-1) from the left.
    p, r = comm.size, comm.rank
    right, left = (r + 1) % p, (r - 1) % p
    chunks = _bounds(flat.size, p, bounds)
    for s in range(p - 1):
        a, b = chunks[(r - s) % p]
        c, d = chunks[(r - s - 1) % p]
        sendrecv(comm, flat[a:b], right, flat[c:d], left, _TAG)


def _ring_allreduce(comm: MPI.Comm, flat: np.ndarray) -> None:
    _ring_reduce_scatter(comm, flat)
    _ring_allgather(comm, flat)


# ---- binomial trees -----------------------------------------------------------------------


def _tree_reduce(comm: MPI.Comm, flat: np.ndarray) -> None:
    # Round k = 1, 2, 4, ...: rank i with i % 2k == k sends its partial sum to i - k and is done.
    p, r = comm.size, comm.rank
    tmp = _scratch(flat.size)
    k = 1
    while k < p:
        if r % (2 * k) == k:
            send(comm, flat, r - k, _TAG)
            return
        if r % (2 * k) == 0 and r + k < p:
            recv(comm, tmp, r + k, _TAG)
            flat += tmp
        k *= 2


def _tree_broadcast(comm: MPI.Comm, flat: np.ndarray, root: int) -> None:
    # The reduce's rounds reversed, on ranks relative to the root.
    p = comm.size
    v = (comm.rank - root) % p
    k = 1
    while k < p:
        k *= 2
    while k > 1:
        k //= 2
        if v % (2 * k) == 0 and v + k < p:
            send(comm, flat, (v + k + root) % p, _TAG)
        elif v % (2 * k) == k:
            recv(comm, flat, (v - k + root) % p, _TAG)


# ---- public collectives -------------------------------------------------------------------


def allreduce(comm: MPI.Comm, buf: np.ndarray, algorithm: str) -> np.ndarray:
    """Sum ``buf`` over every rank of ``comm``, in place, by ``algorithm`` (ring, tree,
    hierarchical or mpi); returns ``buf``."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown all-reduce algorithm {algorithm!r} (known: {ALGORITHMS})")
    flat = _flat(buf)
    if comm.size == 1:
        return buf
    if algorithm == "mpi":
        comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
    elif algorithm == "ring":
        _ring_allreduce(_cache(comm).private, flat)
    elif algorithm == "tree":
        private = _cache(comm).private
        _tree_reduce(private, flat)
        _tree_broadcast(private, flat, 0)
    else:
        cache = _nodes(comm)
        if not cache.uniform:
            _ring_allreduce(cache.private, flat)
            return buf
        assert cache.node is not None and cache.cross is not None
        node = cache.node
        _ring_reduce_scatter(node, flat)
        a, b = chunk_bounds(flat.size, node.size, node.rank)
        _ring_allreduce(cache.cross, flat[a:b])
        _ring_allgather(node, flat)
    return buf


def reduce_scatter(comm: MPI.Comm, buf: np.ndarray, bounds: Bounds | None = None
                   ) -> np.ndarray:
    """Ring reduce-scatter: returns a view of ``buf``'s chunk ``comm.rank`` (see
    :func:`chunk_bounds`, or ``bounds`` for an uneven split: every rank's (start, stop)),
    summed over every rank. The rest of ``buf`` is left as scratch."""
    flat = _flat(buf)
    chunks = _bounds(flat.size, comm.size, bounds)
    if comm.size > 1:
        _ring_reduce_scatter(_cache(comm).private, flat, chunks)
    a, b = chunks[comm.rank]
    return flat[a:b]


def allgather(comm: MPI.Comm, local: np.ndarray, total_len: int,
              bounds: Bounds | None = None) -> np.ndarray:
    """Ring all-gather: a new flat array of ``total_len`` elements whose chunk ``r`` (see
    :func:`chunk_bounds`, or ``bounds`` for an uneven split) is rank ``r``'s ``local``."""
    chunks = _bounds(total_len, comm.size, bounds)
    a, b = chunks[comm.rank]
    local = _flat(local)
    if local.size != b - a:
        raise ValueError(f"rank {comm.rank} owns {b - a} of {total_len} elements, "
                         f"got {local.size}")
    out = np.empty(total_len, dtype=np.float32)
    out[a:b] = local
    if comm.size > 1:
        _ring_allgather(_cache(comm).private, out, chunks)
    return out


def broadcast(comm: MPI.Comm, buf: np.ndarray, root: int = 0) -> np.ndarray:
    """Binomial-tree broadcast of ``root``'s ``buf`` into every rank's ``buf``; returns it."""
    flat = _flat(buf)
    if comm.size > 1:
        _tree_broadcast(_cache(comm).private, flat, root)
    return buf


# ---- point to point -----------------------------------------------------------------------


def tag_of(name: str) -> int:
    """The MPI tag of a plan's string tag: a hash that is the same in every process (unlike
    ``hash()``, salted per process), in ``[0, TAG_UB]``. Distinct names may collide (about
    one pair in ``TAG_UB`` ~ 5e8 with MPICH); only names used between the same two ranks at the
    same time need to differ."""
    ub = MPI.COMM_WORLD.Get_attr(MPI.TAG_UB)
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (ub + 1)


def send_tensor(comm: MPI.Comm, buf: np.ndarray, dest: int, tag: int) -> MPI.Request:
    """Start sending ``buf`` (float32, C-contiguous) to ``dest``; the caller must not modify
    ``buf`` until the returned request completes (``req.Wait()``)."""
    return comm.Isend(_flat(buf), dest, tag)


def recv_tensor(comm: MPI.Comm, shape: tuple[int, ...] | int, source: int,
                tag: int) -> tuple[np.ndarray, MPI.Request]:
    """Start receiving a float32 tensor of ``shape`` from ``source``: returns the buffer it
    lands in and the request; read the buffer after ``req.Wait()``."""
    out = np.empty(shape, dtype=np.float32)
    return out, comm.Irecv(out.reshape(-1), source, tag)


# ---- failure ------------------------------------------------------------------------------


@contextmanager
def abort_on_error(comm: MPI.Comm) -> Iterator[None]:
    """Abort the whole job when the body raises, as ``python -m mpi4py`` does: the traceback
    and ``rank R: ExceptionType: message`` go to stderr, then ``comm.Abort(1)``, so ranks
    blocked in a collective or a receive are ended instead of waiting forever."""
    try:
        yield
    except SystemExit as e:
        if e.code in (None, 0):
            raise
        print(f"rank {comm.rank}: SystemExit: {e.code}", file=sys.stderr, flush=True)
        _abort(comm, e.code if isinstance(e.code, int) else 1)
    except BaseException as e:
        traceback.print_exc()
        print(f"rank {comm.rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        _abort(comm, 1)


def _abort(comm: MPI.Comm, code: int) -> None:
    """MPI_Abort, and make sure this process ends even if the call returns (seen with MPICH
    when another rank is aborting at the same moment). The rank's supervisor is told first
    that this end is the rank's own decision (``executor/mpi/supervisor.py``)."""
    from executor.mpi.supervisor import ending

    ending()
    time.sleep(0.3)  # let mpiexec forward this rank's last words before it ends every process
    try:
        comm.Abort(code)
    finally:
        os._exit(code)

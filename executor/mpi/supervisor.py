"""A rank's supervisor: the process the launcher starts forks the rank and waits for it, so that
a rank killed by a signal is reported by rank and does not take the job with it.

Why: MPICH's process manager (Hydra) kills every process of a node when one of them dies *by a
signal*, even under ``mpiexec -disable-auto-cleanup`` (its proxy reaps the process and sends
SIGKILL to the others); the job then ends within a fraction of a second, naming only a process
id. An OOM kill, a ``kill -9`` or a segmentation fault all end a process by a signal. So the
process Hydra launched stays a small waiting parent, and the rank (MPI, the model, the data) is
its child, forked before MPI starts. When the rank ends, the parent ends too:

* the rank ended by its own decision (it returned, exited with its code, or aborted the job
  with ``MPI_Abort``): it said so through a pipe first (:func:`ending`), and the parent exits
  with the rank's exit status;
* the rank ended abruptly (a signal, or an exit without saying so: the ``exit`` and ``kill``
  faults of ``PARASIM_INJECT_FAULT``): the parent prints which rank, its process id and how it
  ended, and only then lets go of the rank's PMI connection, so that the process manager learns
  of the end. Under Hydra's default (auto-cleanup) it kills the job and ``mpiexec`` fails.
  Under ``mpiexec -disable-auto-cleanup`` the parent exits normally ``GRACE_S`` later, 0 for
  every rank but rank 0, so Hydra sees an exit, not a signal, and leaves the other ranks
  running. They notice the loss through the watchdog's heartbeats
  (``executor/mpi/watchdog.py``): synchronous schemes abort naming the rank, Downpour goes on
  without the worker and says so in its Result, and the job's exit status is theirs. Rank 0
  writes the Result, so its abrupt end is the job's failure: its parent exits 1.

A signal sent to the parent itself (Ctrl-C through ``mpiexec``, a scheduler's SIGTERM to the
job) is passed to the rank, and once the rank has ended the parent ends by the same signal.
Hydra also sends SIGUSR1 to a node's processes when one of them ends (a notice of failure that
MPICH counts); the parent ignores it.

Only a rank launched with a PMI connection (``PMI_FD``, as Hydra gives) is supervised; the
rank's side of the pipe is one per process, like MPI itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when its parent dies
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 2.0  # after an abrupt end, for the process manager to act before this one exits

_pipe: int | None = None  # the rank's end: one per process, as MPI's own state is


def launched_rank() -> int | None:
    """This process's rank when a PMI process manager (Hydra) launched it, else None."""
    rank = os.environ.get("PMI_RANK", "")
    if "PMI_FD" not in os.environ or not rank.isdigit():
        return None
    return int(rank)


def supervise() -> None:
    """Fork the rank, before MPI starts: returns in the rank, never in the parent. Does
    nothing outside a PMI launch or once MPI is loaded (a rank can no longer be forked)."""
    global _pipe
    rank = launched_rank()
    if rank is None or "mpi4py.MPI" in sys.modules or _pipe is not None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(read)
        _pipe = write
        _die_with(parent)
        return
    os.close(write)
    os._exit(_wait(child, read, rank))


def ending() -> None:
    """Tell the supervisor that this rank ends by its own decision (its exit status stands).
    Call it before ``MPI_Abort`` and before leaving; a no-op without a supervisor."""
    global _pipe
    if _pipe is None:
        return
    try:
        os.write(_pipe, b"end")
        os.close(_pipe)
    except OSError:
        pass
    _pipe = None


def _die_with(parent: int) -> None:
    """Have the kernel end this rank with SIGKILL if its supervisor dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _wait(child: int, read: int, rank: int) -> int:
    """The parent: wait for the rank, report an abrupt end, return the exit status to use."""
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for s in FORWARDED:
        signal.signal(s, forward)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    said = b""
    while chunk := os.read(read, 16):
        said += chunk
    _, status = os.waitpid(child, 0)
    if received:  # the job itself was signalled: end as the signal says
        for s in FORWARDED:
            signal.signal(s, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), received[0])
    code = (128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else
            os.WEXITSTATUS(status))
    if said:
        return code
    how = (f"was killed by signal {os.WTERMSIG(status)} ({_name(os.WTERMSIG(status))})"
           if os.WIFSIGNALED(status) else f"exited abruptly with code {code}")
    print(f"parasim execute: rank {rank} (process {child}) {how}", file=sys.stderr, flush=True)
    # Only now does the process manager learn of the end (this process held the rank's PMI
    # connection open): under Hydra's default auto-cleanup it kills the job, this process
    # included, within GRACE_S, and mpiexec fails; with -disable-auto-cleanup nothing is
    # killed, and this normal exit leaves the verdict to the ranks that live on.
    with contextlib.suppress(KeyError, ValueError, OSError):
        os.close(int(os.environ["PMI_FD"]))
    time.sleep(GRACE_S)
    return 1 if rank == 0 else 0


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unnamed"

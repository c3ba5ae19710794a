"""A watchdog per rank: it notices a rank that is lost (killed, crashed: its heartbeat stops) or
a run that makes no progress (a hang), names the rank, and ends the job cleanly.

Every rank runs a thread that, on its own duplicate of the communicator, sends a heartbeat to
every other rank every ``BEAT_S`` seconds and takes theirs. A rank not heard from for
``lost_after`` seconds is lost. The watchdog then prints which rank was lost and where its own
rank was, and aborts the job (``MPI_Abort``): the lowest-numbered surviving rank at once, the
others ``GRACE_S`` later should that one fail to, so that one message is printed, not one per
rank. On rank 0 the abort is preceded by ``last_words`` (the executor records the failure in the
Result file it has written so far). A rank whose loss the run can survive (a Downpour worker:
:meth:`Watchdog.tolerate`) is only added to ``lost``, which the run reads to go on without it.

The thread is not the rank's main thread, so a rank blocked in an MPI call, or computing,
still beats (kernels and MPI calls release the GIL). A rank killed by a signal stops beating;
for it to be counted lost rather than take the job with it, the launcher must leave the
survivors running: ``mpiexec -disable-auto-cleanup`` with MPICH, and the rank supervised
(``executor/mpi/supervisor.py``), since Hydra kills a node's processes when one of them dies by
a signal.

A rank that makes no progress (no :meth:`Watchdog.tick`) for ``timeout`` seconds prints where it
was stuck and which ranks are lost, if any, and aborts the job; a tolerated rank that hangs
leaves the run instead (it exits, and the others count it lost). A rank that leaves normally
says goodbye (:meth:`Watchdog.stop`), so a rank that finishes first is not taken for lost.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np
from mpi4py import MPI

TAG_BEAT, TAG_BYE = 7201, 7202
BEAT_S = 0.5  # between heartbeats
LOST_AFTER_S = 5.0  # default silence after which a rank is lost
GRACE_S = 2.0  # a survivor other than the lowest waits this long before aborting itself
WAKE_S = 0.1  # how often the thread looks


class Watchdog:
    def __init__(self, comm: MPI.Comm, timeout: float, lost_after: float = LOST_AFTER_S):
        self.comm, self.timeout, self.lost_after = comm, timeout, lost_after
        self.roll = comm.Dup()  # collective, while every rank is alive
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.where = "start-up"
        self.beat = time.monotonic()
        self.heard = {r: self.beat for r in range(self.size) if r != self.rank}
        self.lost: frozenset[int] = frozenset()  # tolerated ranks counted out
        self.departed: set[int] = set()  # ranks that said goodbye
        self.tolerated: frozenset[int] = frozenset()
        self.last_words: Callable[[str], None] | None = None
        self._me = np.array([self.rank], np.int64)  # every beat's payload, never changed
        self._next_beat = 0.0
        self._doomed: float | None = None  # when this rank learnt of an intolerable loss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="watchdog")
        self.thread.start()

    def tick(self, where: str) -> None:
        self.where, self.beat = where, time.monotonic()

    def tolerate(self, ranks: Iterable[int]) -> None:
        """The ranks whose loss the current run survives (counted into ``lost``)."""
        self.tolerated = frozenset(ranks)

    def alive(self) -> list[int]:
        return [r for r in range(self.size) if r not in self.lost and r not in self.departed]

    # ---- the thread ------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self.done.wait(WAKE_S):
            try:
                self._look(time.monotonic())
            except Exception as e:  # noqa: BLE001 - a silent watchdog would be counted lost
                print(f"parasim execute: rank {self.rank}: watchdog: {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)

    def _look(self, now: float) -> None:
        self._listen(now)
        if now >= self._next_beat:
            self._send(TAG_BEAT)
            self._next_beat = now + BEAT_S
        self._count_losses(now)
        if now - self.beat > self.timeout:
            self._stuck()

    def _send(self, tag: int) -> None:
        for r in self.alive():
            if r == self.rank:
                continue
            try:  # fire and forget: a beat to a rank that just died may never complete
                self.roll.Isend(self._me, r, tag).Free()
            except MPI.Exception:  # (a transport that notices the dead peer): it stays silent
                pass

    def _listen(self, now: float) -> None:
        # named sources, not MPI.ANY_SOURCE (see executor/ps/server.py)
        status, got = MPI.Status(), np.empty(1, np.int64)
        for r in self.alive():
            if r == self.rank:
                continue
            try:
                while self.roll.Iprobe(r, MPI.ANY_TAG, status):
                    self.roll.Recv(got, r, status.Get_tag())
                    self.heard[r] = now
                    if status.Get_tag() == TAG_BYE:
                        self.departed.add(r)
            except MPI.Exception:
                pass

    def _count_losses(self, now: float) -> None:
        silent = sorted(r for r, t in self.heard.items() if now - t > self.lost_after
                        and r not in self.lost and r not in self.departed)
        if not silent:
            return
        newly = [r for r in silent if r in self.tolerated]
        if newly:
            self.lost = self.lost | set(newly)
            if self.rank == 0:
                print(f"parasim execute: {name_ranks(newly)} lost (no heartbeat for "
                      f"{self.lost_after:g} s) during {self.where}; going on without "
                      f"{'it' if len(newly) == 1 else 'them'}", file=sys.stderr, flush=True)
        fatal = [r for r in silent if r not in self.tolerated]
        if not fatal:
            return
        self._doomed = self._doomed or now
        first = min(r for r in self.alive() if r not in fatal)
        if self.rank == first or now - self._doomed > GRACE_S:
            self._abort(f"{name_ranks(fatal)} lost (no heartbeat for {self.lost_after:g} s) while "
                        f"rank {self.rank} was in {self.where}; aborting the job")

    def _stuck(self) -> None:
        silent = sorted(r for r, t in self.heard.items() if time.monotonic() - t >
                        self.lost_after and r not in self.departed)
        who = (f"; {name_ranks(silent)} lost" if silent else
               "; every other rank is alive (a hang or a deadlock, not a lost rank)")
        what = (f"rank {self.rank}: no progress for {self.timeout:g} s (in {self.where}, "
                f"{_main_thread_at()}){who}")
        if self.rank in self.tolerated:  # the others go on without this rank
            print(f"parasim execute: {what}; leaving the run", file=sys.stderr, flush=True)
            time.sleep(0.3)
            os._exit(3)
        self._abort(f"{what}; aborting the job")

    def _abort(self, message: str) -> None:
        from executor.mpi.supervisor import ending

        line = f"parasim execute: {message}"
        if self.last_words is not None:
            try:
                self.last_words(line)
            except Exception as e:  # noqa: BLE001 - the abort matters more than the note
                print(f"parasim execute: could not record the failure: {e}", file=sys.stderr)
        print(line, file=sys.stderr, flush=True)
        ending()
        time.sleep(0.3)  # let mpiexec forward the message before it ends the job
        try:
            self.comm.Abort(3)
        finally:
            os._exit(3)

    def stop(self) -> None:
        """Stop watching and tell the other ranks this one leaves normally."""
        self.done.set()
        self.thread.join()
        self._send(TAG_BYE)


def name_ranks(ranks: list[int]) -> str:
    """``rank 2`` or ``ranks 1, 3``."""
    return (f"rank {ranks[0]}" if len(ranks) == 1 else
            f"ranks {', '.join(map(str, ranks))}")


def _main_thread_at() -> str:
    """Where the rank's main thread is: its innermost frame in parasim's own code (a rank
    waiting for others is in ``executor/mpi``; a hung one elsewhere)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        path = frame.f_code.co_filename.replace(os.sep, "/")
        for package in ("/executor/", "/simulator/"):
            if package in path:
                short = path[path.rindex(package) + 1:]
                return f"at {short}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "outside parasim's code"

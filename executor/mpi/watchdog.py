"""A watchdog per rank: ends a run that makes no progress, naming the ranks that were lost.

Every rank runs a thread that answers roll calls on its own duplicate of the communicator. When
its rank has made no progress for ``timeout`` seconds, the watchdog calls the roll: every other
rank's watchdog answers unless that rank is gone. It then prints where its rank was stuck and
which ranks did not answer, and aborts the job (no hang). A rank that dies ends the job at once
under ``mpiexec``'s default; launched with ``mpiexec -disable-auto-cleanup`` the survivors live
on, so that this message can name the lost rank (synchronous schemes) or the run can go on
without it (Downpour).
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from mpi4py import MPI

TAG_PING, TAG_PONG = 7201, 7202
ANSWER_WITHIN = 3.0  # seconds a live rank's watchdog has to answer a roll call


class Watchdog:
    def __init__(self, comm: MPI.Comm, timeout: float):
        self.comm, self.timeout = comm, timeout
        self.roll = comm.Dup()  # collective, while every rank is alive
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.where = "start-up"
        self.beat = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="watchdog")
        self.thread.start()

    def tick(self, where: str) -> None:
        self.where, self.beat = where, time.monotonic()

    def _answer(self) -> None:
        """Answer every pending roll call (from named ranks: see executor/ps/server.py)."""
        ping = np.empty(1, np.int64)
        for r in range(self.size):
            if r != self.rank and self.roll.Iprobe(r, TAG_PING):
                self.roll.Recv(ping, r, TAG_PING)
                self.roll.Isend(np.array([self.rank], np.int64), r, TAG_PONG)

    def _call_roll(self) -> list[int]:
        """The ranks that do not answer within ANSWER_WITHIN seconds."""
        for r in range(self.size):
            if r != self.rank:
                self.roll.Isend(np.array([self.rank], np.int64), r, TAG_PING)
        waiting = {r for r in range(self.size) if r != self.rank}
        pong = np.empty(1, np.int64)
        deadline = time.monotonic() + ANSWER_WITHIN
        while waiting and time.monotonic() < deadline:
            for r in list(waiting):
                if self.roll.Iprobe(r, TAG_PONG):
                    self.roll.Recv(pong, r, TAG_PONG)
                    waiting.discard(r)
            self._answer()
            time.sleep(0.01)
        return sorted(waiting)

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            self._answer()
            if time.monotonic() - self.beat > self.timeout:
                lost = self._call_roll()
                who = (f"; rank(s) {', '.join(map(str, lost))} did not answer: lost"
                       if lost else "; every other rank answered (a deadlock, not a lost rank)")
                print(f"parasim execute: rank {self.rank}: no progress for {self.timeout:g} s "
                      f"(in {self.where}){who}; aborting the job", file=sys.stderr, flush=True)
                time.sleep(0.3)  # let mpiexec forward the message before it ends the job
                self.comm.Abort(3)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

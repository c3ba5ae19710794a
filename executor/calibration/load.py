"""The machine's load from outside the job, for ``parasim calibrate``: how much of the cores
the job runs on other processes took before, during and after its measurements.

On Linux a node's figure is the busy time of the CPUs its ranks may use (``/proc/stat``: user,
nice, system, irq, softirq and steal, in ticks of 1/``SC_CLK_TCK`` s; a virtual machine's CPU
that the hypervisor gave to another guest is as lost to the job as one that another process
ran on) less the CPU time of the node's ranks themselves (``time.process_time``, every thread),
over the wall time: ``foreign_cores``, and as a share of the job's cores, ``foreign_share``.
Before and after, every rank sleeps while it is measured, so the figure is what other
processes ask for; during, they compete with the job's ranks and get what the scheduler gives
them. The one-minute load average is recorded beside it.

Elsewhere (no ``/proc/stat``) the one-minute load average before the measurements, taken as a
number of busy cores, is the only figure: it counts the job's own ranks for the seconds they have
run (a few seconds in a one-minute average) and cannot say what happened during; during and
after are not measured (``None``).

Left out: load on cores the job may not use, processes on other cores that contend for the
caches and memory bandwidth without taking CPU time on ours, and ``mpiexec``'s own processes
(counted as foreign: they sleep).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# /proc/stat's per-CPU columns: user nice system idle iowait irq softirq steal guest guest_nice;
# guest time is counted in user and nice already, iowait is idle
BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


def busy_seconds(cpus: Iterable[int], text: str | None = None) -> float | None:
    """Seconds the CPUs ``cpus`` have been busy since boot, from ``/proc/stat`` (or ``text``
    in its format); ``None`` where it cannot be read or lacks one of them."""
    if text is None:
        try:
            with open("/proc/stat") as f:
                text = f.read()
        except OSError:
            return None
    rows = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            rows[int(name[3:])] = rest.split()
    try:
        ticks = sum(int(rows[c][i]) for c in cpus for i in BUSY_COLUMNS if i < len(rows[c]))
        hz = os.sysconf("SC_CLK_TCK")
    except (KeyError, ValueError, OSError):
        return None
    return ticks / hz


def load_average() -> float | None:
    """The one-minute load average (runnable processes), ``None`` where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def job_cpus() -> set[int]:
    """The CPUs this process may run on (every CPU where the system does not say)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Mark:
    """One node's clocks at the start of a window: wall, its CPUs' busy time, a rank's own."""

    wall: float
    busy: float | None
    own: float

    @staticmethod
    def now(cpus: Iterable[int] | None) -> Mark:
        """``cpus``: the node's CPUs on the rank that reads them (``None`` on the others)."""
        return Mark(time.monotonic(), busy_seconds(cpus) if cpus is not None else None,
                    time.process_time())


def foreign(busy: float, own: float, wall: float, cores: int) -> dict[str, float]:
    """Other processes' CPU time over a window of ``wall`` seconds, in cores and as a share of
    the job's ``cores``: the CPUs' busy time less the job's own, between none and every core
    (ticks are counted whole at the window's edges and the job's time is exact, so a
    difference can pass either end by a tick)."""
    cores_taken = min(max(0.0, busy - own) / wall, cores) if wall > 0 else 0.0
    return {"seconds": round(wall, 3), "foreign_cores": round(cores_taken, 3),
            "foreign_share": round(cores_taken / max(1, cores), 3)}


def from_load_average(load: float | None, cores: int) -> dict[str, Any]:
    """Where ``/proc/stat`` is missing: the load average, taken as busy cores."""
    if load is None:
        return {"foreign_cores": None, "foreign_share": None}
    return {"foreign_cores": round(load, 3), "foreign_share": round(load / max(1, cores), 3)}


class LoadProbe:
    """Every rank's part in measuring the foreign load: each method is collective over ``comm``
    (and ``node``, the ranks of this rank's node), and the figures are the worst node's."""

    def __init__(self, comm: Any, node: Any):
        self.comm, self.node = comm, node
        cpus = set().union(*node.allgather(sorted(job_cpus())))
        self.cores = len(cpus)
        self.cpus = cpus if node.Get_rank() == 0 else None  # one reader per node

    def mark(self) -> Mark:
        self._sleep_together()
        return Mark.now(self.cpus)

    def since(self, mark: Mark) -> dict[str, Any]:
        """The foreign load since ``mark`` (taken by :meth:`mark` on every rank)."""
        self._sleep_together()
        now = Mark.now(self.cpus)  # before any exchange: MPI's waits poll, on our own time
        own = sum(self.node.allgather(now.own - mark.own))
        mine = None
        if self.cpus is not None:
            if mark.busy is None or now.busy is None:
                mine = {"seconds": round(now.wall - mark.wall, 3), "foreign_cores": None,
                        "foreign_share": None}
            else:
                mine = foreign(now.busy - mark.busy, own, now.wall - mark.wall, self.cores)
            load = load_average()
            mine["load_average"] = None if load is None else round(load, 2)
        return worst(self.comm.allgather(mine))

    def idle(self, seconds: float, tries: int, enough: float) -> dict[str, Any]:
        """Every rank asleep for ``seconds``, again (``tries`` windows at most) while other
        processes took at least ``enough`` of the cores: the calmest window, so that a
        moment's burst of another process is not taken for a load that lasts."""
        best: dict[str, Any] | None = None
        for _ in range(tries):
            mark = self.mark()
            time.sleep(seconds)
            got = self.since(mark)
            if got["foreign_share"] is None:  # no /proc/stat: the load average alone
                return {**got, **from_load_average(got["load_average"], self.cores)}
            if best is None or got["foreign_share"] < best["foreign_share"]:
                best = got
            if best["foreign_share"] < enough:
                break
        assert best is not None
        return best

    def _sleep_together(self) -> None:
        """A barrier whose waits sleep, so that waiting ranks take no CPU time."""
        req = self.comm.Ibarrier()
        while not req.Test():
            time.sleep(0.001)


def worst(windows: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The node whose cores other processes took most of (one entry per rank; ``None`` from
    the ranks that do not read their node's figures)."""
    seen = [w for w in windows if w is not None]
    return max(seen, key=lambda w: -1.0 if w["foreign_share"] is None else w["foreign_share"])

"""Fault injection for the failure tests and for trying failure handling by hand.

``PARASIM_INJECT_FAULT=KIND@RANK`` makes rank RANK fail at the start of its first measured
period, ``KIND@RANK:PERIOD`` at the start of period PERIOD (counted from 0, warm-up periods
included, as checkpoints count them), in the first strategy that gets there:

* ``raise`` raises an exception (the job aborts with the rank and the message);
* ``stall`` stops making progress (the watchdog's ``--timeout`` must end the run);
* ``exit`` ends the process abruptly with exit code 17 (a crash);
* ``kill`` and ``term`` send the process SIGKILL or SIGTERM (the OOM killer, an operator).

``PARASIM_SLOWDOWN=FACTOR@RANK`` makes rank RANK's kernels take FACTOR times as long (it sleeps
the difference): a straggler. Unset, nothing happens. A value that does not parse, a kind not
listed, a rank outside the job or a factor below 1 (or ``inf``, ``nan``) is a
:class:`FaultSpecError`, which every rank raises before any work starts.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass

from simulator.errors import UserError

VARIABLE = "PARASIM_INJECT_FAULT"
SLOWDOWN = "PARASIM_SLOWDOWN"
KINDS = ("raise", "stall", "exit", "kill", "term")


class InjectedFault(RuntimeError):
    pass


class FaultSpecError(UserError):
    """A fault-injection variable whose value cannot be used; the message names both."""


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    period: int | None  # None: the first measured period


def fault_spec(size: int | None = None) -> Fault | None:
    """``PARASIM_INJECT_FAULT`` parsed (None when unset); ``size``: the ranks launched."""
    spec = os.environ.get(VARIABLE, "")
    if not spec:
        return None
    kind, at, where = spec.partition("@")
    rank, colon, period = where.partition(":")
    if kind not in KINDS:
        _refuse(VARIABLE, spec, f"the kind must be one of {', '.join(KINDS)} (KIND@RANK or "
                f"KIND@RANK:PERIOD)")
    if not at or not rank.isdigit():
        _refuse(VARIABLE, spec, "expected KIND@RANK or KIND@RANK:PERIOD with a whole rank")
    if colon and not period.isdigit():
        _refuse(VARIABLE, spec, "the period after ':' must be a whole number (from 0)")
    _check_rank(VARIABLE, spec, int(rank), size)
    return Fault(kind, int(rank), int(period) if colon else None)


def slowdown_spec(size: int | None = None) -> tuple[float, int] | None:
    """``PARASIM_SLOWDOWN`` parsed as (factor, rank), None when unset."""
    spec = os.environ.get(SLOWDOWN, "")
    if not spec:
        return None
    factor, at, rank = spec.partition("@")
    if not at or not rank.isdigit():
        _refuse(SLOWDOWN, spec, "expected FACTOR@RANK with a whole rank")
    try:
        value = float(factor)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1.0:
        _refuse(SLOWDOWN, spec, "the factor must be a finite number of at least 1")
    _check_rank(SLOWDOWN, spec, int(rank), size)
    return value, int(rank)


def check_environment(size: int) -> None:
    """Refuse a bad fault-injection variable (every rank calls this before any work)."""
    fault_spec(size)
    slowdown_spec(size)


def maybe_fail(rank: int, period: int, first_measured: int) -> None:
    """Fail as ``PARASIM_INJECT_FAULT`` says, if it names this rank and this period."""
    fault = fault_spec()
    if fault is None or fault.rank != rank:
        return
    if period != (first_measured if fault.period is None else fault.period):
        return
    spec = os.environ[VARIABLE]
    if fault.kind == "raise":
        raise InjectedFault(f"fault injected by {VARIABLE}={spec}")
    if fault.kind == "stall":
        while True:
            time.sleep(3600)
    if fault.kind == "exit":
        os._exit(17)
    os.kill(os.getpid(), signal.SIGKILL if fault.kind == "kill" else signal.SIGTERM)
    time.sleep(60)  # (the signal ends the process before this does)


def slowdown(rank: int) -> float:
    """The straggler factor of ``rank`` (1.0 unless PARASIM_SLOWDOWN names it)."""
    spec = slowdown_spec()
    return spec[0] if spec is not None and spec[1] == rank else 1.0


def _check_rank(variable: str, spec: str, rank: int, size: int | None) -> None:
    if size is not None and rank >= size:
        _refuse(variable, spec, f"rank {rank} is not one of the {size} rank(s) launched")


def _refuse(variable: str, spec: str, why: str) -> None:
    raise FaultSpecError(f"{variable}={spec!r}: {why}")

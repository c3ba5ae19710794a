"""Fault injection for the failure tests and for trying failure handling by hand.

``PARASIM_INJECT_FAULT=KIND@RANK`` makes rank RANK fail at the start of its first measured
period: ``raise`` raises an exception, ``stall`` stops making progress (the watchdog must end the
run), ``exit`` ends the process abruptly (a dead rank). ``PARASIM_SLOWDOWN=FACTOR@RANK`` makes
rank RANK's kernels take FACTOR times as long (it sleeps the difference): a straggler. Unset,
nothing happens.
"""

from __future__ import annotations

import os
import time

VARIABLE = "PARASIM_INJECT_FAULT"


class InjectedFault(RuntimeError):
    pass


def maybe_fail(rank: int) -> None:
    spec = os.environ.get(VARIABLE, "")
    if not spec:
        return
    kind, _, where = spec.partition("@")
    if not where.isdigit() or int(where) != rank:
        return
    if kind == "raise":
        raise InjectedFault(f"fault injected by {VARIABLE}={spec}")
    if kind == "stall":
        while True:
            time.sleep(3600)
    if kind == "exit":
        os._exit(17)
    raise ValueError(f"{VARIABLE}={spec!r}: the kind must be raise, stall or exit")


SLOWDOWN = "PARASIM_SLOWDOWN"


def slowdown(rank: int) -> float:
    """The straggler factor of ``rank`` (1.0 unless PARASIM_SLOWDOWN names it)."""
    spec = os.environ.get(SLOWDOWN, "")
    factor, _, where = spec.partition("@")
    if not spec or not where.isdigit() or int(where) != rank:
        return 1.0
    value = float(factor)
    if value < 1.0:
        raise ValueError(f"{SLOWDOWN}={spec!r}: the factor must be at least 1")
    return value

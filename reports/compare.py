"""Predicted against measured: pair each measured entry with the prediction of the same plan and
compute the relative errors the report shows.

Relative error is ``(predicted - measured) / measured``, as ``parasim validate`` prints it:
positive when the simulator predicted more than was measured (for a time: it was pessimistic;
for a throughput: optimistic). It is undefined (None) where either side is missing or the
measured value is zero.

A comparison means something only when the prediction used a calibration of the machine that
measured: ``calibration_warning`` says when it did not (the console and the report's banner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reports.load import Entry

PHASES = ("compute", "exposed_communication", "ps_wait", "idle")


def relative_error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or measured == 0:
        return None
    return (predicted - measured) / measured


def calibration_warning(predicted: dict[str, Any], measured: dict[str, Any]) -> str | None:
    """Why a predicted Result's figures are not those of the machine a measured Result ran on,
    or None when they are: no profile (the catalogue's figures), or a profile calibrated on
    other hosts."""
    cluster = (predicted.get("scenario") or {}).get("cluster") or {}
    hosts = sorted((measured.get("scenario") or {}).get("hosts") or [])
    where = f" ({', '.join(hosts)})" if hosts else ""
    if not cluster.get("profile") and not predicted.get("profile"):
        return ("the prediction used the catalogue's figures, not a calibration of the machine "
                f"that measured{where}: run parasim calibrate there and predict with the "
                "profile (--profile)")
    calibrated = set(cluster.get("profile_hosts") or [])
    if calibrated and hosts and not calibrated & set(hosts):
        return (f"the prediction used a profile calibrated on {', '.join(sorted(calibrated))}, "
                f"not on the machine that measured{where}")
    return None


def phases(entries: list[Entry]) -> list[str]:
    """The simulator's four phases, then any extra phase a measured entry reports (such as
    ``host_device_copy``), in the order first seen."""
    extra: list[str] = []
    for e in entries:
        extra += [k for k in e.breakdown if k not in PHASES and k not in extra]
    return list(PHASES) + extra


@dataclass(frozen=True)
class Pair:
    """One plan, predicted and measured."""

    predicted: Entry
    measured: Entry

    @property
    def label(self) -> str:
        return self.predicted.label

    @property
    def iteration_error(self) -> float | None:
        return relative_error(self.predicted.iteration_time, self.measured.iteration_time)

    @property
    def throughput_error(self) -> float | None:
        return relative_error(self.predicted.throughput, self.measured.throughput)

    def phase_rows(self, names: list[str]) -> list[tuple[str, float, float | None, float | None]]:
        """(phase, predicted s, measured s, relative error) for each phase in ``names``; a phase
        the simulator does not model (absent from the prediction) was predicted as 0 s."""
        rows = []
        for name in names:
            p = self.predicted.breakdown.get(name, 0.0)
            m = self.measured.breakdown.get(name)
            rows.append((name, p, m, relative_error(p, m)))
        return rows


def pairs(entries: list[Entry]) -> list[Pair]:
    """Measured entries that have a prediction of the same strategy of the same scenario,
    possibly from another file.
    The prediction with the same sweep point wins, then the same device count; a measured entry
    whose strategy was never predicted at that size has no pair. Both must have numbers."""
    predicted = [e for e in entries if not e.measured and e.charted]
    out = []
    for m in entries:
        if not m.measured or not m.charted:
            continue
        same = [p for p in predicted if p.strategy == m.strategy and p.devices == m.devices
                and p.group == m.group]
        exact = [p for p in same if m.sweep_point and p.sweep_point == m.sweep_point]
        best = (exact or same)[:1]
        if best:
            out.append(Pair(best[0], m))
    return out


NAMES = {"compute": "less computation", "exposed_communication": "less exposed communication",
         "ps_wait": "less parameter-server waiting",
         "idle": "less idle time (pipeline bubbles, waiting for the slowest)"}


def why_faster(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why entry ``a`` beats entry ``b`` (Result entries with ``breakdown_s``): the part of the
    breakdown that differs most in its favour, and what it pays for it when that is more than
    a tenth of the gain; None when they cannot be told apart."""
    da, db = a.get("breakdown_s") or {}, b.get("breakdown_s") or {}
    gains = {k: db[k] - da[k] for k in NAMES if k in da and k in db}
    ta, tb = a.get("iteration_time_s"), b.get("iteration_time_s")
    if not gains or ta is None or tb is None:
        return None
    delta = (tb - ta) * 1e3
    if delta < 5e-4:  # the same to the printed digit
        return f"{a['strategy']} ties with {b['strategy']} ({ta * 1e3:.3f} ms per iteration)"
    key = max(gains, key=lambda k: gains[k])
    loss = min(gains, key=lambda k: gains[k])
    line = (f"{a['strategy']} beats {b['strategy']} by {delta:.3f} ms per iteration: "
            f"{NAMES[key]} ({gains[key] * 1e3:.3f} ms)")
    if gains[loss] < 0 and -gains[loss] > 0.1 * gains[key]:
        line += f" against {NAMES[loss].replace('less', 'more', 1)} ({-gains[loss] * 1e3:.3f} ms)"
    return line

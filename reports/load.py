"""Read Result files and flatten them into :class:`Entry` rows for the report.

A Result is ``{"scenario": {...}, "code_version": str, "results": [entry, ...]}`` as written by
``parasim simulate --json`` (predicted) or the executor (measured). Reading a file is
:mod:`reports.read` (any bytes: a clean error or a JSON value); checking the fields the report
uses is :mod:`reports.check` (a file that is not a Result is a :class:`ReportError`; what cannot
be drawn of one is left out with a note). This module reads dicts only: it imports nothing
from the simulator.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports.check import check_result
from reports.read import read_json


def load_results(paths: list[str]) -> list[dict[str, Any]]:
    """Each file's Result as read; :class:`ReportError` on the first file that cannot be read
    or is not a Result (what cannot be drawn of a Result is left to :func:`checked`)."""
    results = []
    for path in paths:
        data = read_json(str(path))
        check_result(data, str(path))
        results.append(data)
    return results


# ---- entries -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One strategy's row of one Result file, with where it came from and a unique label."""

    data: dict[str, Any]
    source: str
    scenario: dict[str, Any]
    label: str

    @property
    def strategy(self) -> str:
        return self.data["strategy"]

    @property
    def group(self) -> str:
        """The scenario the entry belongs to (by name): the report never joins the
        strategies of different scenarios."""
        return str(self.scenario.get("name") or self.source)

    @property
    def mode(self) -> str:
        return self.data["mode"]

    @property
    def measured(self) -> bool:
        return self.mode == "measured"

    @property
    def devices(self) -> int:
        return self.data["devices"]

    @property
    def throughput(self) -> float | None:
        return self.data.get("throughput_samples_per_s")

    @property
    def iteration_time(self) -> float | None:
        return self.data.get("iteration_time_s")

    @property
    def charted(self) -> bool:
        """Drawn in charts: it fits and has numbers (a plan that does not fit is table-only)."""
        return (self.data.get("fits") is not False and _finite(self.throughput)
                and _finite(self.iteration_time))

    @property
    def breakdown(self) -> dict[str, float]:
        return self.data.get("breakdown_s") or {}

    @property
    def sweep_point(self) -> dict[str, Any]:
        return self.data.get("sweep_point") or {}

    @property
    def speedup(self) -> float | None:
        if self.data.get("speedup_over_one_device") is not None:
            return self.data["speedup_over_one_device"]
        one = self.scenario.get("one_device_throughput_samples_per_s")
        return self.throughput / one if _finite(self.throughput) and _finite(one) and one \
            else None

    @property
    def efficiency(self) -> float | None:
        if self.data.get("efficiency") is not None:
            return self.data["efficiency"]
        return self.speedup / self.devices if self.speedup is not None else None

    @property
    def target(self) -> dict[str, Any]:
        """The entry's ``target`` block as checked ({} without one): the metric, its value,
        whether the run reaches it, and why not."""
        return self.data.get("target") or {}

    @property
    def has_target(self) -> bool:
        return bool(self.target) or self.data.get("time_to_target_s") is not None \
            or self.data.get("steps_to_target") is not None

    @property
    def reached(self) -> bool:
        """False only when the target block says the run does not reach it."""
        return self.target.get("reached") is not False

    @property
    def time_to_target(self) -> float | None:
        """Seconds to the target (the headline figure, else the target block's), None when
        not reached."""
        return self._to_target("time_to_target_s", "time_s")

    @property
    def steps_to_target(self) -> float | None:
        """Steps (or epochs: :attr:`step_unit`) to the target, None when not reached."""
        return self._to_target("steps_to_target", "steps")

    @property
    def step_unit(self) -> str:
        return self.target.get("step_unit") or "step"

    def _to_target(self, headline: str, key: str) -> float | None:
        if not self.reached:
            return None
        value = self.data.get(headline)
        return value if value is not None else self.target.get(key)

    @property
    def memory_capacity(self) -> float | None:
        cap = self.data.get("memory_capacity_bytes")
        if cap is None:
            cap = (self.scenario.get("cluster") or {}).get("device_memory_bytes")
        return cap if _finite(cap) else None


@dataclass(frozen=True)
class Checked:
    """Results as the report draws them: the usable part of each, its entries as rows, and a
    note for everything left out."""

    results: list[dict[str, Any]]
    rows: list[Entry]
    notes: list[str]


def checked(results: list[dict[str, Any]], sources: list[str]) -> Checked:
    """Check every Result (``sources``: where each came from) and label every entry kept, in
    order, uniquely: the strategy, then (only where needed to tell rows apart) 'measured',
    the sweep point or device count, the file name."""
    if len(results) != len(sources):
        raise ValueError(f"{len(results)} results but {len(sources)} sources")
    kept, notes, raw = [], [], []
    for result, source in zip(results, sources):
        one = check_result(result, source)
        kept.append(one.result)
        notes += one.notes
        scenario = one.result.get("scenario") or {}
        raw += [(e, source, scenario) for e in one.result["results"]]
    labels = [e["strategy"] + (" (measured)" if e["mode"] == "measured" else "")
              for e, _, _ in raw]
    labels = _disambiguate(labels, [_where(e) for e, _, _ in raw])
    labels = _disambiguate(labels, [Path(s).name for _, s, _ in raw])
    labels = _disambiguate(labels, [f"#{i + 1}" for i in range(len(raw))])
    return Checked(kept, [Entry(e, s, sc, lab) for (e, s, sc), lab in zip(raw, labels)], notes)


def entries(results: list[dict[str, Any]], sources: list[str]) -> list[Entry]:
    """Every entry the report can draw of every Result, in order, labelled uniquely."""
    return checked(results, sources).rows


def _where(e: dict[str, Any]) -> str:
    point = e.get("sweep_point")
    if point:
        return ", ".join(f"{k}={v}" for k, v in point.items())
    return f"{e['devices']} devices"


def _disambiguate(labels: list[str], extra: list[str]) -> list[str]:
    counts = Counter(labels)
    return [f"{lab} · {x}" if counts[lab] > 1 else lab for lab, x in zip(labels, extra)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

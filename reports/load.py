"""Read and check Result files, and flatten them into :class:`Entry` rows for the report.

A Result is ``{"scenario": {...}, "code_version": str, "results": [entry, ...]}`` as written by
``parasim simulate --json`` (predicted) or the executor (measured). Only the fields the report
draws are checked, each for its type; a bad one is a :class:`ReportError` naming the file, the
entry and the field. Optional fields may be absent or null. This module reads dicts only: it
imports nothing from the simulator.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

from reports.errors import ReportError

MODES = ("predicted", "measured")
NUMBER_MAPS = ("breakdown_s", "memory_bytes_per_device", "utilisation_per_device",
               "utilisation_per_link", "utilisation_per_server", "peak_rss_bytes_per_device")
NUMBERS = ("iteration_time_s", "throughput_samples_per_s", "speedup_over_one_device",
           "efficiency", "memory_capacity_bytes", "samples_per_iteration")


def load_results(paths: list[str]) -> list[dict[str, Any]]:
    """Each file's Result, checked (raises :class:`ReportError` on the first bad one)."""
    results = []
    for path in paths:
        results.append(check_result(_read(str(path)), str(path)))
    return results


def _read(path: str) -> Any:
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{path}: no such file")
    if p.is_dir():
        raise ReportError(f"{path}: is a folder, not a Result file")
    try:
        if p.name.endswith(".gz"):  # as ``parasim simulate --json NAME.gz`` writes it
            import gzip

            with gzip.open(p, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ReportError(f"{path}: cannot be read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})"
                          ) from None


# ---- checking ----------------------------------------------------------------------------------

def check_result(data: Any, source: str) -> dict[str, Any]:
    """``data`` itself if it is a Result the report can draw."""
    if not isinstance(data, dict):
        raise ReportError(f"{source}: not a Result: the top level is {_kind(data)}, expected an "
                          f"object with a 'results' list")
    if "results" not in data:
        raise ReportError(f"{source}: not a Result: no 'results' field")
    if not isinstance(data["results"], list):
        raise ReportError(f"{source}: not a Result: 'results' is {_kind(data['results'])}, "
                          f"expected a list")
    scenario = data.get("scenario")
    if scenario is not None and not isinstance(scenario, dict):
        raise ReportError(f"{source}: 'scenario' is {_kind(scenario)}, expected an object")
    for i, entry in enumerate(data["results"]):
        _check_entry(entry, f"{source}: results[{i}]")
    return data


def _check_entry(e: Any, where: str) -> None:
    if not isinstance(e, dict):
        raise ReportError(f"{where} is {_kind(e)}, expected an object")
    if "strategy" not in e:
        raise ReportError(f"{where}: missing field 'strategy'")
    if not isinstance(e["strategy"], str) or not e["strategy"]:
        raise ReportError(f"{where}: 'strategy' must be a non-empty string, got "
                          f"{_show(e['strategy'])}")
    where = f"{where} ({e['strategy']})"
    if e.get("mode") not in MODES:
        raise ReportError(f"{where}: 'mode' must be one of {', '.join(MODES)}, got "
                          f"{_show(e.get('mode'))}")
    devices = e.get("devices")
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ReportError(f"{where}: 'devices' must be a positive integer, got {_show(devices)}")
    for key in NUMBERS:
        if e.get(key) is not None and not _number(e[key]):
            raise ReportError(f"{where}: '{key}' must be a number, got {_show(e[key])}")
    for key in NUMBER_MAPS:
        _number_map(e.get(key), where, key)
    for key, kind in (("fits", bool), ("note", str), ("sweep_point", dict)):
        if e.get(key) is not None and not isinstance(e[key], kind):
            raise ReportError(f"{where}: '{key}' must be {kind.__name__}, got {_show(e[key])}")
    if e.get("timeline") is not None:
        _check_timeline(e["timeline"], where)
    if e.get("training") is not None:
        _check_training(e["training"], where)
    if e.get("staleness") is not None:
        _check_staleness(e["staleness"], where)


def _number_map(m: Any, where: str, key: str) -> None:
    if m is None:
        return
    if not isinstance(m, dict):
        raise ReportError(f"{where}: '{key}' must be an object of numbers, got {_kind(m)}")
    for k, v in m.items():
        if not _number(v):
            raise ReportError(f"{where}: '{key}.{k}' must be a number, got {_show(v)}")


def _check_timeline(t: Any, where: str) -> None:
    spans = t.get("spans") if isinstance(t, dict) else None
    if not isinstance(spans, list):
        raise ReportError(f"{where}: 'timeline' must be an object with a 'spans' list")
    for j, s in enumerate(spans):
        if not (isinstance(s, list) and len(s) == 5 and all(isinstance(x, str) for x in s[:3])
                and _number(s[3]) and _number(s[4])):
            raise ReportError(f"{where}: 'timeline.spans[{j}]' must be [device, stream, name, "
                              f"start_s, duration_s], got {_show(s)}")


def _check_training(t: Any, where: str) -> None:
    if not isinstance(t, dict):
        raise ReportError(f"{where}: 'training' must be an object of lists, got {_kind(t)}")
    lengths = {}
    for key in ("wall_time_s", "samples", "loss", "accuracy"):
        if t.get(key) is None and key == "accuracy":
            continue
        values = t.get(key)
        if not isinstance(values, list):
            raise ReportError(f"{where}: 'training.{key}' must be a list of numbers")
        bad = next((v for v in values if v is not None and not _number(v)), None)
        if bad is not None:
            raise ReportError(f"{where}: 'training.{key}' holds {_show(bad)}, not a number")
        lengths[key] = len(values)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise ReportError(f"{where}: 'training' lists must have equal lengths, got {sizes}")


def _check_staleness(s: Any, where: str) -> None:
    h = s.get("histogram") if isinstance(s, dict) else None
    if not isinstance(h, dict):
        raise ReportError(f"{where}: 'staleness' must be an object with a 'histogram'")
    for k, v in h.items():
        if not (k.lstrip("-").isdigit() and _number(v)):
            raise ReportError(f"{where}: 'staleness.histogram' must map whole numbers of "
                              f"updates to counts, got {_show(k)}: {_show(v)}")
    for key in ("mean", "max"):
        if s.get(key) is not None and not _number(s[key]):
            raise ReportError(f"{where}: 'staleness.{key}' must be a number, got "
                              f"{_show(s[key])}")


def _number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number")


def _show(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


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
        return self.throughput / one if _finite(self.throughput) and _finite(one) else None

    @property
    def efficiency(self) -> float | None:
        if self.data.get("efficiency") is not None:
            return self.data["efficiency"]
        return self.speedup / self.devices if self.speedup is not None else None

    @property
    def memory_capacity(self) -> float | None:
        cap = self.data.get("memory_capacity_bytes")
        if cap is None:
            cap = (self.scenario.get("cluster") or {}).get("device_memory_bytes")
        return cap if _finite(cap) else None


def entries(results: list[dict[str, Any]], sources: list[str]) -> list[Entry]:
    """Every entry of every Result, in order, labelled uniquely: the strategy, then (only where
    needed to tell rows apart) 'measured', the sweep point or device count, the file name."""
    if len(results) != len(sources):
        raise ValueError(f"{len(results)} results but {len(sources)} sources")
    raw = []
    for result, source in zip(results, sources):
        check_result(result, source)
        scenario = result.get("scenario") or {}
        raw += [(e, source, scenario) for e in result["results"]]
    labels = [e["strategy"] + (" (measured)" if e["mode"] == "measured" else "")
              for e, _, _ in raw]
    labels = _disambiguate(labels, [_where(e) for e, _, _ in raw])
    labels = _disambiguate(labels, [Path(s).name for _, s, _ in raw])
    labels = _disambiguate(labels, [f"#{i + 1}" for i in range(len(raw))])
    return [Entry(e, s, sc, label) for (e, s, sc), label in zip(raw, labels)]


def _where(e: dict[str, Any]) -> str:
    point = e.get("sweep_point")
    if point:
        return ", ".join(f"{k}={v}" for k, v in point.items())
    return f"{e['devices']} devices"


def _disambiguate(labels: list[str], extra: list[str]) -> list[str]:
    counts = Counter(labels)
    return [f"{lab} · {x}" if counts[lab] > 1 else lab for lab, x in zip(labels, extra)]


def _finite(v: Any) -> bool:
    return _number(v) and math.isfinite(v)

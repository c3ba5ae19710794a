"""Check every field of a Result the report uses, before anything uses it, and keep what can be
drawn. Three outcomes, by how much of the file a bad value spoils:

* **refused**: the file is not a Result at all (the top level is not an object, no
  ``results`` list, ``scenario`` not an object, nested too deep), or none of its entries can
  be drawn. A :class:`ReportError`: one line naming the file and the field.
* **an entry not drawn**: a field that places the entry on every chart (``strategy``,
  ``mode``, ``devices``, the iteration time, throughput, speedup, efficiency, ``fits``,
  ``note``, ``sweep_point``) is missing or unusable. The other entries are drawn and the page
  says ``entry results[2] (ring) of run.json: not drawn: <why>``.
* **a part not drawn**: one of an entry's own blocks (a map of numbers, ``timeline``,
  ``training``, ``staleness``, ``target``), one of its time-to-target figures
  (``steps_to_target``, ``time_to_target_s``, ``step_time_s``), a display field of the
  scenario, or the Result's ``sweep`` or ``search`` block is unusable: it is left out, the
  rest is drawn, and a note says so.

Numbers the report uses must be finite and within ±``LIMIT`` (JSON's NaN, Infinity and 1e400
are not; nor is an integer too long for a float), so that no sum, scale or format of them can
overflow; ``devices`` is a whole number from 1 to ``MAX_DEVICES``. Nothing is changed in the
caller's dicts: what is kept is a shallow copy without the parts left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from numbers import Real
from typing import Any

from reports.errors import ReportError, cut, show
from reports.read import check_shape

LIMIT = 1e18  # bytes, seconds, samples/s: an exabyte, or 30 billion years, still fits
MAX_DEVICES = 1_000_000
MODES = ("predicted", "measured")
NUMBER_MAPS = ("breakdown_s", "memory_bytes_per_device", "utilisation_per_device",
               "utilisation_per_link", "utilisation_per_server", "peak_rss_bytes_per_device")
NUMBERS = ("iteration_time_s", "throughput_samples_per_s", "speedup_over_one_device",
           "efficiency", "memory_capacity_bytes", "samples_per_iteration")
TO_TARGET = ("steps_to_target", "time_to_target_s", "step_time_s")
TARGET_NUMBERS = ("steps", "time_s", "samples", "step_time_s")
STEP_UNITS = ("step", "epoch")
SCENARIO_TEXT = ("name", "description", "file", "yaml")
STALENESS_KEY = re.compile(r"-?[0-9]{1,18}")


class Skip(Exception):
    """A part of a Result the report cannot use; the message says why."""


@dataclass(frozen=True)
class Usable:
    """A Result with only what the report can draw, and a note for each thing left out."""

    result: dict[str, Any]
    notes: list[str]


def check_result(data: Any, source: str) -> Usable:
    """What the report can draw of ``data`` (read from ``source``); :class:`ReportError` when
    it is not a Result or none of its entries can be drawn."""
    if not isinstance(data, dict):
        raise ReportError(f"{source}: not a Result: the top level is {kind(data)}, expected an "
                          f"object with a 'results' list")
    if "results" not in data:
        raise ReportError(f"{source}: not a Result: no 'results' field")
    if not isinstance(data["results"], list):
        raise ReportError(f"{source}: not a Result: 'results' is {kind(data['results'])}, "
                          f"expected a list")
    scenario = data.get("scenario")
    if scenario is not None and not isinstance(scenario, dict):
        raise ReportError(f"{source}: 'scenario' is {kind(scenario)}, expected an object")
    check_shape(data, source)
    notes: list[str] = []
    out = dict(data)
    if scenario is not None:
        out["scenario"] = _scenario(scenario, f"scenario of {source}", notes)
    for key, check in (("sweep", _sweep), ("search", _search)):
        if data.get(key) is not None:
            try:
                check(data[key])
            except Skip as why:
                notes.append(f"{source}: '{key}' not shown: {why}")
                del out[key]
    kept, refused = [], []
    for i, e in enumerate(data["results"]):
        named = isinstance(e, dict) and isinstance(e.get("strategy"), str) and e["strategy"]
        where = f"results[{i}]" + (f" ({cut(e['strategy'], 40)})" if named else "")
        try:
            kept.append(_entry(e, f"entry {where} of {source}", notes))
        except Skip as why:
            refused.append(f"{where}: {why}")
            notes.append(f"entry {where} of {source}: not drawn: {why}")
    if refused and not kept:
        many = f"none of its {len(refused)} entries can be drawn; " if len(refused) > 1 else ""
        raise ReportError(f"{source}: {many}{refused[0]}")
    out["results"] = kept
    return Usable(out, notes)


# ---- one entry ---------------------------------------------------------------------------------

def _entry(e: Any, where: str, notes: list[str]) -> dict[str, Any]:
    """The entry without its unusable parts (a note each); :class:`Skip` if it cannot be drawn
    at all."""
    if not isinstance(e, dict):
        raise Skip(f"the entry is {kind(e)}, expected an object")
    if "strategy" not in e:
        raise Skip("missing field 'strategy'")
    if not isinstance(e["strategy"], str) or not e["strategy"]:
        raise Skip(f"'strategy' must be a non-empty string, got {show(e['strategy'])}")
    if e.get("mode") not in MODES:
        raise Skip(f"'mode' must be one of {', '.join(MODES)}, got {show(e.get('mode'))}")
    devices = e.get("devices")
    if type(devices) is not int or not 1 <= devices <= MAX_DEVICES:
        raise Skip(f"'devices' must be a whole number from 1 to {MAX_DEVICES:,}, got "
                   f"{show(devices)}")
    for key in NUMBERS:
        if e.get(key) is not None:
            number(e[key], f"'{key}'")
    for key, wanted in (("fits", bool), ("note", str), ("sweep_point", dict)):
        if e.get(key) is not None and not isinstance(e[key], wanted):
            raise Skip(f"'{key}' must be {wanted.__name__}, got {show(e[key])}")
    for key, value in (e.get("sweep_point") or {}).items():
        if not (value is None or isinstance(value, (str, Real))):
            raise Skip(f"'sweep_point.{cut(str(key), 40)}' must be a string or a number, got "
                       f"{show(value)}")
    out = dict(e)
    parts = [(key, number_map) for key in NUMBER_MAPS]
    parts += [("timeline", _timeline), ("training", _training), ("staleness", _staleness),
              ("target", _target)]
    parts += [(key, _not_negative) for key in TO_TARGET]
    for key, check in parts:
        if e.get(key) is not None:
            try:
                check(e[key], key)
            except Skip as why:
                notes.append(f"{where}: '{key}' not drawn: {why}")
                del out[key]
    return out


def number(v: Any, what: str) -> None:
    if not isinstance(v, Real) or isinstance(v, bool):
        raise Skip(f"{what} must be a number, got {show(v)}")
    if not -LIMIT <= v <= LIMIT:  # also false for NaN, and exact for any integer
        raise Skip(f"{what} must be a finite number within ±{LIMIT:.0e}, got {show(v)}")


def number_map(m: Any, key: str) -> None:
    if not isinstance(m, dict):
        raise Skip(f"'{key}' must be an object of numbers, got {kind(m)}")
    for k, v in m.items():
        if not isinstance(k, str):
            raise Skip(f"'{key}' must have names for keys, got {show(k)}")
        number(v, f"'{key}.{cut(k, 40)}'")


def _timeline(t: Any, key: str) -> None:
    spans = t.get("spans") if isinstance(t, dict) else None
    if not isinstance(spans, list):
        raise Skip("'timeline' must be an object with a 'spans' list")
    if t.get("iteration") is not None:
        number(t["iteration"], "'timeline.iteration'")
    for j, s in enumerate(spans):
        if not (isinstance(s, list) and len(s) == 5 and all(isinstance(x, str) for x in s[:3])):
            raise Skip(f"'timeline.spans[{j}]' must be [device, stream, name, start_s, "
                       f"duration_s], got {show(s)}")
        number(s[3], f"'timeline.spans[{j}]' start_s")
        number(s[4], f"'timeline.spans[{j}]' duration_s")
        if s[4] < 0:
            raise Skip(f"'timeline.spans[{j}]' duration_s must not be negative, got {show(s[4])}")


def _training(t: Any, key: str) -> None:
    """Lists of equal length: times, samples, and the loss, the accuracy or both (a prediction
    draws the one metric its target is on)."""
    if not isinstance(t, dict):
        raise Skip(f"'training' must be an object of lists, got {kind(t)}")
    if t.get("loss") is None and t.get("accuracy") is None:
        raise Skip("'training' must have a 'loss' or an 'accuracy' list")
    lengths = {}
    for name in ("wall_time_s", "samples", "loss", "accuracy"):
        values = t.get(name)
        if values is None and name in ("loss", "accuracy"):
            continue
        if not isinstance(values, list):
            raise Skip(f"'training.{name}' must be a list of numbers")
        for j, v in enumerate(values):
            if v is not None:
                number(v, f"'training.{name}[{j}]'")
        lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise Skip(f"'training' lists must have equal lengths, got {sizes}")


def _target(t: Any, key: str) -> None:
    """What the report reads of a ``target`` block; its other keys (the cap, the batch, the
    staleness...) are the producer's and only travel along."""
    if not isinstance(t, dict):
        raise Skip(f"'target' must be an object, got {kind(t)}")
    if not isinstance(t.get("reached"), bool):
        raise Skip(f"'target.reached' must be true or false, got {show(t.get('reached'))}")
    for name in ("metric", "on", "why"):
        if t.get(name) is not None and not isinstance(t[name], str):
            raise Skip(f"'target.{name}' must be a string, got {show(t[name])}")
    if t.get("step_unit") is not None and t["step_unit"] not in STEP_UNITS:
        raise Skip(f"'target.step_unit' must be one of {', '.join(STEP_UNITS)}, got "
                   f"{show(t['step_unit'])}")
    if t.get("value") is not None:
        number(t["value"], "'target.value'")
    for name in TARGET_NUMBERS:
        if t.get(name) is not None:
            _not_negative(t[name], f"target.{name}")


def _not_negative(v: Any, key: str) -> None:
    number(v, f"'{key}'")
    if v < 0:
        raise Skip(f"'{key}' must not be negative, got {show(v)}")


def _staleness(s: Any, key: str) -> None:
    h = s.get("histogram") if isinstance(s, dict) else None
    if not isinstance(h, dict):
        raise Skip("'staleness' must be an object with a 'histogram'")
    for k, v in h.items():
        if not (isinstance(k, str) and STALENESS_KEY.fullmatch(k)):
            raise Skip(f"'staleness.histogram' must map whole numbers of updates to counts, "
                       f"got the key {show(k)}")
        number(v, f"'staleness.histogram.{k}'")
    for name in ("mean", "max"):
        if s.get(name) is not None:
            number(s[name], f"'staleness.{name}'")


# ---- what is only displayed --------------------------------------------------------------------

def _scenario(sc: dict[str, Any], where: str, notes: list[str]) -> dict[str, Any]:
    """The scenario block without the display fields the report cannot show (a note each)."""
    checks = [(key, _text) for key in SCENARIO_TEXT]
    checks += [("one_device_throughput_samples_per_s", number), ("model", _object),
               ("hosts", _names)]
    out = _drop(sc, checks, where, "", notes)
    if isinstance(out.get("cluster"), dict):
        out["cluster"] = _drop(out["cluster"], [
            ("device_memory_bytes", number), ("stragglers", _list), ("degraded_links", _list),
            ("profile_hosts", _names)], where, "cluster.", notes)
    elif out.get("cluster") is not None:
        notes.append(f"{where}: 'cluster' not shown: it is {kind(out['cluster'])}, expected an "
                     "object")
        del out["cluster"]
    return out


def _drop(block: dict[str, Any], checks: list, where: str, prefix: str,
          notes: list[str]) -> dict[str, Any]:
    out = dict(block)
    for key, check in checks:
        if block.get(key) is not None:
            try:
                check(block[key], f"'{prefix}{key}'")
            except Skip as why:
                notes.append(f"{where}: '{prefix}{key}' not shown: {why}")
                del out[key]
    return out


def _text(v: Any, what: str) -> None:
    if not isinstance(v, str):
        raise Skip(f"{what} must be a string, got {show(v)}")


def _object(v: Any, what: str) -> None:
    if not isinstance(v, dict):
        raise Skip(f"{what} must be an object, got {kind(v)}")


def _list(v: Any, what: str) -> None:
    if not isinstance(v, list):
        raise Skip(f"{what} must be a list, got {kind(v)}")


def _names(v: Any, what: str) -> None:
    if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        raise Skip(f"{what} must be a list of names, got {show(v)}")


def _sweep(s: Any) -> None:
    if not isinstance(s, dict):
        raise Skip(f"it must be an object, got {kind(s)}")
    axes = s.get("axes")
    if axes is not None and not (isinstance(axes, dict)
                                 and all(isinstance(v, list) for v in axes.values())):
        raise Skip(f"its 'axes' must be an object of lists, got {show(axes)}")


def _search(s: Any) -> None:
    if not isinstance(s, dict):
        raise Skip(f"it must be an object, got {kind(s)}")


def kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number" if isinstance(v, Real) else "a value")

"""Time to target: how long each plan takes to reach the scenario's ``training.target`` (a
loss, an accuracy or a DBN's reconstruction error), as the summary's cells and one chart.

Time to target is steps to the target times seconds per step: a plan that steps fast on many
devices may need more steps (a larger batch, staler gradients), so the fastest plan per
iteration need not be the first to the target. Over a sweep of device counts the curve has
an optimum, which the chart marks on each predicted line. An entry whose target block says
``reached: false`` has no time; its cells say *not reached*, with the why as the tooltip.

Reads only checked entries (:mod:`reports.check`): the numbers are finite and not negative.
"""

from __future__ import annotations

from typing import Any

from reports.compare import pairs
from reports.figures import Figure, colours, layout, text
from reports.html import esc
from reports.load import Entry

UNITS = (("h", 3600.0, 7200.0), ("min", 60.0, 120.0))  # name, seconds, from how many seconds
PREDICTED, MEASURED = "#4c78a8", "#f58518"


def duration(seconds: float) -> str:
    """Seconds in the unit a reader thinks in: 0.25 s, 45.2 s, 12.5 min, 3.1 h."""
    for name, scale, above in UNITS:
        if seconds >= above:
            return f"{seconds / scale:,.1f} {name}"
    return f"{seconds:,.3g} s"


def time_unit(values: list[float]) -> tuple[str, float]:
    """The unit (and its seconds) that a chart of these times is drawn in."""
    top = max(values, default=0.0)
    for name, scale, above in UNITS:
        if top >= above:
            return name, scale
    return "s", 1.0


def steps_text(e: Entry) -> str | None:
    """'1,200 steps', '12.5 epochs'; None without a number."""
    n = e.steps_to_target
    if n is None:
        return None
    shown = f"{n:,.0f}" if n >= 100 else f"{n:.3g}"
    return f"{shown} {e.step_unit}{'' if shown == '1' else 's'}"


def steps_cell(e: Entry) -> str:
    """The summary's 'steps to target' cell (escaped HTML)."""
    if not e.has_target:
        return "–"
    if not e.reached:
        return not_reached(e)
    return esc(steps_text(e) or "–")


def time_cell(e: Entry) -> str:
    """The summary's 'time to target' cell (escaped HTML)."""
    if not e.has_target:
        return "–"
    if not e.reached:
        return not_reached(e)
    t = e.time_to_target
    return "–" if t is None else esc(duration(t))


def not_reached(e: Entry) -> str:
    why = e.target.get("why")
    title = f' title="{esc(why)}"' if why else ""
    return f"<span class=unreached{title}>not reached</span>"


def goal(entries: list[Entry]) -> str | None:
    """The target the entries share, as 'loss ≤ 0.5'; None when they have none or several."""
    found = {(e.target.get("metric"), e.target.get("value")) for e in entries if e.target}
    if len(found) != 1:
        return None
    ((metric, value),) = found
    if not metric or value is None:
        return None
    return f"{metric.replace('_', ' ')} {'≥' if metric == 'accuracy' else '≤'} {value:g}"


def time_to_target(entries: list[Entry]) -> Figure | None:
    """One scenario's time to target: against device count where it was swept (a line per
    strategy and mode, the fastest point of each predicted line marked), else a bar per
    strategy, predicted next to measured. None when no entry reaches a target."""
    shown = [e for e in entries if e.has_target and e.data.get("fits") is not False]
    if not any(e.time_to_target is not None for e in shown):
        return None
    heading = "Time to target" + (f" ({text(g)})" if (g := goal(shown)) else "")
    if any("devices" in e.sweep_point for e in entries):
        return _against_devices(shown, heading)
    return _bars(shown, entries, heading)


def _against_devices(shown: list[Entry], heading: str) -> Figure:
    series: dict[tuple, list[Entry]] = {}
    for e in shown:
        others = tuple((k, str(v)) for k, v in e.sweep_point.items() if k != "devices")
        series.setdefault((e.strategy, e.mode, others), []).append(e)
    unit, scale = time_unit([e.time_to_target for e in shown if e.time_to_target is not None])
    colour = colours([e.strategy for e in shown])
    data = []
    for (strategy, mode, others), pts in series.items():
        pts = sorted(pts, key=lambda e: e.devices)
        if all(e.time_to_target is None for e in pts):
            continue
        name = strategy + "".join(f", {k}={v}" for k, v in others) + f" ({mode})"
        measured = mode == "measured"
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": text(name),
            "legendgroup": text(name), "x": [e.devices for e in pts],
            "y": [_in(e.time_to_target, scale) for e in pts],
            "customdata": [steps_text(e) or "" for e in pts],
            "line": {"dash": "dash" if measured else "solid", "color": colour[strategy]},
            "marker": {"symbol": "diamond" if measured else "circle", "size": 8},
            "hovertemplate": f"%{{x}} devices: %{{y:,.3g}} {unit} to target (%{{customdata}})"
                             "<extra>%{fullData.name}</extra>"})
        reached = [e for e in pts if e.time_to_target is not None]
        if not measured and len(reached) > 1:
            best = min(reached, key=lambda e: e.time_to_target)
            data.append({
                "type": "scatter", "mode": "markers", "legendgroup": text(name),
                "name": text(f"{strategy}: fastest at {best.devices:,} devices"),
                "x": [best.devices], "y": [_in(best.time_to_target, scale)],
                "marker": {"symbol": "star", "size": 16, "color": colour[strategy],
                           "line": {"width": 1, "color": "#1f2933"}},
                "hovertemplate": f"fastest at %{{x}} devices: %{{y:,.3g}} {unit}"
                                 "<extra>%{fullData.name}</extra>"})
    ticks = sorted({e.devices for e in shown})
    ytitle, yaxis = _yaxis(data, unit)
    return {"data": data, "layout": layout(
        heading + " against device count", "devices (log scale)", ytitle,
        xaxis={"type": "log", "tickvals": ticks}, yaxis=yaxis, height=400)}


def _bars(shown: list[Entry], entries: list[Entry], heading: str) -> Figure:
    """A category per predicted entry with a target (its measured partner beside it), then one
    per measured entry without a prediction; a category where neither reaches the target is
    left out (the summary says why)."""
    partner = {id(p.measured): p.predicted for p in pairs(entries)}
    places: dict[str, dict[str, Entry]] = {}
    for e in shown:
        where = partner.get(id(e), e) if e.measured else e
        places.setdefault(where.label, {})[e.mode] = e
    places = {k: side for k, side in places.items()
              if any(e.time_to_target is not None for e in side.values())}
    unit, scale = time_unit([e.time_to_target for e in shown if e.time_to_target is not None])
    data = []
    for mode, colour in (("predicted", PREDICTED), ("measured", MEASURED)):
        at = {label: side[mode] for label, side in places.items() if mode in side}
        if not any(e.time_to_target is not None for e in at.values()):
            continue
        data.append({
            "type": "bar", "name": mode, "x": [text(label) for label in places],
            "y": [_in(at[k].time_to_target, scale) if k in at else None for k in places],
            "customdata": [steps_text(at[k]) or "" if k in at else "" for k in places],
            "marker": {"color": colour},
            "hovertemplate": f"%{{x}}: %{{y:,.3g}} {unit} to target (%{{customdata}})"
                             "<extra>%{fullData.name}</extra>"})
    ytitle, yaxis = _yaxis(data, unit)
    return {"data": data, "layout": layout(heading, "strategy", ytitle, yaxis=yaxis,
                                           barmode="group", height=400)}


def _yaxis(data: list[dict[str, Any]], unit: str) -> tuple[str, dict[str, Any]]:
    """The y axis title and its settings: a log axis when the times span more than 20x."""
    values = [y for t in data for y in t["y"] if y]
    if values and max(values) > 20 * min(values):
        return f"time to target ({unit}, log scale)", {"type": "log"}
    return f"time to target ({unit})", {"rangemode": "tozero"}


def _in(seconds: float | None, scale: float) -> float | None:
    return None if seconds is None else seconds / scale

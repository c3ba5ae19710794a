"""The report's charts as plotly figure dicts (``{"data": [...], "layout": {...}}``), built from
:class:`~reports.load.Entry` rows. Pure functions: no I/O, no plotly import (the page embeds
the dicts as JSON and plotly.js draws them; the tests check them with ``plotly.graph_objects``).

Each function returns None when it has nothing to draw. Entries that do not fit (no iteration
time) are never drawn. Times are shown in ms, memory in GiB, utilisation and efficiency as
fractions formatted as percentages. Every user string that plotly renders (strategy, device and
link names) goes through :func:`text`, because plotly reads a few HTML tags in labels.
"""

from __future__ import annotations

import re
from typing import Any

from reports.compare import Pair, phases
from reports.load import Entry

Figure = dict[str, Any]
GIB = 2**30
TOP_LINKS = 30
PHASE_COLOURS = {"compute": "#4c78a8", "exposed_communication": "#f58518",
                 "ps_wait": "#e45756", "idle": "#bab0ac"}
EXTRA_COLOURS = ("#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d")
STRATEGY_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2",
                    "#eeca3b", "#9d755d", "#ff9da6", "#bab0ac")
TARGET_COLOUR = "#2f855a"
MAX_TARGET_LINES = 8  # distinct target values drawn on one training chart


def text(s: object) -> str:
    """``s`` as literal text in a plotly label (plotly decodes these three entities back)."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def natural_key(name: str) -> tuple:
    """'node2.gpu10' after 'node2.gpu9' (a run of digits orders by its length, then its text:
    no run is too long to compare)."""
    return tuple((1, 0, t) if i % 2 == 0 else (0, len(t.lstrip("0")), t.lstrip("0"))
                 for i, t in enumerate(re.split(r"([0-9]+)", name)))


def layout(title: str, x: str, y: str, **extra: Any) -> dict[str, Any]:
    base = {"title": {"text": title, "x": 0.01, "xanchor": "left"},
            "xaxis": {"title": {"text": x}, "automargin": True},
            "yaxis": {"title": {"text": y}, "automargin": True},
            "margin": {"l": 70, "r": 20, "t": 56, "b": 40},
            "height": 420, "hovermode": "closest",
            # at the bottom of the figure: the margin grows to fit however many rows it needs
            "legend": {"orientation": "h", "x": 0, "xanchor": "left", "yref": "container",
                       "y": 0, "yanchor": "bottom", "traceorder": "normal"},
            "font": {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 13}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def phase_colour(name: str, i: int) -> str:
    return PHASE_COLOURS.get(name, EXTRA_COLOURS[i % len(EXTRA_COLOURS)])


def colours(strategies: list[str]) -> dict[str, str]:
    """A colour per strategy, in the order first seen: its predicted and measured traces
    share it."""
    names = list(dict.fromkeys(strategies))
    return {n: STRATEGY_COLOURS[i % len(STRATEGY_COLOURS)] for i, n in enumerate(names)}


# ---- across strategies -------------------------------------------------------------------------

def scaling(entries: list[Entry]) -> list[Figure] | None:
    """Throughput and efficiency against device count: one line per strategy (per mode and per
    value of any other sweep axis), from every entry of that strategy; only lines with two or
    more device counts are drawn."""
    series: dict[tuple, list[Entry]] = {}
    for e in entries:
        if e.charted:
            others = tuple((k, str(v)) for k, v in e.sweep_point.items() if k != "devices")
            series.setdefault((e.strategy, e.mode, others), []).append(e)
    lines = {k: sorted(v, key=lambda e: e.devices) for k, v in series.items()
             if len({e.devices for e in v}) >= 2}
    if not lines:
        return None
    figs = []
    for metric, ytitle, fmt in (("throughput", "throughput (samples/s)", ",.1f"),
                                ("efficiency", "scaling efficiency (speedup / devices)", ".1%")):
        data = []
        for (strategy, mode, others), pts in lines.items():
            name = strategy + "".join(f", {k}={v}" for k, v in others)
            name += " (measured)" if mode == "measured" else ""
            data.append({
                "type": "scatter", "mode": "lines+markers", "name": text(name),
                "x": [e.devices for e in pts], "y": [getattr(e, metric) for e in pts],
                "line": {"dash": "dash" if mode == "measured" else "solid"},
                "hovertemplate": f"%{{x}} devices: %{{y:{fmt}}}<extra>%{{fullData.name}}</extra>"})
        if metric == "throughput":  # ideal: the smallest count's throughput, times the devices
            for i, pts in enumerate(lines.values()):
                base = pts[0]
                if base.throughput:
                    data.append({
                        "type": "scatter", "mode": "lines", "name": "ideal scaling",
                        "legendgroup": "ideal", "showlegend": i == 0,
                        "x": [e.devices for e in pts],
                        "y": [base.throughput * e.devices / base.devices for e in pts],
                        "line": {"dash": "dot", "color": "#9aa5b1", "width": 1},
                        "hoverinfo": "skip"})
        ticks = sorted({e.devices for pts in lines.values() for e in pts})
        values = [y for t in data for y in t["y"] if y]
        wide = bool(values) and max(values) > 20 * min(values)
        yaxis = ({"tickformat": ".0%", "rangemode": "tozero"} if metric == "efficiency"
                 else {"type": "log"} if wide else {"rangemode": "tozero"})
        if metric == "throughput" and wide:
            ytitle += " (log scale)"
        title = "Throughput" if metric == "throughput" else "Scaling efficiency"
        figs.append({"data": data, "layout": layout(
            f"{title} against device count", "devices (log scale)", ytitle,
            xaxis={"type": "log", "tickvals": ticks}, yaxis=yaxis, height=380)})
    return figs


def breakdown(entries: list[Entry]) -> Figure | None:
    """Stacked time per iteration: compute, exposed communication, parameter-server wait, idle
    (and a measured entry's extra phases), averaged over worker devices."""
    shown = [e for e in entries if e.charted and e.breakdown]
    if not shown:
        return None
    names = phases(shown)
    data = []
    for i, phase in enumerate(names):
        data.append({
            "type": "bar", "name": phase.replace("_", " "),
            "x": [text(e.label) for e in shown],
            "y": [e.breakdown[phase] * 1e3 if phase in e.breakdown else None for e in shown],
            "marker": {"color": phase_colour(phase, i)},
            "hovertemplate": "%{x}<br>%{fullData.name}: %{y:,.3f} ms<extra></extra>"})
    return {"data": data, "layout": layout("Where an iteration's time goes", "strategy",
                                           "time per iteration (ms)", barmode="stack")}


def comparison(pairs: list[Pair]) -> list[Figure] | None:
    """Predicted and measured breakdowns side by side per strategy, and the relative errors."""
    if not pairs:
        return None
    names = phases([e for p in pairs for e in (p.predicted, p.measured)])
    x = [[text(p.label) for p in pairs for _ in (0, 1)],
         [side for _ in pairs for side in ("predicted", "measured")]]
    stacked = []
    for i, phase in enumerate(names):
        y = []
        for p in pairs:
            for _, pred, meas, _ in p.phase_rows([phase]):
                y += [pred * 1e3, meas * 1e3 if meas is not None else None]
        stacked.append({"type": "bar", "name": phase.replace("_", " "), "x": x, "y": y,
                        "marker": {"color": phase_colour(phase, i)},
                        "hovertemplate": "%{x}<br>%{fullData.name}: %{y:,.3f} ms"
                                         "<extra></extra>"})
    errors = [{"type": "bar", "name": name, "x": [text(p.label) for p in pairs],
               "y": [getattr(p, attr) for p in pairs],
               "hovertemplate": "%{x}: %{y:+.1%}<extra>%{fullData.name}</extra>"}
              for name, attr in (("iteration time", "iteration_error"),
                                 ("throughput", "throughput_error"))]
    return [
        {"data": stacked, "layout": layout("Predicted and measured time per iteration",
                                           "strategy", "time per iteration (ms)",
                                           barmode="stack")},
        {"data": errors, "layout": layout(
            "Relative error, (predicted − measured) / measured", "strategy",
            "relative error (%)", barmode="group", yaxis={"tickformat": ".0%"})}]


def training(entries: list[Entry]) -> list[Figure] | None:
    """Loss and (where recorded) accuracy against wall-clock time: time to accuracy. A
    predicted curve (the convergence model's, to the target) is drawn dashed over the measured
    one of the same strategy, in its colour; a horizontal line marks each target on the chart
    of its metric (a DBN's reconstruction error is on the loss chart)."""
    runs = [e for e in entries if e.data.get("training")]
    if not runs:
        return None
    colour = colours([e.strategy for e in runs])
    figs = []
    for key, title, ytitle in (("loss", "Training loss against time", "loss"),
                               ("accuracy", "Accuracy against time (time to accuracy)",
                                "accuracy")):
        drawn = [e for e in runs if e.data["training"].get(key) is not None]
        data = [{"type": "scatter", "mode": "lines+markers",
                 "name": text(e.label + ("" if e.measured else " (predicted)")),
                 "x": e.data["training"]["wall_time_s"], "y": e.data["training"][key],
                 "customdata": e.data["training"]["samples"],
                 "line": {"color": colour[e.strategy],
                          "dash": "solid" if e.measured else "dash"},
                 "hovertemplate": f"%{{x:,.1f}} s, %{{customdata:,.0f}} samples: {key} "
                                  "%{y:.4g}<extra>%{fullData.name}</extra>"}
                for e in drawn]
        if not data:
            continue
        fig = {"data": data, "layout": layout(title, "wall-clock time (s)", ytitle, height=380)}
        _target_lines(fig, [e.target for e in drawn], key)
        figs.append(fig)
    return figs


def _target_lines(fig: Figure, targets: list[dict[str, Any]], key: str) -> None:
    """A dotted horizontal line at each target value of the chart's metric."""
    values = sorted({t["value"] for t in targets if t.get("value") is not None
                     and ("accuracy" if t.get("metric") == "accuracy" else "loss") == key})
    values = values[:MAX_TARGET_LINES]
    if not values:
        return
    fig["layout"]["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y",
                                "y0": v, "y1": v, "line": {"color": TARGET_COLOUR,
                                                           "dash": "dot", "width": 2}}
                               for v in values]
    fig["layout"]["annotations"] = [{"xref": "paper", "x": 1, "xanchor": "right", "yref": "y",
                                     "y": v, "yanchor": "bottom", "text": f"target {v:g}",
                                     "showarrow": False, "font": {"color": TARGET_COLOUR}}
                                    for v in values]


def staleness(entries: list[Entry]) -> Figure | None:
    """Asynchronous (Downpour) gradient staleness: how many updates the server applied between
    a worker's fetch and its push, as a histogram per strategy."""
    shown = [e for e in entries if e.charted and e.data.get("staleness")]
    if not shown:
        return None
    data = []
    for e in shown:
        st = e.data["staleness"]
        hist = sorted((int(k), v) for k, v in st["histogram"].items())
        name = e.label + "".join(f", {k} {st[k]:.3g}" for k in ("mean", "max")
                                 if st.get(k) is not None)
        data.append({"type": "bar", "name": text(name), "x": [k for k, _ in hist],
                     "y": [v for _, v in hist],
                     "hovertemplate": "staleness %{x}: %{y} pushes<extra>%{fullData.name}"
                                      "</extra>"})
    return {"data": data, "layout": layout(
        "Gradient staleness", "staleness (updates applied since the worker's fetch)",
        "pushes", barmode="group")}


# ---- one strategy ------------------------------------------------------------------------------

def device_utilisation(e: Entry) -> Figure | None:
    """Busy fraction of every worker device (and parameter-server host) over the measured
    iterations."""
    data = []
    for key, name in (("utilisation_per_device", "devices"),
                      ("utilisation_per_server", "parameter-server hosts")):
        util = e.data.get(key) or {}
        names = sorted(util, key=natural_key)
        if names:
            data.append({"type": "bar", "name": name, "x": [text(n) for n in names],
                         "y": [util[n] for n in names],
                         "hovertemplate": "%{x}: %{y:.1%} busy<extra></extra>"})
    if not data:
        return None
    span = "measured" if e.measured else "simulated"
    return {"data": data, "layout": layout(f"Device utilisation: {text(e.label)}", "device",
                                           f"busy (% of the {span} time)",
                                           yaxis={"tickformat": ".0%", "rangemode": "tozero"})}


def link_utilisation(e: Entry, top: int = TOP_LINKS) -> Figure | None:
    """The ``top`` busiest link directions: bytes carried over capacity x simulated time."""
    util = e.data.get("utilisation_per_link") or {}
    if not util:
        return None
    busiest = sorted(util.items(), key=lambda kv: (-kv[1], natural_key(kv[0])))[:top]
    shown = f"top {len(busiest)} of {len(util)}" if len(util) > len(busiest) else "all"
    return {"data": [{"type": "bar", "orientation": "h", "name": "links",
                      "y": [text(k) for k, _ in busiest], "x": [v for _, v in busiest],
                      "hovertemplate": "%{y}: %{x:.1%}<extra></extra>"}],
            "layout": layout(f"Link utilisation ({shown} link directions): {text(e.label)}",
                             "utilisation (% of capacity)", "link",
                             xaxis={"tickformat": ".0%", "rangemode": "tozero"},
                             yaxis={"autorange": "reversed"},
                             height=max(300, 120 + 20 * len(busiest)))}


def memory(e: Entry) -> Figure | None:
    """Memory each device needs (weights, gradients, optimizer state, activations) against its
    capacity."""
    mem = e.data.get("memory_bytes_per_device") or {}
    if not mem:
        return None
    names = sorted(mem, key=natural_key)
    cap = e.memory_capacity
    top = max([mem[n] for n in names] + ([cap] if cap else [])) / GIB
    fig = {"data": [{"type": "bar", "name": "needed", "x": [text(n) for n in names],
                     "y": [mem[n] / GIB for n in names],
                     "hovertemplate": "%{x}: %{y:,.2f} GiB<extra></extra>"}],
           "layout": layout(f"Memory per device: {text(e.label)}", "device", "memory (GiB)",
                            yaxis={"range": [0, top * 1.12]})}
    if cap:
        fig["layout"]["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1,
                                    "yref": "y", "y0": cap / GIB, "y1": cap / GIB,
                                    "line": {"color": "#e45756", "dash": "dash", "width": 2}}]
        fig["layout"]["annotations"] = [{"xref": "paper", "x": 1, "xanchor": "right",
                                         "yref": "y", "y": cap / GIB, "yanchor": "bottom",
                                         "text": f"capacity {cap / GIB:,.1f} GiB",
                                         "showarrow": False, "font": {"color": "#e45756"}}]
    return fig

"""The per-device timeline (Gantt chart) of one iteration, from an entry's ``timeline``:
``{"iteration": i, "devices_shown": n, "spans": [[device, stream, name, start_s, duration_s]]}``.

One row per device, a lane per stream (compute, comm, p2p, ...). Drawing speed is the point:
plotly draws every bar of a bar trace as its own SVG element, which takes seconds for 20,000
bars. So each lane of each device is *one* filled polygon (a step outline that rises at every
bar's start and falls at its end) and each stream is one scatter trace of such polygons, split
by gaps: one SVG path per lane, whatever the number of spans. Hover comes from a second, unseen
trace per stream with a point in the middle of each bar (and every 1/60 of the axis along long
bars) carrying the bar's text.

Spans of one lane that touch or are closer than a fraction of a pixel (the iteration / 4,000)
become one bar, which looks the same at any screen width; its hover names the first and last op
and how many it holds. If more than ``MAX_BARS`` bars remain, the merged gap doubles until they
do not, and the title says so. The first ``MAX_DEVICES`` devices (in natural order) and
``MAX_STREAMS`` streams are drawn, and the title says when there were more.
"""

from __future__ import annotations

from reports.figures import Figure, layout, natural_key, text
from reports.load import Entry

MAX_BARS = 50_000
MAX_DEVICES = 128  # rows: plotly lays out every row's tick label, and 1,000 rows take a minute
MAX_STREAMS = 8  # lanes of a row (the engines write three: compute, comm, p2p)
SUBPIXEL = 1 / 4000
HOVER_STEP = 1 / 60
LANES = 0.84  # of a device's row; the rest separates rows
STREAM_ORDER = ("compute", "comm", "p2p")
STREAM_COLOURS = {"compute": "#4c78a8", "comm": "#f58518", "p2p": "#54a24b"}
OTHER_COLOURS = ("#b279a2", "#72b7b2", "#9d755d")

Bar = tuple[float, float, int, str, str]  # start, end, ops, first name, last name


def merge(spans: list[tuple[float, float, str]], gap: float) -> list[Bar]:
    """Spans ``(start, duration, name)`` of one lane merged where the next starts at most
    ``gap`` after the current bar ends (overlapping spans always merge)."""
    bars: list[Bar] = []
    for start, dur, name in sorted(spans, key=lambda s: s[0]):
        end = start + dur
        if bars and start <= bars[-1][1] + gap:
            s0, e0, n, first, _ = bars[-1]
            bars[-1] = (s0, max(e0, end), n + 1, first, name)
        else:
            bars.append((start, end, 1, name, name))
    return bars


def outline(bars: list[Bar], lo: float, hi: float) -> tuple[list[float], list[float]]:
    """The step polygon of one lane (x in the bars' unit): up at each start, down at each end."""
    xs: list[float] = []
    ys: list[float] = []
    for s0, s1, *_ in bars:
        xs += [s0, s0, s1, s1]
        ys += [lo, hi, hi, lo]
    return xs, ys


def timeline(e: Entry, max_bars: int = MAX_BARS) -> Figure | None:
    tl = e.data.get("timeline") or {}
    spans = tl.get("spans") or []
    if not spans:
        return None
    devices = sorted({s[0] for s in spans}, key=natural_key)
    streams = sorted({s[1] for s in spans},
                     key=lambda s: (STREAM_ORDER.index(s) if s in STREAM_ORDER else 9, s))
    total, kinds = len(devices), len(streams)
    devices, streams = devices[:MAX_DEVICES], streams[:MAX_STREAMS]
    shown, drawn = set(devices), set(streams)
    spans = [s for s in spans if s[0] in shown and s[1] in drawn]
    rows: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for device, stream, name, start, dur in spans:
        rows.setdefault((device, stream), []).append((start * 1e3, dur * 1e3, name))
    t0 = min(s[3] for s in spans) * 1e3
    length = max(s[3] + s[4] for s in spans) * 1e3 - t0
    gap = length * SUBPIXEL
    bars = {k: merge(v, gap) for k, v in rows.items()}
    while sum(map(len, bars.values())) > max_bars and 0 < gap < length:
        gap *= 2
        bars = {k: merge(v, gap) for k, v in rows.items()}
    lane = LANES / len(streams)
    step = length * HOVER_STEP  # 0 when every span is an instant
    data = []
    for k, stream in enumerate(streams):
        colour = STREAM_COLOURS.get(stream, OTHER_COLOURS[k % len(OTHER_COLOURS)])
        xs: list[float | None] = []
        ys: list[float | None] = []
        hx: list[float] = []
        hy: list[float] = []
        hover: list[str] = []
        for i, device in enumerate(devices):
            lo = i - LANES / 2 + k * lane
            hi = lo + 0.9 * lane
            row = bars.get((device, stream), [])
            if not row:
                continue
            x, y = outline(row, lo, hi)
            xs += [*x, None]
            ys += [*y, None]
            for s0, s1, n, first, last in row:
                what = text(first) if n == 1 else f"{n} ops: {text(first)} … {text(last)}"
                points = 1 + int((s1 - s0) / step) if step > 0 else 1
                hx += [s0 + (s1 - s0) * (j + 0.5) / points for j in range(points)]
                hy += [(lo + hi) / 2] * points
                hover += [f"{text(device)}<br>{what}<br>{s0:,.3f} → {s1:,.3f} ms "
                          f"({s1 - s0:,.3f} ms)"] * points
        data.append({"type": "scatter", "mode": "lines", "fill": "toself", "name": text(stream),
                     "legendgroup": text(stream), "x": _round(xs[:-1]), "y": _round(ys[:-1]),
                     "fillcolor": colour, "line": {"width": 0, "color": colour,
                                                   "simplify": False},
                     "hoverinfo": "skip"})
        data.append({"type": "scatter", "mode": "none", "name": text(stream),
                     "legendgroup": text(stream), "showlegend": False, "x": _round(hx),
                     "y": _round(hy), "text": hover, "hoveron": "points",
                     "hovertemplate": "%{text}<extra>%{fullData.name}</extra>"})
    return {"data": data, "layout": _layout(e, tl, devices, max(total, e.devices),
                                            gap > length * SUBPIXEL * 1.5, gap, kinds)}


def _layout(e: Entry, tl: dict, devices: list[str], total: int, coarse: bool,
            gap: float, kinds: int) -> dict:
    notes = []
    if len(devices) < total:
        notes.append(f"first {len(devices)} of {total:,} devices")
    if kinds > MAX_STREAMS:
        notes.append(f"first {MAX_STREAMS} of {kinds:,} streams")
    if coarse:
        notes.append(f"ops less than {gap * 1e3:,.0f} µs apart drawn as one bar")
    iteration = tl.get("iteration")
    title = f"One iteration{f' (#{iteration})' if iteration is not None else ''}: {text(e.label)}"
    if notes:
        title += f"<br><sub>{'; '.join(notes)}</sub>"
    n = len(devices)
    return layout(
        title, "time since the iteration started (ms)", "device",
        height=max(320, 150 + 24 * n),
        yaxis={"tickmode": "array", "tickvals": list(range(n)),
               "ticktext": [text(d) for d in devices], "range": [n - 0.5, -0.5],
               "zeroline": False, "showgrid": False},
        xaxis={"rangemode": "tozero", "zeroline": False}, margin={"t": 76 if notes else 56})


def _round(values: list[float | None]) -> list[float | None]:
    """Half a nanosecond (in ms) is finer than any pixel; shorter numbers, a smaller page."""
    return [None if v is None else round(v, 6) for v in values]

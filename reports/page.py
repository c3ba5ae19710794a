"""Assemble the report page: sections of tables and charts, plotly.js inlined, one HTML string.

A pure function of the Result dicts: the same files give the same page byte for byte (no
timestamps). Sections with nothing to show are left out, except the predicted-against-measured
one, which says that there are no measured results yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reports import figures, gantt, target
from reports.compare import Pair, calibration_warning, pairs, phases, why_faster
from reports.html import CSP, SCRIPT, STYLE, chart, esc, script_json, table
from reports.load import Entry, checked
from reports.scenario_section import scenario_section, sources_section
from reports.search_section import search_section

PER_ENTRY = (("timeline", "Timeline of one iteration",
              "no timeline in this entry (a sweep's Result leaves timelines out)"),
             ("devices", "Device utilisation", "no device utilisation in this entry"),
             ("links", "Link utilisation", "no link utilisation in this entry"),
             ("memory", "Memory per device against capacity", "no memory figures in this entry"))


PLOTLY_JS = ("inline", "cdn", "directory")
MAX_NOTES = 50


def plotly_file() -> str:
    """The file name ``--plotly-js directory`` writes plotly.js under, next to the reports."""
    from plotly.offline import get_plotlyjs_version

    return f"plotly-{get_plotlyjs_version()}.min.js"


def build_report(results: list[dict[str, Any]], sources: list[str],
                 plotly_js: str = "inline") -> str:
    """The report for these Results (``sources``: the file each came from, for labels);
    ``plotly_js``: inline (the page works offline on its own, the default), cdn (fetched from
    cdn.plot.ly), directory (read from ``plotly_file()`` beside the page)."""
    return render(results, sources, plotly_js)[0]


def render(results: list[dict[str, Any]], sources: list[str],
           plotly_js: str = "inline") -> tuple[str, list[str]]:
    """The report, and a note for each part of the Results it left out (the page lists them
    too): :func:`build_report` for a caller that prints them."""
    if plotly_js not in PLOTLY_JS:
        raise ValueError(f"plotly_js must be one of {PLOTLY_JS}, not {plotly_js!r}")
    usable = checked(results, sources)
    results, rows = usable.results, usable.rows
    blocks: list[str] = []  # JSON data blocks
    sections: list[tuple[str, str, str]] = []  # (id, heading, body)

    def add(section_id: str, heading: str, body: str) -> None:
        sections.append((section_id, heading, body))

    if usable.notes:
        add("not-drawn", "Not drawn", notes_section(usable.notes))

    def figure(fig: dict[str, Any], css: str = "chart") -> str:
        fid = f"fig-{len(blocks)}"
        blocks.append(script_json(fid, fig))
        return chart(fid, css)

    searched = search_section(results)
    if searched:
        add("search", "Plan search", searched)
    groups = by_scenario(rows)
    several = len(groups) > 1

    def heading(name: str) -> str:
        return f"<h3 class=group>{esc(name)}</h3>" if several else ""

    add("summary", "Summary", "".join(heading(g) + summary_table(es, len(results) > 1)
                                      for g, es in groups.items()))
    scaling = [(g, figs) for g, es in groups.items() if (figs := figures.scaling(es))]
    if scaling:
        add("scaling", "Scaling",
            "<p class=lead>Entries of one strategy at several device counts (across files or "
            "from a sweep), with the ideal (throughput growing with the devices from the "
            "smallest count measured).</p>"
            + "".join(heading(g) + "<div class=row>" + "".join(map(figure, figs)) + "</div>"
                      for g, figs in scaling))
    ttt = [(g, fig) for g, es in groups.items() if (fig := target.time_to_target(es))]
    if ttt:
        add("time-to-target", "Time to target",
            "<p class=lead>How long each plan takes to reach the scenario's training target: "
            "the steps (or epochs) it needs times its time per step. More devices step faster "
            "but may need more steps (a larger batch, staler gradients): over a sweep, the "
            "star marks where each predicted line is fastest. Plans that do not reach the "
            "target are left out (the summary says why).</p>"
            + "".join(heading(g) + figure(fig) for g, fig in ttt))
    bds = [(g, bd) for g, es in groups.items() if (bd := figures.breakdown(es))]
    if bds:
        add("breakdown", "Time breakdown",
            "<p class=lead>Per iteration, averaged over worker devices: compute, communication "
            "not hidden under compute, parameter-server wait, and idle (waiting for peers, "
            "pipeline bubble).</p>" + "".join(heading(g) + figure(bd) for g, bd in bds))
    add("measured", "Predicted against measured", measured_section(pairs(rows), figure))
    charted = [e for e in rows if e.charted]
    if charted:
        add("per-strategy", "Per strategy", per_entry_section(charted, blocks))
    train = figures.training(rows)
    if train:
        add("training", "Training curves", "<div class=row>" + "".join(map(figure, train))
            + "</div>")
    stale = figures.staleness(rows)
    if stale:
        add("staleness", "Gradient staleness (asynchronous)", figure(stale))
    add("scenario", "Scenario", scenario_section(results, sources))
    add("sources", "Result files", sources_section(results, sources))
    return page(title(results), sections, blocks, len(results), banners(pairs(rows)),
                plotly_js), usable.notes


def notes_section(notes: list[str]) -> str:
    """What the report could not use of the Result files, each with why (the first
    ``MAX_NOTES``)."""
    more = len(notes) - MAX_NOTES
    items = "".join(f"<li>{esc(n)}</li>" for n in notes[:MAX_NOTES])
    if more > 0:
        items += f"<li>and {more:,} more</li>"
    return ("<p class=lead>These parts of the Result files hold values the report cannot use "
            "(not a number, not finite, out of range, the wrong type): they are left out of "
            f"every table and chart, and the rest is drawn.</p><ul class=notes>{items}</ul>")


def banners(found: list[Pair]) -> list[str]:
    """A warning for each distinct reason a compared prediction did not use a calibration of
    the machine that measured (``compare.calibration_warning``)."""
    out: list[str] = []
    for p in found:
        why = calibration_warning({"scenario": p.predicted.scenario},
                                  {"scenario": p.measured.scenario})
        if why and why not in out:
            out.append(why)
    return out


def title(results: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys((r.get("scenario") or {}).get("name") or "unnamed scenario"
                               for r in results))
    return names[0] if len(names) == 1 else f"{len(names)} scenarios compared"


def by_scenario(rows: list[Entry]) -> dict[str, list[Entry]]:
    """The entries of each scenario, in the order the scenarios first appear."""
    out: dict[str, list[Entry]] = {}
    for e in rows:
        out.setdefault(e.group, []).append(e)
    return out


def size(n: float) -> str:
    """Bytes in the unit that keeps three figures: 512 B, 3.1 MiB, 1.25 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.3g} {unit}" if n < 1000 * scale else f"{n / scale:,.0f} {unit}"
    return f"{n:,.0f} B"


def memory_cell(e: Entry) -> str:
    """The busiest device's planned need (/ its capacity), and for measured rows the largest
    rank's peak resident memory."""
    mem = e.data.get("memory_bytes_per_device") or {}
    cell = size(max(mem.values())) if mem else "–"
    if mem and e.memory_capacity:
        cell += f" / {size(e.memory_capacity)}"
    rss = e.data.get("peak_rss_bytes_per_device") or {}
    if rss:
        cell += f"; {size(max(rss.values()))} resident"
    return cell


def summary_table(rows: list[Entry], show_source: bool) -> str:
    """One scenario's entries, fastest first (those without figures last), the fastest
    marked, and why it beats the next."""
    rows = sorted(rows, key=lambda e: -(e.throughput or 0.0) if e.charted else 1.0)
    ranked = [e for e in rows if e.charted and e.throughput]
    winner = ranked[0] if len(ranked) > 1 else None
    sweep = any(e.sweep_point for e in rows)
    targeted = any(e.has_target for e in rows)
    timed = [e for e in rows if e.time_to_target is not None]
    first = min(timed, key=lambda e: e.time_to_target) if len(timed) > 1 else None
    head = ["strategy", "mode", "devices", "throughput<br>(samples/s)", "iteration<br>time (ms)",
            "speedup over<br>one device", "efficiency"]
    head += ["steps to<br>target", "time to<br>target"] * targeted
    head += ["peak memory", "fits in memory"] + ["sweep point"] * sweep + ["file"] * show_source
    body = []
    for e in rows:
        peak = memory_cell(e)
        fits = e.data.get("fits") is not False
        note = e.data.get("note")
        fit_cell = ("yes" if fits else "no") + (f": {esc(note)}" if note else "")
        mark = ' <span class="tag winner">fastest</span>' if e is winner else ""
        mark += ' <span class="tag target">first to target</span>' if e is first else ""
        row = [esc(e.label) + mark, f'<span class="tag {esc(e.mode)}">{esc(e.mode)}</span>',
               str(e.devices), _num(e.throughput if e.charted else None, "{:,.1f}"),
               _num(e.iteration_time * 1e3 if e.charted else None, "{:,.3f}"),
               _num(e.speedup if e.charted else None, "{:.2f}×"),
               _num(e.efficiency if e.charted else None, "{:.1%}")]
        if targeted:
            row += [target.steps_cell(e), target.time_cell(e)]
        row += [peak, fit_cell if fits else f'<span class="bad">{fit_cell}</span>']
        if sweep:
            row.append(esc(", ".join(f"{k}={v}" for k, v in e.sweep_point.items())))
        if show_source:
            row.append(esc(e.source))
        body.append(row)
    lead = ("<p class=lead>Fastest first. Speedup is throughput over one healthy device of "
            "the cluster running the same global batch; efficiency is speedup / devices. Peak "
            "memory is the busiest device's planned need / its capacity; a measured row adds "
            "the largest rank's resident memory as the operating system saw it (interpreter "
            "and libraries included)."
            + (" Time to target is the steps (or epochs) to the training target times the "
               "time per step (the quickest marked <i>first to target</i>); <i>not "
               "reached</i> says why when hovered." if targeted else "") + "</p>")
    why = why_faster(winner.data, ranked[1].data) if winner is not None else None
    verdict = f"<p class=why>{esc(why)}.</p>" if why else ""
    return lead + table(head, body, numeric=set(range(2, 8 + 2 * targeted))) + verdict


def measured_section(found: list[Pair], figure: Callable[[dict[str, Any]], str]) -> str:
    if not found:
        return ("<p class=none>No measured results yet: give a Result file with entries of "
                "<code>mode: \"measured\"</code> (and the same strategy names as the "
                "predictions) to compare.</p>")
    head = ["strategy", "devices", "iteration time<br>predicted (ms)", "measured<br>(ms)",
            "error", "throughput<br>predicted (samples/s)", "measured<br>(samples/s)", "error"]
    body = [[esc(p.label), str(p.measured.devices),
             _num(p.predicted.iteration_time * 1e3, "{:,.3f}"),
             _num(p.measured.iteration_time * 1e3, "{:,.3f}"), _num(p.iteration_error, "{:+.1%}"),
             _num(p.predicted.throughput, "{:,.1f}"), _num(p.measured.throughput, "{:,.1f}"),
             _num(p.throughput_error, "{:+.1%}")] for p in found]
    names = phases([e for p in found for e in (p.predicted, p.measured)])
    phase_rows = [[esc(p.label), esc(name.replace("_", " ")), _num(pred * 1e3, "{:,.3f}"),
                   _num(meas * 1e3 if meas is not None else None, "{:,.3f}"),
                   _num(err, "{:+.1%}")]
                  for p in found for name, pred, meas, err in p.phase_rows(names)]
    figs = figures.comparison(found) or []
    return ("<p class=lead>Relative error = (predicted − measured) / measured: positive "
            "where the prediction is above the measurement. A phase the simulator does not "
            "model counts as predicted 0 ms.</p>"
            + table(head, body, numeric={1, 2, 3, 4, 5, 6, 7})
            + "<div class=row>" + "".join(map(figure, figs)) + "</div>"
            + "<h3>Per phase (time per iteration)</h3>"
            + table(["strategy", "phase", "predicted (ms)", "measured (ms)", "error"],
                    phase_rows, numeric={2, 3, 4}))


def per_entry_section(charted: list[Entry], blocks: list[str]) -> str:
    """One strategy at a time, chosen in a drop-down: its timeline, utilisation and memory.
    All figures are in the page; the script draws the chosen one's."""
    items = [{"label": e.label,
              "figures": {"timeline": gantt.timeline(e),
                          "devices": figures.device_utilisation(e),
                          "links": figures.link_utilisation(e), "memory": figures.memory(e)}}
             for e in charted]
    blocks.append(script_json("per-entry", items))
    body = ['<p><label for="entry-select">Strategy</label><select id="entry-select"></select>'
            "</p>"]
    for kind, heading, none in PER_ENTRY:
        body.append(f"<h3>{esc(heading)}</h3><div class=chart id=\"entry-{kind}\"></div>"
                    f"<p class=none id=\"entry-{kind}-none\" hidden>{esc(none)}</p>")
    return "".join(body)


def page(heading: str, sections: list[tuple[str, str, str]], blocks: list[str],
         files: int, warnings: list[str] | None = None, plotly_js: str = "inline") -> str:
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    nav = "".join(f'<a href="#{sid}">{esc(h)}</a>' for sid, h, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(h)}</h2>{b}</section>'
                   for sid, h, b in sections)
    csp = CSP
    if plotly_js == "inline":
        code = get_plotlyjs().replace("</script", "<\\/script")
        plotly = f"<script>{code}</script>"
        where = "works offline (plotly.js is embedded)"
    elif plotly_js == "cdn":
        src = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
        plotly = f'<script src="{src}" charset="utf-8"></script>'
        csp = csp.replace("script-src 'unsafe-inline'", "script-src 'unsafe-inline' "
                          "https://cdn.plot.ly")
        where = "plotly.js comes from cdn.plot.ly"
    else:
        plotly = f'<script src="{plotly_file()}" charset="utf-8"></script>'
        csp = csp.replace("script-src 'unsafe-inline'", "script-src 'unsafe-inline' 'self' "
                          "file:")
        where = f"plotly.js is read from {plotly_file()} beside it"
    text = (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(heading)} · parasim report</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{esc(heading)}</h1><p>parasim comparison report from {files} Result "
        f"file{'s' * (files != 1)}</p><nav>{nav}</nav></header>"
        + "".join(f"<div class=banner role=alert><b>Predicted against measured, "
                  f"uncalibrated:</b> {esc(w)}.</div>" for w in warnings or [])
        + f"<main>{body}"
        f"<footer>Built by <code>parasim report</code>; {where}.</footer></main>"
        f"{plotly}{''.join(blocks)}<script>{SCRIPT}</script>"
        "</body></html>\n")
    # a lone surrogate (JSON's "\\ud800") is no character and cannot be written as UTF-8
    return text.encode("utf-8", "replace").decode("utf-8")


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else esc(fmt.format(v))

"""HTML building blocks: escaping, tables, figure JSON embedded safely, the page's style and
script.

Safety: every user string goes through :func:`esc`; figures travel as JSON inside
``<script type="application/json">`` with ``<``, ``>``, ``&`` and the two JavaScript line
separators written as ``\\uXXXX`` escapes (so no text can close the script element), and the
page script reads them with ``JSON.parse`` and sets option labels with ``textContent``, never
``innerHTML``. A Content-Security-Policy forbids the page any network access.

The script draws each chart on its own: one that throws (or whose drawing fails later) shows a
short message in its place, and the other charts still draw.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

# nothing may be fetched: scripts and styles are inline, images only data:/blob: (plotly's
# "download as png" and its modebar icons)
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; "
       "form-action 'none'")

TINY = 1e-300
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                 "\u2029": "\\u2029"}


def esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as null (JSON has neither), and numbers closer to 0
    than ``TINY`` as 0 (plotly throws when it scales an axis to 1e-306)."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return obj if abs(obj) >= TINY else 0.0
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def script_json(element_id: str, obj: Any) -> str:
    """``obj`` as a JSON data block that no string inside it can break out of."""
    text = json.dumps(finite(obj), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    for ch, rep in _JSON_ESCAPES.items():
        text = text.replace(ch, rep)
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None,
          css: str = "") -> str:
    """A table of already-escaped cells (headers: the caller's own markup, never user text);
    columns in ``numeric`` are right-aligned."""
    numeric = numeric or set()

    def cells(tag: str, row: list[str]) -> str:
        return "".join(f'<{tag}{" class=num" if i in numeric else ""}>{c}</{tag}>'
                       for i, c in enumerate(row))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    cls = f' class="{esc(css)}"' if css else ""
    return (f"<div class=scroll><table{cls}><thead><tr>{cells('th', headers)}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def chart(figure_id: str, css: str = "chart") -> str:
    """A container the page script fills with the figure in the JSON block ``figure_id``."""
    return f'<div class="{esc(css)}" data-figure="{esc(figure_id)}"></div>'


STYLE = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --band: #f5f7fa; --accent: #2f6fb3; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { background: #243b53; color: #fff; padding: 22px 32px 14px; }
.banner { background: #fff4e5; border-bottom: 2px solid #d97706; color: #7c2d12;
  padding: 10px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 600; overflow-wrap: anywhere; }
header p { margin: 0; color: #d9e2ec; }
nav { margin-top: 12px; display: flex; flex-wrap: wrap; gap: 6px 16px; }
nav a { color: #bcccdc; text-decoration: none; font-size: 14px; }
nav a:hover { color: #fff; text-decoration: underline; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 32px 48px; }
section { margin-top: 28px; }
h2 { font-size: 20px; font-weight: 600; border-bottom: 2px solid var(--line);
  padding-bottom: 6px; margin: 0 0 12px; }
h3 { font-size: 16px; font-weight: 600; margin: 18px 0 8px; overflow-wrap: anywhere; }
p.lead, p.none { color: var(--muted); margin: 4px 0 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 12px; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: var(--band); border-bottom: 2px solid var(--line); font-weight: 600;
  vertical-align: bottom; }
tbody td:first-child { white-space: nowrap; font-weight: 500; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tbody tr:hover { background: #eef4fb; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
.bad { color: #b42318; display: inline-block; min-width: 16em; }
.kv th { background: none; border-bottom: 1px solid var(--line); color: var(--muted);
  font-weight: 500; white-space: nowrap; }
.tag { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px;
  background: #e4ecf7; color: #1d4f91; }
.tag.measured { background: #fdebd3; color: #8a4b08; }
.tag.target { background: #e6f4ea; color: #22543d; }
.unreached { color: #8a4b08; text-decoration: underline dotted; cursor: help; }
.tag.winner { background: #dcf3e4; color: #11622f; font-weight: 600; }
h3.group { margin: 22px 0 6px; }
p.why { margin: 6px 0 0; color: var(--muted); }
.chart { width: 100%; min-height: 300px; margin: 8px 0 18px; border: 1px solid var(--line);
  border-radius: 6px; }
.chart[data-failed] { min-height: 0; }
p.chart-error { margin: 0; padding: 12px 16px; color: #b42318; }
ul.notes { margin: 4px 0 12px; padding-left: 22px; color: #7c2d12; overflow-wrap: anywhere; }
.row { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, max-content));
  gap: 0 40px; align-items: start; }
.facts table { width: 100%; }
pre { background: var(--band); border: 1px solid var(--line); border-radius: 6px;
  padding: 12px; overflow-x: auto; font-size: 13px; }
label { font-weight: 600; margin-right: 8px; }
select { font: inherit; padding: 4px 8px; min-width: 260px; }
footer { color: var(--muted); font-size: 13px; margin-top: 36px; }
"""

SCRIPT = """
(function () {
  "use strict";
  var CONFIG = {responsive: true, displaylogo: false};
  function json(id) { return JSON.parse(document.getElementById(id).textContent); }
  // each chart is drawn on its own: one that cannot be drawn says so in its place, and the
  // others still draw
  function failed(div, error) {
    try { Plotly.purge(div); } catch (ignored) { /* nothing was drawn */ }
    div.replaceChildren();
    div.style.height = "";
    div.setAttribute("data-failed", "");
    var message = document.createElement("p");
    message.className = "chart-error";
    var why = String((error && error.message) || error);
    message.textContent = "This chart could not be drawn (" +
      (why.length > 120 ? why.slice(0, 117) + "..." : why) + ").";
    div.appendChild(message);
    console.warn("parasim report: a chart could not be drawn:", error);
  }
  // the container gets the figure's height: on a window resize plotly then only refits the
  // width (a container without a height would shrink the chart to its min-height)
  function draw(div, figure) {
    if (div.hasAttribute("data-failed")) {
      div.replaceChildren();
      div.removeAttribute("data-failed");
    }
    try {
      var fig = figure();
      div.style.height = fig.layout.height + "px";
      var drawn = Plotly.react(div, fig.data, fig.layout, CONFIG);
      if (drawn && typeof drawn.then === "function") {
        drawn.then(null, function (error) { failed(div, error); });
      }
    } catch (error) {
      failed(div, error);
    }
  }
  document.querySelectorAll("div[data-figure]").forEach(function (div) {
    draw(div, function () { return json(div.getAttribute("data-figure")); });
  });
  var select = document.getElementById("entry-select");
  if (!select) { return; }
  var kinds = ["timeline", "devices", "links", "memory"];
  var perEntry;
  try {
    perEntry = json("per-entry");
    perEntry.forEach(function (item, i) {
      var option = document.createElement("option");
      option.value = String(i);
      option.textContent = item.label;
      select.appendChild(option);
    });
  } catch (error) {
    kinds.forEach(function (kind) { failed(document.getElementById("entry-" + kind), error); });
    return;
  }
  function show(i) {
    kinds.forEach(function (kind) {
      var div = document.getElementById("entry-" + kind);
      var none = document.getElementById("entry-" + kind + "-none");
      var fig = (perEntry[i].figures || {})[kind];
      if (fig) {
        div.hidden = false;
        none.hidden = true;
        draw(div, function () { return fig; });
      } else {
        try { Plotly.purge(div); } catch (ignored) { /* nothing was drawn */ }
        div.replaceChildren();
        div.removeAttribute("data-failed");
        div.hidden = true;
        none.hidden = false;
      }
    });
  }
  select.addEventListener("change", function () { show(Number(select.value)); });
  show(0);
})();
"""

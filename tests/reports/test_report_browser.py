"""The report in a real browser (Debian's headless Chromium through Playwright): every chart
draws, nothing is fetched from the network, the console stays clean, and a scenario named
``<script>alert(1)</script>`` is shown as text and runs nothing.

CI installs Chromium (``apt-get install chromium``); without it this test fails, on purpose.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from reports import build_report, load_results

if TYPE_CHECKING:
    from playwright.sync_api import Route

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = "<script>alert(1)</script>"
BOLD = "<b>ring</b>"
SCENARIO = """\
name: "{name}"
description: a tiny cluster for the report's browser test
seed: 1
model: {{zoo: mlp}}
cluster:
  nodes: {nodes}
  devices_per_node: 2
  device: V100
  intra_link: nvlink2
  inter_link: ib_edr
  parameter_servers: {{hosts: 1, device: cpu_core_modern, nic: eth_25g}}
training: {{batch_size: 64, precision: fp32, optimizer: momentum, iterations: 2}}
strategies:
  - {{name: "{bold}", scheme: data_parallel, exchange: ring}}
  - {{name: downpour, scheme: downpour}}
"""


def predicted(tmp_path: Path, nodes: int, name: str = EVIL) -> Path:
    from simulator.predict import simulate_scenario
    from simulator.scenario import load_scenario

    tag = f"{nodes}" if name == EVIL else f"{nodes}-{name}"
    yaml = tmp_path / f"scenario{tag}.yaml"
    yaml.write_text(SCENARIO.format(name=name, bold=BOLD, nodes=nodes))
    result, _ = simulate_scenario(load_scenario(str(yaml)))
    out = tmp_path / f"predicted{tag}.json"
    out.write_text(json.dumps(result))
    return out


def measured(tmp_path: Path, prediction: Path) -> Path:
    """A synthetic measured run of the ring plan: 10 % slower, a phase the simulator does not
    model, and a training curve."""
    result = json.loads(prediction.read_text())
    ring = copy.deepcopy(next(e for e in result["results"] if e["strategy"] == BOLD))
    ring.update(mode="measured", iteration_time_s=ring["iteration_time_s"] * 1.1,
                throughput_samples_per_s=ring["throughput_samples_per_s"] / 1.1)
    del ring["speedup_over_one_device"], ring["efficiency"]  # the report derives them
    ring["breakdown_s"] = {**{k: v * 1.1 for k, v in ring["breakdown_s"].items()},
                           "host_device_copy": 1e-4}
    ring["training"] = {"wall_time_s": [0, 5, 10, 15], "samples": [0, 640, 1280, 1920],
                        "loss": [2.3, 1.2, 0.8, 0.6], "accuracy": [0.1, 0.6, 0.8, 0.86]}
    result["results"] = [ring]
    out = tmp_path / "measured.json"
    out.write_text(json.dumps(result))
    return out


@pytest.fixture
def report(tmp_path: Path) -> Path:
    big = predicted(tmp_path, nodes=2)
    paths = [str(big), str(predicted(tmp_path, nodes=1)), str(measured(tmp_path, big))]
    out = tmp_path / "report.html"
    out.write_text(build_report(load_results(paths), paths))
    return out


def test_report_renders_offline_and_safely(report: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install chromium) to run the report's browser test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]'")
    started = time.monotonic()
    blocked, errors, dialogs = [], [], []

    def route(r: Route) -> None:
        url = r.request.url
        if url.startswith(("file://", "data:")):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20_000)
        try:
            context = browser.new_context(viewport={"width": 1300, "height": 900})
            context.set_default_timeout(15_000)
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_function(CHARTS_DRAWN, timeout=15_000)
            charts = page.evaluate(CHARTS)
            sections = page.evaluate("Array.from(document.querySelectorAll('section'))"
                                     ".map(s => s.id)")
            body = page.inner_text("body")
            banner = page.evaluate("Array.from(document.querySelectorAll('.banner'))"
                                   ".map(b => [b.textContent, b.getBoundingClientRect().height])")
            ticks = page.evaluate("Array.from(document.querySelectorAll('#breakdown .xtick'))"
                                  ".map(t => t.textContent)")
            options = page.evaluate("Array.from(document.querySelectorAll('#entry-select "
                                    "option')).map(o => o.textContent)")
            switched = []
            for i in range(len(options)):
                page.select_option("#entry-select", str(i))
                page.wait_for_function(CHARTS_DRAWN, timeout=10_000)
                switched.append(page.evaluate(CHARTS))
        finally:
            browser.close()
    assert blocked == [], f"the page tried to fetch {blocked}"
    assert errors == [], errors
    assert dialogs == [], f"a dialog opened: {dialogs}"
    assert sections == ["summary", "scaling", "breakdown", "measured", "per-strategy",
                        "training", "staleness", "scenario", "sources"]
    assert len(charts) >= 12, charts
    for chart in charts + [c for s in switched for c in s]:
        assert chart["traces"] > 0 and chart["svg"], chart
    assert EVIL in body
    # the prediction used the catalogue's figures: the page says so above everything
    assert len(banner) == 1 and "catalogue's figures" in banner[0][0] and banner[0][1] > 0
    assert f"{BOLD} (measured)" in ticks, ticks  # plotly shows it literally, not in bold
    assert options[:2] == [f"{BOLD} · 4 devices", "downpour · 4 devices"]
    assert time.monotonic() - started < 45


# every visible chart container, its number of traces and whether plotly drew its svg
CHARTS = """Array.from(document.querySelectorAll('div.chart')).filter(d => !d.hidden)
  .map(d => ({id: d.id || d.dataset.figure, traces: d.data ? d.data.length : 0,
              svg: !!d.querySelector('svg.main-svg')}))"""
CHARTS_DRAWN = f"({CHARTS}).every(c => c.traces > 0 && c.svg)"


# the boxes a reader sees: charts, tables' frames, group headings, verdicts and the banner
BOXES = """(() => {
  const seen = Array.from(document.querySelectorAll(
      'main div.chart, main div.scroll, main h3.group, main p.why, .banner'))
    .filter(e => !e.hidden && e.offsetParent !== null)
    .map(e => { const r = e.getBoundingClientRect();
                return {what: e.tagName + '.' + e.className, x: r.left + scrollX,
                        y: r.top + scrollY, w: r.width, h: r.height}; });
  const overlaps = [];
  for (let i = 0; i < seen.length; i++) for (let j = i + 1; j < seen.length; j++) {
    const a = seen[i], b = seen[j];
    if (a.x < b.x + b.w - 1 && b.x < a.x + a.w - 1 && a.y < b.y + b.h - 1 && b.y < a.y + a.h - 1)
      overlaps.push([a.what, b.what]);
  }
  return {overlaps, wider: document.documentElement.scrollWidth - innerWidth,
          groups: Array.from(document.querySelectorAll('#summary h3.group'))
            .map(h => h.textContent),
          winners: document.querySelectorAll('#summary .tag.winner').length,
          banners: document.querySelectorAll('.banner').length};
})()"""


@pytest.mark.parametrize("width", [1280, 1920])
def test_two_scenarios_read_apart_without_overlaps(tmp_path: Path, width: int) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install chromium) to run the report's browser test")
    from playwright.sync_api import sync_playwright

    one = predicted(tmp_path, nodes=2, name="small cluster")
    two = predicted(tmp_path, nodes=1, name="one node")
    paths = [str(one), str(predicted(tmp_path, nodes=1, name="small cluster")), str(two),
             str(measured(tmp_path, two))]
    out = tmp_path / "two.html"
    out.write_text(build_report(load_results(paths), paths))
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20_000)
        try:
            context = browser.new_context(viewport={"width": width, "height": 1000})
            context.set_default_timeout(15_000)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(out.as_uri(), wait_until="load")
            page.wait_for_function(CHARTS_DRAWN, timeout=15_000)
            boxes = page.evaluate(BOXES)
        finally:
            browser.close()
    assert errors == [], errors
    assert boxes["groups"] == ["small cluster", "one node"]
    assert boxes["winners"] == 2  # each scenario's fastest
    assert boxes["banners"] == 1  # the measured run was compared with catalogue figures
    assert boxes["overlaps"] == [] and boxes["wider"] <= 0, boxes


def test_reports_in_one_folder_can_share_one_plotly_js(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install chromium) to run the report's browser test")
    from playwright.sync_api import sync_playwright

    from parasim.cli import main

    src = str(predicted(tmp_path, nodes=1))
    out = tmp_path / "site"
    out.mkdir()
    for name in ("a.html", "b.html"):
        assert main(["report", src, "-o", str(out / name), "--plotly-js", "directory"]) == 0
    shared = [p.name for p in out.glob("plotly-*.min.js")]
    assert len(shared) == 1 and (out / "a.html").stat().st_size < 1_000_000
    blocked: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20_000)
        try:
            page = browser.new_page()
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                       else (blocked.append(r.request.url), r.abort()))
            page.goto((out / "b.html").as_uri(), wait_until="load")
            page.wait_for_function(CHARTS_DRAWN, timeout=15_000)
        finally:
            browser.close()
    assert blocked == []


# every visible chart has been drawn, or says in its place that it could not be
CHARTS_SETTLED = """Array.from(document.querySelectorAll('div.chart')).filter(d => !d.hidden)
  .every(d => d.hasAttribute('data-failed')
              || (d.data && d.data.length > 0 && d.querySelector('svg.main-svg') !== null))"""
FAILED = """Array.from(document.querySelectorAll('div.chart[data-failed]'))
  .map(d => [d.id || d.dataset.figure, d.textContent])"""


def settle(view, predicate: str, seconds: float = 15) -> None:  # noqa: ANN001
    """Wait for ``predicate`` in Python (the page's policy forbids the evaluated code that
    Playwright's own waiting would run there)."""
    end = time.monotonic() + seconds
    while not view.evaluate(predicate):
        assert time.monotonic() < end, f"still false after {seconds} s: {predicate}"
        view.wait_for_timeout(100)


def with_figure(page: str, block: str, change) -> str:  # noqa: ANN001
    """``page`` with the JSON block ``block`` replaced by ``change(its data)``."""
    from reports.html import script_json

    found = re.search(f'<script type="application/json" id="{block}">(.*?)</script>', page,
                      flags=re.S)
    assert found, block
    data = json.loads(found.group(1))
    change(data)
    return page[:found.start()] + script_json(block, data) + page[found.end():]


def test_a_chart_that_throws_leaves_the_others_drawn(tmp_path: Path) -> None:
    """A Result with hostile values (each at the edge of what the reader accepts), one entry
    it refuses, and two charts whose data plotly cannot read (a null trace): the first chart
    of the page and the first strategy's timeline. Each of the two says so in its place; every
    other chart draws, and the page raises no error."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install chromium) to run the report's browser test")
    from playwright.sync_api import sync_playwright

    from tests.reports.helpers import entry, hostile_entries, result

    refused = {"strategy": "nan", "mode": "predicted", "devices": 2,
               "iteration_time_s": float("nan")}
    hostile = result(*hostile_entries(), entry("ring", devices=2), entry("ring", devices=4),
                     refused, name="hostile")
    page = build_report([hostile], ["hostile.json"])
    assert "entry results[6] (nan) of hostile.json: not drawn" in page
    page = with_figure(page, "fig-0", lambda fig: fig["data"].insert(0, None))
    page = with_figure(page, "per-entry",
                       lambda items: items[0]["figures"]["timeline"]["data"].insert(0, None))
    out = tmp_path / "hostile.html"
    out.write_text(page)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20_000)
        try:
            context = browser.new_context(viewport={"width": 1300, "height": 900})
            context.set_default_timeout(15_000)
            view = context.new_page()
            view.on("pageerror", lambda e: errors.append(str(e)))
            view.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            view.goto(out.as_uri(), wait_until="load")
            settle(view, CHARTS_SETTLED)
            charts = view.evaluate(CHARTS)
            failed = view.evaluate(FAILED)
            view.select_option("#entry-select", "2")  # the next strategy with a timeline
            settle(view, CHARTS_SETTLED)
            after = view.evaluate(FAILED)
            timeline = view.evaluate(f"({CHARTS}).filter(c => c.id === 'entry-timeline')")
            notes = view.inner_text("#not-drawn")
        finally:
            browser.close()
    assert errors == [], errors
    assert [f[0] for f in failed] == ["fig-0", "entry-timeline"], failed
    for _, message in failed:
        assert message.startswith("This chart could not be drawn (") and len(message) < 200
    drawn = [c for c in charts if c["id"] not in ("fig-0", "entry-timeline")]
    assert len(drawn) >= 8 and all(c["traces"] > 0 and c["svg"] for c in drawn), charts
    # the next strategy's timeline draws in the same place
    assert [f[0] for f in after] == ["fig-0"], after
    assert timeline == [{"id": "entry-timeline", "traces": 2, "svg": True}], timeline
    assert "'iteration_time_s' must be a finite number within ±1e+18, got NaN" in notes


def test_time_to_target_draws_its_sweep_and_the_predicted_curves(tmp_path: Path) -> None:
    """A predicted sweep with targets (one point not reached) and a measured run with its
    curve, from two files: the time-to-target chart draws with each predicted line's fastest
    point in the legend, the training charts overlay the prediction, and nothing errs."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install chromium) to run the report's browser test")
    from playwright.sync_api import sync_playwright

    from tests.reports.helpers import entry, result, target

    points = [entry(BOLD, devices=d, sweep_point={"devices": d}, **target(steps=n, time_s=t))
              for d, n, t in ((2, 200, 100.0), (4, 240, 60.0), (8, 640, 80.0))]
    points[1]["training"] = {"wall_time_s": [0, 30, 60], "samples": [0, 7680, 15360],
                             "loss": [2.3, 0.9, 0.5]}
    points.append(entry(BOLD, devices=16, sweep_point={"devices": 16},
                        **target(reached=False, why=EVIL)))
    run = entry(BOLD, mode="measured", devices=4, **target(steps=250, time_s=70.0),
                training={"wall_time_s": [0, 35, 70], "samples": [0, 8000, 16000],
                          "loss": [2.3, 1.0, 0.5], "accuracy": [0.1, 0.7, 0.8]})
    paths = []
    for name, r in (("sweep.json", result(*points)), ("run.json", result(run))):
        (tmp_path / name).write_text(json.dumps(r))
        paths.append(str(tmp_path / name))
    out = tmp_path / "target.html"
    out.write_text(build_report(load_results(paths), paths))
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20_000)
        try:
            view = browser.new_page()
            view.on("pageerror", lambda e: errors.append(str(e)))
            view.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            view.goto(out.as_uri(), wait_until="load")
            view.wait_for_function(CHARTS_DRAWN, timeout=15_000)
            legend = view.evaluate("Array.from(document.querySelectorAll('#time-to-target "
                                   ".legendtext')).map(t => t.textContent)")
            curves = view.evaluate("Array.from(document.querySelectorAll('#training "
                                   ".legendtext')).map(t => t.textContent)")
            why = view.evaluate("Array.from(document.querySelectorAll('#summary .unreached'))"
                                ".map(s => s.title)")
        finally:
            browser.close()
    assert errors == [], errors
    assert legend == [f"{BOLD} (predicted)", f"{BOLD}: fastest at 4 devices",
                      f"{BOLD} (measured)"], legend
    assert f"{BOLD} · devices=4 (predicted)" in curves and f"{BOLD} (measured)" in curves
    assert why == [EVIL, EVIL]

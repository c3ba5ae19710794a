"""A plan search's report in a real browser (headless Chromium, as the main report test): the
search section lists the simulated plans ranked with the first marked as the winner and the
reasons beside, every chart draws, the console stays clean."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from reports import build_report, load_results
from simulator.scenario import load_scenario
from simulator.search import run_search
from simulator.search.space import Constraints
from tests.reports.test_report_browser import ARGS, CHARTS, CHARTS_DRAWN, CHROMIUM

ROOT = Path(__file__).resolve().parents[2]


def test_the_search_report_marks_the_winner(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium")
    from playwright.sync_api import sync_playwright

    result = run_search(load_scenario(ROOT / "scenarios" / "executor_mlp.yaml"),
                        Constraints(top=3), out=io.StringIO())
    path = tmp_path / "search.json"
    path.write_text(json.dumps(result))
    html = tmp_path / "search.html"
    html.write_text(build_report(load_results([str(path)]), [str(path)]))
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html.as_uri(), wait_until="load")
            page.wait_for_function(CHARTS_DRAWN, timeout=15_000)
            charts = page.evaluate(CHARTS)
            rows = page.evaluate("Array.from(document.querySelectorAll('#search table.search "
                                 "tbody tr')).map(r => r.innerText)")
            winners = page.evaluate("Array.from(document.querySelectorAll('#search "
                                    ".tag.winner')).map(t => t.closest('tr').rowIndex)")
            reasons = page.evaluate("Array.from(document.querySelectorAll('#search ul.why "
                                    "li')).map(li => li.innerText)")
        finally:
            browser.close()
    assert errors == [], errors
    assert charts and all(c["traces"] > 0 and c["svg"] for c in charts)
    names = [e["strategy"] for e in result["results"]]
    assert len(rows) == 3 and all(n in r for n, r in zip(names, rows))
    assert winners == [1]  # the first row of the body (row 0 is the header)
    assert reasons == result["search"]["why"] and reasons[0].startswith(names[0])

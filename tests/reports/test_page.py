"""The page: sections present only with data, user strings escaped, figures embedded safely,
nothing external, and the same input gives the same bytes."""

import json
import re
import subprocess
import sys

from reports import build_report
from tests.reports.helpers import entry, result

EVIL = "<script>alert(1)</script>"


def data_blocks(page: str) -> dict[str, object]:
    found = re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>', page,
                       flags=re.S)
    return {i: json.loads(text) for i, text in found}


def test_a_scenario_name_with_markup_is_text_everywhere():
    r = result(entry(EVIL, note=EVIL, timeline={"spans": [[EVIL, "compute", EVIL, 0, 1]]}),
               name=EVIL, yaml=f"name: '{EVIL}'\n", description="</pre>" + EVIL)
    page = build_report([r], [f"{EVIL}.json"])
    plotly_end = page.index("</script>")  # plotly.js itself, then our data and code
    ours = page[plotly_end:]
    assert EVIL not in page[:page.index("<script>")] and EVIL not in ours
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    blocks = data_blocks(page)
    assert "<" not in "".join(re.findall(r'application/json" id="[^"]+">(.*?)</script>', page,
                                         flags=re.S))
    labels = [item["label"] for item in blocks["per-entry"]]
    assert labels == [EVIL]  # raw in JSON (the script sets it with textContent)
    assert "innerHTML" not in ours


def test_no_external_resource_and_a_strict_policy():
    page = build_report([result(entry())], ["r.json"])
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for pattern in (r"<script[^>]+src=", r"<link\b", r"<img\b", r"@import", r"url\(http"):
        assert not re.search(pattern, page), pattern


def test_sections_appear_only_with_data():
    page = build_report([result(entry("ring"), entry("tree"))], ["r.json"])
    for present in ("summary", "breakdown", "measured", "per-strategy", "scenario", "sources"):
        assert f'<section id="{present}">' in page
    for absent in ("scaling", "training", "staleness"):
        assert f'<section id="{absent}">' not in page
    assert "No measured results yet" in page


def test_every_section_with_full_data():
    training = {"wall_time_s": [0, 1], "samples": [0, 64], "loss": [2.0, 1.0]}
    r = result(entry("ring", devices=2), entry("ring", devices=4),
               entry("ring", mode="measured", devices=4, training=training),
               entry("down", staleness={"mean": 1, "max": 2, "histogram": {"0": 1, "2": 1}}),
               entry("huge", iteration_time_s=None, throughput=None, note="does not fit: 99 GiB"))
    page = build_report([r], ["r.json"])
    for present in ("scaling", "training", "staleness", "measured"):
        assert f'<section id="{present}">' in page
    assert "No measured results yet" not in page
    assert "does not fit: 99 GiB" in page
    per_entry = data_blocks(page)["per-entry"]
    assert "huge" not in [item["label"] for item in per_entry]  # table only


def test_same_input_same_page():
    r = result(entry())
    assert build_report([r], ["r.json"]) == build_report([r], ["r.json"])


def test_the_report_code_imports_nothing_from_the_simulator():
    code = ("import sys, reports; reports.build_report([{'results': []}], ['x']); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('simulator', 'simpy')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_scenarios_are_two_groups_each_fastest_first_with_its_winner():
    # two unrelated scenarios that both call a strategy "dp": never one curve, never one pair
    a = result(entry("dp", devices=2, throughput=200.0), entry("dp", devices=4, throughput=300.0),
               entry("pipe", devices=4, throughput=350.0, iteration_time_s=0.4,
                     breakdown_s={"compute": 0.3, "exposed_communication": 0.1,
                                  "ps_wait": 0.0, "idle": 0.0}), name="alpha")
    b = result(entry("dp", devices=2, throughput=9000.0, iteration_time_s=0.01),
               entry("dp", mode="measured", devices=2, throughput=150.0), name="beta")
    page = build_report([a, b], ["a.json", "b.json"])
    summary = page[page.index('id="summary"'):page.index('id="scaling"')]
    assert summary.index(">alpha<") < summary.index(">beta<")
    alpha = summary[summary.index(">alpha<"):summary.index(">beta<")]
    # fastest first: pipe (350) before dp at 4 (300) and dp at 2 (200); pipe marked, and why
    assert alpha.index("pipe") < alpha.index("300.0") < alpha.index("200.0")
    assert alpha.count("tag winner") == 1 and "pipe beats dp" in alpha
    assert "less idle time" in alpha
    blocks = data_blocks(page)
    curves = [t for f in blocks.values() if isinstance(f, dict) for t in f.get("data", [])
              if t.get("type") == "scatter" and t.get("name") == "dp"]
    # alpha's dp only, in the throughput and the efficiency charts: beta's has one size
    assert [c["x"] for c in curves] == [[2, 4], [2, 4]]
    # beta's measured dp pairs with beta's prediction, not alpha's
    measured = page[page.index('id="measured"'):page.index('id="per-strategy"')]
    assert "9,000.0" in measured and "200.0" not in measured


def test_memory_in_the_unit_that_fits_and_measured_rows_add_resident_memory():
    from reports.page import size
    assert [size(n) for n in (512, 3.1 * 2**20, 1.25 * 2**30, 80 * 2**30, 2048 * 2**30)] == [
        "512 B", "3.1 MiB", "1.25 GiB", "80 GiB", "2,048 GiB"]
    m = entry("dp", mode="measured", devices=2, throughput=150.0,
              memory_bytes_per_device={"a": 3 * 2**20, "b": 2**20},
              peak_rss_bytes_per_device={"a": 180 * 2**20, "b": 200 * 2**20})
    page = build_report([result(m)], ["m.json"])
    summary = page[page.index('id="summary"'):]
    summary = summary[:summary.index("</table>")]
    assert "3 MiB / 16 GiB; 200 MiB resident" in summary


def test_plotly_js_inline_by_default_or_from_the_cdn_the_policy_allows():
    r = result(entry("dp"))
    inline = build_report([r], ["r.json"])
    assert "<script src=" not in inline and len(inline) > 1_000_000
    cdn = build_report([r], ["r.json"], "cdn")
    assert len(cdn) < 200_000
    assert re.search(r'<script src="https://cdn\.plot\.ly/plotly-[0-9.]+\.min\.js"', cdn)
    assert "script-src 'unsafe-inline' https://cdn.plot.ly;" in cdn

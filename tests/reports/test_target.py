"""Time to target: the check of the new fields, the summary's columns, the chart against device
count (its optimum marked) or per strategy, and the training curves with their predictions
and target lines."""

import json
import re

import plotly.graph_objects as go
import pytest

from reports import figures, load_results
from reports.load import checked
from reports.page import render
from reports.target import duration, time_to_target
from tests.reports.helpers import entry, result, rows, target

EVIL = "<script>alert(1)</script>"


def valid(fig):
    go.Figure(fig)  # raises on any property plotly does not know
    return fig


def sweep(*points, strategy="ring", **extra):
    """Predicted entries of one strategy over a device sweep: (devices, steps, seconds)."""
    return [entry(strategy, devices=d, sweep_point={"devices": d},
                  **target(steps=n, time_s=t, **extra)) for d, n, t in points]


def summary(page: str) -> str:
    part = page[page.index('<section id="summary">'):]
    return part[:part.index("</section>")]


# ---- check -------------------------------------------------------------------------------------

def test_a_target_block_is_kept_whole_with_the_producers_own_keys():
    extra = {"steps_needed": float("inf"), "window": [1, 2], "staleness": "any", "batch": 64}
    e = entry(**target(reached=False, why="diverges", **extra))
    usable = checked([result(e)], ["r.json"])
    assert usable.notes == []
    (row,) = usable.rows
    assert row.target == e["target"] and not row.reached
    assert row.time_to_target is None and row.steps_to_target is None


@pytest.mark.parametrize("training", [
    {"wall_time_s": [0, 5], "samples": [0, 64], "loss": [2.0, 0.5]},
    {"wall_time_s": [0, 5], "samples": [0, 64], "accuracy": [0.1, 0.9]},
    {"wall_time_s": [0, 5], "samples": [0, 64], "loss": [2.0, 0.5], "accuracy": [0.1, 0.9]},
])
def test_a_training_curve_needs_only_one_of_loss_and_accuracy(training):
    assert checked([result(entry(training=training))], ["r.json"]).notes == []


def test_the_headline_figures_win_over_the_block_and_fill_in_without_it():
    e = entry(**target(steps=100, time_s=50.0))
    e["time_to_target_s"] = 40.0
    headline_only = entry("tree", time_to_target_s=30.0, steps_to_target=60)
    first, second = rows(result(e, headline_only))
    assert first.time_to_target == 40.0 and first.steps_to_target == 100
    assert second.has_target and second.reached and second.time_to_target == 30.0
    assert second.step_unit == "step"


# ---- the summary's columns ---------------------------------------------------------------------

def test_the_columns_appear_only_with_a_target():
    page, _ = render([result(entry("ring"), entry("tree"))], ["r.json"], "cdn")
    assert "to<br>target" not in page and 'id="time-to-target"' not in page


def test_steps_and_time_to_target_in_their_units_and_not_reached_with_why():
    r = result(entry("ring", **target(steps=240, time_s=150.0)),
               entry("tree", **target(steps=1500, time_s=9000.0)),
               entry("dbn", **target(steps=12, time_s=15.5, step_unit="epoch",
                                     metric="reconstruction_error")),
               entry("downpour", **target(reached=False, why=EVIL)),
               entry("plain"))
    table = summary(render([r], ["r.json"], "cdn")[0])
    head = re.findall(r"<th[^>]*>(.*?)</th>", table)
    assert head[7:9] == ["steps to<br>target", "time to<br>target"]
    cells = {re.sub("<.*", "", r_[0]).strip(): r_[7:9] for r_ in
             (re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in table.split("<tr>")[2:])}
    assert cells["ring"] == ["240 steps", "2.5 min"]
    assert cells["tree"] == ["1,500 steps", "2.5 h"]
    assert cells["dbn"] == ["12 epochs", "15.5 s"]
    unreached = ('<span class=unreached title="&lt;script&gt;alert(1)&lt;/script&gt;">'
                 "not reached</span>")
    assert cells["downpour"] == [unreached, unreached]
    assert cells["plain"] == ["–", "–"]
    assert EVIL not in table
    # the quickest to the target is marked, beside the fastest per iteration
    assert table.count("first to target") == 2  # the lead and the dbn row
    assert re.search(r"dbn <span class=\"tag target\">first to target", table)


@pytest.mark.parametrize("seconds, shown", [(0, "0 s"), (0.25, "0.25 s"), (45.2, "45.2 s"),
                                            (119, "119 s"), (120, "2.0 min"), (750, "12.5 min"),
                                            (7200, "2.0 h"), (1e18, "277,777,777,777,777.8 h")])
def test_durations_read_in_seconds_minutes_or_hours(seconds, shown):
    assert duration(seconds) == shown


# ---- the chart ---------------------------------------------------------------------------------

def test_against_devices_each_predicted_line_has_its_fastest_point_marked():
    r = result(*sweep((2, 200, 100.0), (4, 240, 60.0), (8, 640, 80.0)),
               entry("ring", devices=16, sweep_point={"devices": 16},
                     **target(reached=False, why="diverges")),
               *sweep((2, 100, 40.0), (4, 100, 20.0), strategy="tree"),
               entry("ring", mode="measured", devices=4, **target(steps=250, time_s=70.0)),
               entry("ring", mode="measured", devices=8, **target(steps=700, time_s=90.0)))
    fig = valid(time_to_target(rows(r)))
    by_name = {t["name"]: t for t in fig["data"]}
    assert list(by_name) == ["ring (predicted)", "ring: fastest at 4 devices",
                             "tree (predicted)", "tree: fastest at 4 devices",
                             "ring (measured)"]
    line = by_name["ring (predicted)"]
    assert line["x"] == [2, 4, 8, 16] and line["y"] == [100.0, 60.0, 80.0, None]
    assert line["customdata"][:3] == ["200 steps", "240 steps", "640 steps"]
    star = by_name["ring: fastest at 4 devices"]
    assert (star["x"], star["y"], star["marker"]["symbol"]) == ([4], [60.0], "star")
    assert "fastest at %{x} devices" in star["hovertemplate"]
    measured = by_name["ring (measured)"]
    assert measured["x"] == [4, 8] and measured["y"] == [70.0, 90.0]
    assert measured["line"]["dash"] == "dash" and line["line"]["dash"] == "solid"
    assert measured["line"]["color"] == line["line"]["color"] != by_name[
        "tree (predicted)"]["line"]["color"]
    assert fig["layout"]["title"]["text"] == "Time to target (loss ≤ 0.5) against device count"
    assert fig["layout"]["xaxis"]["tickvals"] == [2, 4, 8, 16]
    assert fig["layout"]["yaxis"]["title"]["text"] == "time to target (s)"


def test_long_times_are_drawn_in_hours_and_a_wide_span_on_a_log_axis():
    fig = valid(time_to_target(rows(result(*sweep((1, 10, 36_000.0), (8, 10, 1_440.0))))))
    assert fig["data"][0]["y"] == [10.0, 0.4]
    assert fig["layout"]["yaxis"]["title"]["text"] == "time to target (h, log scale)"
    assert fig["layout"]["yaxis"]["type"] == "log"


def test_without_a_sweep_bars_put_the_measured_run_beside_its_prediction():
    r = result(entry("ring", **target(steps=100, time_s=50.0)),
               entry("tree", **target(steps=80, time_s=60.0)),
               entry("ring", mode="measured", **target(steps=110, time_s=55.0)),
               entry("dbn", mode="measured", **target(steps=3, time_s=30.0, step_unit="epoch")),
               entry("never", **target(reached=False, why="needs more steps than the cap")))
    fig = valid(time_to_target(rows(r)))
    predicted, measured = fig["data"]
    assert predicted["name"] == "predicted" and measured["name"] == "measured"
    assert predicted["x"] == measured["x"] == ["ring", "tree", "dbn (measured)"]
    assert predicted["y"] == [50.0, 60.0, None]
    assert measured["y"] == [55.0, None, 30.0]
    assert measured["customdata"] == ["110 steps", "", "3 epochs"]
    assert fig["layout"]["barmode"] == "group"


def test_no_chart_without_a_time_to_target():
    assert time_to_target(rows(result(entry("ring"), entry("tree")))) is None
    assert time_to_target(rows(result(entry(**target(reached=False, why="x"))))) is None


# ---- training curves ---------------------------------------------------------------------------

def test_a_predicted_curve_is_dashed_over_the_measured_one_with_the_target_line():
    measured = {"wall_time_s": [0, 30, 60], "samples": [0, 640, 1280], "loss": [2.3, 0.9, 0.6],
                "accuracy": [0.1, 0.7, 0.8]}
    predicted = {"wall_time_s": [0, 20, 50], "samples": [0, 640, 1600], "loss": [2.3, 1.0, 0.5]}
    r = result(entry("ring", training=predicted, **target()),
               entry("ring", mode="measured", training=measured, **target(time_s=70.0)),
               entry("tree", training=predicted))
    loss, accuracy = map(valid, figures.training(rows(r)))
    ring, measured_ring, tree = loss["data"]
    assert ring["name"] == "ring (predicted)" and ring["line"]["dash"] == "dash"
    assert ring["x"] == [0, 20, 50] and ring["y"] == [2.3, 1.0, 0.5]
    assert measured_ring["name"] == "ring (measured)" and measured_ring["line"]["dash"] == "solid"
    assert ring["line"]["color"] == measured_ring["line"]["color"] != tree["line"]["color"]
    (line,) = loss["layout"]["shapes"]
    assert (line["y0"], line["y1"], line["xref"]) == (0.5, 0.5, "paper")
    assert loss["layout"]["annotations"][0]["text"] == "target 0.5"
    # the loss-only prediction is not on the accuracy chart, and a loss target is not either
    assert [t["name"] for t in accuracy["data"]] == ["ring (measured)"]
    assert "shapes" not in accuracy["layout"]


def test_an_accuracy_target_is_drawn_on_the_accuracy_chart():
    curve = {"wall_time_s": [0, 10], "samples": [0, 64], "accuracy": [0.2, 0.9]}
    (fig,) = figures.training(rows(result(entry(training=curve,
                                                **target(metric="accuracy", value=0.9)))))
    assert fig["layout"]["title"]["text"].startswith("Accuracy")
    assert fig["layout"]["shapes"][0]["y0"] == 0.9


# ---- hostile values ----------------------------------------------------------------------------

HOSTILE = [
    ("target", "reached", "'target' must be an object, got a string"),
    ("target", {"reached": 1}, "'target.reached' must be true or false, got 1"),
    ("target", {"reached": True, "time_s": "@nan@"}, "got NaN"),
    ("target", {"reached": True, "steps": "@1e400@"}, "got Infinity"),
    ("target", {"reached": True, "samples": "@digits@"}, "got a 5,000-digit integer"),
    ("target", {"reached": True, "value": 1e19}, "'target.value' must be a finite number"),
    ("target", {"reached": True, "step_time_s": -1e-9}, "must not be negative"),
    ("target", {"reached": True, "metric": {"a": 1}}, "'target.metric' must be a string"),
    ("time_to_target_s", "@-inf@", "got -Infinity"),
    ("time_to_target_s", -3, "'time_to_target_s' must not be negative, got -3"),
    ("steps_to_target", [1], "'steps_to_target' must be a number, got [1]"),
    ("step_time_s", True, "'step_time_s' must be a number, got true"),
]
RAW = {"@nan@": "NaN", "@-inf@": "-Infinity", "@1e400@": "1e400", "@digits@": "7" * 5000}


@pytest.mark.parametrize("field, value, expected", HOSTILE)
def test_a_hostile_target_field_in_a_file_is_left_out_with_a_note(tmp_path, field, value,
                                                                  expected):
    bad = entry("tree", devices=4, sweep_point={"devices": 4}, **target())
    bad[field] = value
    text = json.dumps(result(*sweep((2, 10, 5.0)), bad))
    for marker, raw in RAW.items():
        text = text.replace(json.dumps(marker), raw)
    path = tmp_path / "r.json"
    path.write_text(text)
    page, notes = render(load_results([str(path)]), [str(path)], "cdn")
    (note,) = notes
    assert note.startswith(f"entry results[1] (tree) of {path}: '{field}' not drawn: ")
    assert expected in note
    assert 'id="time-to-target"' in page and "<td>tree<" in summary(page)


def test_missing_and_edge_values_are_drawn():
    odd = [entry("a", **target(steps=0, time_s=0.0)),
           entry("b", **target(steps=1e18, time_s=1e18, value=-1e18, metric=EVIL)),
           entry("c", **target(steps=5e-324, time_s=5e-324)),
           entry("d", **target(reached=True, steps=None, time_s=None)),
           entry("e", target={"reached": False}),  # no why, no metric, no value
           entry("f", target={"reached": True}, time_to_target_s=None, steps_to_target=None),
           entry("g", time_to_target_s=1.0)]  # a headline figure without its block
    for e in odd:
        valid(time_to_target(rows(result(e))) or {"data": []})
    page, notes = render([result(*odd)], ["r.json"], "cdn")
    assert notes == [] and EVIL not in page
    fig = valid(time_to_target(rows(result(*odd))))
    assert fig["data"][0]["x"] == ["a", "b", "c", "g"]
    curve = {"wall_time_s": [0, 1e18], "samples": [None, 0], "loss": [None, 1e18]}
    loss = valid(figures.training(rows(result(entry(training=curve, **target(value=1e18)))))[0])
    assert loss["layout"]["shapes"][0]["y0"] == 1e18

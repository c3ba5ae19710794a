"""Reading and checking Result files: every bad input is one ReportError naming file and field."""

import json

import pytest

from reports import ReportError, build_report, load_results
from reports.load import checked, entries
from tests.reports.helpers import entry, result, rows


def write(tmp_path, data, name="r.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def error(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ReportError) as e:
        load_results([path])
    message = str(e.value)
    assert path in message and "\n" not in message
    return message


def test_a_good_file_loads_unchanged(tmp_path):
    data = result(entry())
    assert load_results([write(tmp_path, data)]) == [data]


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ReportError, match="nope.json: no such file"):
        load_results([str(tmp_path / "nope.json")])
    with pytest.raises(ReportError, match="is a folder"):
        load_results([str(tmp_path)])


@pytest.mark.parametrize("data, expected", [
    ("{not json", r"not JSON \(line 1, column 2"),
    ([1, 2], "not a Result: the top level is a list"),
    ({"scenario": {}}, "not a Result: no 'results' field"),
    ({"results": {}}, "'results' is an object, expected a list"),
    ({"results": [], "scenario": "x"}, "'scenario' is a string"),
    ({"results": [{"mode": "predicted", "devices": 1}]}, r"results\[0\]: missing field 'strategy'"),
    ({"results": [7]}, r"results\[0\]: the entry is a number, expected an object"),
    ({"results": [{"strategy": ""}]}, "'strategy' must be a non-empty string"),
    ({"results": [7, "x"]}, r"none of its 2 entries can be drawn; results\[0\]: the entry is a"),
])
def test_not_a_result(tmp_path, data, expected):
    assert __import__("re").search(expected, error(tmp_path, data))


# a field that places the entry on every chart: the entry is not drawn
ENTRY_FIELDS = [
    ("mode", "guessed", "'mode' must be one of predicted, measured, got \"guessed\""),
    ("devices", 0, "'devices' must be a whole number from 1 to 1,000,000, got 0"),
    ("devices", True, "'devices' must be a whole number from 1 to 1,000,000, got true"),
    ("devices", 2.0, "'devices' must be a whole number from 1 to 1,000,000, got 2.0"),
    ("iteration_time_s", "fast", "'iteration_time_s' must be a number, got \"fast\""),
    ("fits", "yes", "'fits' must be bool"),
    ("sweep_point", {"batch": [1]}, "'sweep_point.batch' must be a string or a number"),
]
# one of the entry's own blocks: that block is not drawn, the rest of the entry is
PART_FIELDS = [
    ("breakdown_s", {"compute": "x"}, "'breakdown_s.compute' must be a number"),
    ("utilisation_per_link", [1], "'utilisation_per_link' must be an object of numbers"),
    ("timeline", {"spans": [["d", "compute", "op", 0.0]]}, "'timeline.spans[0]' must be"),
    ("timeline", [], "'timeline' must be an object with a 'spans' list"),
    ("timeline", {"spans": [["d", "compute", "op", 0.0, -1.0]]},
     "'timeline.spans[0]' duration_s must not be negative, got -1.0"),
    ("training", {"wall_time_s": [1, 2], "samples": [1, 2], "loss": [1]},
     "'training' lists must have equal lengths, got wall_time_s 2, samples 2, loss 1"),
    ("training", {"wall_time_s": [1], "samples": [1]},
     "'training' must have a 'loss' or an 'accuracy' list"),
    ("training", {"wall_time_s": [1], "samples": [1], "loss": "low"},
     "'training.loss' must be a list"),
    ("target", [], "'target' must be an object, got a list"),
    ("target", {"metric": "loss", "value": 0.5},
     "'target.reached' must be true or false, got null"),
    ("target", {"reached": "yes"}, "'target.reached' must be true or false, got \"yes\""),
    ("target", {"reached": True, "time_s": -1}, "'target.time_s' must not be negative, got -1"),
    ("target", {"reached": True, "steps": float("nan")},
     "'target.steps' must be a finite number within ±1e+18, got NaN"),
    ("target", {"reached": True, "step_unit": "fortnight"},
     "'target.step_unit' must be one of step, epoch, got \"fortnight\""),
    ("target", {"reached": False, "why": ["diverges"]}, "'target.why' must be a string"),
    ("target", {"reached": True, "value": "0.5"}, "'target.value' must be a number, got \"0.5\""),
    ("time_to_target_s", "soon", "'time_to_target_s' must be a number, got \"soon\""),
    ("steps_to_target", 1e19, "'steps_to_target' must be a finite number within ±1e+18"),
    ("step_time_s", -0.5, "'step_time_s' must not be negative, got -0.5"),
    ("staleness", {"mean": 1, "histogram": {"one": 3}}, "'staleness.histogram' must map"),
    ("staleness", {"histogram": {"\u00b2": 3}}, "got the key \"\u00b2\""),
]


@pytest.mark.parametrize("field, value, expected", ENTRY_FIELDS)
def test_a_file_whose_only_entry_cannot_be_drawn_names_file_entry_and_field(tmp_path, field,
                                                                            value, expected):
    bad = entry(strategy="tree")
    bad[field] = value
    message = error(tmp_path, result(bad))
    assert "results[0] (tree): " in message
    assert expected in message


@pytest.mark.parametrize("field, value, expected", ENTRY_FIELDS)
def test_beside_a_good_entry_a_bad_one_is_left_out_with_a_note(field, value, expected):
    bad = entry(strategy="tree")
    bad[field] = value
    usable = checked([result(entry(), bad)], ["r.json"])
    assert [e.strategy for e in usable.rows] == ["ring"]
    (note,) = usable.notes
    assert note.startswith("entry results[1] (tree) of r.json: not drawn: ")
    assert expected in note


@pytest.mark.parametrize("field, value, expected", PART_FIELDS)
def test_an_unusable_part_is_left_out_and_the_entry_drawn(field, value, expected):
    bad = entry(strategy="tree")
    bad[field] = value
    usable = checked([result(bad)], ["r.json"])
    (row,) = usable.rows
    assert field not in row.data and row.strategy == "tree" and row.charted
    (note,) = usable.notes
    assert note.startswith(f"entry results[0] (tree) of r.json: '{field}' not drawn: ")
    assert expected in note
    assert bad[field] == value  # the caller's dict is left as it was


def test_build_report_checks_in_memory_results_too():
    with pytest.raises(ReportError, match=r"mem: results\[0\]: missing field 'strategy'"):
        build_report([{"results": [{"devices": 2}]}], ["mem"])


def test_labels_are_unique_and_only_as_long_as_needed():
    a = result(entry("ring", devices=2), entry("tree"),
               entry("ring", mode="measured", devices=2))
    b = result(entry("ring", devices=4))
    c = result(entry("ring", devices=4))
    labels = [e.label for e in rows(a, b, c)]
    assert labels == ["ring · 2 devices", "tree", "ring (measured)",
                      "ring · 4 devices · r1.json", "ring · 4 devices · r2.json"]


def test_sweep_points_label_rows_and_missing_speedup_is_derived():
    e = entry("ring", devices=4, sweep_point={"devices": 4})
    del e["speedup_over_one_device"], e["efficiency"]
    r = result(e, entry("ring", devices=8, sweep_point={"devices": 8}),
               one_device_throughput_samples_per_s=50.0)
    first, second = entries([r], ["s.json"])
    assert (first.label, second.label) == ("ring · devices=4", "ring · devices=8")
    assert first.speedup == pytest.approx(200 / 50) and first.efficiency == pytest.approx(1.0)


def test_an_entry_that_does_not_fit_is_not_charted():
    (e,) = rows(result(entry(iteration_time_s=None, throughput=None, note="does not fit")))
    assert not e.charted and e.memory_capacity == 16 * 2**30

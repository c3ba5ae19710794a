"""The charts' data equals the entries' numbers; every figure is a valid plotly figure."""

import plotly.graph_objects as go
import pytest

from reports import figures
from reports.compare import pairs
from reports.gantt import timeline
from tests.reports.helpers import GIB, entry, result, rows


def valid(fig):
    go.Figure(fig)  # raises on any property plotly does not know
    return fig


def test_breakdown_bars_are_the_entries_breakdown_in_ms():
    measured_bd = {"compute": 0.25, "exposed_communication": 0.0, "ps_wait": 0.0, "idle": 0.05,
                   "host_device_copy": 0.02}
    es = rows(result(entry("ring"), entry("tree", breakdown_s={"compute": 0.2, "idle": 0.0,
                                                               "exposed_communication": 0.15,
                                                               "ps_wait": 0.05}),
                     entry("ring", mode="measured", breakdown_s=measured_bd),
                     entry("big", iteration_time_s=None, throughput=None)))
    fig = valid(figures.breakdown(es))
    assert fig["layout"]["barmode"] == "stack"
    by_phase = {t["name"]: t for t in fig["data"]}
    assert list(by_phase) == ["compute", "exposed communication", "ps wait", "idle",
                              "host device copy"]
    assert by_phase["compute"]["x"] == ["ring", "tree", "ring (measured)"]  # 'big' skipped
    assert by_phase["compute"]["y"] == pytest.approx([300, 200, 250])
    assert by_phase["exposed communication"]["y"] == pytest.approx([100, 150, 0])
    assert by_phase["ps wait"]["y"] == pytest.approx([0, 50, 0])
    assert by_phase["idle"]["y"] == pytest.approx([100, 0, 50])
    assert by_phase["host device copy"]["y"] == [None, None, pytest.approx(20)]


def test_scaling_curves_are_devices_against_throughput_per_strategy():
    a = result(entry("ring", devices=2, throughput=200.0), entry("solo", devices=1))
    b = result(entry("ring", devices=8, throughput=500.0), entry("ring", devices=4,
                                                                 throughput=350.0),
               entry("ring", devices=16, iteration_time_s=None, throughput=None))
    throughput, efficiency = map(valid, figures.scaling(rows(a, b)))
    line, ideal = throughput["data"]  # 'solo' has one point: no line
    assert line["name"] == "ring" and line["x"] == [2, 4, 8]
    assert line["y"] == [200.0, 350.0, 500.0]
    # the ideal: 2 devices' throughput, times the devices over 2
    assert ideal["name"] == "ideal scaling" and ideal["y"] == [200.0, 400.0, 800.0]
    assert throughput["layout"]["yaxis"].get("type") != "log"  # 200 to 800: linear
    assert efficiency["data"][0]["y"] == pytest.approx([200 / 100 / 2, 350 / 100 / 4,
                                                        500 / 100 / 8])
    assert throughput["layout"]["xaxis"]["tickvals"] == [2, 4, 8]


def test_scaling_keeps_other_sweep_axes_apart_and_needs_two_sizes():
    es = rows(result(*[entry("ring", devices=d, sweep_point={"devices": d, "batch": b})
                       for d in (2, 4) for b in (32, 64)]))
    names = [t["name"] for t in figures.scaling(es)[0]["data"]]
    assert names == ["ring, batch=32", "ring, batch=64", "ideal scaling", "ideal scaling"]
    assert figures.scaling(rows(result(entry("ring"), entry("tree")))) is None


def test_comparison_figures():
    es = rows(result(entry("ring"), entry("ring", mode="measured", iteration_time_s=0.625,
                                          throughput=160.0)))
    stacked, errors = map(valid, figures.comparison(pairs(es)))
    compute = stacked["data"][0]
    assert compute["x"] == [["ring", "ring"], ["predicted", "measured"]]
    assert compute["y"] == pytest.approx([300, 300])
    assert [t["y"] for t in errors["data"]] == [[pytest.approx(-0.2)], [pytest.approx(0.25)]]
    assert figures.comparison([]) is None


def test_utilisation_memory_and_links():
    links = {f"l{i}": i / 100 for i in range(40)}
    (e,) = rows(result(entry(devices=2, utilisation_per_device={"node0.gpu10": 0.5,
                                                                "node0.gpu9": 0.25},
                             utilisation_per_server={"ps0": 0.1},
                             utilisation_per_link=links)))
    dev = valid(figures.device_utilisation(e))
    assert dev["data"][0]["x"] == ["node0.gpu9", "node0.gpu10"]  # natural order
    assert dev["data"][0]["y"] == [0.25, 0.5] and dev["data"][1]["x"] == ["ps0"]
    link = valid(figures.link_utilisation(e))
    assert link["data"][0]["y"] == [f"l{i}" for i in range(39, 9, -1)]  # top 30, busiest first
    assert link["data"][0]["x"][0] == 0.39 and "top 30 of 40" in link["layout"]["title"]["text"]
    mem = valid(figures.memory(e))
    assert mem["data"][0]["y"] == [2.0, 2.0]  # GiB
    assert mem["layout"]["shapes"][0]["y0"] == 16.0


def test_training_and_staleness():
    training = {"wall_time_s": [0, 10, 20], "samples": [0, 1000, 2000], "loss": [2.3, 1.1, 0.7],
                "accuracy": [0.1, 0.6, 0.8]}
    stale = {"mean": 1.5, "max": 3, "histogram": {"0": 1, "3": 4, "1": 2}}
    es = rows(result(entry("sync", training=training), entry("downpour", staleness=stale)))
    loss, accuracy = map(valid, figures.training(es))
    assert loss["data"][0]["x"] == [0, 10, 20] and loss["data"][0]["y"] == [2.3, 1.1, 0.7]
    assert accuracy["data"][0]["y"] == [0.1, 0.6, 0.8]
    hist = valid(figures.staleness(es))
    assert hist["data"][0]["x"] == [0, 1, 3] and hist["data"][0]["y"] == [1, 2, 4]
    assert hist["data"][0]["name"] == "downpour, mean 1.5, max 3"
    no_accuracy = {k: v for k, v in training.items() if k != "accuracy"}
    assert len(figures.training(rows(result(entry(training=no_accuracy))))) == 1


def test_nothing_to_draw_gives_none():
    es = rows(result(entry(breakdown_s=None, memory_bytes_per_device=None)))
    assert figures.breakdown(es) is None and figures.training(es) is None
    assert figures.staleness(es) is None and figures.memory(es[0]) is None
    assert figures.device_utilisation(es[0]) is None and figures.link_utilisation(es[0]) is None


def test_user_strings_reach_plotly_as_literal_text():
    es = rows(result(entry("<b>x</b> & y", utilisation_per_device={"<i>d</i>": 0.5},
                           timeline={"spans": [["<i>d</i>", "compute", "<a>", 0.0, 1.0]]})))
    assert figures.breakdown(es)["data"][0]["x"] == ["&lt;b&gt;x&lt;/b&gt; &amp; y"]
    assert figures.device_utilisation(es[0])["data"][0]["x"] == ["&lt;i&gt;d&lt;/i&gt;"]
    fig = valid(timeline(es[0]))
    assert "<a>" not in fig["data"][1]["text"][0] and "&lt;a&gt;" in fig["data"][1]["text"][0]
    assert fig["layout"]["yaxis"]["ticktext"] == ["&lt;i&gt;d&lt;/i&gt;"]


def test_real_shape_memory_in_gib():
    (e,) = rows(result(entry(devices=1, memory_bytes_per_device={"g": 3 * GIB},
                             memory_capacity_bytes=None),
                       cluster={"device_memory_bytes": 4 * GIB}))
    fig = figures.memory(e)
    assert fig["data"][0]["y"] == [3.0] and fig["layout"]["shapes"][0]["y0"] == 4.0


def test_throughput_spanning_decades_is_drawn_on_a_log_axis():
    es = rows(result(entry("ring", devices=1, throughput=10.0),
                     entry("ring", devices=1024, throughput=5000.0)))
    throughput, _ = map(valid, figures.scaling(es))
    assert throughput["layout"]["yaxis"]["type"] == "log"
    assert "log scale" in throughput["layout"]["yaxis"]["title"]["text"]

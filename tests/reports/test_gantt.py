"""The timeline: merged bars and the step polygons, checked exactly on two devices."""

from reports.gantt import merge, outline, timeline
from tests.reports.helpers import entry, result, rows


def test_merge_joins_touching_and_overlapping_spans_only():
    spans = [(3.0, 1.0, "c"), (0.0, 1.0, "a"), (1.0, 1.0, "b"), (3.5, 0.2, "d")]
    assert merge(spans, 0.0) == [(0.0, 2.0, 2, "a", "b"), (3.0, 4.0, 2, "c", "d")]
    assert merge(spans, 1.0) == [(0.0, 4.0, 4, "a", "d")]


def test_outline_rises_at_starts_and_falls_at_ends():
    xs, ys = outline([(0.0, 2.0, 1, "a", "a"), (3.0, 4.0, 1, "b", "b")], 0.0, 1.0)
    assert xs == [0, 0, 2, 2, 3, 3, 4, 4]
    assert ys == [0, 1, 1, 0, 0, 1, 1, 0]


def timeline_entry(spans):
    return rows(result(entry(devices=2, timeline={"iteration": 1, "devices_shown": 2,
                                                  "spans": spans})))[0]


def test_two_devices_two_streams():
    spans = [["node0.gpu1", "compute", "fc.fwd", 0.0, 0.002],
             ["node0.gpu0", "compute", "fc.fwd", 0.0, 0.001],
             ["node0.gpu0", "compute", "fc.bwd", 0.003, 0.001],
             ["node0.gpu0", "comm", "allreduce", 0.004, 0.004]]
    fig = timeline(timeline_entry(spans))
    compute, compute_hover, comm, comm_hover = fig["data"]
    assert fig["layout"]["yaxis"]["ticktext"] == ["node0.gpu0", "node0.gpu1"]
    lane = 0.84 / 2
    lo0, lo1 = -0.42, 1 - 0.42  # compute lanes of device 0 and 1 (ms on x)
    hi0, hi1 = lo0 + 0.9 * lane, lo1 + 0.9 * lane
    assert compute["x"] == [0, 0, 1, 1, 3, 3, 4, 4, None, 0, 0, 2, 2]
    assert compute["y"] == [round(v, 6) for v in [lo0, hi0, hi0, lo0] * 2] + [None] + [
        round(v, 6) for v in [lo1, hi1, hi1, lo1]]
    assert compute["fill"] == "toself" and compute["hoverinfo"] == "skip"
    # one hover point in the middle of each bar, the 8 ms iteration cut in 60ths for long ones
    step = 8 / 60
    first = 1 + int(1 / step)  # 8 points along the 1 ms bar
    assert compute_hover["x"][:first] == [round((j + 0.5) / first, 6) for j in range(first)]
    assert comm["x"] == [4, 4, 8, 8]
    assert len(comm_hover["x"]) == 1 + int(4 / (8 / 60))
    assert comm_hover["text"][0] == "node0.gpu0<br>allreduce<br>4.000 → 8.000 ms (4.000 ms)"


def test_too_many_bars_are_merged_and_the_title_says_so():
    spans = [["d0", "compute", f"k{i}", i * 0.001, 0.0005] for i in range(100)]
    fig = timeline(timeline_entry(spans), max_bars=10)
    assert len(fig["data"][1]["x"]) <= 10 + 60  # a point per bar, and one per 60th of the axis
    assert len(fig["data"][0]["x"]) // 4 <= 10
    assert "drawn as one bar" in fig["layout"]["title"]["text"]
    assert "first 1 of 2 devices" in fig["layout"]["title"]["text"]


def test_no_timeline_no_figure():
    assert timeline(rows(result(entry()))[0]) is None

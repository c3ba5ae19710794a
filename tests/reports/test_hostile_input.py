"""Any bytes in, never a traceback out: what the reader refuses (one ReportError naming the
file, the field and a short value) and what it leaves out with a note while the rest is drawn."""

import gzip
import json
import re

import pytest

from reports import ReportError, build_report, load_results
from reports.errors import HugeInt, show
from reports.load import checked
from reports.page import render
from tests.reports.helpers import entry, hostile_entries, result

SPAN = ["node0.gpu0", "compute", "fc.fwd", 0.0, 0.001]


def write(tmp_path, text, name="r.json"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def refused(tmp_path, text) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ReportError) as e:
        load_results([path])
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert len(message) < len(path) + 200  # no value is printed whole
    return message


def good_and(bad_entry_text: str) -> str:
    """A Result's text with a good entry, then ``bad_entry_text`` as the second."""
    return json.dumps(result(entry("ring"))).replace("}]}", "}, " + bad_entry_text + "]}")


def timeline_with(start: str) -> str:
    """A Result's text whose one span starts at ``start`` (raw JSON: NaN, 1e400...)."""
    text = json.dumps(result(entry("ring", timeline={"spans": [SPAN]})))
    return text.replace('"fc.fwd", 0.0', f'"fc.fwd", {start}')


@pytest.mark.parametrize("start, shown", [("NaN", "NaN"), ("Infinity", "Infinity"),
                                          ("-Infinity", "-Infinity"), ("1e400", "Infinity"),
                                          ("1" * 5000, "a 5,000-digit integer"),
                                          ("1e19", "1e+19")])
def test_a_span_that_is_no_finite_number_leaves_the_timeline_out(tmp_path, start, shown):
    path = write(tmp_path, timeline_with(start))
    results = load_results([path])
    page, notes = render(results, [path], "cdn")
    assert notes == [f"entry results[0] (ring) of {path}: 'timeline' not drawn: "
                     f"'timeline.spans[0]' start_s must be a finite number within ±1e+18, "
                     f"got {shown}"]
    assert "Not drawn" in page and 'id="entry-timeline"' in page  # the entry is still drawn
    assert '"timeline":null' in page


@pytest.mark.parametrize("value, shown", [("NaN", "NaN"), ("Infinity", "Infinity"),
                                          ("1e400", "Infinity"),
                                          ("9" * 5000, "a 5,000-digit integer")])
def test_an_unusable_iteration_time_leaves_the_entry_out(tmp_path, value, shown):
    bad = good_and('{"strategy": "tree", "mode": "predicted", "devices": 2, '
                   f'"iteration_time_s": {value}}}')
    path = write(tmp_path, bad)
    (usable,) = load_results([path])
    notes = checked([usable], [path]).notes
    assert notes == [f"entry results[1] (tree) of {path}: not drawn: 'iteration_time_s' must be "
                     f"a finite number within ±1e+18, got {shown}"]
    # alone in its file, the entry leaves nothing to draw: the file is refused
    alone = '{"results": [' + bad[bad.index('{"strategy": "tree"'):]
    message = refused(tmp_path, alone)
    assert message.endswith(f"results[0] (tree): 'iteration_time_s' must be a finite number "
                            f"within ±1e+18, got {shown}")


def test_a_5000_digit_integer_is_read_without_a_conversion_error(tmp_path):
    digits = "7" * 5000
    message = refused(tmp_path, '{"results": [{"strategy": "a", "mode": "predicted", '
                                f'"devices": {digits}}}]}}')
    assert message.endswith("'devices' must be a whole number from 1 to 1,000,000, got a "
                            "5,000-digit integer")
    # where it is only displayed (a seed, a parameter count), it is shown by its length
    text = json.dumps(result(entry(), seed=1, model={"params": 2}))
    text = text.replace('"seed": 1', f'"seed": -{digits}')
    path = write(tmp_path, text.replace('"params": 2', f'"params": {digits}'))
    page = build_report(load_results([path]), [path], "cdn")
    assert page.count("a 5,000-digit integer") == 2


@pytest.mark.parametrize("depth", [65, 10_000, 1_000_000])
def test_deep_nesting_is_refused(tmp_path, depth):
    text = '{"results": [], "x": ' + "[" * depth + "]" * depth + "}"
    message = refused(tmp_path, text)
    assert message.endswith("not a Result: nested more than 64 levels deep")


def test_deep_nesting_in_memory_is_refused_too():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ReportError, match="mem: not a Result: nested more than 64 levels deep"):
        build_report([{"results": [], "scenario": {"model": {"layers": deep}}}], ["mem"])
    loop: dict = {"results": []}
    loop["self"] = loop
    with pytest.raises(ReportError, match="nested more than 64 levels deep"):
        build_report([loop], ["mem"])


@pytest.mark.parametrize("raw, expected", [
    (b'{"results": [], "name": "caf\xe9"}', r"not UTF-8 text \(byte 0xe9 at offset 28\)"),
    (b"\xff\xfe{\x00}\x00", r"not UTF-8 text \(byte 0xff at offset 0\)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", r"not UTF-8 text \(byte 0x89 at offset 0\)"),
    (b"", r"not JSON \(line 1, column 1: Expecting value\)"),
    (b"[" * 100 + b"1", "not JSON"),
])
def test_bytes_that_are_not_json_text(tmp_path, raw, expected):
    assert re.search(expected, refused(tmp_path, raw))


def test_a_byte_order_mark_is_fine_and_broken_gzip_is_one_line(tmp_path):
    data = result(entry())
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(data).encode())
    assert load_results([path]) == [data]
    broken = write(tmp_path, gzip.compress(json.dumps(data).encode())[:-12], "r.json.gz")
    with pytest.raises(ReportError, match=r"r\.json\.gz: cannot be read \("):
        load_results([broken])
    junk = write(tmp_path, b"not gzip at all", "junk.json.gz")
    with pytest.raises(ReportError, match=r"junk\.json\.gz: cannot be read \("):
        load_results([junk])


def test_a_huge_value_is_cut_in_the_message(tmp_path):
    message = refused(tmp_path, json.dumps({"results": [
        {"strategy": "s" * 1_000_000, "mode": ["x" * 1000] * 1000, "devices": 1}]}))
    assert f"results[0] ({'s' * 37}...): 'mode' must be one of predicted, measured, got " \
           f'["{"x" * 20}' in message
    assert message.endswith("...")


def test_show_quotes_any_value_on_one_line_in_about_80_characters():
    assert show(float("nan")) == "NaN"
    assert show([float("inf"), float("-inf")]) == "[Infinity, -Infinity]"
    assert show(HugeInt("-" + "1" * 5000)) == "a 5,000-digit integer"
    assert show("two\nlines") == '"two\\nlines"'
    assert show({"a": None, "b": True}) == '{"a": null, "b": true}'
    long = show(list(range(10**6)))
    assert len(long) == 80 and long.startswith("[0, 1, 2") and long.endswith("...")
    assert show(10**5000).startswith("an integer of about 5,000 digits")


def test_a_valid_result_with_hostile_values_is_drawn_whole():
    r = result(*hostile_entries(), name="\ud800<script>", one_device_throughput_samples_per_s=0,
               seed=[[["deep"]]], model={"params": 1e308, "layers": {"a": [1]}},
               cluster={"device_memory_bytes": 1e18, "stragglers": [1, {"device": None}],
                        "degraded_links": [], "nodes": float("nan"), "profile_hosts": ["\ud800"]},
               hosts=["\ud800"], yaml="\ud800" * 3)
    r["sweep"] = {"axes": {"devices": [1, 1e18, None]}, "scaling": ["weak"]}
    r["search"] = {"considered": 10**20, "why": "not a list",
                   "pruned_by_rule": None}
    r["results"][0]["estimate"] = ["not an object"]
    page, notes = render([r, r], ["a.json", "b.json"], "cdn")
    assert notes == []
    page.encode("utf-8")  # a lone surrogate is no character: the page is still UTF-8
    assert "\ud800" not in page
    for section in ("summary", "scaling", "breakdown", "measured", "per-strategy", "training",
                    "staleness", "scenario", "search"):
        assert f'<section id="{section}">' in page, section
    assert "first 128 of 300 devices; first 8 of 20 streams" in page


def test_unusable_display_fields_of_a_scenario_are_left_out_with_a_note():
    r = result(entry(), name=["not", "text"], one_device_throughput_samples_per_s=float("nan"),
               model="mlp", cluster={"device_memory_bytes": "16 GiB", "stragglers": 3,
                                     "profile_hosts": "node0"},
               hosts=[1, 2])
    r["sweep"] = {"axes": {"devices": 4}}
    r["search"] = "yes"
    page, notes = render([r], ["s.json"], "cdn")
    assert notes == [
        "scenario of s.json: 'name' not shown: 'name' must be a string, got [\"not\", \"text\"]",
        "scenario of s.json: 'one_device_throughput_samples_per_s' not shown: "
        "'one_device_throughput_samples_per_s' must be a finite number within ±1e+18, got NaN",
        "scenario of s.json: 'model' not shown: 'model' must be an object, got a string",
        "scenario of s.json: 'hosts' not shown: 'hosts' must be a list of names, got [1, 2]",
        "scenario of s.json: 'cluster.device_memory_bytes' not shown: "
        "'cluster.device_memory_bytes' must be a number, got \"16 GiB\"",
        "scenario of s.json: 'cluster.stragglers' not shown: 'cluster.stragglers' must be a "
        "list, got a number",
        "scenario of s.json: 'cluster.profile_hosts' not shown: 'cluster.profile_hosts' must "
        "be a list of names, got \"node0\"",
        "s.json: 'sweep' not shown: its 'axes' must be an object of lists, got "
        "{\"devices\": 4}",
        "s.json: 'search' not shown: it must be an object, got a string"]
    assert '<section id="not-drawn"><h2>Not drawn</h2>' in page
    assert page.index('id="not-drawn"') < page.index('id="summary"')


def test_the_command_line_warns_and_draws_the_rest(tmp_path, capsys):
    from parasim.cli import main

    path = write(tmp_path, good_and('{"strategy": "tree", "mode": "predicted", "devices": 2, '
                                    '"throughput_samples_per_s": NaN}'))
    out = tmp_path / "r.html"
    assert main(["report", path, "-o", str(out)]) == 0
    err = capsys.readouterr().err.strip()
    assert err == (f"parasim: warning: entry results[1] (tree) of {path}: not drawn: "
                   "'throughput_samples_per_s' must be a finite number within ±1e+18, got NaN")
    assert "not drawn: &#x27;throughput_samples_per_s&#x27;" in out.read_text()
    deep = write(tmp_path, "[" * 50_000, "deep.json")
    assert main(["report", deep, "-o", str(out), "--force"]) == 2
    assert capsys.readouterr().err == (f"parasim: error: {deep}: not a Result: nested more "
                                       "than 64 levels deep\n")


def test_many_notes_are_counted_not_all_printed(tmp_path, capsys):
    from parasim.cli import main

    bad = [{"strategy": f"s{i}", "mode": "guessed", "devices": 1} for i in range(70)]
    path = write(tmp_path, json.dumps(result(entry(), *bad)))
    assert main(["report", path, "-o", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 11 and err[-1] == ("parasim: warning: and 60 more parts not drawn (see "
                                          "the page's Not drawn section)")
    assert "<li>and 20 more</li>" in (tmp_path / "r.html").read_text()


def test_the_page_data_holds_no_number_plotly_cannot_scale_an_axis_to():
    from reports.html import script_json

    assert script_json("x", [5e-324, -1e-301, 1e-300, float("nan"), -float("inf"), 1e18]) == (
        '<script type="application/json" id="x">[0.0,0.0,1e-300,null,null,1e+18]</script>')


def test_device_names_sort_naturally_whatever_their_digits():
    from reports.figures import natural_key

    names = ["gpu²", "gpu" + "9" * 5000, "gpu10", "gpu9", "gpu010", "7"]
    assert sorted(names, key=natural_key) == ["7", "gpu9", "gpu10", "gpu010", "gpu" + "9" * 5000,
                                              "gpu²"]

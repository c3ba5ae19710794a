"""Property: put any JSON value anywhere in a valid Result (or delete a field, or add one) and
the reader and the page either draw it or raise one ReportError, never anything else; in
memory, and through a file whose values may be NaN, -Infinity, 1e400, a 5,000-digit integer or
nesting deeper than any Result."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reports import ReportError, build_report, load_results
from tests.reports.helpers import entry, result, target

# JSON text that Python's json reads but no Python value writes back (a file can hold it)
RAW = {"@nan@": "NaN", "@-inf@": "-Infinity", "@1e400@": "1e400", "@digits@": "1" * 5000,
       "@deep@": "[" * 100 + "]" * 100}
NUMBERS = [0, -1, 2**63, 10**30, 1e18, 1e19, -1e300, 5e-324, -0.0, float("nan"),
           float("inf"), float("-inf"), *RAW]
EDGES = [*NUMBERS, "", "\ud800", "compute", "predicted", "measured", "0", "-1", "²"]

leaves = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
          | st.sampled_from(EDGES) | st.sampled_from(list(RAW)))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def base() -> dict[str, Any]:
    """A Result that uses every field the report reads."""
    spans = [["node0.gpu0", "compute", "fc.fwd", 0.0, 0.001],
             ["node0.gpu1", "comm", "allreduce", 0.001, 0.002]]
    training = {"wall_time_s": [0, 1], "samples": [0, 64], "loss": [2.0, 1.0],
                "accuracy": [0.1, 0.5]}
    staleness = {"mean": 1.0, "max": 2, "histogram": {"0": 3, "2": 1}}
    predicted_curve = {"wall_time_s": [0, 2], "samples": [0, 128], "loss": [2.0, 0.5]}
    r = result(entry("ring", devices=2, timeline={"iteration": 1, "devices_shown": 2,
                                                  "spans": spans},
                     utilisation_per_device={"node0.gpu0": 0.5},
                     utilisation_per_link={"nvlink:0-1": 0.25},
                     sweep_point={"devices": 2}, training=predicted_curve,
                     **target(steps=20, time_s=2.0)),
               entry("ring", devices=4, sweep_point={"devices": 4},
                     **target(reached=False, why="diverges", steps_needed=10**6)),
               entry("ring", mode="measured", devices=2, training=training,
                     peak_rss_bytes_per_device={"node0.gpu0": 2**30}, sweep_point={"devices": 2},
                     breakdown_s={"compute": 0.3, "host_device_copy": 0.01},
                     **target(steps=25, time_s=3.0)),
               entry("down", staleness=staleness, utilisation_per_server={"ps0": 0.1},
                     **target(steps=3, time_s=1.0, step_unit="epoch", metric="accuracy",
                              value=0.9)),
               entry("huge", iteration_time_s=None, throughput=None, note="does not fit"),
               seed=1, batch_size=64, one_device_throughput_samples_per_s=100.0, yaml="a: 1\n",
               model={"name": "mlp", "params": 10, "fwd_flops": 20, "bwd_flops": 40, "layers": 3},
               cluster={"nodes": 1, "devices_per_node": 4, "device_memory_bytes": 2**34,
                        "stragglers": [{"device": 1, "slowdown": 2}],
                        "degraded_links": [{"element": "nvlink", "factor": 0.5}],
                        "profile_hosts": ["node0"]}, hosts=["node0"])
    r["sweep"] = {"axes": {"devices": [2, 4]}, "scaling": "strong"}
    r["search"] = {"considered": 3, "pruned_by_rule": 1, "pruned_by_memory": 0,
                   "simulated": 2, "why": ["ring beats down"]}
    r["results"][0]["estimate"] = {"iteration_time_s": 0.4}
    return r


def _at(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def places(value: Any, path: tuple = ()) -> list[tuple]:
    """The path to every value in ``value``, itself first."""
    found = [path]
    if isinstance(value, dict):
        for key, v in value.items():
            found += places(v, (*path, key))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += places(v, (*path, i))
    return found


BASE = base()
PLACES = places(BASE)
NUMBER_PLACES = [p for p in PLACES if p and isinstance(_at(BASE, p), (int, float))]


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """The valid Result with one to three places replaced, deleted or given a new key; half
    the time a number becomes an edge (NaN, infinity, out of range, a 5,000-digit integer)."""
    r = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            path, new, action = (draw(st.sampled_from(NUMBER_PLACES)),
                                 draw(st.sampled_from(NUMBERS)), "replace")
        else:
            path, new = draw(st.sampled_from(PLACES)), draw(st.sampled_from(EDGES) | values)
            action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            r = new
            continue
        holder = r
        try:
            for step in path[:-1]:
                holder = holder[step]
            if action == "replace":
                holder[path[-1]] = new
            elif action == "delete":
                del holder[path[-1]]
            elif isinstance(holder, dict):
                holder[draw(st.text(max_size=8))] = new
            elif isinstance(holder, list):
                holder.append(new)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this place
    return r


def draws_or_refuses(make_page) -> None:  # noqa: ANN001
    try:
        page = make_page()
    except ReportError as e:
        assert "\n" not in str(e) and len(str(e)) < 400, str(e)
        return
    page.encode("utf-8")


FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(mutated())
def test_any_value_anywhere_in_memory(r: Any) -> None:
    draws_or_refuses(lambda: build_report([r], ["mem.json"], "cdn"))


@FUZZ
@given(mutated())
def test_any_value_anywhere_in_a_file(tmp_path_factory, r: Any) -> None:  # noqa: ANN001
    text = json.dumps(r)  # a lone surrogate is written as the escape "\\ud800"
    for marker, raw in RAW.items():
        text = text.replace(json.dumps(marker), raw)
    path = tmp_path_factory.mktemp("any") / "r.json"
    path.write_text(text, encoding="utf-8")
    draws_or_refuses(lambda: build_report(load_results([str(path)]), [str(path)], "cdn"))

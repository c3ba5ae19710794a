"""``parasim search`` (``simulator/search``): the plan it picks is never slower than what a
shipped scenario lists by hand, each pick can be pasted into a scenario and gives the same
prediction, the ranking is deterministic, the estimate's closed forms hold, and bad input is
one line and exit 2."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from simulator.predict import context, simulate_scenario
from simulator.scenario import load_scenario, parse_scenario
from simulator.search import run_search, why
from simulator.search.estimate import Estimator
from simulator.search.space import Constraints, candidates
from simulator.yaml_input import load_yaml
from tests.simulator.test_cli import cli

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


def small_gpt(extra: str = "", batch: int = 16) -> object:
    return parse_scenario(load_yaml(f"""
name: search
model: {{zoo: gpt, params: {{layers: 4, hidden: 256, heads: 8, seq_len: 128, vocab: 1000}}}}
cluster: {{nodes: 2, devices_per_node: 4, device: A100, intra_link: nvlink3,
           inter_link: ib_hdr, nics_per_node: 4{extra}}}
training: {{batch_size: {batch}, precision: bf16, optimizer: adam, iterations: 1,
           warmup_iterations: 0}}
strategies: [{{name: hand, scheme: parallel_3d, tensor: 4, data: 2}}]
"""))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_the_pick_is_at_least_as_fast_as_every_strategy_written_by_hand(path):
    scenario = load_scenario(path)
    hand, _ = simulate_scenario(scenario)
    result = run_search(scenario, Constraints(top=3), out=io.StringIO())
    best = result["results"][0]["throughput_samples_per_s"]
    for e in hand["results"]:
        if e["throughput_samples_per_s"] is not None:
            assert best >= e["throughput_samples_per_s"] * (1 - 1e-9), e["strategy"]


def test_a_pick_pasted_into_a_scenario_predicts_the_same():
    sc = small_gpt()
    result = run_search(sc, Constraints(top=4), out=io.StringIO())
    assert result["search"]["simulated"] == 4
    top = result["results"][0]
    data = load_yaml(Path(ROOT / "scenarios" / "gpt_3d.yaml").read_text())
    data.update(name="pasted", model={"zoo": "gpt", "params": {
        "layers": 4, "hidden": 256, "heads": 8, "seq_len": 128, "vocab": 1000}},
        cluster={"nodes": 2, "devices_per_node": 4, "device": "A100", "intra_link": "nvlink3",
                 "inter_link": "ib_hdr", "nics_per_node": 4},
        training={"batch_size": 16, "precision": "bf16", "optimizer": "adam",
                  "iterations": 1, "warmup_iterations": 0},
        strategies=[top["strategy_entry"]])
    again, _ = simulate_scenario(parse_scenario(data))
    assert again["results"][0]["throughput_samples_per_s"] == pytest.approx(
        top["throughput_samples_per_s"], rel=1e-12)


def test_the_ranking_is_deterministic_and_sorted_with_a_reason_per_plan():
    sc = small_gpt()
    a = run_search(sc, Constraints(top=5), out=io.StringIO())
    b = run_search(sc, Constraints(top=5), out=io.StringIO())
    names = [e["strategy"] for e in a["results"]]
    assert names == [e["strategy"] for e in b["results"]]
    tps = [e["throughput_samples_per_s"] for e in a["results"]]
    assert tps == sorted(tps, reverse=True)
    s = a["search"]
    assert s["considered"] == s["pruned_by_rule"] + s["pruned_by_memory"] + s["fitting"]
    reasons = why(a["results"])
    assert len(reasons) == len(a["results"]) - 1
    assert reasons[0].startswith((f"{names[0]} beats {names[1]} by ",
                                  f"{names[0]} ties with {names[1]} "))


def test_constraints_shape_the_space():
    sc = small_gpt()
    ctx = context(sc)
    every = candidates(sc, ctx.graph, Constraints(), ctx)
    assert {s for s, _ in every} >= {"parallel_3d", "data_parallel"}
    # tensor groups inside a node unless told otherwise; at most N devices
    assert max(o["tensor"] for s, o in every if s == "parallel_3d") == 4
    wide = candidates(sc, ctx.graph, Constraints(cross_node_tensor=True), ctx)
    assert max(o["tensor"] for s, o in wide if s == "parallel_3d") == 8
    four = candidates(sc, ctx.graph, Constraints(devices=4), ctx)
    assert all(o["data"] * o["pipeline"] * o["tensor"] <= 4
               for s, o in four if s == "parallel_3d")
    assert all(o["devices"] <= 4 for s, o in four if s == "data_parallel")
    only = candidates(sc, ctx.graph, Constraints(exclude=("parallel_3d",)), ctx)
    assert "parallel_3d" not in {s for s, _ in only}


def test_the_estimates_closed_forms():
    sc = small_gpt()
    est = Estimator(context(sc))
    c = est.cluster
    devs = list(c.devices[:4])  # one node: NVLink 3 at 300 GB/s x 0.8
    alpha, bw = est.link(devs)
    assert bw == pytest.approx(300e9 * 0.80) and alpha == pytest.approx(2e-6)
    s = 64e6
    assert est.collective("allreduce", "ring", devs, s) == pytest.approx(
        2 * 3 * alpha + 2 * 3 / 4 * s / bw)
    assert est.collective("allgather", "ring", devs, s) == pytest.approx(
        3 * alpha + 3 / 4 * s / bw)
    assert est.collective("allreduce", "tree", devs, s) == pytest.approx(
        2 * 2 * (alpha + s / bw))
    # across the two nodes: each GPU's own HDR NIC (25 GB/s x 0.9), one per GPU
    pair = [c.devices[0], c.devices[4]]
    a2, b2 = est.link(pair)
    assert b2 == pytest.approx(25e9 * 0.90)
    assert est.collective("allreduce", "mpi", pair, s) == pytest.approx(
        2 * math.ceil(math.log2(2)) * a2 + s / b2)


@pytest.mark.parametrize("grid", [
    {"data": 8}, {"data": 4, "zero": 2}, {"data": 2, "tensor": 4, "zero": 3},
    {"data": 2, "pipeline": 4, "micro_batches": 8, "schedule": "gpipe"},
    {"data": 2, "pipeline": 4, "micro_batches": 4, "recompute": "full", "zero": 1},
    {"data": 2, "pipeline": 2, "micro_batches": 2},
    {"pipeline": 2, "tensor": 4, "micro_batches": 4, "virtual_stages": 2,
     "sequence_parallel": True, "recompute": "selective"},
])
def test_the_estimates_memory_is_the_plans(grid):
    # the estimate's accounting (model states divided as ZeRO does, activations linear in the
    # samples in flight, the schedule's peak) against the built plan's, device by device
    from simulator.specs import StrategySpec
    from simulator.strategies import build_plan, default_options
    from simulator.strategies.parallel_3d import grid as grid_of

    sc = small_gpt()
    ctx = context(sc)
    opts = default_options("parallel_3d", **grid)
    plan = build_plan(ctx, StrategySpec("g", "parallel_3d", opts))
    e = Estimator(ctx).grid(grid_of(opts), sc.training.batch_size)
    assert e.memory == pytest.approx(max(m.total for m in plan.memory), rel=1e-9)


def test_nothing_fits_names_the_closest_plan_and_its_shortfall(tmp_path):
    path = tmp_path / "tiny.yaml"
    data = load_yaml((ROOT / "scenarios" / "executor_gpt.yaml").read_text())
    data["cluster"]["device"] = {"base": data["cluster"]["device"], "memory_GiB": 0.0001}
    path.write_text(json.dumps(data))
    r = cli("search", str(path), "--top", "2")
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "nothing fits: the closest, 3d-" in line and "GiB more per device" in line


def test_bad_options_are_one_line_and_exit_2(tmp_path):
    path = str(ROOT / "scenarios" / "executor_mlp.yaml")
    for args, says in ((("--exclude", "pipelines"), "no scheme 'pipelines'"),
                       (("--exclude", "data_paralel"), "did you mean 'data_parallel'?"),
                       (("--top", "0"), "--top must be at least 1"),
                       (("--headroom", "2"), "--headroom must be between"),
                       (("--devices", "0"), "--devices must be at least 1")):
        r = cli("search", path, *args)
        assert r.returncode == 2, args
        assert says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    (tmp_path / "out.json").write_text("{}")
    r = cli("search", path, "--json", str(tmp_path / "out.json"))
    assert r.returncode == 2 and "exists" in r.stderr


def test_the_command_prints_the_table_and_writes_the_result(tmp_path):
    out = tmp_path / "search.json"
    r = cli("search", str(ROOT / "scenarios" / "executor_mlp.yaml"), "--top", "3",
            "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "candidates considered" in r.stdout and " beats " in r.stdout
    result = json.loads(out.read_text())
    assert len(result["results"]) == 3
    for e in result["results"]:
        assert {"name", "scheme"} <= set(e["strategy_entry"]) and "estimate" in e

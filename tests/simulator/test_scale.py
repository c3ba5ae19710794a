"""What keeps large simulations affordable and their outputs small: Results bounded whatever the
cluster, compact and gzipped traces, the events estimate, the progress bar, and plans whose
mirrored ranks share one program."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from rich.console import Console

from parasim.cli import main
from simulator import progress as progress_mod
from simulator.engine.runner import Engine
from simulator.engine.simulate import BUSIEST, MAP_ENTRIES, TIMELINE_SPANS, bounded
from simulator.plan import ImageOps
from simulator.predict import simulate_scenario
from simulator.scenario import load_scenario, parse_scenario
from simulator.yaml_input import load_yaml
from tests.simulator.test_strategies import plan_of

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def dp(nodes: int, per_node: int = 8) -> object:
    return parse_scenario(load_yaml(f"""
name: wide
model: {{zoo: lenet5}}
cluster: {{nodes: {nodes}, devices_per_node: {per_node}, device: V100, intra_link: nvlink2,
           inter_link: ib_edr}}
training: {{batch_size: {64 * nodes * per_node}, precision: fp16, iterations: 1,
           warmup_iterations: 0}}
strategies: [{{name: ring, scheme: data_parallel, exchange: ring}}]
"""))


def test_per_device_and_per_link_maps_are_summarised_above_a_size():
    sc = dp(64)  # 512 GPUs
    result, _ = simulate_scenario(sc)
    e = result["results"][0]
    for key in ("memory_bytes_per_device", "utilisation_per_device", "utilisation_per_link"):
        assert len(e[key]) == BUSIEST, key
        s = e[f"{key}_summary"]
        assert s["count"] > MAP_ENTRIES and s["shown"] == BUSIEST
        assert s["min"] <= s["p10"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
        assert max(e[key].values()) == s["max"]  # the busiest are the ones kept
    # every GPU runs the same program over one ring: the same busy fraction everywhere
    u = e["utilisation_per_device_summary"]
    assert u["min"] == u["max"] == pytest.approx(u["mean"])


def test_a_small_result_is_left_whole():
    result, _ = simulate_scenario(dp(2))
    e = result["results"][0]
    assert len(e["utilisation_per_device"]) == 16
    assert "utilisation_per_device_summary" not in e
    assert "spans_left_out" not in e["timeline"]


def test_a_long_timeline_keeps_whole_devices_up_to_the_bound_unless_asked():
    spans = [[f"node0.gpu{d}", "compute", "x", i * 1e-3, 1e-3]
             for d in range(8) for i in range(TIMELINE_SPANS // 3)]
    entry = {"timeline": {"iteration": 0, "devices_shown": 8, "spans": list(spans)}}
    cut = bounded(json.loads(json.dumps(entry)))["timeline"]
    assert cut["devices_shown"] == 3 and len(cut["spans"]) == 3 * (TIMELINE_SPANS // 3)
    assert cut["spans_left_out"] == len(spans) - len(cut["spans"])
    assert {s[0] for s in cut["spans"]} == {"node0.gpu0", "node0.gpu1", "node0.gpu2"}
    kept = bounded(json.loads(json.dumps(entry)), timeline=True)["timeline"]
    assert len(kept["spans"]) == len(spans)


def test_trace_and_result_written_gzipped_when_their_names_end_in_gz(tmp_path):
    trace, out = tmp_path / "t.json.gz", tmp_path / "r.json.gz"
    assert main(["simulate", str(SCENARIOS / "resnet50_dgx.yaml"), "--strategy", "ring",
                 "--trace", str(trace), "--json", str(out)]) == 0
    with gzip.open(trace, "rt") as f:
        text = f.read()
    assert ", " not in text[:2000] and "\n" not in text.rstrip("\n")  # compact
    assert any(e["ph"] == "X" for e in json.loads(text)["traceEvents"])
    from reports.load import load_results

    assert load_results([str(out)])[0]["results"][0]["strategy"] == "ring"


@pytest.mark.parametrize("name", ["resnet50_dgx.yaml", "gpt_3d.yaml", "downpour_vs_sync.yaml",
                                  "inception_branches.yaml", "dbn_cpu_cluster.yaml"])
def test_the_events_estimate_is_within_a_factor_of_three_of_the_count(name):
    sc = load_scenario(SCENARIOS / name)
    for spec in sc.strategies:
        ctx, plan = plan_of(sc, sc.strategies.index(spec))
        t = sc.training
        eng = Engine(plan, ctx.cluster, t.precision, t.optimizer, t.warmup_iterations,
                     t.iterations)
        estimate = eng.estimate()
        eng.run()
        assert eng.events / 3 <= estimate <= 3 * eng.events, (spec.name, estimate, eng.events)


def test_progress_prints_the_estimate_of_a_large_run_and_a_bar_once_it_is_slow(monkeypatch):
    console = Console(record=True, force_terminal=True, width=100)
    p = progress_mod.SimulationProgress("big", console)
    p.start(progress_mod.LARGE + 1)
    p(10, 0.001)  # within the quiet seconds: no bar
    assert p.bar is None
    monkeypatch.setattr(progress_mod, "QUIET_S", 0.0)
    p(20_000, 0.002)
    assert p.bar is not None
    p.close()
    assert f"about {progress_mod.LARGE + 1:,} events" in console.export_text()

    quiet = progress_mod.SimulationProgress("small", Console(record=True))
    quiet.start(100)
    quiet.close()
    assert quiet.console.export_text() == ""


def test_a_grid_plan_holds_one_program_per_stage():
    sc = parse_scenario(load_yaml("""
name: grid
model: {zoo: gpt, params: {layers: 8, hidden: 256, heads: 8, seq_len: 128, vocab: 1000}}
cluster: {nodes: 16, devices_per_node: 8, device: A100, intra_link: nvlink3, inter_link: ib_hdr,
          nics_per_node: 8}
training: {batch_size: 64, precision: bf16, optimizer: adam, iterations: 1,
           warmup_iterations: 0}
strategies: [{name: s, scheme: parallel_3d, tensor: 8, pipeline: 4, data: 4,
              micro_batches: 8}]
"""))
    ctx, plan = plan_of(sc)
    sources = {id(r.ops.source if isinstance(r.ops, ImageOps) else r.ops) for r in plan.ranks}
    assert len(sources) == 4 and len(plan.ranks) == 128
    eng = Engine(plan, ctx.cluster, "bf16", "adam", 0, 1)
    assert [r.rank for r in eng.simulated] == [0, 8, 16, 24]  # one per stage
    assert all(r.ops._made is None for r in plan.ranks if isinstance(r.ops, ImageOps))

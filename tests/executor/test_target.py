"""Running to ``training.target`` for real (mpiexec -n 1, 2, 3): data parallel on one rank and on
two reaches a loss target in the same number of steps, the warm-up leaves no trace, model
averaging counts its local steps, a target out of reach says why, Downpour's workers stop
together, DBN pre-training stops its first layer at a reconstruction error, and a metric the
scheme does not measure is refused before any work.

Every launch runs in its own process group with a timeout and a group kill, one BLAS / Numba
thread per rank; caps are small and targets easy, so each launch takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.executor.test_execute import launch

SYNC = """\
name: target test
seed: 3
model: {{zoo: mlp, params: {{sizes: [64, 32, 10]}}}}
cluster: {{nodes: 1, devices_per_node: 2, device: cpu_core, intra_link: shm,
           parameter_servers: {{hosts: 1, device: cpu_core, nic: eth_10g}}}}
training: {{batch_size: 32, iterations: {iterations}, warmup_iterations: {warm},
           learning_rate: {lr}, momentum: {momentum},
           target: {{metric: {metric}, value: {value}, window: 128}}}}
data: {{kind: digits}}
strategies:
  - {{name: one, scheme: data_parallel, devices: 1}}
  - {{name: dp2, scheme: data_parallel, devices: 2}}
  - {{name: local2, scheme: data_parallel, devices: 2, local_steps: 2}}
  - {{name: dp2-ps, scheme: data_parallel, devices: 2, exchange: ps}}
  - {{name: downpour-2, scheme: downpour, workers: 2, updater: sgd}}
"""

DBN = """\
name: dbn target test
seed: 7
model: {zoo: dbn, params: {sizes: [64, 24, 12]}}
cluster: {nodes: 1, devices_per_node: 2, device: cpu_core, intra_link: shm}
training: {batch_size: 40, iterations: 1, warmup_iterations: 0, learning_rate: 0.1,
           target: {metric: reconstruction_error, value: 0.08}}
data: {kind: digits}
strategies:
  - {name: two, scheme: dbn_pretrain, devices: 2, samples: 240, epochs: 8, tau: 0.0}
"""


def run(tmp_path: Path, ranks: int, name: str, strategies: list[str] | None = None,
        **fields) -> tuple[dict[str, dict], str]:
    """Launch the data-parallel scenario (``fields`` fill its training) and return its entries
    by strategy, and the printed summary."""
    fields = {"iterations": 60, "warm": 2, "metric": "loss", "value": 0.5, "lr": 0.1,
              "momentum": 0.9, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(SYNC.format(**fields))
    out = tmp_path / f"{name}{ranks}.json"
    args = ["execute", str(path), "--backend", "reference", "--json", str(out)]
    for s in strategies or []:
        args += ["--strategy", s]
    done = launch(ranks, args, timeout=120)
    assert done.returncode == 0, done.stderr
    return ({e["strategy"]: e for e in json.loads(out.read_text())["results"]}, done.stdout)


def check_reached(e: dict, per_period: int, value: float = 0.5) -> None:
    """The block of a reached target, consistent with the curve and the headline keys."""
    b = e["target"]
    assert b["reached"] and "why" not in b
    assert (b["metric"], b["value"], b["on"], b["step_unit"]) == ("loss", value, "train", "step")
    assert b["window"] == 128 and b["best"] <= value
    periods = len(e["training"]["loss"])
    assert b["steps"] == periods * per_period
    assert b["samples"] == e["training"]["samples"][-1]
    # the periods' own times; the wall time also holds the loss bookkeeping between them
    assert b["time_s"] == pytest.approx(sum(e["iteration_times_s"]))
    assert b["wall_s"] == pytest.approx(e["training"]["wall_time_s"][-1])
    assert b["time_s"] <= b["wall_s"]
    assert b["step_time_s"] == pytest.approx(b["time_s"] / b["steps"])
    assert (e["steps_to_target"], e["time_to_target_s"], e["step_time_s"]) == (
        b["steps"], b["time_s"], b["step_time_s"])
    assert len(e["iteration_times_s"]) == periods  # the measured periods are the target run


@pytest.fixture(scope="module")
def sync(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("target")
    one, out1 = run(tmp, 1, "sync")
    two, out2 = run(tmp, 2, "sync")
    cold, _ = run(tmp, 1, "cold", warm=0)
    return {"one": one["one"], "dp2": two["dp2"], "local2": two["local2"], "cold": cold["one"],
            "stdout": out1 + out2}


def test_data_parallel_reaches_the_target_in_the_same_steps_on_one_rank_and_two(sync):
    one, dp2 = sync["one"], sync["dp2"]
    check_reached(one, 1)
    check_reached(dp2, 1)
    assert one["target"]["cap"] == dp2["target"]["cap"] == 60
    # the same global batch: the same arithmetic up to float sums
    assert abs(one["steps_to_target"] - dp2["steps_to_target"]) <= 1
    assert "one: loss <= 0.5 reached in " in sync["stdout"]
    assert "dp2: loss <= 0.5 reached in " in sync["stdout"]


def test_the_warm_up_leaves_no_trace(sync):
    """Two warm-up periods, then back to the initial weights: the run to the target trains as
    a run with no warm-up does, batch for batch."""
    warm, cold = sync["one"]["training"]["loss"], sync["cold"]["training"]["loss"]
    assert warm == pytest.approx(cold, rel=1e-6)


def test_model_averaging_counts_every_local_step(sync):
    e = sync["local2"]
    check_reached(e, 2)  # two optimizer steps per period
    assert e["steps_to_target"] % 2 == 0 and e["target"]["cap"] == 120


def test_a_target_out_of_reach_says_why(tmp_path: Path):
    entries, out = run(tmp_path, 1, "far", iterations=4, value=0.01)
    e = entries["one"]
    b = e["target"]
    assert not b["reached"] and b["steps"] is None and b["time_s"] is None
    assert (e["steps_to_target"], e["time_to_target_s"], e["step_time_s"]) == (None, None, None)
    assert b["cap"] == 4 and len(e["training"]["loss"]) == 4  # ran to the cap
    assert b["why"] == (f"not reached in 4 steps (training.iterations: 4 periods); best loss "
                        f"{b['best']:.4g}")
    assert "one: loss <= 0.01 not reached: not reached in 4 steps" in out


def test_downpour_workers_stop_together_and_a_server_run_restarts(tmp_path: Path):
    """2 workers and a server: each worker's own window; the first to reach tells the other,
    and both stop. The servers went back to the initial model after the warm-up: only the
    pushes of the target run are recorded. Synchronous data parallel through the server (also
    3 ranks) reaches its target too."""
    entries, out = run(tmp_path, 3, "ps", iterations=100, value=1.0, lr=0.5, momentum=0.0)
    e = entries["downpour-2"]
    b = e["target"]
    assert b["reached"] and b["step_unit"] == "step" and b["cap"] == 2 * 100
    # every worker's periods up to its stop: one step, one push and one curve point each
    assert b["steps"] == len(e["training"]["loss"]) == sum(e["staleness"]["histogram"].values())
    assert b["steps"] < b["cap"]  # both stopped early
    assert b["samples"] == e["samples_processed"] == b["steps"] * 16
    assert b["step_time_s"] == pytest.approx(b["time_s"] / b["steps"])
    assert e["failures"] == []
    assert "downpour-2: loss <= 1 reached in " in out
    check_reached(entries["dp2-ps"], 1, value=1.0)


def test_dbn_stops_its_first_layer_at_the_target_error(tmp_path: Path):
    path = tmp_path / "dbn.yaml"
    path.write_text(DBN)
    out = tmp_path / "dbn.json"
    done = launch(2, ["execute", str(path), "--backend", "reference", "--json", str(out)],
                  timeout=120)
    assert done.returncode == 0, done.stderr
    e = json.loads(out.read_text())["results"][0]
    b, first = e["target"], e["pretraining"]["layers"][0]
    assert b["reached"] and b["step_unit"] == "epoch" and b["cap"] == 8 and "window" not in b
    errors = first["reconstruction_error"]
    assert b["steps"] == first["epochs"] == len(errors)
    assert errors[-1] <= 0.08 < min(errors[:-1])  # stopped at the first epoch at the target
    assert b["best"] == errors[-1] and b["samples"] == b["steps"] * 240
    assert 0 < b["time_s"] <= first["time_s"]
    assert e["pretraining"]["layers"][1]["epochs"] >= 1  # the next layer trained as ever
    assert "two: reconstruction_error <= 0.08 reached in " in done.stdout


def test_a_metric_the_scheme_does_not_measure_is_refused(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(SYNC.format(iterations=4, warm=0, metric="reconstruction_error", value=0.1,
                                lr=0.1, momentum=0.9))
    done = launch(1, ["execute", str(path), "--backend", "reference", "--strategy", "one"],
                  timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "training.target.metric" in lines[0] and "'one'" in lines[0]


def test_prepare_refuses_a_wrong_metric_and_checkpoints():
    from executor.interpreter.execute import check_target_run
    from executor.interpreter.model import ExecutorError
    from simulator.specs import TargetSpec

    def scenario(metric: str) -> SimpleNamespace:
        return SimpleNamespace(file="s.yaml", training=SimpleNamespace(
            target=TargetSpec(metric=metric, value=0.1)))

    dp = SimpleNamespace(scheme="data_parallel", strategy="dp")
    dbn = SimpleNamespace(scheme="dbn_pretrain", strategy="pre")
    check_target_run(scenario("loss"), [dp], False)
    check_target_run(scenario("reconstruction_error"), [dbn], False)
    with pytest.raises(ExecutorError, match=r"s.yaml: training.target.metric: .*'pre'"):
        check_target_run(scenario("accuracy"), [dbn], False)
    with pytest.raises(ExecutorError, match="not checkpointed"):
        check_target_run(scenario("loss"), [dp], True)
    check_target_run(SimpleNamespace(file="s.yaml", training=SimpleNamespace(target=None)),
                     [dp], True)  # no target: nothing to refuse

"""The dbn_pretrain scheme: the plan's structure per layer and epoch (and the fine-tuning's
data-parallel steps), its checks, and the predicted time of a toy case against a closed form a
person can check by hand.

The toy cluster has round numbers: a 10 TFLOP/s device at 50 % efficiency (5e12 FLOP/s achieved)
with one SM running one block at a time (no wave quantisation) and memory so fast that every
kernel is compute-bound; links of 10 GB/s and 5 us.
"""

from __future__ import annotations

import json

import pytest

import simulator.strategies as strategies
from simulator.cluster import build_cluster
from simulator.engine.simulate import predict
from simulator.errors import ScenarioError
from simulator.plan import Collective, Compute, Plan, Update
from simulator.scenario import build_graph, parse_scenario
from simulator.strategies import build_plan
from simulator.strategies.common import Context
from simulator.strategies.dbn_pretrain import (
    at_scale,
    fine_tune_batches,
    mini_batches,
    predicted_pretraining,
    pretraining_length,
    shard_bounds,
)
from simulator.yaml_input import load_yaml

ACHIEVED = 10e12 * 0.5  # FLOP/s
B = 10e9  # link bandwidth, bytes/s
ALPHA = 5e-6  # link latency, s
DEVICE = ("{kind: gpu, sms: 1, peak_TFLOPS: {fp32: 10}, memory_GiB: 16, "
          "memory_bandwidth_GBps: 1000000, launch_overhead_us: 0, compute_efficiency: 0.5, "
          "memory_efficiency: 0.8, blocks_per_sm: 1, comm_sms: 0, kernel_model: roofline, "
          "source: test}")
LINK = "{{scope: {}, bandwidth_GBps: 10, latency_us: 5, efficiency: 1.0, source: test}}"


def test_the_scheme_is_registered():
    assert "dbn_pretrain" in strategies.SCHEMES


def scenario(strategy: str, *, sizes: str = "[1000, 500, 100]", classes: int = 10,
             per_node: int = 2, batch: int = 100, model: str | None = None):  # noqa: ANN201
    text = f"""
name: dbn toy
model: {model or f"{{zoo: dbn, params: {{sizes: {sizes}, classes: {classes}}}}}"}
cluster:
  nodes: 1
  devices_per_node: {per_node}
  device: {DEVICE}
  intra_link: {LINK.format("intra")}
  inter_link: {LINK.format("inter")}
training: {{batch_size: {batch}, precision: fp32, optimizer: sgd, iterations: 1,
           warmup_iterations: 0}}
strategies: [{strategy}]
"""
    return parse_scenario(load_yaml(text))


def plan_of(strategy: str, **kw) -> tuple[Plan, Context]:  # noqa: ANN003
    sc = scenario(strategy, **kw)
    ctx = Context(build_graph(sc.model), build_cluster(sc.cluster), sc.training)
    return build_plan(ctx, sc.strategies[0]), ctx


TOY = ("{name: toy, scheme: dbn_pretrain, devices: 2, samples: 400, batch_per_rank: 50, "
       "epochs: 5, expected_epochs: [3, 2]}")


def epochs_of(ops: tuple) -> list[tuple[str, list[Compute], Collective]]:
    """The program cut at its averaging collectives: (layer, the epoch's cd1 ops, averaging)."""
    out, pending = [], []
    for op in ops:
        if isinstance(op, Compute) and op.phase == "cd1":
            pending.append(op)
        elif isinstance(op, Collective):
            out.append((op.tensor.removeprefix("delta:"), pending, op))
            pending = []
    assert not pending
    return out


# ---- the plan ---------------------------------------------------------------------------------

def test_every_epoch_is_its_mini_batches_then_one_averaging():
    plan, ctx = plan_of(TOY)
    assert (plan.scheme, plan.mode) == ("dbn_pretrain", "sync")
    assert plan.groups == {"world": (0, 1)}
    for rank in plan.ranks:
        epochs = epochs_of(rank.ops)
        assert [(layer, coll.key) for layer, _, coll in epochs] == [
            ("rbm1", "rbm1.e0"), ("rbm1", "rbm1.e1"), ("rbm1", "rbm1.e2"),
            ("rbm2", "rbm2.e0"), ("rbm2", "rbm2.e1")]
        for layer, cd1, coll in epochs:
            node = ctx.node(layer)
            # 200 samples per rank in mini-batches of 50: four CD-1 steps per epoch
            assert [(op.layer, op.samples) for op in cd1] == [(layer, 50)] * 4
            assert all(op.flops == node["cd1_flops"] * 50 for op in cd1)
            assert (coll.collective, coll.algorithm, coll.group) == ("allreduce", "tree", "world")
            assert coll.tensor == f"delta:{layer}" and coll.bytes == node["params"] * 4
            assert coll.deps == (cd1[-1].id,)  # averages after the epoch's last step
        fwd = [op for op in rank.ops if isinstance(op, Compute) and op.phase == "fwd"]
        # the first layer's hidden probabilities feed the second; the top layer needs none
        assert [(op.layer, op.samples) for op in fwd] == [("rbm1", 200)]
        assert {op.layer for op in rank.ops if isinstance(op, Compute)} == {"rbm1", "rbm2"}
    assert [r.inputs for r in plan.ranks] == [(0, 200), (200, 200)]
    assert [r.labels for r in plan.ranks] == [(0, 0), (0, 0)]
    assert plan.ranks[0].ops is plan.ranks[1].ops  # equal shards share one program
    assert (plan.samples_per_period, plan.period_steps) == (400 * 5, 5)


def test_an_epoch_waits_for_the_previous_averaging_and_the_next_layer_for_the_forward():
    plan, _ = plan_of(TOY)
    ops = plan.ranks[0].ops
    epochs = epochs_of(ops)
    for (_, _, before), (_, cd1, _) in zip(epochs[:2], epochs[1:3]):
        assert cd1[0].deps == (before.id,)
    fwd = next(op for op in ops if isinstance(op, Compute) and op.phase == "fwd")
    assert fwd.deps == (epochs[2][2].id,)
    assert epochs[3][1][0].id == fwd.id + 1  # next in the compute stream's order


def test_uneven_shards_give_a_short_last_mini_batch():
    plan, _ = plan_of(TOY.replace("samples: 400", "samples: 401"))
    assert [r.inputs for r in plan.ranks] == [(0, 201), (201, 200)]
    first = [op.samples for op in epochs_of(plan.ranks[0].ops)[0][1]]
    second = [op.samples for op in epochs_of(plan.ranks[1].ops)[0][1]]
    assert (first, second) == ([50, 50, 50, 50, 1], [50, 50, 50, 50])
    assert plan.samples_per_period == 401 * 5
    assert shard_bounds(10, 4, 3) == (8, 2) and mini_batches(5, 2) == [2, 2, 1]


def test_memory_is_the_largest_layer_weights_delta_and_data_shard():
    plan, _ = plan_of(TOY)
    need = plan.memory[0]
    # rbm1: 1000 x 500 + 1500 parameters, its delta, 200 samples of its 1000 inputs and of the
    # 500 outputs the forward pass writes (rbm2's 50,100 parameters and 200 x 500 inputs are less)
    params = 1000 * 500 + 1000 + 500
    assert (need.weights, need.gradients, need.optimizer) == (params * 4, params * 4, 0.0)
    assert need.activations == 200 * (1000 + 500) * 4


def test_defaults():
    plan, _ = plan_of("{name: d, scheme: dbn_pretrain}", batch=100)
    o = plan.options
    assert (o["workers"], o["batch_per_rank"], o["samples"], o["epochs"]) == (2, 50, 60000, 10)
    assert (o["expected_epochs"], o["tau"], o["exchange"], o["fine_tune"]) == (
        [10, 10], 0.001, "tree", False)
    assert (o["fine_tune_epochs"], o["fine_tune_batches"]) == (5, [])
    assert plan.period_steps == 20
    assert at_scale({"name": "d", "scheme": "dbn_pretrain"}, 8)["devices"] == 8


def test_the_plan_survives_a_json_round_trip():
    plan, _ = plan_of(TOY)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("strategy, kw, message", [
    ("{name: x, scheme: dbn_pretrain}",
     {"model": "{zoo: mlp, params: {sizes: [8, 4, 2]}}"}, "needs RBM layers"),
    ("{name: x, scheme: dbn_pretrain, epochs: 3, expected_epochs: 4}", {},
     "expected_epochs: more than the 3 epochs"),
    ("{name: x, scheme: dbn_pretrain, epochs: 3, expected_epochs: [1, 4]}", {},
     "expected_epochs[1]: more than the 3 epochs"),
    ("{name: x, scheme: dbn_pretrain, expected_epochs: [1, 2, 3]}", {},
     "names 3 epoch count(s) but the model has 2 RBM layers"),
    ("{name: x, scheme: dbn_pretrain, fine_tune: true}", {"classes": 0},
     "fine-tuning needs a classifier"),
    ("{name: x, scheme: dbn_pretrain, fine_tune: true, fine_tune_epochs: 0}", {},
     "fine_tune_epochs: must be at least 1"),
    ("{name: x, scheme: dbn_pretrain, devices: 3}", {}, "asks for 3 devices"),
    ("{name: x, scheme: dbn_pretrain, samples: 1}", {}, "1 samples cannot be shared by 2"),
    ("{name: x, scheme: dbn_pretrain}", {"batch": 1}, "cannot be split over 2"),
    ("{name: x, scheme: dbn_pretrain, exchange: ps}", {}, "must be one of"),
])
def test_bad_options_are_clear_errors(strategy, kw, message):
    with pytest.raises(ScenarioError) as err:
        scenario(strategy, **kw)
    assert message in str(err.value) and "strategies[0]" in str(err.value)


# ---- predicted time against a closed form -------------------------------------------------------

def tree_allreduce(nbytes: float) -> float:
    """Two ranks: reduce to the master then broadcast, 2 ceil(log2 p) (alpha + S/B) with p = 2
    (binomial tree)."""
    return 2 * (ALPHA + nbytes / B)


def test_predicted_time_is_epochs_times_steps_and_averaging_per_layer():
    plan, ctx = plan_of(TOY)
    cluster = build_cluster(scenario(TOY).cluster)
    entry = predict(plan, cluster, ctx.training).entry
    # per rank and epoch: 4 CD-1 steps of 50 samples, compute-bound (10vh FLOPs per sample)
    cd1 = {"rbm1": 10 * 1000 * 500 * 50 / ACHIEVED, "rbm2": 10 * 500 * 100 * 50 / ACHIEVED}
    params = {"rbm1": 1000 * 500 + 1500, "rbm2": 500 * 100 + 600}
    fwd1 = 2 * 1000 * 500 * 200 / ACHIEVED  # the forward pass over rbm1's 200-sample shard
    layer1 = 3 * (4 * cd1["rbm1"] + tree_allreduce(params["rbm1"] * 4)) + fwd1
    layer2 = 2 * (4 * cd1["rbm2"] + tree_allreduce(params["rbm2"] * 4))
    # every kernel is compute-bound (memory at 1 PB/s x 0.8): the roofline's max is the FLOPs
    assert all(op.bytes / 0.8e15 < op.flops / ACHIEVED
               for op in plan.ranks[0].ops if isinstance(op, Compute))
    total = layer1 + layer2
    assert entry["iteration_time_s"] == pytest.approx(total / 5, rel=1e-9)
    assert entry["throughput_samples_per_s"] == pytest.approx(400 * 5 / total, rel=1e-9)
    pre = predicted_pretraining(entry, plan)
    assert [(r["layer"], r["epochs"]) for r in pre["layers"]] == [("rbm1", 3), ("rbm2", 2)]
    assert pre["layers"][0]["time_s"] == pytest.approx(layer1, rel=1e-9)
    assert pre["layers"][1]["time_s"] == pytest.approx(layer2, rel=1e-9)
    assert pre["total_time_s"] == pytest.approx(total, rel=1e-9)
    assert pre["epochs_to_convergence"] == 5


def test_one_rank_averages_for_free():
    plan, ctx = plan_of(TOY.replace("devices: 2", "devices: 1").replace("samples: 400",
                                                                         "samples: 200"))
    entry = predict(plan, build_cluster(scenario(TOY).cluster), ctx.training).entry
    cd1 = {"rbm1": 10 * 1000 * 500 * 50 / ACHIEVED, "rbm2": 10 * 500 * 100 * 50 / ACHIEVED}
    total = 3 * 4 * cd1["rbm1"] + 2 * 1000 * 500 * 200 / ACHIEVED + 2 * 4 * cd1["rbm2"]
    assert entry["iteration_time_s"] * 5 == pytest.approx(total, rel=1e-9)
    assert entry["breakdown_s"]["exposed_communication"] == 0.0


# ---- fine-tuning ------------------------------------------------------------------------------

FT = TOY.replace("}", ", fine_tune: true, fine_tune_epochs: 2}")
LAYERS = ("rbm1", "rbm2", "classifier", "softmax")  # the toy network with its 10 classes
# back-propagation trains the RBMs' weights and hidden biases and the classifier: not the
# visible biases (1000 and 500)
BACKPROP = (1000 * 500 + 500) + (500 * 100 + 100) + (100 * 10 + 10)


def fine_tune_steps(ops: tuple) -> list[list]:
    """The ops after the pre-training cut after each update."""
    steps, current = [], []
    for op in ops[pretraining_length(ops):]:
        current.append(op)
        if isinstance(op, Update):
            steps.append(current)
            current = []
    assert not current
    return steps


def test_fine_tuning_appends_data_parallel_steps_after_the_pretraining():
    plan, ctx = plan_of(FT)
    toy, _ = plan_of(TOY)
    for rank, pre in zip(plan.ranks, toy.ranks):
        n = pretraining_length(rank.ops)
        assert rank.ops[:n] == pre.ops  # the pre-training is unchanged
        steps = fine_tune_steps(rank.ops)
        # 400 samples in global batches of 2 x 50: 4 steps per epoch, 2 epochs
        assert len(steps) == 2 * 4
        for i, step in enumerate(steps):
            e, j = divmod(i, 4)
            compute = [(op.layer, op.phase, op.samples) for op in step if isinstance(op, Compute)]
            assert compute == ([(n, "fwd", 50) for n in LAYERS]
                               + [(n, "bwd", 50) for n in reversed(LAYERS)])
            assert all(op.flops == ctx.node(op.layer)[f"{op.phase}_flops"] * 50
                       for op in step if isinstance(op, Compute))
            (coll,) = [op for op in step if isinstance(op, Collective)]
            assert (coll.collective, coll.algorithm, coll.group, coll.key, coll.tensor) == (
                "allreduce", "tree", "world", f"finetune.e{e}.s{j}",
                "wgrad:rbm1,rbm2,classifier")
            assert coll.bytes == BACKPROP * 4
            assert coll.deps == (step[-3].id,)  # after the last backward (rbm1's)
            update = step[-1]
            assert (update.params, update.deps) == (BACKPROP, (coll.id,))
        # the first step waits for the top layer's last averaging
        assert steps[0][0].deps == (rank.ops[n - 1].id,)
    assert [r.labels for r in plan.ranks] == [(0, 50), (50, 50)]
    assert plan.options["fine_tune_batches"] == [100] * 4
    assert (plan.period_steps, plan.samples_per_period) == (5 + 2, 400 * 5 + 400 * 2)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_a_short_last_global_batch_is_kept_when_every_rank_gets_a_sample():
    assert fine_tune_batches(403, 2, 50) == [100, 100, 100, 100, 3]
    assert fine_tune_batches(401, 2, 50) == [100, 100, 100, 100]  # one sample: dropped
    assert fine_tune_batches(30, 4, 50) == [30]
    plan, _ = plan_of(FT.replace("samples: 400", "samples: 403"))
    parts = [[step[0].samples for step in fine_tune_steps(r.ops)][:5] for r in plan.ranks]
    assert parts == [[50, 50, 50, 50, 2], [50, 50, 50, 50, 1]]  # shard_bounds of each batch
    assert plan.samples_per_period == 403 * 5 + 403 * 2


def test_fine_tuning_memory_is_at_least_the_whole_network_data_parallel():
    plan, _ = plan_of(FT.replace("samples: 400", "samples: 40").replace(
        "batch_per_rank: 50", "batch_per_rank: 10"))
    need = plan.memory[0]
    # the whole network's weights and gradients (its 553,110 parameters, visible biases
    # included), no optimizer state with sgd, and what 10 samples keep for backward: each
    # RBM's input and output (the first's output is the second's input), the loss's 10
    params = 501500 + 50600 + 1010
    assert (need.weights, need.gradients, need.optimizer) == (params * 4, params * 4, 0.0)
    assert need.activations == 10 * (1000 + 500 + 100 + 10) * 4


def test_predicted_fine_tuning_is_steps_times_backprop_allreduce_and_update():
    plan, ctx = plan_of(FT)
    entry = predict(plan, build_cluster(scenario(FT).cluster), ctx.training).entry
    cd1 = {"rbm1": 10 * 1000 * 500 * 50 / ACHIEVED, "rbm2": 10 * 500 * 100 * 50 / ACHIEVED}
    params = {"rbm1": 1000 * 500 + 1500, "rbm2": 500 * 100 + 600}
    layer1 = (3 * (4 * cd1["rbm1"] + tree_allreduce(params["rbm1"] * 4))
              + 2 * 1000 * 500 * 200 / ACHIEVED)
    layer2 = 2 * (4 * cd1["rbm2"] + tree_allreduce(params["rbm2"] * 4))
    # one step on 50 samples: forward 2vh per dense / RBM layer and 10 FLOPs for the softmax,
    # backward twice the forward (the softmax's 10 again), then the update (4 FLOPs per
    # parameter) after the gradient all-reduce; everything compute-bound
    flops = 50 * (3 * 2 * (1000 * 500 + 500 * 100 + 100 * 10) + 10 + 10)
    step = flops / ACHIEVED + tree_allreduce(BACKPROP * 4) + 4 * BACKPROP / ACHIEVED
    assert all(op.bytes / 0.8e15 < op.flops / ACHIEVED for op in plan.ranks[0].ops
               if isinstance(op, (Compute, Update)))
    fine = 2 * 4 * step
    assert entry["iteration_time_s"] * 7 == pytest.approx(layer1 + layer2 + fine, rel=1e-9)
    pre = predicted_pretraining(entry, plan)
    assert [r["time_s"] for r in pre["layers"]] == pytest.approx([layer1, layer2], rel=1e-9)
    assert pre["total_time_s"] == pytest.approx(layer1 + layer2, rel=1e-9)  # pre-training
    ft = pre["fine_tuning"]
    assert (ft["epochs"], ft["steps_per_epoch"]) == (2, 4)
    assert ft["time_s"] == pytest.approx(fine, rel=1e-9)


def test_one_rank_fine_tunes_without_communication():
    one = (FT.replace("devices: 2", "devices: 1").replace("samples: 400", "samples: 200"))
    plan, ctx = plan_of(one)
    entry = predict(plan, build_cluster(scenario(FT).cluster), ctx.training).entry
    assert entry["breakdown_s"]["exposed_communication"] == 0.0
    pre = predicted_pretraining(entry, plan)
    flops = 50 * (3 * 2 * (1000 * 500 + 500 * 100 + 100 * 10) + 10 + 10)
    # 200 samples in global batches of 1 x 50: 4 steps per epoch, 2 epochs
    assert pre["fine_tuning"]["time_s"] == pytest.approx(
        2 * 4 * (flops + 4 * BACKPROP) / ACHIEVED, rel=1e-9)

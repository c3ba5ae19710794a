"""Collectives folded into runs of kernels (``simulator/engine/fold.py``): the prediction is
the unfolded engine's (which runs every collective as network flows) up to float rounding, with
every technique; a collective folds only where nothing can share its links, and the host link
(``cluster.host_link``) is what keeps pipeline messages off a GPU's NVLink port."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simulator.cluster import build_cluster
from simulator.engine.fold import fold_points
from simulator.engine.runner import Engine
from simulator.engine.simulate import predict
from simulator.plan import COMM, COMPUTE, Collective, Compute
from tests.simulator.test_strategies import plan_of
from tests.simulator.test_symmetry import STRATEGIES, gpt

HOST = ", host_link: pcie4"


def folded(engine: Engine) -> int:
    return sum(len(p.folded) for p in engine.programs.values())


def assert_same(a: dict, b: dict) -> None:
    assert a["iteration_time_s"] == pytest.approx(b["iteration_time_s"], rel=1e-12)
    for key in ("breakdown_s", "utilisation_per_device", "utilisation_per_link"):
        assert a[key].keys() == b[key].keys(), key
        for k, v in b[key].items():
            assert a[key][k] == pytest.approx(v, rel=1e-9, abs=1e-15), (key, k)


@pytest.mark.parametrize("host", [HOST, ""])
@pytest.mark.parametrize("nics", [1, 4])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_folding_predicts_what_the_flows_do(nics, strategy, host):
    sc = gpt(nics, strategy, host)
    ctx, plan = plan_of(sc)
    on = predict(plan, ctx.cluster, sc.training)
    off = predict(plan, ctx.cluster, sc.training, fold=False)
    assert folded(off.engine) == 0
    assert_same(on.entry, off.entry)
    # and the shared path without folding is still the per-rank one to the last digit
    every = predict(replace(plan, mirrors=()), ctx.cluster, sc.training).entry
    assert off.entry["iteration_time_s"] == every["iteration_time_s"]
    assert off.entry["breakdown_s"] == every["breakdown_s"]


def test_tensor_groups_inside_a_node_fold_with_a_host_link_and_cost_fewer_events():
    # tensor 4 x pipeline 4 on four 4-GPU nodes: each stage's tensor group is a node
    sc = gpt(4, STRATEGIES[2], HOST)
    ctx, plan = plan_of(sc)
    on = predict(plan, ctx.cluster, sc.training)
    off = predict(plan, ctx.cluster, sc.training, fold=False)
    # every collective of every stage but the step's closing all-reduces (of the sequence-
    # parallel norms' gradients and the tied embedding), which nothing waits for
    for r in on.engine.simulated:
        ops = getattr(r.ops, "source", r.ops)
        left = [op.key for op in ops if isinstance(op, Collective)
                and op.id not in on.engine.program_of[r.rank].folded]
        assert set(left) <= {"sp_grads", "tied"}, left
    assert folded(on.engine) > 400
    assert on.engine.events < off.engine.events / 5


@pytest.mark.parametrize("strategy", [STRATEGIES[2], STRATEGIES[1], STRATEGIES[3]])
def test_runs_that_pipeline_messages_reach_go_on_as_flows_from_where_they_are(strategy):
    # without a host link a pipeline message crosses the GPU's NVLink port, as the tensor
    # group's collectives do (and with two stages on a node, so do the neighbours' messages):
    # the runs are watched, and a message that starts mid-run turns the rest into flows
    sc = gpt(4, strategy)
    ctx, plan = plan_of(sc)
    on = predict(plan, ctx.cluster, sc.training)
    off = predict(plan, ctx.cluster, sc.training, fold=False)
    assert folded(on.engine) > 0 and on.engine.fold_breaks > 0
    assert_same(on.entry, off.entry)
    assert on.engine.events < off.engine.events


def test_a_trace_or_jitter_turns_folding_off():
    sc = gpt(4, STRATEGIES[2], HOST)
    ctx, plan = plan_of(sc)
    traced = predict(plan, ctx.cluster, sc.training, record_trace=True)
    assert folded(traced.engine) == 0
    assert_same(traced.entry, predict(plan, ctx.cluster, sc.training).entry)
    sc = gpt(4, STRATEGIES[2], HOST + ", compute_jitter: 0.05")
    ctx, plan = plan_of(sc)
    assert folded(predict(plan, ctx.cluster, sc.training).engine) == 0


def test_the_host_link_routes_between_nodes_around_the_fabric():
    sc = gpt(1, STRATEGIES[2], HOST)
    c = build_cluster(sc.cluster)
    assert c.route("node0.gpu1", "node1.gpu2") == (
        ("node0.gpu1", "node0.nic0"), ("node0.nic0", "switch"), ("switch", "node1.nic0"),
        ("node1.nic0", "node1.gpu2"))
    assert c.route("node0.gpu1", "node0.gpu2") == (
        ("node0.gpu1", "node0.fabric"), ("node0.fabric", "node0.gpu2"))
    assert c.bandwidth(("node0.gpu1", "node0.nic0")) == pytest.approx(31.5e9 * 0.80)
    plain = build_cluster(gpt(1, STRATEGIES[2]).cluster)
    assert ("node0.gpu1", "node0.fabric") in plain.route("node0.gpu1", "node1.gpu2")


def _op(i: int, cls, stream: str, deps=(), **kw):  # noqa: ANN001, ANN202
    if cls is Compute:
        return Compute(id=i, stream=stream, deps=deps, layer=f"l{i}", phase="fwd",
                       micro_batch=0, samples=1, shard=0, shards=1, flops=1.0, bytes=1.0,
                       blocks=1)
    return Collective(id=i, stream=stream, deps=deps, collective="allreduce",
                      algorithm="ring", group=kw.get("group", "tp"), bytes=8.0, key=f"k{i}")


def test_only_collectives_the_compute_stream_would_stop_for_fold():
    # compute 0 -> allreduce 1 -> compute 2 (waits for it) -> allreduce 3 -> compute 4 (does
    # not wait for it: it overlaps) -> allreduce 5 -> compute 6 (waits)
    ops = (_op(0, Compute, COMPUTE), _op(1, Collective, COMM, (0,)),
           _op(2, Compute, COMPUTE, (1,)), _op(3, Collective, COMM, (2,)),
           _op(4, Compute, COMPUTE), _op(5, Collective, COMM, (4,)),
           _op(6, Compute, COMPUTE, (5,)))
    # the third would fold on its own, but the comm stream runs it after the second
    assert fold_points(ops, lambda op: True) == {1: 0}
    assert fold_points(ops, lambda op: op.id != 1) == {}
    # a collective that waits for another stream's op does not fold
    ops2 = (_op(0, Compute, COMPUTE), _op(1, Collective, COMM, (0,)),
            _op(2, Compute, COMPUTE, (1,)))
    assert fold_points(ops2, lambda op: True) == {1: 0}
    assert fold_points(ops2[1:], lambda op: True) == {}

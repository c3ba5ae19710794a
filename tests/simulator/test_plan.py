"""The Plan as data: JSON round trip for every scheme, standard-library-only import, and the
ids and dependencies ``ProgramBuilder`` hands out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulator.cluster import build_cluster
from simulator.errors import ScenarioError
from simulator.plan import (
    COMM,
    COMPUTE,
    Barrier,
    Compute,
    MemoryNeed,
    Plan,
    ProgramBuilder,
    PSPush,
    RankProgram,
    Update,
    WorkLoop,
)
from simulator.scenario import build_graph, parse_scenario
from simulator.strategies import SCHEMES, build_plan
from simulator.strategies.common import Context
from simulator.yaml_input import load_yaml
from tests.simulator.test_engine_closed_forms import device, link, scenario

# conv -> act -> flatten -> dense -> dense: every scheme can build a plan of it (hybrid needs
# layers before a first dense layer, tensor a splittable layer, pipeline two layers)
LAYERS = ("[{kind: conv, out_channels: 4, kernel: 3, padding: 1}, {kind: act, fn: relu}, "
          "{kind: flatten}, {kind: dense, units: 8}, {kind: dense, units: 4}]")
PS = ("  parameter_servers: {hosts: 2, device: " + device() + ", nic: " + link("inter", 1, 10)
      + "}")
STRATEGIES = {
    "data_parallel": "{name: dp, scheme: data_parallel, bucket_MiB: 1, overlap: true}",
    "data_parallel_ps": "{name: dp-ps, scheme: data_parallel, exchange: ps}",
    "downpour": "{name: downpour, scheme: downpour, n_fetch: 2, n_push: 3}",
    "sandblaster": "{name: sandblaster, scheme: sandblaster, portions: 8}",
    "pipeline": "{name: pipeline, scheme: pipeline, stages: 2, micro_batches: 4, "
                "schedule: 1f1b}",
    "tensor": "{name: tensor, scheme: tensor, devices: 2}",
    "hybrid": "{name: hybrid, scheme: hybrid, devices: 2}",
    "parallel_3d": "{name: p3d, scheme: parallel_3d, data: 2, tensor: 2}",
}


def build_all(strategies: list[str]) -> list[Plan]:
    sc = scenario(per_node=4, layers=LAYERS, input_shape="[2, 4, 4]", batch=64, cluster_extra=PS,
                  strategies="[" + ", ".join(strategies) + "]")
    ctx = Context(build_graph(sc.model), build_cluster(sc.cluster), sc.training)
    return [build_plan(ctx, s) for s in sc.strategies]


def round_trip(plan: Plan) -> Plan:
    return Plan.from_dict(json.loads(json.dumps(plan.to_dict())))


@pytest.mark.parametrize("key", list(STRATEGIES))
def test_json_round_trip_gives_the_same_plan(key):
    (plan,) = build_all([STRATEGIES[key]])
    back = round_trip(plan)
    assert back == plan
    assert back.to_dict() == plan.to_dict()


def test_every_scheme_is_round_tripped():
    schemes = {p.scheme for p in build_all(list(STRATEGIES.values()))}
    # branch: see the inception test below; dbn_pretrain: tests/simulator/test_dbn_pretrain.py
    assert schemes == set(SCHEMES) - {"branch", "dbn_pretrain"}


def test_branch_plan_round_trips():
    # the branch scheme needs a model with towers: the zoo's inception at a small input
    text = f"""
name: towers
model: {{zoo: inception, params: {{input_shape: [3, 64, 64], classes: 10}}}}
cluster: {{nodes: 1, devices_per_node: 2, device: {device()}, intra_link: {link("intra")}}}
training: {{batch_size: 8, precision: fp32, optimizer: sgd}}
strategies: [{{name: b, scheme: branch, devices: 2}}]
"""
    sc = parse_scenario(load_yaml(text))
    ctx = Context(build_graph(sc.model), build_cluster(sc.cluster), sc.training)
    plan = build_plan(ctx, sc.strategies[0])
    assert plan.scheme == "branch"
    assert round_trip(plan) == plan


def test_work_loop_body_survives_the_round_trip():
    (plan,) = build_all([STRATEGIES["sandblaster"]])
    loop = next(op for op in plan.ranks[0].ops if isinstance(op, WorkLoop))
    back = next(op for op in round_trip(plan).ranks[0].ops if isinstance(op, WorkLoop))
    assert back.body == loop.body
    assert all(type(a) is type(b) for a, b in zip(back.body, loop.body, strict=True))
    assert isinstance(back.body[0], Compute) and isinstance(back.body[-1], PSPush)


def test_hand_built_plan_round_trips_every_field():
    b = ProgramBuilder()
    c = b.add(Compute, layer="l", phase="fwd", micro_batch=0, samples=2, shard=0, shards=1,
              flops=10.0, bytes=20.0, blocks=3, kernels=2)
    body = ProgramBuilder()
    body.add(Compute, layer="l", phase="bwd", micro_batch=0, samples=1, shard=0, shards=1,
             flops=1.0, bytes=2.0, blocks=1)
    loop = b.add(WorkLoop, stream=COMM, deps=(c,), coordinator=1, body=tuple(body.ops))
    b.add(Barrier, stream=COMM, deps=(loop,), group="world", key="batch")
    b.add(Update, deps=(c, loop), params=5, flops=20.0, bytes=40.0)
    plan = Plan(strategy="hand", scheme="sandblaster", mode="batch", samples_per_period=2,
                period_steps=1,
                ranks=(RankProgram(rank=0, device="node0.gpu0", role="worker", ops=tuple(b.ops)),
                       RankProgram(rank=1, device="ps0", role="server", shard_params=5)),
                groups={"world": (0,)},
                memory=(MemoryNeed("node0.gpu0", 1.0, 2.0, 3.0, 4.0, 100.0),),
                portions=4, options={"history": 10})
    assert round_trip(plan) == plan


def test_tensor_plan_with_chosen_layers_round_trips():
    (plan,) = build_all(["{name: tensor, scheme: tensor, devices: 2, layers: [dense3]}"])
    assert round_trip(plan) == plan


# ---- imports ------------------------------------------------------------------------------------

HEAVY = ("simpy", "networkx", "numpy", "yaml", "mpi4py", "numba")


def test_importing_the_plan_imports_only_the_standard_library():
    code = ("import sys, simulator.plan\n"
            f"heavy = {HEAVY!r}\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
            "print(sorted(m for m in sys.modules if m.startswith('simulator')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", "['simulator', 'simulator.plan']"]


# ---- ProgramBuilder -----------------------------------------------------------------------------

def test_program_builder_hands_out_consecutive_ids_and_keeps_deps():
    b = ProgramBuilder()
    kw = dict(layer="l", micro_batch=0, samples=1, shard=0, shards=1, flops=1.0, bytes=1.0,
              blocks=1)
    f = b.add(Compute, phase="fwd", **kw)
    g = b.add(PSPush, stream=COMM, deps=[f], shard=0, bytes=8.0, tag="grad0")
    u = b.add(Update, deps=(f, g), params=1, flops=4.0, bytes=12.0)
    assert (f, g, u) == (0, 1, 2)
    assert [op.id for op in b.ops] == [0, 1, 2]
    assert [op.deps for op in b.ops] == [(), (0,), (0, 1)]
    assert isinstance(b.ops[1].deps, tuple)  # a list given is stored as a tuple
    assert [op.stream for op in b.ops] == [COMPUTE, COMM, COMPUTE]
    assert b.last() == 2 and b.last(COMM) == 1 and b.last(COMPUTE) == 2
    assert ProgramBuilder().last() is None and b.last("p2p") is None


def test_memory_need_total_and_fits():
    m = MemoryNeed("d", weights=1.0, gradients=2.0, optimizer=3.0, activations=4.0,
                   capacity=10.0)
    assert m.total == 10.0 and m.fits
    assert not MemoryNeed("d", 1.0, 2.0, 3.0, 4.5, 10.0).fits


def test_the_first_layers_data_gradient_only_where_the_training_asks_for_it():
    from dataclasses import replace

    sc = scenario(per_node=1, layers=LAYERS, input_shape="[2, 4, 4]", batch=8)
    graph, cluster = build_graph(sc.model), build_cluster(sc.cluster)

    def first_backward(training) -> Compute:
        plan = build_plan(Context(graph, cluster, training), sc.strategies[0])
        return next(op for op in plan.ranks[0].ops if isinstance(op, Compute)
                    and op.phase == "bwd" and not graph.in_degree(op.layer))

    assert not sc.training.input_gradient
    assert first_backward(sc.training).input_grad is False  # frameworks skip it
    asked = replace(sc.training, input_gradient=True)  # Torch7's nn, requires_grad inputs
    assert first_backward(asked).input_grad is True
    text = ("name: t\nmodel: {layers: [{kind: dense, units: 4}], input_shape: [4]}\n"
            "cluster: {nodes: 1, devices_per_node: 1, device: V100, intra_link: pcie3, "
            "inter_link: ib_edr}\n"
            "training: {batch_size: 8, input_gradient: %s}\n"
            "strategies: [{name: dp, scheme: data_parallel}]\n")
    assert parse_scenario(load_yaml(text % "true")).training.input_gradient is True
    with pytest.raises(ScenarioError, match="training.input_gradient: must be true or false"):
        parse_scenario(load_yaml(text % "2"))

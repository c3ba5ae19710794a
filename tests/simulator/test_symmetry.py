"""Mirrored ranks (``simulator/engine/symmetry.py``): simulating one rank per tensor group gives
the per-rank simulation's times to the last digit, on clusters whose NICs are shared by the
mirrored ranks, one per GPU, or in between, and with every technique; it is not used where
something tells the ranks apart."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simulator.engine.runner import Engine
from simulator.engine.simulate import predict
from simulator.engine.symmetry import orbits
from simulator.scenario import parse_scenario
from simulator.yaml_input import load_yaml
from tests.simulator.test_strategies import plan_of

STRATEGIES = [
    "tensor: 4, data: 4, micro_batches: 2",
    "tensor: 2, pipeline: 2, data: 4, micro_batches: 4",
    "tensor: 4, pipeline: 4, micro_batches: 4, sequence_parallel: true, recompute: full",
    "tensor: 2, pipeline: 4, data: 2, micro_batches: 4, virtual_stages: 2, zero: 1",
    "tensor: 4, data: 4, zero: 3, micro_batches: 2",
]


def gpt(nics: int, strategy: str, extra: str = "") -> object:
    return parse_scenario(load_yaml(f"""
name: symmetry
model: {{zoo: gpt, params: {{layers: 8, hidden: 256, heads: 8, seq_len: 128, vocab: 1000}}}}
cluster: {{nodes: 4, devices_per_node: 4, device: A100, intra_link: nvlink3,
           inter_link: ib_hdr, nics_per_node: {nics}{extra}}}
training: {{batch_size: 16, precision: bf16, optimizer: adam, iterations: 2,
           warmup_iterations: 1}}
strategies: [{{name: s, scheme: parallel_3d, {strategy}}}]
"""))


@pytest.mark.parametrize("nics", [1, 4])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_rank_per_tensor_group_predicts_what_every_rank_does(nics, strategy):
    sc = gpt(nics, strategy)
    ctx, plan = plan_of(sc)
    assert plan.mirrors
    engine = Engine(plan, ctx.cluster, "bf16", "adam", 1, 2)
    # one simulated rank per pipeline stage: the tensor groups' ranks and the data replicas
    # are its images
    degrees = dict(kv.split(": ") for kv in strategy.split(", "))
    assert engine.sym is not None and len(engine.simulated) == int(degrees.get("pipeline", 1))
    # (folding moves the last digit: tests/simulator/test_fold.py)
    mirrored = predict(plan, ctx.cluster, sc.training, fold=False).entry
    every = predict(replace(plan, mirrors=()), ctx.cluster, sc.training).entry
    for key in ("iteration_time_s", "breakdown_s", "utilisation_per_device"):
        assert mirrored[key] == every[key], key
    assert mirrored["utilisation_per_link"].keys() == every["utilisation_per_link"].keys()
    for link, u in every["utilisation_per_link"].items():
        assert mirrored["utilisation_per_link"][link] == pytest.approx(u, rel=1e-12)


def test_nics_shared_unevenly_leave_the_tensor_rotation_out_and_keep_the_replicas():
    # 2 NICs for 4 GPUs: rotating the tensor group moves GPU 1 from nic0 to nic1, not an
    # automorphism of the topology; shifting the data replicas node by node still is
    sc = gpt(2, STRATEGIES[0])
    ctx, plan = plan_of(sc)
    engine = Engine(plan, ctx.cluster, "bf16", "adam", 1, 2)
    assert engine.sym is not None and len(engine.sym.gens) == 1
    assert [r.rank for r in engine.simulated] == [0, 1, 2, 3]
    # (folding moves the last digit: tests/simulator/test_fold.py)
    mirrored = predict(plan, ctx.cluster, sc.training, fold=False).entry
    every = predict(replace(plan, mirrors=()), ctx.cluster, sc.training).entry
    assert mirrored["iteration_time_s"] == every["iteration_time_s"]
    assert mirrored["breakdown_s"] == every["breakdown_s"]


@pytest.mark.parametrize("extra", [
    ", stragglers: [{device: 1, slowdown: 1.5}]",
    ", compute_jitter: 0.05",
    ", degraded_links: [{element: node0.nic0, factor: 0.5}]",
])
def test_anything_that_tells_ranks_apart_turns_mirrors_off(extra):
    sc = gpt(4, STRATEGIES[0], extra)
    ctx, plan = plan_of(sc)
    assert Engine(plan, ctx.cluster, "bf16", "adam", 1, 2).sym is None


def test_orbits_of_generators_are_their_least_ranks():
    rot = (1, 2, 0, 4, 5, 3)  # two 3-cycles
    assert orbits([rot], 6) == {0: 0, 1: 0, 2: 0, 3: 3, 4: 3, 5: 3}
    swap = (3, 4, 5, 0, 1, 2)  # joins them
    assert set(orbits([rot, swap], 6).values()) == {0}
    assert orbits([], 3) == {0: 0, 1: 1, 2: 2}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_grids_images_are_the_programs_built_rank_by_rank(strategy):
    from simulator.strategies import stages
    from simulator.strategies.parallel_3d import grid

    sc = gpt(4, strategy)
    ctx, plan = plan_of(sc)
    direct, *_ = stages.build(ctx, grid(sc.strategies[0].options), images=False)
    assert len(direct) == len(plan.ranks)
    for a, b in zip(plan.ranks, direct):
        assert a.rank == b.rank and tuple(a.ops) == tuple(b.ops), a.rank


def resnet_dp(nics: int, exchange: str, extra: str = "") -> object:
    return parse_scenario(load_yaml(f"""
name: symmetry dp
model: {{zoo: lenet5}}
cluster: {{nodes: 4, devices_per_node: 4, device: V100, intra_link: nvlink2,
           inter_link: ib_edr, nics_per_node: {nics}}}
training: {{batch_size: 64, precision: fp16, iterations: 2, warmup_iterations: 1}}
strategies: [{{name: s, scheme: data_parallel, exchange: {exchange}{extra}}}]
"""))


@pytest.mark.parametrize("nics", [1, 2, 4])
@pytest.mark.parametrize("exchange,extra", [
    ("ring", ""), ("mpi", ""), ("hierarchical", ""),
    ("ring", ", bucket_MiB: 0.01, overlap: true"), ("ring", ", zero: 2, overlap: true"),
])
def test_data_parallel_one_rank_per_gpu_index_predicts_what_every_rank_does(nics, exchange,
                                                                            extra):
    sc = resnet_dp(nics, exchange, extra)
    ctx, plan = plan_of(sc)
    engine = Engine(plan, ctx.cluster, "fp16", "sgd", 1, 2)
    assert engine.sym is not None and [r.rank for r in engine.simulated] == [0, 1, 2, 3]
    # (folding moves the last digit: tests/simulator/test_fold.py)
    mirrored = predict(plan, ctx.cluster, sc.training, fold=False).entry
    every = predict(replace(plan, mirrors=()), ctx.cluster, sc.training).entry
    for key in ("iteration_time_s", "breakdown_s", "utilisation_per_device"):
        assert mirrored[key] == every[key], key
    for link, u in every["utilisation_per_link"].items():
        assert mirrored["utilisation_per_link"][link] == pytest.approx(u, rel=1e-12)


def test_a_binomial_tree_over_every_worker_is_simulated_rank_by_rank():
    ctx, plan = plan_of(resnet_dp(1, "tree"))
    assert plan.mirrors and Engine(plan, ctx.cluster, "fp16", "sgd", 1, 2).sym is None


def dp_with(nics: int, exchange: str, extra: str, cluster: str) -> object:
    return parse_scenario(load_yaml(f"""
name: symmetry dp, something tells ranks apart
model: {{zoo: lenet5}}
cluster: {{nodes: 6, devices_per_node: 4, device: V100, intra_link: nvlink2,
           inter_link: ib_edr, nics_per_node: {nics}{cluster}}}
training: {{batch_size: 96, precision: fp16, iterations: 2, warmup_iterations: 1}}
strategies: [{{name: s, scheme: data_parallel, exchange: {exchange}{extra}}}]
"""))


APART = [
    ", degraded_links: [{element: node2.nic0, factor: 0.25}]",
    ", degraded_links: [{element: node0.nic0, factor: 0.5}, {element: node0.gpu3, factor: 0.1}]",
    ", degraded_links: [{element: node4.fabric, factor: 0.3}]",
    ", stragglers: [{device: 5, slowdown: 1.7}]",
    ", stragglers: [{device: 0, slowdown: 3.0}], "
    "degraded_links: [{element: node3.gpu1, factor: 0.05}]",
]


@pytest.mark.parametrize("nics", [1, 2, 4])
@pytest.mark.parametrize("exchange,extra", [
    ("ring", ""), ("mpi", ""), ("hierarchical", ""),
    ("ring", ", bucket_MiB: 0.01, overlap: true"),
])
@pytest.mark.parametrize("cluster", APART)
def test_stragglers_and_degraded_links_cost_the_ranks_and_flows_they_touch(nics, exchange,
                                                                           extra, cluster):
    # every rank waits for every other at each all-reduce, so a straggler differs from its
    # images only until then: it is simulated beside its orbit's representative; flows over a
    # degraded link (and those sharing an edge with them) are simulated on their own
    sc = dp_with(nics, exchange, extra, cluster)
    ctx, plan = plan_of(sc)
    engine = Engine(plan, ctx.cluster, "fp16", "sgd", 1, 2)
    stragglers = {s.device for s in sc.cluster.stragglers}
    assert engine.sym is not None
    assert len(engine.simulated) == 4 + len(stragglers)
    shared = predict(plan, ctx.cluster, sc.training)
    every = predict(replace(plan, mirrors=()), ctx.cluster, sc.training).entry
    assert shared.engine.sym is not None
    assert shared.entry["iteration_time_s"] == pytest.approx(every["iteration_time_s"],
                                                             rel=1e-12)
    for key in ("breakdown_s", "utilisation_per_device", "utilisation_per_link"):
        assert shared.entry[key].keys() == every[key].keys(), key
        for k, v in every[key].items():
            assert shared.entry[key][k] == pytest.approx(v, rel=1e-9, abs=1e-15), (key, k)

"""Each partitioning scheme's Plan against its definition, memory against its closed form, and
the behaviour the schemes exist for (stragglers, load balancing, degraded links, determinism).

Expected values are written from the scheme's definition (op counts, bytes = elements x samples x
bytes per element, rank layouts) or a closed form, never taken from another simulator run.
Models are small (an MLP of 1024-wide dense layers, LeNet-5, a 2-block GPT) and clusters use the
round-number inline devices and links of ``test_engine_closed_forms``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest

from simulator.cluster import build_cluster
from simulator.engine.simulate import Prediction, predict
from simulator.plan import (
    Barrier,
    Collective,
    Compute,
    Plan,
    PSPull,
    PSPush,
    Recv,
    Send,
    Update,
    WorkLoop,
)
from simulator.predict import simulate_scenario
from simulator.scenario import build_graph, parse_scenario
from simulator.specs import Scenario
from simulator.strategies import build_plan
from simulator.strategies.common import Context
from simulator.yaml_input import load_yaml
from tests.simulator.test_engine_closed_forms import FLOPS, device, link, scenario

WIDTH = 1024
MLP4 = "[" + ", ".join(["{kind: dense, units: 1024}"] * 4) + "]"  # dense0 .. dense3
MLP8 = "[" + ", ".join(["{kind: dense, units: 1024}"] * 8) + "]"  # dense0 .. dense7
LAYER_PARAMS = WIDTH * WIDTH + WIDTH  # one 1024 -> 1024 dense layer with bias
LAYER_BYTES = 4 * LAYER_PARAMS  # fp32: 4,198,400 B = 4.0039 MiB


def ps_cluster(hosts: int = 2, nic: str | None = None, ps_dev: str | None = None) -> str:
    return (f"  parameter_servers: {{hosts: {hosts}, device: {ps_dev or device()}, "
            f"nic: {nic or link('inter', 1, 10)}}}")


def context(sc: Scenario) -> Context:
    return Context(build_graph(sc.model), build_cluster(sc.cluster), sc.training)


def plan_of(sc: Scenario, index: int = 0) -> tuple[Context, Plan]:
    ctx = context(sc)
    return ctx, build_plan(ctx, sc.strategies[index])


def mlp_plan(strategy: str, *, layers: str = MLP4, per_node: int = 2, batch: int = 64,
             extra: str = "", nodes: int = 1) -> tuple[Context, Plan]:
    return plan_of(scenario(nodes=nodes, per_node=per_node, layers=layers,
                            input_shape="[1024]", batch=batch, cluster_extra=extra,
                            strategies=f"[{{name: s, {strategy}}}]"))


def zoo_scenario(zoo: str, params: str, *, per_node: int, strategies: str, batch: int = 8,
                 nodes: int = 1) -> Scenario:
    text = f"""
name: zoo
model: {{zoo: {zoo}, params: {params}}}
cluster: {{nodes: {nodes}, devices_per_node: {per_node}, device: {device()},
           intra_link: {link("intra")}, inter_link: {link("inter")}}}
training: {{batch_size: {batch}, precision: fp32, optimizer: sgd}}
strategies: {strategies}
"""
    return parse_scenario(load_yaml(text))


def kinds(ops) -> dict[str, int]:  # noqa: ANN001
    return dict(Counter(op.kind for op in ops))


def by_id(ops) -> dict:  # noqa: ANN001
    return {op.id: op for op in ops}


def collectives(ops) -> list[tuple[str, str, float]]:  # noqa: ANN001
    return [(o.key, o.collective, o.bytes) for o in ops if isinstance(o, Collective)]


# ---- data parallel ------------------------------------------------------------------------------

def test_data_parallel_ranks_and_op_counts():
    _, plan = mlp_plan("scheme: data_parallel", per_node=4)
    assert [(r.rank, r.device, r.role) for r in plan.ranks] == [
        (i, f"node0.gpu{i}", "worker") for i in range(4)]
    for r in plan.ranks:
        # forward and backward of each of the 4 layers, one all-reduce (one bucket), one update
        assert kinds(r.ops) == {"compute": 8, "collective": 1, "update": 1}
        assert collectives(r.ops) == [("grad0", "allreduce", 4 * LAYER_BYTES)]
        assert all(o.samples == 64 // 4 for o in r.ops if isinstance(o, Compute))
    assert plan.groups == {"world": (0, 1, 2, 3)}
    assert plan.samples_per_period == 64 and plan.period_steps == 1 and plan.mode == "sync"


@pytest.mark.parametrize("bucket_MiB, layers_per_bucket", [(0, 4), (4, 1), (6, 2), (100, 4)])
def test_buckets_split_the_gradient_bytes(bucket_MiB, layers_per_bucket):
    # a layer is 4.0039 MiB: a 4 MiB bucket closes after every layer, a 6 MiB one after two
    _, plan = mlp_plan(f"scheme: data_parallel, bucket_MiB: {bucket_MiB}")
    colls = [o for o in plan.ranks[0].ops if isinstance(o, Collective)]
    assert [o.bytes for o in colls] == [layers_per_bucket * LAYER_BYTES] * (4 // layers_per_bucket)
    assert sum(o.bytes for o in colls) == 4 * LAYER_BYTES  # the model's parameter bytes
    assert [o.key for o in colls] == [f"grad{i}" for i in range(len(colls))]
    update = next(o for o in plan.ranks[0].ops if isinstance(o, Update))
    assert update.deps == tuple(o.id for o in colls)
    assert update.params == 4 * LAYER_PARAMS


@pytest.mark.parametrize("overlap, waits_for", [
    (True, ["dense2", "dense0"]),  # buckets [dense3, dense2], [dense1, dense0] in backward order
    (False, ["dense0", "dense0"]),  # every bucket waits for the end of backward
])
def test_overlap_makes_a_bucket_wait_for_its_last_layers_backward(overlap, waits_for):
    _, plan = mlp_plan(f"scheme: data_parallel, bucket_MiB: 6, overlap: {str(overlap).lower()}")
    ops = by_id(plan.ranks[0].ops)
    colls = [o for o in ops.values() if isinstance(o, Collective)]
    deps = [ops[d] for o in colls for d in o.deps]
    assert [(d.layer, d.phase) for d in deps] == [(n, "bwd") for n in waits_for]
    assert all(o.stream == "comm" for o in colls)


def test_data_parallel_with_a_parameter_server():
    _, plan = mlp_plan("scheme: data_parallel, exchange: ps", extra=ps_cluster(hosts=2))
    assert [(r.rank, r.device, r.role) for r in plan.ranks] == [
        (0, "node0.gpu0", "worker"), (1, "node0.gpu1", "worker"),
        (2, "ps0", "server"), (3, "ps1", "server")]
    assert [r.shard_params for r in plan.ranks[2:]] == [4 * LAYER_PARAMS // 2] * 2
    assert plan.groups == {"world": (0, 1)}
    for r in plan.workers():
        assert kinds(r.ops) == {"compute": 8, "ps_push": 2, "ps_pull": 2}
        ops = by_id(r.ops)
        for pull in (o for o in r.ops if isinstance(o, PSPull)):
            (push,) = (ops[d] for d in pull.deps)
            assert isinstance(push, PSPush) and push.shard == pull.shard
            assert push.bytes == pull.bytes == 4 * LAYER_BYTES / 2


def test_local_steps_exchange_once_per_period():
    _, plan = mlp_plan("scheme: data_parallel, local_steps: 3")
    # 3 local steps of forward + backward, a local update after the first two, one all-reduce
    # and the final update
    assert kinds(plan.ranks[0].ops) == {"compute": 24, "update": 3, "collective": 1}
    assert plan.period_steps == 3 and plan.samples_per_period == 3 * 64


# ---- Downpour -----------------------------------------------------------------------------------

def test_downpour_period_is_lcm_of_fetch_and_push():
    n_fetch, n_push, shards = 2, 3, 2
    _, plan = mlp_plan(f"scheme: downpour, n_fetch: {n_fetch}, n_push: {n_push}",
                       extra=ps_cluster(hosts=shards))
    period = math.lcm(n_fetch, n_push)
    assert plan.period_steps == period == 6
    assert plan.mode == "async"
    assert plan.samples_per_period == 32 * 2 * period  # 32 samples per worker and step
    assert [r.role for r in plan.ranks] == ["worker", "worker", "server", "server"]
    ops = plan.ranks[0].ops
    assert kinds(ops) == {"compute": 8 * period, "ps_pull": shards * period // n_fetch,
                          "ps_push": shards * period // n_push}
    index = by_id(ops)
    # pulls feed the first forward of steps 0, 2, 4
    pulled_for = sorted({(o.micro_batch, o.layer, o.phase) for o in ops
                         if isinstance(o, Compute) and any(isinstance(index[d], PSPull)
                                                           for d in o.deps)})
    assert pulled_for == [(0, "dense0", "fwd"), (2, "dense0", "fwd"), (4, "dense0", "fwd")]
    # pushes follow the last backward (of the first layer) of steps 2 and 5
    pushed_after = sorted({(index[d].micro_batch, index[d].layer, index[d].phase)
                           for o in ops if isinstance(o, PSPush) for d in o.deps})
    assert pushed_after == [(2, "dense0", "bwd"), (5, "dense0", "bwd")]
    shard_bytes = 4 * LAYER_BYTES / shards
    assert all(o.bytes == shard_bytes for o in ops if isinstance(o, (PSPush, PSPull)))


# ---- Sandblaster --------------------------------------------------------------------------------

def test_sandblaster_portions_and_work_loop():
    _, plan = mlp_plan("scheme: sandblaster, portions: 8, history: 5", extra=ps_cluster(hosts=2))
    assert plan.mode == "batch" and plan.portions == 8
    assert plan.samples_per_period == 64  # 8 portions of 8 samples
    assert [r.role for r in plan.ranks] == ["worker", "worker", "server", "server"]
    shard_bytes = 4 * LAYER_BYTES / 2
    # the L-BFGS step per shard: (4m + 4) x shard bytes with a history of m = 5
    assert plan.options["step_bytes_per_shard"] == (4 * 5 + 4) * shard_bytes
    for r in plan.workers():
        pulls = [o for o in r.ops if isinstance(o, PSPull)]
        (loop,) = [o for o in r.ops if isinstance(o, WorkLoop)]
        (barrier,) = [o for o in r.ops if isinstance(o, Barrier)]
        assert kinds(r.ops) == {"ps_pull": 2, "work_loop": 1, "barrier": 1}
        assert loop.deps == tuple(p.id for p in pulls) and barrier.deps == (loop.id,)
        assert loop.coordinator == 2  # the first server rank
        assert plan.ranks[loop.coordinator].role == "server"
        body = loop.body
        assert kinds(body) == {"compute": 8, "ps_push": 2}
        computes = [o for o in body if isinstance(o, Compute)]
        assert [(o.layer, o.phase) for o in computes] == (
            [(f"dense{i}", "fwd") for i in range(4)] + [(f"dense{i}", "bwd") for i in (3, 2, 1, 0)])
        assert all(o.samples == 64 // 8 for o in computes)
        pushes = [o for o in body if isinstance(o, PSPush)]
        assert [(p.shard, p.bytes, p.deps) for p in pushes] == [
            (j, shard_bytes, (computes[-1].id,)) for j in range(2)]


def test_sandblaster_default_portions_are_four_per_worker():
    _, plan = mlp_plan("scheme: sandblaster", extra=ps_cluster(hosts=1))
    assert plan.portions == 8


# ---- pipeline -----------------------------------------------------------------------------------

def stage_layers(plan: Plan) -> list[list[str]]:
    out = []
    for r in plan.ranks:
        seen: list[str] = []
        for o in r.ops:
            if isinstance(o, Compute) and o.phase == "fwd" and o.layer not in seen:
                seen.append(o.layer)
        out.append(seen)
    return out


def order(ops) -> list[str]:  # noqa: ANN001
    """F<i>/B<i> per micro-batch, once per micro-batch and phase."""
    out: list[str] = []
    for o in ops:
        if isinstance(o, Compute):
            tag = f"{'F' if o.phase == 'fwd' else 'B'}{o.micro_batch}"
            if not out or out[-1] != tag:
                out.append(tag)
    return out


def test_balanced_partition_of_uniform_layers_is_equal():
    _, plan = mlp_plan("scheme: pipeline, stages: 4, micro_batches: 4", layers=MLP8, per_node=4)
    assert stage_layers(plan) == [["dense0", "dense1"], ["dense2", "dense3"],
                                  ["dense4", "dense5"], ["dense6", "dense7"]]
    assert plan.options["partition"] == ["dense0", "dense2", "dense4", "dense6"]


def test_explicit_partition_is_respected():
    _, plan = mlp_plan("scheme: pipeline, stages: 4, micro_batches: 4, "
                       "partition: [dense0, dense1, dense5, dense7]", layers=MLP8, per_node=4)
    assert stage_layers(plan) == [["dense0"], ["dense1", "dense2", "dense3", "dense4"],
                                  ["dense5", "dense6"], ["dense7"]]


def test_gpipe_runs_every_forward_then_every_backward():
    _, plan = mlp_plan("scheme: pipeline, stages: 4, micro_batches: 4, schedule: gpipe",
                       layers=MLP8, per_node=4)
    for r in plan.ranks:
        assert order(r.ops) == ["F0", "F1", "F2", "F3", "B3", "B2", "B1", "B0"]


def test_1f1b_stage_s_warms_up_with_p_minus_s_minus_1_forwards():
    _, plan = mlp_plan("scheme: pipeline, stages: 4, micro_batches: 4, schedule: 1f1b",
                       layers=MLP8, per_node=4)
    assert [order(r.ops) for r in plan.ranks] == [
        ["F0", "F1", "F2", "F3", "B0", "B1", "B2", "B3"],  # 3 warm-up, then F3 B0, B1 ...
        ["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"],  # 2 warm-up
        ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"],  # 1 warm-up
        ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"],  # last stage: none
    ]


def test_pipeline_messages_carry_boundary_elements_times_micro_batch():
    m, batch = 4, 64
    _, plan = mlp_plan(f"scheme: pipeline, stages: 4, micro_batches: {m}", layers=MLP8,
                       per_node=4, batch=batch)
    nbytes = WIDTH * (batch // m) * 4  # 1024 elements per sample, 16 samples, fp32
    for s, r in enumerate(plan.ranks):
        sends = [o for o in r.ops if isinstance(o, Send)]
        recvs = [o for o in r.ops if isinstance(o, Recv)]
        # activations forward to s+1 (not from the last stage), gradients back to s-1
        assert sorted((o.peer, o.tag) for o in sends) == sorted(
            [(s + 1, f"fwd{i}") for i in range(m) if s < 3]
            + [(s - 1, f"bwd{i}") for i in range(m) if s > 0])
        assert sorted((o.peer, o.tag) for o in recvs) == sorted(
            [(s - 1, f"fwd{i}") for i in range(m) if s > 0]
            + [(s + 1, f"bwd{i}") for i in range(m) if s < 3])
        assert {o.bytes for o in sends + recvs} == {nbytes}
        assert kinds(r.ops)["compute"] == 2 * 2 * m and kinds(r.ops)["update"] == 1


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_activation_memory(schedule):
    p, m, batch = 4, 8, 64
    mb = batch // m
    _, plan = mlp_plan(f"scheme: pipeline, stages: {p}, micro_batches: {m}, schedule: {schedule}",
                       layers=MLP8, per_node=p, batch=batch)
    for s, need in enumerate(plan.memory):
        kept = m if schedule == "gpipe" else min(p - s, m)
        assert need.activations == kept * mb * (2 * WIDTH) * 4  # 2 layers of 1024 outputs, fp32
        assert need.weights == 2 * LAYER_BYTES


def test_pipeline_replicas_all_reduce_each_stage():
    _, plan = mlp_plan("scheme: pipeline, stages: 2, replicas: 2, micro_batches: 2", per_node=4)
    assert plan.groups == {"stage0": (0, 2), "stage1": (1, 3)}
    for r in plan.ranks:
        s = r.rank % 2
        assert [(o.group, o.bytes) for o in r.ops if isinstance(o, Collective)] == [
            (f"stage{s}", 2 * LAYER_BYTES)]


# ---- tensor -------------------------------------------------------------------------------------

def test_tensor_alexnet_two_gpus_follows_the_paper():
    batch = 8
    _, plan = plan_of(zoo_scenario("alexnet_2gpu", "{}", per_node=2, batch=batch,
                                   strategies="[{name: tp, scheme: tensor, devices: 2}]"))
    st = plan.options["states"]
    assert {n: st[n] for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
            } == {"conv1": "col", "conv2": "local", "conv3": "col", "conv4": "local",
                  "conv5": "local", "fc6": "col", "fc7": "col", "fc8": "col"}
    # whole-tensor bytes: pool2 is 256 x 13 x 13 = 43,264 elements, pool5 flattened 256 x 6 x 6
    # = 9,216, fc6/fc7 4,096; x 8 samples x 4 bytes
    b = batch * 4
    expected = [("fwd0:conv3<pool2", "allgather", 43264 * b),
                ("fwd0:fc6<flatten", "allgather", 9216 * b),
                ("fwd0:fc7<fc6.dropout", "allgather", 4096 * b),
                ("fwd0:fc8<fc7.dropout", "allgather", 4096 * b),
                # the 1,000 logits are gathered so that the loss is computed whole
                ("fwd0:softmax<fc8", "allgather", 1000 * b),
                ("bwd0:fc8", "reduce_scatter", 4096 * b),
                ("bwd0:fc7", "reduce_scatter", 4096 * b),
                ("bwd0:fc6", "reduce_scatter", 9216 * b),
                ("bwd0:conv3", "reduce_scatter", 43264 * b)]
    assert [(r.rank, r.device) for r in plan.ranks] == [(0, "node0.gpu0"), (1, "node0.gpu1")]
    for r in plan.ranks:
        assert collectives(r.ops) == expected
    assert plan.groups == {"tp": (0, 1)}
    assert plan.samples_per_period == batch


GPT = "{layers: 2, hidden: 64, heads: 4, seq_len: 16, vocab: 128}"


def test_tensor_gpt_is_megatron():
    batch, k = 8, 2
    _, plan = plan_of(zoo_scenario("gpt", GPT, per_node=2, batch=batch,
                                   strategies=f"[{{name: tp, scheme: tensor, devices: {k}}}]"))
    st = plan.options["states"]
    for i in range(2):
        assert {n: st[f"block{i}.{n}"] for n in ("attn_qkv", "attn", "attn_proj", "mlp_fc",
                                                 "gelu", "mlp_proj")} == {
            "attn_qkv": "col", "attn": "local", "attn_proj": "row", "mlp_fc": "col",
            "gelu": "local", "mlp_proj": "row"}
    assert (st["embedding"], st["lm_head"], st["softmax"]) == ("row", "col", "local")
    nbytes = 16 * 64 * batch * 4  # (seq x hidden) per sample, fp32
    # the vocabulary-parallel embedding's partial sums, then per block Megatron's g operators
    expected = [("fwd0:embedding", "allreduce", nbytes)]
    expected += [(f"fwd0:block{i}.{n}", "allreduce", nbytes)
                 for i in range(2) for n in ("attn_proj", "mlp_proj")]
    # a language model's loss over its split vocabulary: each token's max, sum of exponentials
    # and target logit (3 fp32 values) from both devices; no logits are gathered
    expected += [("fwd0:xent:softmax", "allgather", 3 * 4 * 16 * batch * k)]
    # backward: the vocabulary-split lm_head's input gradient, then per block the input
    # gradients of the column-split mlp_fc and attn_qkv (Megatron's f operator)
    expected += [("bwd0:lm_head", "allreduce", nbytes)]
    expected += [(f"bwd0:block{i}.{n}", "allreduce", nbytes)
                 for i in (1, 0) for n in ("mlp_fc", "attn_qkv")]
    for r in plan.ranks:
        assert collectives(r.ops) == expected


def test_tensor_mlp_with_three_dense_layers_communicates_in_backward():
    batch, width = 4, 8
    layers = ("[{kind: dense, units: 8}, {kind: act, fn: relu}, {kind: dense, units: 8}, "
              "{kind: act, fn: relu}, {kind: dense, units: 8}]")
    _, plan = plan_of(scenario(layers=layers, input_shape="[8]", batch=batch,
                               strategies="[{name: tp, scheme: tensor, devices: 2}]"))
    backward = [c for c in collectives(plan.ranks[0].ops) if c[0].startswith("bwd")]
    # one whole (batch x 8) fp32 tensor must cross in backward, whichever layout is chosen
    assert sum(c[2] for c in backward) == width * batch * 4


# ---- hybrid -------------------------------------------------------------------------------------

LENET_CONV_PARAMS = (6 * 1 * 25 + 6) + (16 * 6 * 25 + 16) + (120 * 16 * 25 + 120)  # c1, c3, c5


def test_hybrid_gathers_conv_activations_and_all_reduces_conv_gradients():
    batch, k = 8, 4
    _, plan = plan_of(zoo_scenario("lenet5", "{}", per_node=k, batch=batch,
                                   strategies=f"[{{name: h, scheme: hybrid, devices: {k}}}]"))
    for r in plan.ranks:
        colls = [o for o in r.ops if isinstance(o, Collective)]
        gathers = [o for o in colls if o.collective == "allgather"]
        # c5 gives 120 x 1 x 1 per sample; the whole global batch is gathered
        assert [(o.key, o.bytes) for o in gathers] == [("conv-out", 120 * batch * 4)]
        grads = [o for o in colls if o.key.startswith("conv-grad")]
        assert [(o.collective, o.bytes) for o in grads] == [
            ("allreduce", LENET_CONV_PARAMS * 4)]
        computes = [o for o in r.ops if isinstance(o, Compute)]
        conv = {o.samples for o in computes if o.layer in ("c1", "c3", "c5")}
        fc = {(o.samples, o.shards) for o in computes if o.layer in ("f6", "output")}
        assert conv == {batch // k} and fc == {(batch, k)}
    assert plan.samples_per_period == batch


# ---- parallel_3d --------------------------------------------------------------------------------

def test_parallel_3d_rank_layout_is_tensor_innermost():
    d_, p_, t_ = 2, 2, 2
    _, plan = plan_of(zoo_scenario(
        "gpt", GPT, nodes=2, per_node=4, batch=8,
        strategies=f"[{{name: p3, scheme: parallel_3d, data: {d_}, pipeline: {p_}, "
                   f"tensor: {t_}, micro_batches: 2}}]"))

    def rank(d: int, p: int, t: int) -> int:
        return d * p_ * t_ + p * t_ + t

    assert [r.rank for r in plan.ranks] == list(range(8))
    assert [r.device for r in plan.ranks] == [f"node{i // 4}.gpu{i % 4}" for i in range(8)]
    assert plan.groups == {
        "tp0_0": (0, 1), "tp0_1": (2, 3), "tp1_0": (4, 5), "tp1_1": (6, 7),
        "dp0_0": (0, 4), "dp0_1": (1, 5), "dp1_0": (2, 6), "dp1_1": (3, 7),
        # the embedding on the first stage and the tied output layer's copy on the last
        # (Megatron-LM's embedding group): one per replica and tensor rank
        "emb0_0": (0, 2), "emb0_1": (1, 3), "emb1_0": (4, 6), "emb1_1": (5, 7)}
    for d in range(d_):
        for p in range(p_):
            for t in range(t_):
                r = plan.ranks[rank(d, p, t)]
                groups = {o.group for o in r.ops if isinstance(o, Collective)}
                assert groups == {f"tp{d}_{p}", f"dp{p}_{t}", f"emb{d}_{t}"}
                peers = {o.peer for o in r.ops if isinstance(o, (Send, Recv))}
                assert peers == {rank(d, 1 - p, t)}
                # a tensor group shares a node: tensor parallelism rides the fast links
                assert len({plan.ranks[i].device.split(".")[0]
                            for i in plan.groups[f"tp{d}_{p}"]}) == 1


# ---- branch -------------------------------------------------------------------------------------

def test_branch_places_tower_i_on_device_i_mod_k():
    k = 3
    ctx, plan = plan_of(zoo_scenario(
        "inception", "{input_shape: [3, 64, 64], classes: 10}", per_node=4,
        strategies=f"[{{name: b, scheme: branch, devices: {k}}}]"))
    assert len(plan.ranks) == k
    placed: dict[str, set[int]] = {}
    for r in plan.ranks:
        for o in r.ops:
            if isinstance(o, Compute):
                placed.setdefault(o.layer, set()).add(r.rank)
                assert o.samples == 8 and o.shards == 1
    assert set(placed) == set(ctx.layers)
    towers = 0
    for n in ctx.layers:
        branch = ctx.node(n).get("branch")
        want = int(branch.rsplit("/", 1)[1]) % k if branch else 0
        assert placed[n] == {want}, n
        towers += branch is not None
    assert towers > 0
    for r in plan.ranks:
        c = Counter((o.layer, o.phase) for o in r.ops if isinstance(o, Compute))
        assert set(c.values()) == {1}  # each of its layers forward once and backward once


# ---- memory -------------------------------------------------------------------------------------

SMALL_MLP = "[{kind: dense, units: 64}, {kind: act, fn: relu}, {kind: dense, units: 10}]"
SMALL_PARAMS = (32 * 64 + 64) + (64 * 10 + 10)  # 2,762
SMALL_KEPT = 32 + 64  # per sample: the first dense layer's input, the ReLU's output


@pytest.mark.parametrize("precision, optimizer, weights, optimizer_bytes", [
    ("fp32", "sgd", 4, 0),
    ("fp32", "momentum", 4, 4),  # one velocity
    ("fp32", "adam", 4, 8),  # m and v
    ("bf16", "adam", 2, 12),  # ZeRO: fp32 master copy + fp32 m and v
])
def test_data_parallel_memory_is_the_closed_form(precision, optimizer, weights, optimizer_bytes):
    sc = scenario(layers=SMALL_MLP, input_shape="[32]", batch=64,
                  strategies="[{name: dp, scheme: data_parallel}]")
    sc = replace(sc, training=replace(sc.training, precision=precision, optimizer=optimizer))
    _, plan = plan_of(sc)
    bpe = weights
    per_worker = 64 // 2
    for need, dev in zip(plan.memory, ("node0.gpu0", "node0.gpu1"), strict=True):
        assert need.device == dev
        assert need.weights == SMALL_PARAMS * bpe
        assert need.gradients == SMALL_PARAMS * bpe
        assert need.optimizer == SMALL_PARAMS * optimizer_bytes
        assert need.activations == SMALL_KEPT * per_worker * bpe
        assert need.capacity == 16 * 2**30
    if precision == "bf16":
        state = plan.memory[0].total - plan.memory[0].activations
        assert state == 16 * SMALL_PARAMS  # 16 bytes per parameter


def test_a_plan_that_does_not_fit_is_reported_not_simulated():
    tiny = device().replace("memory_GiB: 16", "memory_GiB: 0.01")
    sc = scenario(dev=tiny, layers=MLP4, input_shape="[1024]", batch=64,
                  strategies="[{name: dp, scheme: data_parallel}]")
    result, engines = simulate_scenario(sc)
    (entry,) = result["results"]
    # fp32 sgd: weights + gradients of 4 layers, activations 4 x 1024 outputs x 32 samples
    need = 2 * 4 * LAYER_BYTES + 4 * WIDTH * 32 * 4
    assert entry["fits"] is False
    assert entry["iteration_time_s"] is None and entry["throughput_samples_per_s"] is None
    assert entry["memory_bytes_per_device"] == {"node0.gpu0": need, "node0.gpu1": need}
    assert entry["note"] == (f"does not fit: node0.gpu0 needs {need / 2**30:.2f} GiB "
                             f"of {0.01:.2f} GiB, weights {4 * LAYER_BYTES / 2**30:.2f} GiB")
    # per group of devices with one need: what each part takes, activations by tensor
    (over,) = entry["memory_over"]
    assert over["devices"] == ["node0.gpu0", "node0.gpu1"]
    assert (over["weights"], over["gradients"], over["optimizer"]) == (
        4 * LAYER_BYTES, 4 * LAYER_BYTES, 0.0)
    assert over["detail"] == {"linear-layer inputs": 4 * WIDTH * 32 * 4}
    assert engines == []  # nothing was simulated


# ---- behaviour ----------------------------------------------------------------------------------

# Compute-bound kernels (one block per wave, huge memory bandwidth) and links so fast that
# communication is negligible: time is FLOPs / FLOPS and stragglers show their full effect.
FAST_DEV = device(sms=1, blocks_per_sm=1, mem_GBps=1e6)
FAST = {"intra": link("intra", 1e5, 0), "inter": link("inter", 1e5, 0)}
FAST_PS = ps_cluster(hosts=1, nic=link("inter", 1e5, 0), ps_dev=device(mem_GBps=1e6))
NARROW = "[" + ", ".join(["{kind: dense, units: 64}"] * 4) + "]"
NARROW_FLOPS = 4 * (2 + 4) * 64 * 64  # per sample: fwd 2 + bwd 4 FLOPs per weight, 4 layers


def behaviour(strategy: str, *, workers: int = 4, batch: int = 4 * 2048,
              straggler: float | None = None, extra: str = "") -> Scenario:
    lines = [FAST_PS]
    if straggler:
        lines.append(f"  stragglers: [{{device: 1, slowdown: {straggler}}}]")
    if extra:
        lines.append(extra)
    return scenario(per_node=workers, dev=FAST_DEV, intra=FAST["intra"], inter=FAST["inter"],
                    layers=NARROW, input_shape="[64]", batch=batch, iterations=3, warmup=1,
                    cluster_extra="\n".join(lines), strategies=f"[{{name: s, {strategy}}}]")


def run(sc: Scenario) -> tuple[Plan, Prediction]:
    ctx, plan = plan_of(sc)
    return plan, predict(plan, ctx.cluster, sc.training, seed=sc.seed)


def worker_rates(plan: Plan, pred: Prediction) -> list[float]:
    """Samples per second of each worker over its own measured iterations."""
    per_worker = plan.samples_per_period // len(plan.workers())
    out = []
    for lg in pred.engine.logs.values():
        out.append(per_worker * 3 / (lg.ends[-1] - lg.ends[0]))  # 3 iterations after 1 warm-up
    return out


def test_downpour_straggler_does_not_slow_the_others():
    step = NARROW_FLOPS * 2048 / FLOPS  # one healthy worker step: compute only
    healthy = 2048 / step
    plan, clean = run(behaviour("scheme: downpour"))
    _, slow = run(behaviour("scheme: downpour", straggler=3))
    clean_rates, slow_rates = worker_rates(plan, clean), worker_rates(plan, slow)
    assert clean_rates == pytest.approx([healthy] * 4, rel=1e-3)
    for w in (0, 2, 3):
        assert slow_rates[w] == pytest.approx(clean_rates[w], rel=1e-4)
    assert slow_rates[1] == pytest.approx(healthy / 3, rel=1e-3)  # fewer samples in equal time
    assert slow.entry["throughput_samples_per_s"] == pytest.approx(sum(slow_rates), rel=1e-9)
    assert sum(slow_rates) == pytest.approx((3 + 1 / 3) * healthy, rel=1e-3)


def test_sync_data_parallel_is_bounded_by_the_straggler():
    _, clean = run(behaviour("scheme: data_parallel"))
    _, slow = run(behaviour("scheme: data_parallel", straggler=3))
    work = NARROW_FLOPS * 2048 / FLOPS
    assert clean.entry["iteration_time_s"] == pytest.approx(work, rel=1e-3)
    assert slow.entry["iteration_time_s"] >= 3 * work
    assert slow.entry["iteration_time_s"] == pytest.approx(3 * work, rel=1e-3)


PORTIONS = 40
SANDBLASTER = f"scheme: sandblaster, portions: {PORTIONS}"
SB_BATCH = PORTIONS * 256  # 256 samples per portion; 10 portions per worker when all are healthy


def test_sandblaster_balances_a_slow_worker():
    portion = NARROW_FLOPS * 256 / FLOPS  # one portion on a healthy worker
    _, clean = run(behaviour(SANDBLASTER, batch=SB_BATCH))
    _, slow = run(behaviour(SANDBLASTER, batch=SB_BATCH, straggler=3))
    assert clean.entry["iteration_time_s"] == pytest.approx(10 * portion, rel=1e-3)
    # healthy h and slow s portions per batch: 3h + s = 40 and s = h / 3 -> h = 12, s = 4
    handed = slow.entry["portions_per_worker"]
    batches = sum(handed.values()) / PORTIONS  # the entry may count several batches
    got = [handed[f"node0.gpu{i}"] / batches for i in range(4)]
    for h in (got[0], got[2], got[3]):
        assert abs(got[1] - h / 3) <= 1
    assert slow.entry["iteration_time_s"] == pytest.approx(12 * portion, rel=1e-3)
    sb_ratio = slow.entry["iteration_time_s"] / clean.entry["iteration_time_s"]
    # synchronous data parallel splits the batch statically: the slow quarter takes 3x as long
    _, dp_clean = run(behaviour("scheme: data_parallel", batch=SB_BATCH))
    _, dp_slow = run(behaviour("scheme: data_parallel", batch=SB_BATCH, straggler=3))
    dp_ratio = dp_slow.entry["iteration_time_s"] / dp_clean.entry["iteration_time_s"]
    assert dp_ratio == pytest.approx(3, rel=1e-3)
    assert sb_ratio == pytest.approx(1.2, rel=1e-3)
    assert sb_ratio < dp_ratio / 2


def test_sandblaster_portions_per_worker_cover_measured_batches_only():
    _, pred = run(behaviour(SANDBLASTER, batch=SB_BATCH))
    assert sum(pred.entry["portions_per_worker"].values()) in (PORTIONS, 3 * PORTIONS)


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_degraded_nic_increases_exposed_communication(factor):
    # two nodes of one GPU; ring all-reduce of the fp32 gradients after backward (no overlap)
    extra = f"  degraded_links: [{{element: node0.nic0, factor: {factor}}}]"
    sc = scenario(nodes=2, per_node=1, layers=MLP4, input_shape="[1024]", batch=64,
                  cluster_extra=extra, strategies="[{name: dp, scheme: data_parallel}]")
    _, pred = run(sc)
    s, b, alpha = 4 * LAYER_BYTES, 10e9 * factor, 3 * 5e-6  # intra + inter + intra latency
    p = 2
    expected = 2 * (p - 1) / p * s / b + 2 * (p - 1) * alpha
    assert pred.entry["breakdown_s"]["exposed_communication"] == pytest.approx(expected,
                                                                              rel=1e-9)


def test_staleness_is_zero_with_one_worker_and_one_shard():
    _, pred = run(behaviour("scheme: downpour, workers: 1", workers=1, batch=2048))
    assert pred.entry["staleness"]["mean"] == 0
    assert pred.entry["staleness"]["max"] == 0


def entries(sc: Scenario) -> list[dict]:
    return simulate_scenario(sc)[0]["results"]


def test_same_seed_gives_the_same_result():
    sc = behaviour("scheme: data_parallel", straggler=2)
    assert simulate_scenario(sc)[0] == simulate_scenario(sc)[0]


def test_compute_jitter_depends_on_the_seed_only():
    sc = behaviour("scheme: data_parallel", extra="  compute_jitter: 0.1")
    one, again = entries(replace(sc, seed=1)), entries(replace(sc, seed=1))
    other = entries(replace(sc, seed=2))
    assert one == again
    assert one[0]["iteration_time_s"] != other[0]["iteration_time_s"]
    assert one[0]["breakdown_s"] != other[0]["breakdown_s"]
    # without jitter every iteration is the healthy compute; jitter moves it
    assert one[0]["iteration_time_s"] != pytest.approx(NARROW_FLOPS * 2048 / FLOPS, rel=1e-3)


def test_one_device_data_parallel_has_speedup_one():
    sc = scenario(per_node=2, layers=MLP4, input_shape="[1024]", batch=64, iterations=2,
                  warmup=1, strategies="[{name: one, scheme: data_parallel, devices: 1}]")
    (entry,) = entries(sc)
    assert entry["devices"] == 1
    assert entry["speedup_over_one_device"] == pytest.approx(1.0, rel=1e-12)
    assert entry["efficiency"] == pytest.approx(1.0, rel=1e-12)


def test_a_large_vocabulary_softmax_stays_split():
    _, plan = plan_of(zoo_scenario("gpt", "{layers: 1, hidden: 64, heads: 4, seq_len: 8, "
                                          "vocab: 5000}", per_node=2, batch=2,
                                   strategies="[{name: tp, scheme: tensor, devices: 2}]"))
    assert plan.options["states"]["softmax"] == "local"  # vocabulary-parallel: no logits
    # gathered, only each token's three statistics (8 tokens x 2 samples x 2 devices)
    assert [c for c in collectives(plan.ranks[0].ops) if "softmax" in c[0]] == [
        ("fwd0:xent:softmax", "allgather", 3 * 4 * 8 * 2 * 2)]


def test_a_classifier_softmax_below_the_threshold_is_gathered():
    # Krizhevsky 2012: a classifier's few logits cross the group; the loss is computed whole
    _, plan = plan_of(scenario(layers="[{kind: dense, units: 64}, {kind: softmax}]",
                               input_shape="[32]", batch=8,
                               strategies="[{name: tp, scheme: tensor, devices: 2}]"))
    assert plan.options["states"]["softmax1"] == "rep"
    assert [c for c in collectives(plan.ranks[0].ops) if "softmax" in c[0]] == [
        ("fwd0:softmax1<dense0", "allgather", 64 * 8 * 4)]

"""Hybrid data-model parallelism, "one weird trick" (Krizhevsky 2014).

Convolutional layers (about 90% of the compute, 5% of the weights) run data parallel: each of K
devices takes 1/K of the batch. Fully connected layers (about 95% of the weights) run model
parallel: the last convolutional activations of the whole batch are all-gathered, each device
computes its 1/K of every fully connected layer's neurons for the whole batch, and the gradient
of the gathered activations is reduce-scattered back to the owning devices. The convolutional
weight gradients are all-reduced (``bucket_MiB``/``overlap`` as in data parallel).

The split point is the first dense layer (everything before it is "convolutional").
"""

from __future__ import annotations

from dataclasses import replace

from simulator.errors import ScenarioError
from simulator.plan import COMM, Collective, Plan, ProgramBuilder, RankProgram
from simulator.schema import boolean, integer, number
from simulator.strategies import sharding
from simulator.strategies.common import (
    Context,
    buckets,
    check_devices,
    compute_op,
    split_batch,
    update_op,
    wgrad_tensor,
)
from simulator.strategies.memory import combine, memory_need

OPTIONS = {
    "devices": (integer(1), None),
    "bucket_MiB": (number(positive=False, minimum=0), 0.0),
    "overlap": (boolean, False),
}


def split_point(layers: list[str], graph) -> int:  # noqa: ANN001
    for i, n in enumerate(layers):
        if graph.nodes[n]["kind"] == "dense":
            return i
    return -1


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    k = check_devices(options, "devices", cluster, path)
    split_batch(training.batch_size, k, f"{path}.devices")
    layers = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
    if split_point(layers, graph) <= 0:
        raise ScenarioError("the hybrid scheme needs layers before a first dense layer "
                            "(convolutions) and dense layers after it", path=f"{path}.scheme",
                            value="hybrid", has_value=True)


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    k = o["devices"] or ctx.cluster.spec.device_count
    batch = ctx.training.batch_size
    per = batch // k
    cut = split_point(ctx.layers, ctx.graph)
    conv, fc = ctx.layers[:cut], ctx.layers[cut:]
    lay = sharding.layout(ctx, fc, {n for n in fc if ctx.node(n)["kind"] == "dense"}, k)
    st = lay.states
    sh = lay.param_shards()
    boundary = ctx.node(conv[-1])["out_elems"]
    params = sum(ctx.node(n)["params"] for n in conv) + sum(ctx.node(n)["params"] / sh[n]
                                                           for n in fc)

    # the convolutions' gradient buckets, the same on every rank
    grads = ([(bucket, ctx.param_bytes(bucket), wgrad_tensor(ctx, bucket))
              for bucket in buckets(ctx, list(reversed(conv)), o["bucket_MiB"])]
             if k > 1 else [])

    def program(t: int) -> tuple:
        """Device t: its samples through the convolutions, shard t of the dense layers."""
        b = ProgramBuilder()
        for n in conv:
            compute_op(b, ctx, n, "fwd", per)
        gather = b.add(Collective, stream=COMM, deps=(b.last(),), collective="allgather",
                       algorithm="ring", group="world", bytes=float(boundary * batch * ctx.bpe),
                       key="conv-out", tensor=f"act:{conv[-1]}", axis="batch")
        last = sharding.emit(b, ctx, fc, lay, "fwd", batch, "world", deps=(gather,),
                             shard=t)
        last = sharding.emit(b, ctx, fc, lay, "bwd", batch, "world", deps=(last,),
                             boundary_grad="reduce_scatter", shard=t)
        last_bwd = {}
        for n in reversed(conv):
            last_bwd[n] = compute_op(b, ctx, n, "bwd", per,
                                     deps=(last,) if last is not None else ())
            last = None
        end = b.last()
        colls = []
        for i, (bucket, nbytes, tensor) in enumerate(grads):
            dep = last_bwd[bucket[-1]] if o["overlap"] else end
            colls.append(b.add(Collective, stream=COMM, deps=(dep,), collective="allreduce",
                               algorithm="ring", group="world", bytes=nbytes,
                               key=f"conv-grad{i}", tensor=tensor))
        update_op(b, ctx, params, deps=tuple(colls))
        return tuple(b.ops)

    # convolutions read the rank's samples; the loss sees the whole (gathered) batch
    ranks = tuple(RankProgram(rank=r, device=ctx.cluster.devices[r], role="worker",
                              ops=program(r), inputs=(r * per, per), labels=(0, per * k))
                  for r in range(k))
    need = combine(memory_need(ctx, ranks[0].device, conv, act_samples=per),
                   memory_need(ctx, ranks[0].device, fc, act_samples=batch, layout=lay))
    memory = [replace(need, device=r.device) for r in ranks]
    return Plan(strategy=spec.name, scheme="hybrid", mode="sync", samples_per_period=per * k,
                period_steps=1, ranks=ranks, groups={"world": tuple(range(k))},
                memory=tuple(memory), options={**o, "devices": k, "states": st})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all of them."""
    return {**raw, "devices": devices}

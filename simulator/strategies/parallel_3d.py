"""General hybrid: data x pipeline x tensor parallelism (Megatron-LM, Narayanan et al. 2021).

Ranks are laid out tensor-innermost (a tensor group shares a node's fast links), then pipeline
stage, then data replica: rank = d * (P * T) + p * T + t. Each pipeline stage's layers are split
over its tensor group (``sharding``: column/row splits, Megatron's f/g all-reduces for a
transformer block); stages exchange whole activations per micro-batch (no scatter-gather
optimisation); each (stage, tensor rank) all-reduces its weight gradients over the data replicas.
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.plan import COMM, Collective, Plan, ProgramBuilder, RankProgram, Recv, Send
from simulator.schema import choice, integer
from simulator.strategies import pipeline, sharding
from simulator.strategies.common import (
    Context,
    memory_need,
    split_batch,
    update_op,
    wgrad_tensor,
)

OPTIONS = {
    "data": (integer(1), 1),
    "pipeline": (integer(1), 1),
    "tensor": (integer(1), 1),
    "micro_batches": (integer(1), None),
    "schedule": (choice(("gpipe", "1f1b")), "1f1b"),
}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    d, p, t = options["data"], options["pipeline"], options["tensor"]
    if d * p * t > cluster.device_count:
        raise ScenarioError(f"data x pipeline x tensor = {d * p * t} devices but the cluster has "
                            f"{cluster.device_count}", path=f"{path}.data", value=d,
                            has_value=True)
    if p > graph.number_of_nodes():
        raise ScenarioError("more pipeline stages than layers", path=f"{path}.pipeline",
                            value=p, has_value=True)
    per = split_batch(training.batch_size, d, f"{path}.data", "data replicas")
    split_batch(per, options["micro_batches"] or p, f"{path}.micro_batches", "micro-batches")


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    dd, pp, tt = o["data"], o["pipeline"], o["tensor"]
    m = o["micro_batches"] or pp
    mb = ctx.training.batch_size // dd // m
    parts = pipeline.stage_layers(ctx, pp, None)
    cross = pipeline.boundary_elems(ctx, parts)
    crossing = pipeline.boundary_layers(ctx, parts)
    split = {n for n in ctx.layers if ctx.node(n)["kind"] in sharding.SPLITTABLE}
    st_all = {s: sharding.states(ctx, parts[s], split, tt) for s in range(pp)}

    def rank(d: int, p: int, t: int) -> int:
        return d * pp * tt + p * tt + t

    groups = {f"tp{d}_{p}": tuple(rank(d, p, t) for t in range(tt))
              for d in range(dd) for p in range(pp)}
    groups |= {f"dp{p}_{t}": tuple(rank(d, p, t) for d in range(dd))
               for p in range(pp) for t in range(tt)}
    ranks, memory = [], []
    for d in range(dd):
        for p in range(pp):
            st = st_all[p]
            sh = sharding.shards(st, tt)
            for t in range(tt):
                b = ProgramBuilder()
                for phase, i in pipeline.schedule(o["schedule"], p, pp, m):
                    src = p - 1 if phase == "fwd" else p + 1
                    deps: tuple[int, ...] = ()
                    if 0 <= src < pp:
                        deps = (b.add(Recv, stream="p2p", peer=rank(d, src, t),
                                      bytes=cross[min(p, src)] * mb * ctx.bpe,
                                      tag=f"{phase}{i}", micro_batch=i,
                                      tensor=pipeline.boundary_tensor(
                                          phase, crossing[min(p, src)])),)
                    last = sharding.emit(b, ctx, parts[p], st, tt, phase, mb, f"tp{d}_{p}",
                                         micro_batch=i, shard=t, deps=deps)
                    dst = p + 1 if phase == "fwd" else p - 1
                    if 0 <= dst < pp:
                        b.add(Send, stream="p2p", deps=(last,), peer=rank(d, dst, t),
                              bytes=cross[min(p, dst)] * mb * ctx.bpe, tag=f"{phase}{i}",
                              micro_batch=i,
                              tensor=pipeline.boundary_tensor(phase, crossing[min(p, dst)]))
                params = sum(ctx.node(n)["params"] / sh[n] for n in parts[p])
                deps = (b.last("compute"),)
                if dd > 1:
                    deps = (b.add(Collective, stream=COMM, deps=deps, collective="allreduce",
                                  algorithm="ring", group=f"dp{p}_{t}",
                                  bytes=params * ctx.bpe, key="grad",
                                  tensor=wgrad_tensor(ctx, parts[p])),)
                update_op(b, ctx, params, deps=deps)
                r = rank(d, p, t)
                dev = ctx.cluster.devices[r]
                replica_batch = (d * mb * m, mb * m)
                ranks.append(RankProgram(rank=r, device=dev, role="worker", ops=tuple(b.ops),
                                         inputs=replica_batch if p == 0 else (0, 0),
                                         labels=replica_batch if p == pp - 1 else (0, 0)))
                kept = m if o["schedule"] == "gpipe" else min(pp - p, m)
                memory.append(memory_need(ctx, dev, parts[p], act_samples=kept * mb, shards=sh))
    return Plan(strategy=spec.name, scheme="parallel_3d", mode="sync",
                samples_per_period=mb * m * dd, period_steps=1,
                ranks=tuple(sorted(ranks, key=lambda r: r.rank)), groups=groups,
                memory=tuple(memory), options={**o, "micro_batches": m,
                                               "partition": [q[0] for q in parts]})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): pipeline and tensor
    degrees kept, the data degree grown; None when they do not divide the devices."""
    model = raw.get("pipeline", 1) * raw.get("tensor", 1)
    if devices % model:
        return None
    return {**raw, "data": devices // model}

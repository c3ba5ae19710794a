"""Model parallel by layers, pipelined over micro-batches (DistBelief; GPipe, Huang et al. 2019;
1F1B, Narayanan et al. 2019, PipeDream-Flush).

Consecutive layers (in topological order) form stages on consecutive devices; activations go
forward and gradients backward across stage boundaries, one message per micro-batch. Partitions
are balanced by compute automatically (contiguous, minimising the slowest stage's FLOPs) or given
as the first layer of each stage. With ``replicas`` > 1 the pipeline is replicated data-parallel
and each stage's gradients are all-reduced over its replicas.

Schedules: GPipe runs every forward, then every backward; 1F1B runs p - s - 1 warm-up forwards on
stage s, then alternates one forward and one backward. Both have the bubble (p-1)/(m+p-1) with
uniform stages; 1F1B keeps at most p - s micro-batches of activations instead of m.

A residual edge that skips stages is carried by every stage in between (its bytes are added to
each boundary it crosses).
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.plan import COMM, Collective, Plan, ProgramBuilder, RankProgram, Recv, Send
from simulator.schema import choice, integer, list_of, string
from simulator.strategies.common import (
    Context,
    check_devices,
    compute_op,
    memory_need,
    split_batch,
    update_op,
    wgrad_tensor,
)

OPTIONS = {
    "stages": (integer(1), None),
    "micro_batches": (integer(1), None),
    "schedule": (choice(("gpipe", "1f1b")), "gpipe"),
    "partition": (list_of(string), None),
    "replicas": (integer(1), 1),
}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    if options["replicas"] > cluster.device_count:
        raise ScenarioError(f"more replicas than the cluster's {cluster.device_count} devices",
                            path=f"{path}.replicas", value=options["replicas"], has_value=True)
    stages = options["stages"] or cluster.device_count // options["replicas"]
    check_devices({"stages": stages * options["replicas"]}, "stages", cluster, path)
    layers = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
    if stages > len(layers):
        raise ScenarioError(f"more stages than the model's {len(layers)} layers",
                            path=f"{path}.stages", value=stages, has_value=True)
    per_replica = split_batch(training.batch_size, options["replicas"], f"{path}.replicas",
                              "replicas")
    m = options["micro_batches"] or stages
    split_batch(per_replica, m, f"{path}.micro_batches", "micro-batches")
    if options["partition"] is not None:
        _explicit(options["partition"], layers, stages, f"{path}.partition")


def _explicit(firsts: tuple[str, ...], layers: list[str], stages: int, path: str) -> list[int]:
    """Stage start indices from the names of each stage's first layer."""
    index = {n: i for i, n in enumerate(layers)}
    if len(firsts) != stages:
        raise ScenarioError(f"names {len(firsts)} stage(s) but the plan has {stages} stages",
                            path=path, value=list(firsts), has_value=True)
    starts = []
    for i, name in enumerate(firsts):
        if name not in index:
            raise ScenarioError("no such layer in the model", path=f"{path}[{i}]", value=name,
                                has_value=True)
        starts.append(index[name])
    if starts[0] != 0:
        raise ScenarioError(f"the first stage must start at the first layer {layers[0]!r}, so "
                            "that the partition covers every layer", path=f"{path}[0]",
                            value=firsts[0], has_value=True)
    for i in range(1, len(starts)):
        if starts[i] <= starts[i - 1]:
            raise ScenarioError("stages must start at increasing layers (in model order)",
                                path=f"{path}[{i}]", value=firsts[i], has_value=True)
    return starts


def balance(costs: list[float], stages: int) -> list[int]:
    """Contiguous partition minimising the largest stage cost, as stage start indices.

    Binary search on the bottleneck with greedy packing (optimal for non-negative costs);
    every stage gets at least one layer.
    """
    n = len(costs)

    def starts_for(limit: float) -> list[int] | None:
        starts, acc = [0], 0.0
        for i, c in enumerate(costs):
            left_layers, left_stages = n - i, stages - len(starts)
            if i > starts[-1] and (acc + c > limit or left_layers == left_stages):
                starts.append(i)
                acc = 0.0
            acc += c
            if acc > limit:
                return None
        return starts if len(starts) == stages else None

    lo, hi = max(costs), sum(costs)
    for _ in range(60):
        mid = (lo + hi) / 2
        if starts_for(mid) is None:
            lo = mid
        else:
            hi = mid
    result = starts_for(hi)
    assert result is not None
    return result


def stage_layers(ctx: Context, stages: int, partition: tuple[str, ...] | None) -> list[list[str]]:
    layers = ctx.layers
    if partition is not None:
        starts = _explicit(partition, layers, stages, "partition")
    else:
        costs = [ctx.node(n)["fwd_flops"] + ctx.node(n)["bwd_flops"] for n in layers]
        starts = balance(costs, stages)
    bounds = [*starts, len(layers)]
    return [layers[bounds[i]:bounds[i + 1]] for i in range(stages)]


def boundary_elems(ctx: Context, parts: list[list[str]]) -> list[int]:
    """Elements per sample crossing each stage boundary s -> s+1 (skip edges included)."""
    stage_of = {n: s for s, part in enumerate(parts) for n in part}
    out = [0] * (len(parts) - 1)
    for n, s in stage_of.items():
        last = max((stage_of[v] for v in ctx.graph.successors(n)), default=s)
        for b in range(s, last):
            out[b] += ctx.node(n)["out_elems"]
    return out


def boundary_layers(ctx: Context, parts: list[list[str]]) -> list[list[str]]:
    """The layers whose outputs cross each stage boundary s -> s+1, in model order."""
    stage_of = {n: s for s, part in enumerate(parts) for n in part}
    out: list[list[str]] = [[] for _ in range(len(parts) - 1)]
    for n in ctx.layers:
        s = stage_of[n]
        last = max((stage_of[v] for v in ctx.graph.successors(n)), default=s)
        for b in range(s, last):
            out[b].append(n)
    return out


def boundary_tensor(phase: str, layers: list[str]) -> str:
    """What crosses a boundary: activations forward, their gradients backward."""
    return ("act:" if phase == "fwd" else "dout:") + ",".join(layers)


def schedule(kind: str, stage: int, stages: int, m: int) -> list[tuple[str, int]]:
    """The order of (phase, micro-batch) on one stage."""
    if kind == "gpipe":
        return [("fwd", i) for i in range(m)] + [("bwd", i) for i in reversed(range(m))]
    warm = min(stages - stage - 1, m)
    order = [("fwd", i) for i in range(warm)]
    f, b = warm, 0
    while b < m:
        if f < m:
            order.append(("fwd", f))
            f += 1
        order.append(("bwd", b))
        b += 1
    return order


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    replicas = o["replicas"]
    stages = o["stages"] or ctx.cluster.spec.device_count // replicas
    m = o["micro_batches"] or stages
    per_replica = ctx.training.batch_size // replicas
    mb = per_replica // m
    parts = stage_layers(ctx, stages, o["partition"])
    cross = boundary_elems(ctx, parts)
    crossing = boundary_layers(ctx, parts)
    groups = {f"stage{s}": tuple(r * stages + s for r in range(replicas)) for s in range(stages)}
    ranks, memory = [], []
    for rep in range(replicas):
        for s in range(stages):
            rank = rep * stages + s
            b = ProgramBuilder()
            last_compute = {}
            for phase, i in schedule(o["schedule"], s, stages, m):
                layers = parts[s] if phase == "fwd" else list(reversed(parts[s]))
                deps: tuple[int, ...] = ()
                src = s - 1 if phase == "fwd" else s + 1
                if 0 <= src < stages:
                    nbytes = cross[min(s, src)] * mb * ctx.bpe
                    deps = (b.add(Recv, stream="p2p", peer=rep * stages + src, bytes=nbytes,
                                  tag=f"{phase}{i}", micro_batch=i,
                                  tensor=boundary_tensor(phase, crossing[min(s, src)])),)
                for n in layers:
                    last_compute[phase, i] = compute_op(b, ctx, n, phase, mb, micro_batch=i,
                                                        deps=deps)
                    deps = ()
                dst = s + 1 if phase == "fwd" else s - 1
                if 0 <= dst < stages:
                    nbytes = cross[min(s, dst)] * mb * ctx.bpe
                    b.add(Send, stream="p2p", deps=(last_compute[phase, i],),
                          peer=rep * stages + dst, bytes=nbytes, tag=f"{phase}{i}",
                          micro_batch=i, tensor=boundary_tensor(phase, crossing[min(s, dst)]))
            params = sum(ctx.node(n)["params"] for n in parts[s])
            deps = (b.last("compute"),)
            if replicas > 1:
                deps = (b.add(Collective, stream=COMM, deps=deps, collective="allreduce",
                              algorithm="ring", group=f"stage{s}", bytes=params * ctx.bpe,
                              key=f"grad{s}", tensor=wgrad_tensor(ctx, parts[s])),)
            update_op(b, ctx, params, deps=deps)
            device = ctx.cluster.devices[rank]
            replica_batch = (rep * mb * m, mb * m)
            ranks.append(RankProgram(rank=rank, device=device, role="worker", ops=tuple(b.ops),
                                     inputs=replica_batch if s == 0 else (0, 0),
                                     labels=replica_batch if s == stages - 1 else (0, 0)))
            kept = m if o["schedule"] == "gpipe" else min(stages - s, m)
            memory.append(memory_need(ctx, device, parts[s], act_samples=kept * mb))
    return Plan(strategy=spec.name, scheme="pipeline", mode="sync",
                samples_per_period=mb * m * replicas, period_steps=1, ranks=tuple(ranks),
                groups=groups, memory=tuple(memory),
                options={**o, "stages": stages, "micro_batches": m,
                         "partition": [p[0] for p in parts]})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): the replicas kept,
    the stages grown; None when the devices do not divide by the replicas."""
    replicas = raw.get("replicas", 1)
    if devices % replicas:
        return None
    out = {**raw, "stages": devices // replicas}
    out.pop("partition", None)
    return out

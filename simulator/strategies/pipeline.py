"""Model parallel by layers, pipelined over micro-batches (DistBelief; GPipe, Huang et al. 2019;
1F1B, Narayanan et al. 2019, PipeDream-Flush).

Consecutive layers (in topological order) form stages on consecutive devices; activations go
forward and gradients backward across stage boundaries, one message per micro-batch. Partitions
are given as the first layer of each stage, or cut automatically (``stages.partition``: whole
blocks per stage when they divide evenly, else contiguous stages minimising the slowest stage's
FLOPs). With ``replicas`` > 1 the pipeline is replicated data-parallel and each stage's
gradients are all-reduced over its replicas. The programs are ``stages.build``'s, with the
``techniques`` that apply without tensor parallelism: ``recompute``, ``zero`` (stage 1 with
several stages) and ``virtual_stages``.

Schedules (``schedules``): GPipe runs every forward, then every backward; 1F1B runs p - s - 1
warm-up forwards on stage s, then alternates one forward and one backward. Both have the bubble
(p-1)/(m+p-1) with uniform stages; 1F1B keeps at most p - s micro-batches of activations instead
of m; interleaved 1F1B (``virtual_stages``) shrinks the bubble V-fold.

A residual edge that skips stages is carried by every stage in between (its bytes are added to
each boundary it crosses).
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.plan import Plan
from simulator.schema import choice, integer, list_of, string
from simulator.strategies import techniques
from simulator.strategies.common import Context, check_devices, split_batch

OPTIONS = {
    "stages": (integer(1), None),
    "micro_batches": (integer(1), None),
    "schedule": (choice(("gpipe", "1f1b")), "gpipe"),
    "partition": (list_of(string), None),
    "replicas": (integer(1), 1),
    "virtual_stages": (integer(1), 1),
    "recompute": techniques.OPTIONS["recompute"],
    "zero": techniques.OPTIONS["zero"],
}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    from simulator.strategies import stages as grid_of

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
    grid = grid_of.Grid(data=options["replicas"], pipeline=stages, tensor=1, micro_batches=m,
                        schedule=options["schedule"], virtual=options["virtual_stages"],
                        partition=options["partition"], recompute=options["recompute"],
                        zero=options["zero"])
    grid_of.check_grid(options, graph, training, grid, path)


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


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    from simulator.strategies import stages

    o = spec.options
    replicas = o["replicas"]
    n_stages = o["stages"] or ctx.cluster.spec.device_count // replicas
    m = o["micro_batches"] or n_stages
    grid = stages.Grid(data=replicas, pipeline=n_stages, tensor=1, micro_batches=m,
                       schedule=o["schedule"], virtual=o["virtual_stages"],
                       partition=o["partition"], recompute=o["recompute"], zero=o["zero"],
                       dp_group="stage{p}", tp_group="stage{p}.tp", grad_key="grad{p}")
    ranks, memory, groups, parts, _ = stages.build(ctx, grid)
    groups = {k: v for k, v in groups.items() if not k.endswith(".tp")}
    mb = ctx.training.batch_size // replicas // m
    return Plan(strategy=spec.name, scheme="pipeline", mode="sync",
                samples_per_period=mb * m * replicas, period_steps=1, ranks=tuple(ranks),
                groups=groups, memory=tuple(memory),
                options={**o, "stages": n_stages, "micro_batches": m,
                         "partition": [q[0] for q in parts]})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): the replicas kept,
    the stages grown; None when the devices do not divide by the replicas."""
    replicas = raw.get("replicas", 1)
    if devices % replicas:
        return None
    out = {**raw, "stages": devices // replicas}
    out.pop("partition", None)
    return out

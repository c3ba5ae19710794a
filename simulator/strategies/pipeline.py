"""Model parallel by layers, pipelined over micro-batches (DistBelief; GPipe, Huang et al. 2019;
1F1B, Narayanan et al. 2019, PipeDream-Flush).

Consecutive layers (in topological order) form stages on consecutive devices; activations go
forward and gradients backward across stage boundaries, one message per micro-batch. Partitions
are given as the first layer of each stage, or cut automatically (``partition.partition``: whole
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
from simulator.strategies.stages import Grid, check_grid, mirrors
from simulator.strategies.stages import build as build_grid

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
    grid = Grid(data=options["replicas"], pipeline=stages, tensor=1, micro_batches=m,
                schedule=options["schedule"], virtual=options["virtual_stages"],
                partition=options["partition"], recompute=options["recompute"],
                zero=options["zero"])
    check_grid(options, graph, training, grid, path)


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    replicas = o["replicas"]
    n_stages = o["stages"] or ctx.cluster.spec.device_count // replicas
    m = o["micro_batches"] or n_stages
    grid = Grid(data=replicas, pipeline=n_stages, tensor=1, micro_batches=m,
                schedule=o["schedule"], virtual=o["virtual_stages"], partition=o["partition"],
                recompute=o["recompute"], zero=o["zero"], dp_group="stage{p}",
                tp_group="stage{p}.tp", grad_key="grad{p}")
    ranks, memory, groups, parts, _ = build_grid(ctx, grid)
    groups = {k: v for k, v in groups.items() if not k.endswith(".tp")}
    mb = ctx.training.batch_size // replicas // m
    return Plan(strategy=spec.name, scheme="pipeline", mode="sync",
                samples_per_period=mb * m * replicas, period_steps=1, ranks=tuple(ranks),
                groups=groups, memory=tuple(memory), mirrors=mirrors(grid),
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

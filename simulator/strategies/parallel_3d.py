"""General hybrid: data x pipeline x tensor parallelism (Megatron-LM; Narayanan et al. 2021),
with the techniques large transformers train with (Korthikanti et al. 2022; ZeRO).

Ranks are laid out tensor-innermost (a tensor group shares a node's fast links), then pipeline
stage, then data replica: rank = d * (P * T) + p * T + t. Each pipeline stage's layers are split
over its tensor group (``sharding``: column/row splits, Megatron's f/g all-reduces for a
transformer block, a vocabulary-parallel embedding and loss); stages exchange whole activations
per micro-batch (no scatter-gather optimisation; sequence-split ones with sequence parallelism);
each (stage, tensor rank) all-reduces its weight gradients over the data replicas. The programs
are ``stages.build``'s; ``recompute``, ``sequence_parallel``, ``zero`` and ``virtual_stages``
(the interleaved 1F1B schedule) are ``techniques``.
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.plan import Plan
from simulator.schema import choice, integer, list_of, string
from simulator.strategies import stages, techniques
from simulator.strategies.common import Context, split_batch

OPTIONS = {
    "data": (integer(1), 1),
    "pipeline": (integer(1), 1),
    "tensor": (integer(1), 1),
    "micro_batches": (integer(1), None),
    "schedule": (choice(("gpipe", "1f1b")), "1f1b"),
    "virtual_stages": (integer(1), 1),
    "partition": (list_of(string), None),
    **techniques.OPTIONS,
}


def grid(options: dict) -> stages.Grid:
    o = options
    return stages.Grid(data=o["data"], pipeline=o["pipeline"], tensor=o["tensor"],
                       micro_batches=o["micro_batches"] or o["pipeline"],
                       schedule=o["schedule"], virtual=o["virtual_stages"],
                       partition=o["partition"], recompute=o["recompute"],
                       sequence_parallel=o["sequence_parallel"], zero=o["zero"])


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
    stages.check_grid(options, graph, training, grid(options), path)


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    g = grid(o)
    ranks, memory, groups, parts, split = stages.build(ctx, g)
    mb = ctx.training.batch_size // g.data // g.micro_batches
    return Plan(strategy=spec.name, scheme="parallel_3d", mode="sync",
                samples_per_period=mb * g.micro_batches * g.data, period_steps=1,
                ranks=tuple(ranks), groups=groups, memory=tuple(memory),
                mirrors=stages.mirrors(g),
                options={**o, "micro_batches": g.micro_batches,
                         "partition": [q[0] for q in parts], **split})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): pipeline and tensor
    degrees kept, the data degree grown; None when they do not divide the devices."""
    model = raw.get("pipeline", 1) * raw.get("tensor", 1)
    if devices % model:
        return None
    return {**raw, "data": devices // model}

"""Synchronous data parallel (Zinkevich et al. 2010; FireCaffe; Horovod).

Every worker holds the whole model and runs forward and backward on its share of the global
batch; gradients are averaged by a ring, tree or hierarchical all-reduce, or pushed to and pulled
from a parameter server sharded over the PS hosts; then every worker applies the same update.

Options: gradient bucketing (``bucket_MiB``) with communication overlapping backward
(``overlap``), ``local_steps`` > 1 for model averaging (exchange every k steps, as in the
parallel DBN pre-training scheme, where each node trains locally before the master averages),
``gradient_accumulation`` (each worker's batch in that many micro-batches, gradients summed,
exchanged once), and the techniques of ``techniques``: ``recompute`` and ``zero`` (stages 1-3
over all the workers).
"""

from __future__ import annotations

from simulator import limits
from simulator.errors import ScenarioError
from simulator.plan import (
    COMM,
    Collective,
    MemoryNeed,
    Plan,
    ProgramBuilder,
    PSPull,
    PSPush,
)
from simulator.schema import boolean, choice, integer, number
from simulator.strategies import techniques
from simulator.strategies.common import (
    Context,
    buckets,
    check_devices,
    replicas,
    split_batch,
    update_op,
    wgrad_tensor,
)
from simulator.strategies.memory import memory_need
from simulator.strategies.sharding import Layout
from simulator.strategies.zero import Zero, emit_phase, reduce_gradients
from simulator.strategies.zero import update as zero_update

EXCHANGES = ("ring", "tree", "hierarchical", "mpi", "ps")

OPTIONS = {
    "devices": (integer(1), None),
    "exchange": (choice(EXCHANGES), "ring"),
    "bucket_MiB": (number(positive=False, minimum=0), 0.0),
    "overlap": (boolean, False),
    "local_steps": (integer(1), 1),
    "gradient_accumulation": (integer(1), 1),
    "recompute": techniques.OPTIONS["recompute"],
    "zero": techniques.OPTIONS["zero"],
}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    devices = check_devices(options, "devices", cluster, path)
    per = split_batch(training.batch_size, devices, f"{path}.devices")
    split_batch(per, options["gradient_accumulation"], f"{path}.gradient_accumulation",
                "micro-batches")
    if options["exchange"] == "ps" and cluster.parameter_servers is None:
        raise ScenarioError("exchange 'ps' needs cluster.parameter_servers",
                            path=f"{path}.exchange", value="ps", has_value=True)
    if options["overlap"] and options["exchange"] == "ps":
        raise ScenarioError("overlap is modelled for all-reduce exchanges only",
                            path=f"{path}.overlap", value=True, has_value=True)
    techniques.check_zero(options, devices, path)
    limits.check_repeats("local steps x micro-batches",
                         options["local_steps"] * options["gradient_accumulation"],
                         f"{path}.local_steps")
    if options["zero"] and options["exchange"] == "ps":
        raise ScenarioError("ZeRO shards over an all-reduce group; a parameter server already "
                            "holds the model's state", path=f"{path}.zero",
                            value=options["zero"], has_value=True)
    if options["zero"] and options["local_steps"] > 1:
        raise ScenarioError("ZeRO with model averaging (local_steps > 1) is not modelled: each "
                            "rank would need the whole optimizer state between exchanges",
                            path=f"{path}.zero", value=options["zero"], has_value=True)
    techniques.check_recompute(options, graph, path)


def worker_program(ctx: Context, o: dict, per_worker: int, shards: int, workers: int) -> tuple:
    """The one program every worker runs (shared by all ranks: ops are immutable)."""
    b = ProgramBuilder()
    total_params = sum(ctx.node(n)["params"] for n in ctx.layers)
    lay = Layout({n: "rep" for n in ctx.layers}, 1)
    redo = techniques.recomputed(ctx, ctx.layers, o["recompute"])
    acc = o["gradient_accumulation"]
    micro = per_worker // acc
    zero = (Zero(o["zero"], "world", workers, o["bucket_MiB"], o["overlap"])
            if o["zero"] else None)
    last_bwd: dict[str, int] = {}
    for step in range(o["local_steps"]):
        for a in range(acc):
            mb = step * acc + a
            emit_phase(b, ctx, ctx.layers, lay, "fwd", micro, "world", zero, micro_batch=mb,
                       recompute=redo)
            last_bwd.clear()
            emit_phase(b, ctx, ctx.layers, lay, "bwd", micro, "world", zero, micro_batch=mb,
                       recompute=redo, last_bwd=last_bwd)
            if zero is not None and zero.stage == 2 and a < acc - 1:
                reduce_gradients(b, ctx, ctx.layers, lay, zero, last_bwd, b.last(), mb)
        if step < o["local_steps"] - 1:
            update_op(b, ctx, total_params, deps=())
    end_of_backward = b.last()
    if zero is not None:
        colls = (reduce_gradients(b, ctx, ctx.layers, lay, zero, last_bwd, end_of_backward,
                                  acc - 1) if zero.stage < 3 else [end_of_backward])
        zero_update(b, ctx, ctx.layers, lay, zero, total_params, deps=tuple(colls))
        return tuple(b.ops)
    if shards:  # the parameter server updates; workers push gradients and pull parameters
        shard_bytes = total_params * ctx.bpe / shards
        for j in range(shards):
            push = b.add(PSPush, stream=COMM, deps=(end_of_backward,), shard=j,
                         bytes=shard_bytes, tag=f"grad{j}")
            b.add(PSPull, stream=COMM, deps=(push,), shard=j, bytes=shard_bytes,
                  tag=f"param{j}")
        return tuple(b.ops)
    colls = []
    bucket_bytes = o["bucket_MiB"]  # already bytes: units become SI at load
    for i, bucket in enumerate(buckets(ctx, list(reversed(ctx.layers)), bucket_bytes)
                               if workers > 1 else ()):
        dep = last_bwd[bucket[-1]] if o["overlap"] else end_of_backward
        colls.append(b.add(Collective, stream=COMM, deps=(dep,), collective="allreduce",
                           algorithm=o["exchange"], group="world",
                           bytes=ctx.param_bytes(bucket), key=f"grad{i}",
                           tensor=wgrad_tensor(ctx, bucket)))
    update_op(b, ctx, total_params, deps=tuple(colls))
    return tuple(b.ops)


def need(ctx: Context, o: dict) -> MemoryNeed:
    """A worker's memory for the model (its batch's inputs come on top, ``replicas``): what a
    plan search checks before it builds the plan."""
    workers = o["devices"] or ctx.cluster.spec.device_count
    micro = ctx.training.batch_size // workers // o["gradient_accumulation"]
    return memory_need(ctx, ctx.cluster.devices[0], ctx.layers, act_samples=micro,
                       zero=o["zero"], dp=workers, recompute=o["recompute"])


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    workers = o["devices"] or ctx.cluster.spec.device_count
    per_worker = ctx.training.batch_size // workers
    ps_hosts = ctx.cluster.ps_hosts() if o["exchange"] == "ps" else []
    ops = worker_program(ctx, o, per_worker, len(ps_hosts), workers)
    # a rank reads its per-worker batch for every local step of the period
    ranks, memory = replicas(ctx, ops, workers, ps_hosts, need(ctx, o),
                             per_worker * o["local_steps"])
    return Plan(strategy=spec.name, scheme="data_parallel", mode="sync",
                samples_per_period=per_worker * workers * o["local_steps"],
                period_steps=o["local_steps"], ranks=ranks,
                groups={"world": tuple(range(workers))}, memory=memory,
                mirrors=node_shift(workers, ctx.cluster.spec.devices_per_node, ps_hosts),
                options={**o, "workers": workers})


def node_shift(workers: int, per_node: int, servers: list[str]) -> tuple[tuple[int, ...], ...]:
    """Every worker runs the same program over one ring of all workers: moving each worker
    to the same GPU of the next node (the last node's to the first) leaves the plan as it is
    (``Plan.mirrors``): the ring's flows are each other's images node by node. Not with a
    parameter server (its shards tell the workers apart in time) or a partial node."""
    if servers or workers % per_node or workers <= per_node:
        return ()
    return (tuple((r + per_node) % workers for r in range(workers)),)


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all of them."""
    return {**raw, "devices": devices}

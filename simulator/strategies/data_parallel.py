"""Synchronous data parallel (Zinkevich et al. 2010; FireCaffe; Horovod).

Every worker holds the whole model and runs forward and backward on its share of the global
batch; gradients are averaged by a ring, tree or hierarchical all-reduce, or pushed to and pulled
from a parameter server sharded over the PS hosts; then every worker applies the same update.

Options: gradient bucketing (``bucket_MiB``) with communication overlapping backward
(``overlap``), and ``local_steps`` > 1 for model averaging (exchange every k steps, as in the
parallel DBN pre-training scheme, where each node trains locally before the master averages).
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.plan import (
    COMM,
    Collective,
    Plan,
    ProgramBuilder,
    PSPull,
    PSPush,
)
from simulator.schema import boolean, choice, integer, number
from simulator.strategies.common import (
    Context,
    buckets,
    check_devices,
    compute_op,
    replicas,
    split_batch,
    update_op,
    wgrad_tensor,
)

EXCHANGES = ("ring", "tree", "hierarchical", "mpi", "ps")

OPTIONS = {
    "devices": (integer(1), None),
    "exchange": (choice(EXCHANGES), "ring"),
    "bucket_MiB": (number(positive=False, minimum=0), 0.0),
    "overlap": (boolean, False),
    "local_steps": (integer(1), 1),
}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    devices = check_devices(options, "devices", cluster, path)
    split_batch(training.batch_size, devices, f"{path}.devices")
    if options["exchange"] == "ps" and cluster.parameter_servers is None:
        raise ScenarioError("exchange 'ps' needs cluster.parameter_servers",
                            path=f"{path}.exchange", value="ps", has_value=True)
    if options["overlap"] and options["exchange"] == "ps":
        raise ScenarioError("overlap is modelled for all-reduce exchanges only",
                            path=f"{path}.overlap", value=True, has_value=True)


def worker_program(ctx: Context, o: dict, per_worker: int, shards: int, workers: int) -> tuple:
    """The one program every worker runs (shared by all ranks: ops are immutable)."""
    b = ProgramBuilder()
    total_params = sum(ctx.node(n)["params"] for n in ctx.layers)
    last_bwd: dict[str, int] = {}
    for step in range(o["local_steps"]):
        for n in ctx.layers:
            compute_op(b, ctx, n, "fwd", per_worker, micro_batch=step)
        for n in reversed(ctx.layers):
            last_bwd[n] = compute_op(b, ctx, n, "bwd", per_worker, micro_batch=step)
        if step < o["local_steps"] - 1:
            update_op(b, ctx, total_params, deps=())
    end_of_backward = b.last()
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


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    workers = o["devices"] or ctx.cluster.spec.device_count
    per_worker = ctx.training.batch_size // workers
    ps_hosts = ctx.cluster.ps_hosts() if o["exchange"] == "ps" else []
    ops = worker_program(ctx, o, per_worker, len(ps_hosts), workers)
    # a rank reads its per-worker batch for every local step of the period
    ranks, memory = replicas(ctx, ops, workers, ps_hosts, per_worker,
                             per_worker * o["local_steps"])
    return Plan(strategy=spec.name, scheme="data_parallel", mode="sync",
                samples_per_period=per_worker * workers * o["local_steps"],
                period_steps=o["local_steps"], ranks=ranks,
                groups={"world": tuple(range(workers))}, memory=memory,
                options={**o, "workers": workers})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all of them."""
    return {**raw, "devices": devices}

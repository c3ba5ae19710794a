"""Downpour SGD (Dean et al. 2012, DistBelief): asynchronous data parallel with a sharded
parameter server.

Model replicas never wait for each other. Each worker fetches the parameters from every shard
every ``n_fetch`` steps, computes a gradient on its own mini-batch each step, and pushes the
accumulated gradient to every shard every ``n_push`` steps. Shards apply each push as it arrives
(``updater``: SGD, or Adagrad as DistBelief used: one more state copy). Pushes do not block the
worker's compute; a fetch does (the next step needs the parameters).

A program is one period of lcm(n_fetch, n_push) steps; the engine repeats it. Staleness of a push
= the number of updates the shard applied between the worker's fetch and this push.
"""

from __future__ import annotations

import math

from simulator.errors import ScenarioError
from simulator.plan import COMM, Plan, ProgramBuilder, PSPull, PSPush
from simulator.schema import choice, integer
from simulator.strategies.common import Context, check_devices, compute_op, replicas
from simulator.strategies.memory import memory_need

OPTIONS = {
    "workers": (integer(1), None),
    "n_fetch": (integer(1), 1),
    "n_push": (integer(1), 1),
    "batch_per_worker": (integer(1), None),
    "updater": (choice(("sgd", "adagrad")), "adagrad"),
}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    workers = check_devices(options, "workers", cluster, path)
    if cluster.parameter_servers is None:
        raise ScenarioError("Downpour needs cluster.parameter_servers", path=f"{path}.scheme",
                            value="downpour", has_value=True)
    if options["batch_per_worker"] is None and training.batch_size < workers:
        raise ScenarioError(f"the batch of {training.batch_size} cannot be split over "
                            f"{workers} workers", path=f"{path}.workers", value=workers,
                            has_value=True)


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    workers = o["workers"] or ctx.cluster.spec.device_count
    per_worker = o["batch_per_worker"] or ctx.training.batch_size // workers
    hosts = ctx.cluster.ps_hosts()
    total = sum(ctx.node(n)["params"] for n in ctx.layers)
    shard_bytes = total * ctx.bpe / len(hosts)
    period = math.lcm(o["n_fetch"], o["n_push"])
    b = ProgramBuilder()
    for step in range(period):
        fetched: tuple[int, ...] = ()
        if step % o["n_fetch"] == 0:
            fetched = tuple(b.add(PSPull, stream=COMM, shard=j, bytes=shard_bytes,
                                  tag=f"param{j}") for j in range(len(hosts)))
        first = True
        for n in ctx.layers:
            compute_op(b, ctx, n, "fwd", per_worker, micro_batch=step,
                       deps=fetched if first else ())
            first = False
        for n in reversed(ctx.layers):
            compute_op(b, ctx, n, "bwd", per_worker, micro_batch=step)
        if (step + 1) % o["n_push"] == 0:
            end = b.last("compute")
            for j in range(len(hosts)):
                b.add(PSPush, stream=COMM, deps=(end,), shard=j, bytes=shard_bytes,
                      tag=f"grad{j}")
    need = memory_need(ctx, ctx.cluster.devices[0], ctx.layers, act_samples=per_worker)
    ranks, memory = replicas(ctx, tuple(b.ops), workers, hosts, need, per_worker * period)
    return Plan(strategy=spec.name, scheme="downpour", mode="async",
                samples_per_period=per_worker * workers * period, period_steps=period,
                ranks=ranks, groups={"world": tuple(range(workers))}, memory=memory,
                options={**o, "workers": workers, "batch_per_worker": per_worker})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all are workers."""
    return {**raw, "workers": devices}

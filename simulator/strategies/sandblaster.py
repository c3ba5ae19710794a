"""Sandblaster L-BFGS (Dean et al. 2012): batch optimisation with load balancing.

Per batch: every worker fetches the parameters from the shards; a coordinator splits the batch
into many more work portions than workers and hands each to whichever worker asks (slow workers
simply take fewer portions); each portion's gradient is pushed to (accumulated on) the shards;
when the batch is done the coordinator has every shard take one L-BFGS step. The coordinator runs
on the first parameter-server host; each request is one round trip to it.

The L-BFGS step on a shard is memory-bound: with a history of m correction pairs the two-loop
recursion reads the 2m stored vectors twice and touches the gradient, direction and weights
(Nocedal & Wright, Numerical Optimization, alg. 7.4): about (4m + 4) x shard bytes.
"""

from __future__ import annotations

from dataclasses import replace

from simulator.errors import ScenarioError
from simulator.plan import (
    COMM,
    Barrier,
    Plan,
    ProgramBuilder,
    PSPull,
    PSPush,
    WorkLoop,
)
from simulator.schema import integer
from simulator.strategies.common import Context, check_devices, compute_op, replicas
from simulator.strategies.memory import memory_need

OPTIONS = {
    "workers": (integer(1), None),
    "portions": (integer(1), None),
    "history": (integer(1), 10),
}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    workers = check_devices(options, "workers", cluster, path)
    if cluster.parameter_servers is None:
        raise ScenarioError("Sandblaster needs cluster.parameter_servers",
                            path=f"{path}.scheme", value="sandblaster", has_value=True)
    portions = options["portions"] or 4 * workers
    if portions > training.batch_size:
        raise ScenarioError(f"more portions than the batch's {training.batch_size} samples",
                            path=f"{path}.portions", value=portions, has_value=True)


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    workers = o["workers"] or ctx.cluster.spec.device_count
    portions = o["portions"] or 4 * workers
    per_portion = ctx.training.batch_size // portions
    hosts = ctx.cluster.ps_hosts()
    total = sum(ctx.node(n)["params"] for n in ctx.layers)
    shard_bytes = total * ctx.bpe / len(hosts)
    body = ProgramBuilder()
    for n in ctx.layers:
        compute_op(body, ctx, n, "fwd", per_portion)
    for n in reversed(ctx.layers):
        compute_op(body, ctx, n, "bwd", per_portion)
    end = body.last()
    for j in range(len(hosts)):
        body.add(PSPush, stream=COMM, deps=(end,), shard=j, bytes=shard_bytes, tag=f"grad{j}")
    coordinator = workers  # the first server rank hosts the coordinator
    b = ProgramBuilder()
    pulls = tuple(b.add(PSPull, stream=COMM, shard=j, bytes=shard_bytes, tag=f"param{j}")
                  for j in range(len(hosts)))
    loop = b.add(WorkLoop, stream=COMM, deps=pulls, coordinator=coordinator,
                 body=tuple(body.ops))
    b.add(Barrier, stream=COMM, deps=(loop,), group="world", key="batch")
    need = memory_need(ctx, ctx.cluster.devices[0], ctx.layers, act_samples=per_portion)
    ranks, memory = replicas(ctx, tuple(b.ops), workers, hosts, need)
    # any worker may be handed any portion: each may read the whole batch
    batch = (0, per_portion * portions)
    ranks = tuple(replace(r, inputs=batch, labels=batch) if r.role == "worker" else r
                  for r in ranks)
    return Plan(strategy=spec.name, scheme="sandblaster", mode="batch",
                samples_per_period=per_portion * portions, period_steps=1, ranks=ranks,
                groups={"world": tuple(range(workers)),
                        "servers": tuple(range(workers, workers + len(hosts)))},
                memory=memory, portions=portions,
                options={**o, "workers": workers, "portions": portions,
                         "step_bytes_per_shard": (4 * o["history"] + 4) * shard_bytes})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all are workers,
    with the portions per worker kept."""
    out = {**raw, "workers": devices}
    if "portions" in raw and "workers" in raw:
        out["portions"] = max(devices, raw["portions"] * devices // raw["workers"])
    elif "portions" in raw:
        out.pop("portions")
    return out

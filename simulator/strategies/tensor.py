"""Model parallel within layers (Krizhevsky et al. 2012, AlexNet on two GPUs; Megatron-LM).

The chosen layers' neurons / filters / heads are split over K devices (see ``sharding`` for the
states and the collectives each edge needs); the other layers are computed whole on every device.
Every device sees the whole batch: this is pure model parallelism, no data parallelism.
With the ``alexnet_2gpu`` model the grouped convolutions stay on their tower and only conv3 and
the fully connected layers exchange activations, as in the paper.
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.plan import Plan, ProgramBuilder, RankProgram
from simulator.schema import integer, list_of, string
from simulator.strategies import sharding
from simulator.strategies.common import Context, check_devices, memory_need, update_op

OPTIONS = {
    "devices": (integer(1), 2),
    "layers": (list_of(string), None),
}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    k = check_devices(options, "devices", cluster, path)
    for i, name in enumerate(options["layers"] or ()):
        if name not in graph:
            raise ScenarioError("no such layer in the model", path=f"{path}.layers[{i}]",
                                value=name, has_value=True)
        node = graph.nodes[name]
        if node["kind"] not in sharding.SPLITTABLE or node["split_dim"] < k:
            raise ScenarioError(f"a {node['kind']} layer of split size {node['split_dim']} "
                                f"cannot be split over {k} devices", path=f"{path}.layers[{i}]",
                                value=name, has_value=True)


def split_set(ctx: Context, chosen: tuple[str, ...] | None, k: int) -> set[str]:
    if chosen is not None:
        return set(chosen)
    return {n for n in ctx.layers
            if ctx.node(n)["kind"] in sharding.SPLITTABLE and ctx.node(n)["split_dim"] >= k}


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    k = spec.options["devices"]
    batch = ctx.training.batch_size
    st = sharding.states(ctx, ctx.layers, split_set(ctx, spec.options["layers"], k), k)
    sh = sharding.shards(st, k)
    params = sum(ctx.node(n)["params"] / sh[n] for n in ctx.layers)

    def program(t: int) -> tuple:
        """Device t computes shard t of every split layer."""
        b = ProgramBuilder()
        sharding.emit(b, ctx, ctx.layers, st, k, "fwd", batch, "tp", shard=t)
        last = sharding.emit(b, ctx, ctx.layers, st, k, "bwd", batch, "tp", shard=t)
        update_op(b, ctx, params, deps=(last,) if last is not None else ())
        return tuple(b.ops)

    ranks = tuple(RankProgram(rank=t, device=ctx.cluster.devices[t], role="worker",
                              ops=program(t), inputs=(0, batch), labels=(0, batch))
                  for t in range(k))
    memory = tuple(memory_need(ctx, r.device, ctx.layers, act_samples=batch, shards=sh)
                   for r in ranks)
    return Plan(strategy=spec.name, scheme="tensor", mode="sync", samples_per_period=batch,
                period_steps=1, ranks=ranks, groups={"tp": tuple(range(k))}, memory=memory,
                options={**spec.options, "states": st})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all of them."""
    out = {**raw, "devices": devices}
    out.pop("layers", None)
    return out

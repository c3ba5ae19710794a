"""Model parallel within layers (Krizhevsky et al. 2012, AlexNet on two GPUs; Megatron-LM).

The chosen layers' neurons / filters / heads are split over K devices (see ``sharding`` for the
states and the collectives each edge needs); the other layers are computed whole on every device.
Every device sees the whole batch: this is pure model parallelism, no data parallelism.
``sequence_parallel`` and ``recompute`` as in ``techniques``.
With the ``alexnet_2gpu`` model the grouped convolutions stay on their tower and only conv3 and
the fully connected layers exchange activations, as in the paper.
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.plan import Plan, ProgramBuilder, RankProgram
from simulator.schema import integer, list_of, string
from simulator.strategies import sharding, techniques
from simulator.strategies.common import Context, check_devices, update_op
from simulator.strategies.memory import layer_params, memory_need
from simulator.strategies.sharding import sp_grad_allreduce

OPTIONS = {
    "devices": (integer(1), 2),
    "layers": (list_of(string), None),
    "recompute": techniques.OPTIONS["recompute"],
    "sequence_parallel": techniques.OPTIONS["sequence_parallel"],
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
    techniques.check_recompute(options, graph, path)
    techniques.check_sequence_parallel(options, k, path)
    if options["layers"] is None:
        sharding.check_splittable(graph, k, f"{path}.devices")
        techniques.check_heads(graph, k, f"{path}.devices")
    if options["sequence_parallel"]:
        ctx = techniques.graph_context(graph, training)
        st = sharding.states(ctx, ctx.layers, split_set(ctx, options["layers"], k), k)
        sharding.sequence_split(ctx, ctx.layers, st, k, f"{path}.sequence_parallel")


def split_set(ctx: Context, chosen: tuple[str, ...] | None, k: int) -> set[str]:
    if chosen is not None:
        return set(chosen)
    return {n for n in ctx.layers
            if ctx.node(n)["kind"] in sharding.SPLITTABLE and ctx.node(n)["split_dim"] >= k}


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    k = spec.options["devices"]
    batch = ctx.training.batch_size
    lay = sharding.layout(ctx, ctx.layers, split_set(ctx, spec.options["layers"], k), k,
                          spec.options["sequence_parallel"])
    st = lay.states
    sh = lay.param_shards()
    params = sum(layer_params(ctx, n, sh[n]) for n in ctx.layers)
    redo = techniques.recomputed(ctx, ctx.layers, spec.options["recompute"])

    def program(t: int) -> tuple:
        """Device t computes shard t of every split layer."""
        b = ProgramBuilder()
        sharding.emit(b, ctx, ctx.layers, lay, "fwd", batch, "tp", shard=t)
        last = sharding.emit(b, ctx, ctx.layers, lay, "bwd", batch, "tp", shard=t,
                             recompute=redo)
        deps = (last,) if last is not None else ()
        sp = sharding.sp_grad_layers(ctx, lay, ctx.layers)
        if sp:
            deps = (sp_grad_allreduce(b, ctx, sp, "tp", deps),)
        update_op(b, ctx, params, deps=deps)
        return tuple(b.ops)

    ranks = tuple(RankProgram(rank=t, device=ctx.cluster.devices[t], role="worker",
                              ops=program(t), inputs=(0, batch), labels=(0, batch))
                  for t in range(k))
    memory = tuple(memory_need(ctx, r.device, ctx.layers, act_samples=batch, layout=lay,
                               recompute=spec.options["recompute"]) for r in ranks)
    return Plan(strategy=spec.name, scheme="tensor", mode="sync", samples_per_period=batch,
                period_steps=1, ranks=ranks, groups={"tp": tuple(range(k))}, memory=memory,
                options={**spec.options, "states": st, "sequence_split": sorted(lay.seq)})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all of them."""
    out = {**raw, "devices": devices}
    out.pop("layers", None)
    return out

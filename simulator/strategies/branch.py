"""Branch-parallel placement of a wide network's towers (Szegedy et al. 2014, GoogLeNet-style
Inception blocks; DistBelief's model parallelism of locally connected towers).

Layers outside the parallel branches run on the master device (device 0). In every block, branch
i runs on device i mod K: the master sends the block input to each device that holds a branch,
waits for the branch outputs and concatenates them. Backward mirrors it: the master sends each
branch's share of the output gradient, the branch devices return the input gradients, which the
master sums. Every device sees the whole batch. Branches placed on the master run there.
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.plan import Plan, ProgramBuilder, RankProgram, Recv, Send
from simulator.schema import integer
from simulator.strategies.common import Context, check_devices, compute_op, update_op
from simulator.strategies.memory import memory_need

OPTIONS = {"devices": (integer(1), None)}


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    check_devices(options, "devices", cluster, path)
    if not any(graph.nodes[n].get("branch") for n in graph):
        raise ScenarioError("the model has no parallel branches (try the 'inception' model)",
                            path=f"{path}.scheme", value="branch", has_value=True)


def placement(ctx: Context, k: int) -> dict[str, int]:
    """Device of every layer: branch i of a block on device i mod k, the rest on device 0."""
    out = {}
    for n in ctx.layers:
        br = ctx.node(n).get("branch")
        out[n] = int(br.rsplit("/", 1)[1]) % k if br else 0
    return out


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    k = min(spec.options["devices"] or 4, ctx.cluster.spec.device_count)
    batch = ctx.training.batch_size
    where = placement(ctx, k)
    progs = [ProgramBuilder() for _ in range(k)]
    bpe = ctx.bpe
    for phase in ("fwd", "bwd"):
        order = ctx.layers if phase == "fwd" else list(reversed(ctx.layers))
        for n in order:
            d = where[n]
            b = progs[d]
            deps: list[int] = []
            neighbours = (ctx.graph.predecessors(n) if phase == "fwd"
                          else ctx.graph.successors(n))
            for p in neighbours:
                src = where[p]
                if src == d:
                    continue
                elems = ctx.node(p)["out_elems"] if phase == "fwd" else ctx.node(n)["out_elems"]
                tag = f"{phase}:{p}>{n}"
                # forward: p's output goes to n's device; backward (p is n's successor here):
                # the gradient p's backward produced for its input, i.e. n's output
                tensor = f"act:{p}" if phase == "fwd" else f"din:{p}"
                last_src = progs[src].last("compute")
                progs[src].add(Send, stream="p2p", deps=(last_src,) if last_src is not None
                               else (), peer=d, bytes=float(elems * batch * bpe), tag=tag,
                               tensor=tensor)
                deps.append(b.add(Recv, stream="p2p", peer=src,
                                  bytes=float(elems * batch * bpe), tag=tag, tensor=tensor))
            compute_op(b, ctx, n, phase, batch, deps=tuple(deps))
    ranks = []
    memory = []
    for d, b in enumerate(progs):
        mine = [n for n in ctx.layers if where[n] == d]
        params = sum(ctx.node(n)["params"] for n in mine)
        last = b.last("compute")
        update_op(b, ctx, params, deps=(last,) if last is not None else ())
        ranks.append(RankProgram(rank=d, device=ctx.cluster.devices[d], role="worker",
                                 inputs=(0, batch) if d == 0 else (0, 0),
                                 labels=(0, batch) if d == 0 else (0, 0),
                                 ops=tuple(b.ops)))
        memory.append(memory_need(ctx, ctx.cluster.devices[d], mine, act_samples=batch))
    return Plan(strategy=spec.name, scheme="branch", mode="sync", samples_per_period=batch,
                period_steps=1, ranks=tuple(ranks), groups={"world": tuple(range(k))},
                memory=tuple(memory), options={**spec.options, "devices": k})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all of them."""
    return {**raw, "devices": devices}

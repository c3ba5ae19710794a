"""The programs of a data x pipeline x tensor grid of ranks, shared by ``pipeline`` and
``parallel_3d``: layers cut into pipeline parts, each part split over a tensor group, the
schedule's forwards and backwards with the messages between parts, then the gradient exchanges
and the update; and each device's memory.

Ranks: rank = d x (P x T) + p x T + t (tensor innermost: a tensor group shares a node's fast
links). With V virtual stages (the interleaved schedule) the model is cut into P x V parts and
device p holds parts c x P + p, c < V.

Partition: ``partition.partition`` (as given; whole blocks per part, Megatron-LM's; or
contiguous parts balanced by FLOPs).

After the last backward, on the comm stream in this order: the sequence-split layers' gradients
all-reduced over the tensor group (``sharding``); a tied embedding's gradients all-reduced
between the first part's embedding and the last part's copy for the output layer, when they are
on different devices (Megatron-LM keeps that copy and its ``embedding group``); the data-parallel
exchange (an all-reduce, or ZeRO's reduce-scatters, ``zero``); then the update.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simulator import limits
from simulator.errors import ScenarioError
from simulator.plan import (
    COMM,
    Collective,
    ImageOps,
    MemoryNeed,
    ProgramBuilder,
    RankProgram,
    Recv,
    Send,
)
from simulator.strategies import schedules, sharding, techniques
from simulator.strategies.common import Context, update_op
from simulator.strategies.memory import layer_params, memory_need
from simulator.strategies.partition import (
    blocks_of,
    boundary_elems,
    boundary_layers,
    boundary_tensor,
    explicit,
    partition,
)
from simulator.strategies.zero import Zero, emit_phase, reduce_gradients
from simulator.strategies.zero import update as zero_update


@dataclass(frozen=True)
class Grid:
    data: int
    pipeline: int
    tensor: int
    micro_batches: int
    schedule: str = "1f1b"
    virtual: int = 1
    partition: tuple[str, ...] | None = None
    recompute: str = "none"
    sequence_parallel: bool = False
    zero: int = 0
    dp_group: str = "dp{p}_{t}"  # names, formatted with d, p, t
    tp_group: str = "tp{d}_{p}"
    grad_key: str = "grad"

    @property
    def parts(self) -> int:
        return self.pipeline * self.virtual

    def rank(self, d: int, p: int, t: int) -> int:
        return d * self.pipeline * self.tensor + p * self.tensor + t


def check_grid(options: dict, graph, training, grid: Grid, path: str) -> None:  # noqa: ANN001
    """Load-time checks of the techniques on a grid (each names its option)."""
    techniques.check_zero(options, grid.data, path)
    limits.check_repeats("micro-batches", grid.micro_batches * grid.virtual,
                         f"{path}.micro_batches")
    sharding.check_splittable(graph, grid.tensor, f"{path}.tensor")
    techniques.check_sequence_parallel(options, grid.tensor, path)
    techniques.check_recompute(options, graph, path)
    v = grid.virtual
    if v > 1:
        if grid.schedule != "1f1b":
            raise ScenarioError("virtual stages interleave the 1F1B schedule (schedule: 1f1b)",
                                path=f"{path}.virtual_stages", value=v, has_value=True)
        if grid.pipeline < 2:
            raise ScenarioError("virtual stages need a pipeline of at least 2 stages",
                                path=f"{path}.virtual_stages", value=v, has_value=True)
        if grid.micro_batches % grid.pipeline:
            raise ScenarioError(f"the interleaved schedule needs the micro-batches "
                                f"({grid.micro_batches}) to be a multiple of the pipeline "
                                f"stages ({grid.pipeline}), as Megatron-LM does",
                                path=f"{path}.virtual_stages", value=v, has_value=True)
        ctx = techniques.graph_context(graph, training)
        blocks = techniques.per_model(graph, ("blocks",), lambda: blocks_of(ctx))
        if grid.partition is None and blocks and len(blocks) % grid.parts:
            raise ScenarioError(f"{grid.pipeline} stages x {v} virtual stages = {grid.parts} "
                                f"model chunks do not divide the model's {len(blocks)} blocks "
                                f"(give a partition to cut it unevenly)",
                                path=f"{path}.virtual_stages", value=v, has_value=True)
        if grid.parts > graph.number_of_nodes():
            raise ScenarioError(f"{grid.parts} model chunks but the model has "
                                f"{graph.number_of_nodes()} layers",
                                path=f"{path}.virtual_stages", value=v, has_value=True)
    if grid.zero >= 2 and grid.pipeline > 1:
        raise ScenarioError(f"ZeRO stage {grid.zero} shards the gradients, which a pipeline "
                            "accumulates over its micro-batches: DeepSpeed runs pipelines with "
                            "stage 0 or 1 only", path=f"{path}.zero", value=grid.zero,
                            has_value=True)
    if grid.zero >= 2 and grid.sequence_parallel:
        raise ScenarioError("ZeRO stages 2 and 3 scatter each micro-batch's gradients, before "
                            "the sequence-split layer norms' gradients are summed over the "
                            "tensor group (once per step): use stage 1 with sequence "
                            "parallelism", path=f"{path}.zero", value=grid.zero,
                            has_value=True)
    techniques.check_heads(graph, grid.tensor, f"{path}.tensor")
    if grid.sequence_parallel:
        def split_ok() -> str | None:
            try:
                sequence_split(graph, training, grid.tensor, "")
            except ScenarioError as e:
                return e.message
            return None

        refused = techniques.per_model(graph, ("sequence_split", grid.tensor), split_ok)
        if refused is not None:
            raise ScenarioError(refused, path=f"{path}.sequence_parallel", value=True,
                                has_value=True)
    if grid.partition is not None:
        layers = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
        explicit(grid.partition, layers, grid.parts, f"{path}.partition")


def sequence_split(graph, training, tensor: int, path: str) -> None:  # noqa: ANN001
    """Sequence parallelism's check of the whole model split over ``tensor`` devices."""
    ctx = techniques.graph_context(graph, training)
    split = {n for n in ctx.layers if ctx.node(n)["kind"] in sharding.SPLITTABLE}
    st = sharding.states(ctx, ctx.layers, split, tensor)
    sharding.sequence_split(ctx, ctx.layers, st, tensor, path)


@dataclass(frozen=True)
class _Stage:
    """What every rank of one pipeline stage shares: its schedule, layers and their split,
    the tied copies it holds, its parameters and its memory need."""

    steps: list
    layers: list[str]
    layout: sharding.Layout
    copies: list[tuple[str, str]]
    extra: float
    params: float
    need: MemoryNeed

    @staticmethod
    def of(ctx: Context, grid: Grid, p: int, parts: list[list[str]],
           lays: list[sharding.Layout], tied: dict, mb: int) -> _Stage:
        pp, tt, v = grid.pipeline, grid.tensor, grid.virtual
        mine = [c * pp + p for c in range(v)]
        steps = schedules.order(grid.schedule, p, pp, grid.micro_batches, v)
        layers = [n for g in mine for n in parts[g]]
        lay = sharding.Layout({k: s for g in mine for k, s in lays[g].states.items()},
                              tt, frozenset().union(*(lays[g].seq for g in mine)))
        sh = lay.param_shards()
        copies = [(n, owner) for g in mine for n, owner in tied.get(g, [])]
        extra = sum(tied_params(ctx, owner, tt) for _, owner in copies)
        params = sum(layer_params(ctx, n, sh.get(n, 1)) for n in layers) + extra
        weight = {c: sum(ctx.node(n)["out_elems"] for n in parts[c * pp + p]) for c in range(v)}
        flight = schedules.peak_in_flight(steps, weight)
        samples = {n: flight.get(c, 0) * mb for c in range(v) for n in parts[c * pp + p]}
        need = memory_need(ctx, "", layers, act_samples=samples, layout=lay, zero=grid.zero,
                           dp=grid.data, recompute=grid.recompute, micro_batch=mb,
                           extra_params=extra)
        return _Stage(steps, layers, lay, copies, extra, params, need)


@dataclass(frozen=True)
class Shape:
    """What a grid's programs are made from, without the programs: the model cut into parts
    (``grid.parts``: stages x virtual stages), each part's split over the tensor group, its
    recomputed layers, what crosses each cut, and the tied copies (the plan search's estimate
    reads it too, ``simulator/search``)."""

    grid: Grid
    parts: list[list[str]]
    cross: list[float]
    crossing: list[list[str]]
    lays: list[sharding.Layout]
    redo: list[dict[str, str]]
    tied: dict[int, list[tuple[str, str]]]

    @staticmethod
    def of(ctx: Context, grid: Grid, memo: dict | None = None) -> Shape:
        """``memo``: what shapes of other grids of this model worked out already (the cut
        for a number of parts, a part's split and recomputed layers), reused (a plan search
        makes hundreds)."""
        memo = {} if memo is None else memo

        def once(key: tuple, fn):  # noqa: ANN001, ANN202
            if key not in memo:
                memo[key] = fn()
            return memo[key]

        parts, cross, crossing, tied = once(("parts", grid.parts, grid.partition), lambda: (
            (p := partition(ctx, grid.parts, grid.partition)), boundary_elems(ctx, p),
            boundary_layers(ctx, p), tied_copies(ctx, p)))
        split = once(("split",), lambda: {n for n in ctx.layers
                                          if ctx.node(n)["kind"] in sharding.SPLITTABLE})
        t, sp, rec = grid.tensor, grid.sequence_parallel, grid.recompute
        return Shape(grid, parts, cross, crossing,
                     [once(("layout", part[0], part[-1], t, sp),
                           lambda part=part: sharding.layout(ctx, part, split, t, sp))
                      for part in parts],
                     [once(("redo", part[0], part[-1], rec),
                           lambda part=part: techniques.recomputed(ctx, part, rec))
                      for part in parts], tied)

    def boundary(self, ctx: Context, g: int, mb: int) -> float:
        """Bytes of one micro-batch of ``mb`` samples crossing from part g to g + 1 (per
        device)."""
        seq = self.lays[g].seq
        split = bool(seq) and all(n in seq for n in self.crossing[g])
        return self.cross[g] * mb * ctx.bpe / (self.grid.tensor if split else 1)

    def stages(self, ctx: Context, mb: int) -> list[_Stage]:
        return [_Stage.of(ctx, self.grid, p, self.parts, self.lays, self.tied, mb)
                for p in range(self.grid.pipeline)]


def tied_params(ctx: Context, owner: str, shards: int) -> float:
    """The shared (split) part of a tied owner's parameters: an embedding's token table."""
    node = ctx.node(owner)
    return (node["params"] - node.get("unsplit_params", 0)) / shards


def tied_copies(ctx: Context, parts: list[list[str]]) -> dict[int, list[tuple[str, str]]]:
    """Part -> (layer, owner) for layers that share an owner's weight held on another part."""
    part_of = {n: g for g, part in enumerate(parts) for n in part}
    out: dict[int, list[tuple[str, str]]] = {}
    for g, part in enumerate(parts):
        for n in part:
            owner = ctx.node(n).get("tied_to")
            if owner and part_of.get(owner) != g:
                out.setdefault(g, []).append((n, owner))
    return out


def build(ctx: Context, grid: Grid, images: bool = True
          ) -> tuple[list[RankProgram], list[MemoryNeed], dict[str, tuple[int, ...]], list, dict]:
    """(rank programs, memory per device, groups, partition, the split: each split layer's
    state and the sequence-split layers, for the executor) of the grid. ``images``: the ranks
    but (0, p, 0) run the image of its program (else each program is made on its own: the
    same ops, for tests)."""
    dd, pp, tt, m, v = grid.data, grid.pipeline, grid.tensor, grid.micro_batches, grid.virtual
    mb = ctx.training.batch_size // dd // m
    shape = Shape.of(ctx, grid)
    parts, crossing, lays, redo, tied = (shape.parts, shape.crossing, shape.lays, shape.redo,
                                         shape.tied)
    rank = grid.rank
    groups: dict[str, tuple[int, ...]] = {}
    for d in range(dd):
        for p in range(pp):
            groups[grid.tp_group.format(d=d, p=p, t=0)] = tuple(rank(d, p, t) for t in range(tt))
    for p in range(pp):
        for t in range(tt):
            groups[grid.dp_group.format(d=0, p=p, t=t)] = tuple(rank(d, p, t) for d in range(dd))
    owners = {owner for pairs in tied.values() for _, owner in pairs}
    tied_parts = set(tied) | {g for g, part in enumerate(parts) if owners & set(part)}
    if tied:
        for d in range(dd):
            for t in range(tt):
                groups[f"emb{d}_{t}"] = tuple(sorted({rank(d, g % pp, t) for g in tied_parts}))

    def tag(phase: str, i: int, edge: int) -> str:
        return f"{phase}{i}" if v == 1 else f"{phase}{i}@{edge}"

    def boundary(g: int) -> float:
        return shape.boundary(ctx, g, mb)

    def program(d: int, p: int, t: int) -> tuple:
        """The ops of rank (d, p, t)."""
        st = stage[p]
        steps, layers, lay, copies, extra, params = (st.steps, st.layers, st.layout,
                                                     st.copies, st.extra, st.params)
        tp = grid.tp_group.format(d=d, p=p, t=t)
        dp = grid.dp_group.format(d=d, p=p, t=t)
        zero = Zero(grid.zero, dp, dd) if grid.zero else None
        b = ProgramBuilder()
        last_bwd: dict[str, int] = {}
        for phase, i, c in steps:
            g = c * pp + p
            src = g - 1 if phase == "fwd" else g + 1
            deps: tuple[int, ...] = ()
            if 0 <= src < grid.parts:
                edge = min(g, src)
                deps = (b.add(Recv, stream="p2p", peer=rank(d, src % pp, t),
                              bytes=boundary(edge), tag=tag(phase, i, edge), micro_batch=i,
                              tensor=boundary_tensor(phase, crossing[edge])),)
            last = emit_phase(b, ctx, parts[g], lays[g], phase, mb, tp, zero,
                              micro_batch=i, shard=t, deps=deps, recompute=redo[g],
                              last_bwd=last_bwd if phase == "bwd" else None)
            if phase == "bwd" and zero is not None and zero.stage == 2 and i < m - 1:
                reduce_gradients(b, ctx, parts[g], lays[g], zero, last_bwd, b.last(), i)
            dst = g + 1 if phase == "fwd" else g - 1
            if 0 <= dst < grid.parts:
                edge = min(g, dst)
                b.add(Send, stream="p2p", deps=(last,), peer=rank(d, dst % pp, t),
                      bytes=boundary(edge), tag=tag(phase, i, edge), micro_batch=i,
                      tensor=boundary_tensor(phase, crossing[edge]))
        deps = (b.last("compute"),)
        sp = sharding.sp_grad_layers(ctx, lay, layers)
        if sp:
            deps = (sharding.sp_grad_allreduce(b, ctx, sp, tp, deps),)
        held = [n for n in layers if n in owners]
        if copies or held:  # Megatron-LM's embedding group: one table, two places
            deps = (b.add(Collective, stream=COMM, deps=deps, collective="allreduce",
                          algorithm="ring", group=f"emb{d}_{t}",
                          bytes=float(sum(tied_params(ctx, n, tt) for n in held)
                                      + extra) * ctx.bpe,
                          key="tied", tensor="tied:" + ",".join(
                              [n for n, _ in copies] + held)),)
        grads = [n for n in layers if ctx.node(n)["params"]] + [n for n, _ in copies]
        if zero is not None:
            if copies and dd > 1:  # a copy outside ZeRO's segments: reduced whole
                deps = (b.add(Collective, stream=COMM, deps=deps,
                              collective="allreduce", algorithm="ring", group=dp,
                              bytes=extra * ctx.bpe, key="tied-copy",
                              tensor="wgrad:" + ",".join(n for n, _ in copies)),)
            if zero.stage < 3:
                deps = tuple(reduce_gradients(b, ctx, layers, lay, zero, last_bwd,
                                              deps[0], m - 1))
            else:  # the last unit's reduce-scatter, on the comm stream, too
                deps = tuple(x for x in (deps[0], b.last(COMM)) if x is not None)
            zero_update(b, ctx, layers, lay, zero, params, deps=deps)
        else:
            if dd > 1:
                deps = (b.add(Collective, stream=COMM, deps=deps,
                              collective="allreduce", algorithm="ring", group=dp,
                              bytes=params * ctx.bpe,
                              key=grid.grad_key.format(d=d, p=p, t=t),
                              tensor="wgrad:" + ",".join(grads)),)
            update_op(b, ctx, params, deps=deps)
        return tuple(b.ops)

    stage = shape.stages(ctx, mb)
    # rank (0, p, 0)'s program; every other rank of stage p runs its image (``ImageOps``):
    # peers, groups and the shard index moved along the data and tensor axes
    source = [program(0, p, 0) for p in range(pp)]
    ranks, memory = [], []
    for d in range(dd):
        for p in range(pp):
            for t in range(tt):
                if (d, t) == (0, 0):
                    ops = source[p]
                elif not images:
                    ops = program(d, p, t)
                else:
                    ops = ImageOps(source[p], {rank(0, q, 0): rank(d, q, t) for q in range(pp)},
                                   {grid.tp_group.format(d=0, p=p, t=0):
                                    grid.tp_group.format(d=d, p=p, t=t),
                                    grid.dp_group.format(d=0, p=p, t=0):
                                    grid.dp_group.format(d=d, p=p, t=t),
                                    "emb0_0": f"emb{d}_{t}"}, t)
                r = rank(d, p, t)
                dev = ctx.cluster.devices[r]
                replica_batch = (d * mb * m, mb * m)
                ranks.append(RankProgram(rank=r, device=dev, role="worker", ops=ops,
                                         inputs=replica_batch if p == 0 else (0, 0),
                                         labels=replica_batch if p == pp - 1 else (0, 0)))
                memory.append(replace(stage[p].need, device=dev))
    split = {"states": {n: st for lay in lays for n, st in lay.states.items() if st != "rep"},
             "sequence_split": sorted(n for lay in lays for n in lay.seq)}
    return sorted(ranks, key=lambda r: r.rank), memory, groups, parts, split


def mirrors(grid: Grid) -> tuple[tuple[int, ...], ...]:
    """The tensor group's rotation, rank (d, p, t) -> (d, p, t + 1 mod T), and the data
    replicas' shift, (d, p, t) -> (d + 1 mod D, p, t): every program is its image's with the
    shard index, peers and groups moved along (``Plan.mirrors``)."""
    n = grid.data * grid.pipeline * grid.tensor
    out = []
    if grid.tensor > 1:
        out.append(tuple(r - r % grid.tensor + (r + 1) % grid.tensor for r in range(n)))
    if grid.data > 1:
        replica = grid.pipeline * grid.tensor
        out.append(tuple((r + replica) % n for r in range(n)))
    return tuple(out)

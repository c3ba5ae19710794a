"""Cutting a model into pipeline parts: the first layer of each part as the user names it, or
whole blocks per part (Megatron-LM), or contiguous parts minimising the slowest one's FLOPs; and
what crosses each boundary between parts.

A residual edge that skips parts is carried by every part in between (its bytes are added to
each boundary it crosses).
"""

from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.strategies.common import Context


def explicit(firsts: tuple[str, ...], layers: list[str], stages: int, path: str) -> list[int]:
    """Stage start indices from the names of each stage's first layer."""
    index = {n: i for i, n in enumerate(layers)}
    if len(firsts) != stages:
        raise ScenarioError(f"names {len(firsts)} stage(s) but the plan has {stages} stages",
                            path=path, value=list(firsts), has_value=True)
    starts = []
    for i, name in enumerate(firsts):
        if name not in index:
            raise ScenarioError("no such layer in the model", path=f"{path}[{i}]", value=name,
                                has_value=True)
        starts.append(index[name])
    if starts[0] != 0:
        raise ScenarioError(f"the first stage must start at the first layer {layers[0]!r}, so "
                            "that the partition covers every layer", path=f"{path}[0]",
                            value=firsts[0], has_value=True)
    for i in range(1, len(starts)):
        if starts[i] <= starts[i - 1]:
            raise ScenarioError("stages must start at increasing layers (in model order)",
                                path=f"{path}[{i}]", value=firsts[i], has_value=True)
    return starts


def balance(costs: list[float], stages: int) -> list[int]:
    """Contiguous partition minimising the largest stage cost, as stage start indices.

    Binary search on the bottleneck with greedy packing (optimal for non-negative costs);
    every stage gets at least one layer.
    """
    n = len(costs)

    def starts_for(limit: float) -> list[int] | None:
        starts, acc = [0], 0.0
        for i, c in enumerate(costs):
            left_layers, left_stages = n - i, stages - len(starts)
            if i > starts[-1] and (acc + c > limit or left_layers == left_stages):
                starts.append(i)
                acc = 0.0
            acc += c
            if acc > limit:
                return None
        return starts if len(starts) == stages else None

    lo, hi = max(costs), sum(costs)
    for _ in range(60):
        mid = (lo + hi) / 2
        if starts_for(mid) is None:
            lo = mid
        else:
            hi = mid
    result = starts_for(hi)
    assert result is not None
    return result


def stage_layers(ctx: Context, stages: int, partition: tuple[str, ...] | None) -> list[list[str]]:
    layers = ctx.layers
    if partition is not None:
        starts = explicit(partition, layers, stages, "partition")
    else:
        costs = [ctx.node(n)["fwd_flops"] + ctx.node(n)["bwd_flops"] for n in layers]
        starts = balance(costs, stages)
    bounds = [*starts, len(layers)]
    return [layers[bounds[i]:bounds[i + 1]] for i in range(stages)]


def boundary_elems(ctx: Context, parts: list[list[str]]) -> list[int]:
    """Elements per sample crossing each stage boundary s -> s+1 (skip edges included)."""
    stage_of = {n: s for s, part in enumerate(parts) for n in part}
    out = [0] * (len(parts) - 1)
    for n, s in stage_of.items():
        last = max((stage_of[v] for v in ctx.graph.successors(n)), default=s)
        for b in range(s, last):
            out[b] += ctx.node(n)["out_elems"]
    return out


def boundary_layers(ctx: Context, parts: list[list[str]]) -> list[list[str]]:
    """The layers whose outputs cross each stage boundary s -> s+1, in model order."""
    stage_of = {n: s for s, part in enumerate(parts) for n in part}
    out: list[list[str]] = [[] for _ in range(len(parts) - 1)]
    for n in ctx.layers:
        s = stage_of[n]
        last = max((stage_of[v] for v in ctx.graph.successors(n)), default=s)
        for b in range(s, last):
            out[b].append(n)
    return out


def boundary_tensor(phase: str, layers: list[str]) -> str:
    """What crosses a boundary: activations forward, their gradients backward."""
    return ("act:" if phase == "fwd" else "dout:") + ",".join(layers)


def blocks_of(ctx: Context) -> list[str]:
    out: list[str] = []
    for n in ctx.layers:
        block = ctx.node(n).get("block")
        if block and block not in out:
            out.append(block)
    return out


def partition(ctx: Context, parts: int, given: tuple[str, ...] | None) -> list[list[str]]:
    """The layers of each part: as given; else, when the model has blocks (transformer layers)
    and they divide evenly, the same number of blocks per part with the layers before the first
    block on the first part and those after the last on the last (Megatron-LM); else contiguous
    parts balanced by FLOPs (``balance``)."""
    blocks = blocks_of(ctx)
    if given is None and blocks and len(blocks) % parts == 0 and len(blocks) >= parts:
        per = len(blocks) // parts
        starts = [0]
        for i in range(1, parts):
            first = blocks[i * per]
            starts.append(next(j for j, n in enumerate(ctx.layers)
                               if ctx.node(n).get("block") == first))
        bounds = [*starts, len(ctx.layers)]
        return [ctx.layers[bounds[i]:bounds[i + 1]] for i in range(parts)]
    return stage_layers(ctx, parts, given)

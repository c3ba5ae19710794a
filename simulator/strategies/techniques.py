"""Techniques that change what a training step does, shared by the schemes that offer them:
activation recomputation, sequence parallelism, ZeRO, the interleaved pipeline schedule.

Each is Plan content: a strategy emits the extra ops (recomputed forwards, reduce-scatters and
all-gathers) and the memory they free, and both engines run them. Options (scenario keys, the
same on every scheme that takes them):

``recompute: none | selective | full``
    full (Chen et al. 2016; Megatron-LM's "full" with one layer per checkpoint): each checkpoint
    unit keeps only its input and runs its forward again before its backward. A unit is a block
    of the model (a transformer layer, a residual block: the layers sharing a ``block``); layers
    outside blocks are not recomputed (Megatron-LM leaves the embedding and the output layer
    alone), and a model without blocks recomputes every layer on its own.
    selective (Korthikanti et al. 2022, section 5): only the attention core (QK^T, softmax,
    dropout, attention over V) is recomputed: its large seq x seq tensors are not kept.
``sequence_parallel: true | false``
    Korthikanti et al. 2022, section 4.2.2; see ``sharding``. Needs a tensor group (T > 1).
``zero: 0 | 1 | 2 | 3``
    Rajbhandari et al. 2020 (ZeRO; PyTorch FSDP is stage 3), over the data-parallel group of N:
    stage 1 shards the optimizer state, 2 also the gradients, 3 also the parameters. See
    ``zero``. Needs N > 1.
``virtual_stages: V``
    Narayanan et al. 2021 (Megatron-LM's interleaved 1F1B): V model chunks per device; see
    ``schedules``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from simulator.errors import ScenarioError
from simulator.schema import boolean, choice, integer
from simulator.strategies.common import Context

RECOMPUTE = ("none", "selective", "full")

# facts about a model graph that every check and plan of it asks again (``per_model``)
_MODEL_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def per_model(graph, key: tuple, fn: Callable[[], Any]) -> Any:  # noqa: ANN001
    """``fn()``, worked out once per model graph and ``key`` (a plan search checks thousands
    of candidates against one model); forgotten with the graph."""
    facts = _MODEL_FACTS.get(graph)
    if facts is None:
        facts = _MODEL_FACTS[graph] = {}
    if key not in facts:
        facts[key] = fn()
    return facts[key]

OPTIONS = {
    "recompute": (choice(RECOMPUTE), "none"),
    "sequence_parallel": (boolean, False),
    "zero": (integer(0), 0),
}


def check_zero(options: dict, data_degree: int, path: str) -> None:
    zero = options.get("zero", 0)
    if zero > 3:
        raise ScenarioError("must be 0, 1, 2 or 3 (ZeRO's stages)", path=f"{path}.zero",
                            value=zero, has_value=True)
    if zero and data_degree < 2:
        raise ScenarioError(f"ZeRO shards over the data-parallel group, which has "
                            f"{data_degree} rank here: it needs at least 2",
                            path=f"{path}.zero", value=zero, has_value=True)


def check_sequence_parallel(options: dict, tensor_degree: int, path: str) -> None:
    if options.get("sequence_parallel") and tensor_degree < 2:
        raise ScenarioError("sequence parallelism splits along the sequence over the tensor "
                            "group: it needs tensor parallelism (tensor >= 2)",
                            path=f"{path}.sequence_parallel", value=True, has_value=True)


def check_recompute(options: dict, graph, path: str) -> None:  # noqa: ANN001
    if options.get("recompute") == "selective" and not per_model(
            graph, ("attention",),
            lambda: any(d["kind"] == "attention" for _, d in graph.nodes(data=True))):
        raise ScenarioError("selective recomputation recomputes the attention core; this model "
                            "has no attention layer (use full)", path=f"{path}.recompute",
                            value="selective", has_value=True)


def check_heads(graph, tensor: int, path: str) -> None:  # noqa: ANN001
    """Tensor parallelism gives each device whole attention heads (Megatron-LM requires the
    heads to divide by the tensor-parallel size)."""
    if tensor < 2:
        return
    heads = per_model(graph, ("heads",), lambda: [
        (name, d) for name, d in graph.nodes(data=True) if d["kind"] == "attention"])
    for name, d in heads:
        if d["heads"] % tensor:
            raise ScenarioError(f"layer {name!r} has {d['heads']} attention heads, which "
                                f"{tensor} tensor-parallel devices cannot share whole",
                                path=path, value=tensor, has_value=True)


def units(ctx: Context, layers: list[str]) -> dict[str, str]:
    """Each layer's checkpoint unit (its block); layers outside blocks are left out, unless
    the model has no blocks at all, when every layer is its own unit."""
    if not _has_blocks(ctx):
        return {n: n for n in layers}
    out = {}
    for n in layers:
        block = ctx.node(n).get("block")
        if block:
            out[n] = block
    return out


def _has_blocks(ctx: Context) -> bool:
    return per_model(ctx.graph, ("has_blocks",),
                     lambda: any(ctx.node(n).get("block") for n in ctx.layers))


def recomputed(ctx: Context, layers: list[str], mode: str) -> dict[str, str]:
    """The layers run again before backward, each mapped to the unit recomputed together."""
    if mode == "full":
        return units(ctx, layers)
    if mode == "selective":
        return {n: n for n in layers if ctx.node(n)["kind"] == "attention"}
    return {}


def graph_context(graph, training) -> Context:  # noqa: ANN001
    """A Context for load-time checks that read only the model graph (no cluster built)."""
    return Context(graph, None, training)  # type: ignore[arg-type]

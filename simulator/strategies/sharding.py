"""Splitting layers within themselves over K devices (Krizhevsky et al. 2012; Megatron-LM,
Shoeybi et al. 2019), as a state per layer and the collectives its edges need.

States: ``rep`` (every device computes the whole layer), ``col`` (the layer's neurons / filters /
heads are split; its input must be whole), ``local`` (split, and it needs only the matching shard
of a split input: element-wise layers, attention heads after a split QKV, a grouped convolution
whose groups are the towers), ``row`` (a dense layer reading a split input: each device produces a
partial sum of the whole output).

Collectives (S = the whole tensor's bytes for the samples at hand):
  forward  split -> col/rep: all-gather the input;  row: all-reduce the output
  backward split -> col: reduce-scatter the input gradient;  rep -> col: all-reduce it
Weight gradients of split layers stay local; replicated layers see the same data on every device
of the group, so theirs are equal without communication.
"""

from __future__ import annotations

from simulator.plan import COMM, Collective, ProgramBuilder
from simulator.strategies.common import Context, compute_op

SPLITTABLE = frozenset({"dense", "conv", "attention", "rbm"})
# layers that work on a split input shard by shard
FOLLOWS_INPUT = frozenset({"act", "pool", "dropout", "flatten", "lrn"})
# a softmax over this many classes or more is computed vocabulary-parallel (Megatron-LM: only a
# per-sample max and sum cross the group, negligible bytes); a classifier's few logits are
# gathered instead (Krizhevsky 2012), so the loss is computed whole
VOCAB_PARALLEL = 4096


def states(ctx: Context, layers: list[str], split: set[str], k: int) -> dict[str, str]:
    inside = set(layers)
    out: dict[str, str] = {}
    for n in layers:
        node = ctx.node(n)
        preds = [p for p in ctx.graph.predecessors(n) if p in inside]
        # a row layer's output is whole (all-reduced): only col/local outputs are split
        pred_split = bool(preds) and all(out[p] in ("col", "local") for p in preds)
        kind = node["kind"]
        batch_norm = kind == "norm" and node.get("norm_type", "batch") == "batch"
        if n in split and kind in SPLITTABLE and node["split_dim"] >= k:
            if not pred_split:
                out[n] = "col"
            elif kind == "attention" or (kind == "conv" and node["groups"] == k
                                         and not node["cross_tower"]):
                out[n] = "local"
            elif kind == "dense" and not node["cross_tower"]:
                out[n] = "row"
            else:
                out[n] = "col"
        elif pred_split and (kind in FOLLOWS_INPUT or batch_norm or (
                kind == "softmax" and node["out_shape"][-1] >= VOCAB_PARALLEL)):
            out[n] = "local"
        else:
            out[n] = "rep"
    return out


def shards(st: dict[str, str], k: int) -> dict[str, int]:
    return {n: (1 if s == "rep" else k) for n, s in st.items()}


def _split(st: dict[str, str], n: str) -> bool:
    return st.get(n, "rep") in ("col", "local")


def emit(b: ProgramBuilder, ctx: Context, layers: list[str], st: dict[str, str], k: int,
         phase: str, samples: int, group: str, *, micro_batch: int = 0, shard: int = 0,
         deps: tuple[int, ...] = (), boundary_grad: str = "allreduce") -> int | None:
    """Append one phase (fwd or bwd) of ``layers`` under the states ``st``; the last op id.

    ``boundary_grad``: the collective for the input gradient of a ``col`` layer whose input comes
    from outside ``layers`` (``reduce_scatter`` when that input was gathered over the batch).
    """
    inside = set(layers)
    last = None  # the last op appended
    waiting: tuple[int, ...] = deps  # what the next kernel must wait for (it needs the result)

    def coll(kind: str, layer_elems: float, key: str, tensor: str, axis: str) -> int:
        return b.add(Collective, stream=COMM, deps=(last,) if last is not None else deps,
                     collective=kind, algorithm="ring", group=group,
                     bytes=float(layer_elems * samples * ctx.bpe),
                     key=f"{phase}{micro_batch}:{key}", tensor=tensor, axis=axis,
                     micro_batch=micro_batch)

    order = layers if phase == "fwd" else list(reversed(layers))
    for n in order:
        node = ctx.node(n)
        s = st[n]
        preds = list(ctx.graph.predecessors(n))
        if phase == "fwd" and s in ("col", "rep"):
            gathers = tuple(coll("allgather", ctx.node(p)["out_elems"], f"{n}<{p}", f"act:{p}",
                                 "feature") for p in preds if _split(st, p))
            waiting += gathers
        sh = 1 if s == "rep" else k
        last = compute_op(b, ctx, n, phase, samples, micro_batch=micro_batch, shard=shard,
                          shards=sh, deps=waiting)
        waiting = ()
        if k == 1:
            continue
        if phase == "fwd" and s == "row":
            last = coll("allreduce", node["out_elems"], n, f"act:{n}", "")
            waiting = (last,)
        if phase == "bwd" and s == "col":
            din = f"din:{n}"
            if any(_split(st, p) for p in preds):
                last = coll("reduce_scatter", node["in_elems"], n, din, "feature")
            elif any(p in inside for p in preds):
                last = coll("allreduce", node["in_elems"], n, din, "")
            elif preds:  # input from outside these layers (the model's input needs no gradient)
                # gathered over the batch (hybrid): scattered back over the batch
                axis = "batch" if boundary_grad == "reduce_scatter" else ""
                last = coll(boundary_grad, node["in_elems"], n, din, axis)
            waiting = (last,)
    return last

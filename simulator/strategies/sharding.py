"""Splitting layers within themselves over K devices (Krizhevsky et al. 2012; Megatron-LM,
Shoeybi et al. 2019), with sequence parallelism (Korthikanti et al. 2022), as a state per layer
and the collectives its edges need.

States: ``rep`` (every device computes the whole layer), ``col`` (the layer's neurons / filters /
heads are split; its input must be whole), ``local`` (split, and it needs only the matching shard
of a split input: element-wise layers, attention heads after a split QKV, a grouped convolution
whose groups are the towers, the loss over a split vocabulary), ``row`` (a dense layer reading a
split input, or an embedding whose table is split by vocabulary: each device produces a partial
sum of the whole output).

Collectives (S = the whole tensor's bytes for the samples at hand):
  forward  split -> col/rep: all-gather the input;  row: all-reduce the output
  backward split -> col: reduce-scatter the input gradient;  rep -> col: all-reduce it
Weight gradients of split layers stay local; replicated layers see the same data on every device
of the group, so theirs are equal without communication. A language-model loss over a split
vocabulary (Megatron-LM's vocabulary-parallel cross entropy) exchanges each token's max, sum of
exponentials and target logit: 3 fp32 values per token, all-gathered.

Sequence parallelism (``Layout.seq``): the replicated layers of a sequence model (layer norms,
dropouts, residual adds: Korthikanti et al.'s "10sbh" that tensor parallelism leaves whole) each
work on 1/K of the sequence. A row layer's all-reduce becomes a reduce-scatter along the sequence
and a column layer's input an all-gather along it (and the other way round in backward): the same
bytes as tensor parallelism's all-reduces, different collectives. As Megatron-LM runs it, a
column layer keeps its input sequence-split and all-gathers it again for its weight gradient in
backward (``...:again``, overlapped with the input-gradient GEMM there), so that every kept
activation is divided by K; and the split layers' own weight gradients (layer norms) are partial
sums over the sequence, all-reduced over the group once per step (``sp_grads``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from simulator.errors import ScenarioError
from simulator.plan import COMM, Collective, ProgramBuilder
from simulator.strategies.common import Context, compute_op

SPLITTABLE = frozenset({"dense", "conv", "attention", "rbm", "embedding"})


def check_splittable(graph, k: int, path: str) -> None:  # noqa: ANN001
    """A tensor split over ``k`` devices must split some layer: when every layer is narrower
    than ``k``, each device would compute the whole model and the split would be nothing but
    ``k`` copies."""
    if k < 2:
        return
    widest = max((d["split_dim"] for _, d in graph.nodes(data=True)
                  if d["kind"] in SPLITTABLE), default=0)
    if widest < k:
        raise ScenarioError(f"no layer of the model can be split over {k} devices (the widest "
                            f"splittable layer splits {widest} ways)", path=path, value=k,
                            has_value=True)
# layers that work on a split input shard by shard
FOLLOWS_INPUT = frozenset({"act", "pool", "dropout", "flatten", "lrn"})
# a classifier's softmax over this many classes or more is computed vocabulary-parallel (only
# per-sample statistics cross the group); a classifier's few logits are gathered instead
# (Krizhevsky 2012), so the loss is computed whole. A language model's softmax over a sequence
# is always vocabulary-parallel (Megatron-LM)
VOCAB_PARALLEL = 4096
LOSS_STATS = 3  # fp32 values per token a vocabulary-parallel loss exchanges


@dataclass(frozen=True)
class Layout:
    """How a stage's layers are split over a tensor group of ``k`` devices: their states, and
    the layers computed on 1/k of the sequence (sequence parallelism; empty without it)."""

    states: dict[str, str]
    k: int
    seq: frozenset[str] = frozenset()

    def param_shards(self) -> dict[str, int]:
        """Over how many devices each layer's parameters are split."""
        return {n: (1 if s == "rep" else self.k) for n, s in self.states.items()}

    def compute_shards(self, layer: str) -> int:
        return 1 if self.states[layer] == "rep" and layer not in self.seq else self.k


def states(ctx: Context, layers: list[str], split: set[str], k: int) -> dict[str, str]:
    if k == 1:  # nothing to split over
        return {n: "rep" for n in layers}
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
            if kind == "embedding":
                out[n] = "row"  # a slice of the vocabulary's rows: a partial sum of the output
            elif not pred_split:
                out[n] = "col"
            elif kind == "attention" or (kind == "conv" and node["groups"] == k
                                         and not node["cross_tower"]):
                out[n] = "local"
            elif kind == "dense" and not node["cross_tower"]:
                out[n] = "row"
            else:
                out[n] = "col"
        elif pred_split and (kind in FOLLOWS_INPUT or batch_norm or (
                kind == "softmax" and (len(node["out_shape"]) == 2
                                       or node["out_shape"][-1] >= VOCAB_PARALLEL))):
            out[n] = "local"
        else:
            out[n] = "rep"
    return out


def shards(st: dict[str, str], k: int) -> dict[str, int]:
    return {n: (1 if s == "rep" else k) for n, s in st.items()}


def sequence_split(ctx: Context, layers: list[str], st: dict[str, str], k: int,
                   path: str = "sequence_parallel") -> frozenset[str]:
    """The layers sequence parallelism splits along the sequence: every replicated layer of a
    sequence model (output (seq, features)). A replicated layer that reads a split layer's
    output (features would have to be gathered, then split along the sequence) is not a
    transformer's layout: an error naming ``path``."""
    if k == 1:
        return frozenset()
    seq = frozenset(n for n in layers if st[n] == "rep" and len(ctx.node(n)["out_shape"]) == 2)
    if not seq:
        raise ScenarioError("sequence parallelism splits the replicated layers of a sequence "
                            "model (a transformer); this model has none", path=path,
                            value=True, has_value=True)
    for n in seq:
        for p in ctx.graph.predecessors(n):
            if st.get(p, "rep") in ("col", "local"):
                raise ScenarioError(f"layer {n!r} is replicated but reads the split layer {p!r}:"
                                    " sequence parallelism needs Megatron-LM's layout (split "
                                    "layers between a column and a row layer)", path=path,
                                    value=True, has_value=True)
    return seq


def layout(ctx: Context, layers: list[str], split: set[str], k: int,
           sequence_parallel: bool = False) -> Layout:
    st = states(ctx, layers, split, k)
    seq = sequence_split(ctx, layers, st, k) if sequence_parallel else frozenset()
    return Layout(st, k, seq)


def _split(st: dict[str, str], n: str) -> bool:
    return st.get(n, "rep") in ("col", "local")


def vocab_parallel_loss(ctx: Context, lay: Layout, n: str) -> bool:
    return lay.k > 1 and ctx.node(n)["kind"] == "softmax" and lay.states[n] == "local"


def emit(b: ProgramBuilder, ctx: Context, layers: list[str], lay: Layout, phase: str,
         samples: int, group: str, *, micro_batch: int = 0, shard: int = 0,
         deps: tuple[int, ...] = (), boundary_grad: str = "allreduce",
         recompute: dict[str, str] | None = None) -> int | None:
    """Append one phase (fwd or bwd) of ``layers`` under the layout ``lay``; the last op id.

    ``boundary_grad``: the collective for the input gradient of a ``col`` layer whose input comes
    from outside ``layers`` (``reduce_scatter`` when that input was gathered over the batch).
    ``recompute`` maps each recomputed layer to its checkpoint unit: in backward, the first
    layer met of a unit has the unit's forward run again before it (``Compute.recompute``).
    The ops of a phase are the same for every micro-batch but for its index: they are worked
    out once per builder (``Script``) and replayed.
    """
    key = (tuple(layers), id(lay), phase, samples, group, shard, boundary_grad,
           id(recompute), len(deps))
    script = b.scripts.get(key)
    if script is None:
        rec = Script(len(deps))
        last = _emit(rec, ctx, layers, lay, phase, samples, group, micro_batch=-1, shard=shard,
                     deps=rec.initial, boundary_grad=boundary_grad, recompute=recompute)
        rec.last = last
        script = b.scripts[key] = rec
    return script.replay(b, micro_batch, deps)


_TEMPLATES = itertools.count()


class Script:
    """A phase's ops recorded with symbolic ids (``("op", i)`` for its i-th op, ``("dep", j)``
    for the phase's j-th dependency, ``("named", key)`` for an op another phase named), and the
    micro-batch left out of their keys, to be replayed for any micro-batch."""

    def __init__(self, deps: int):
        self.ops: list[tuple] = []
        self.initial = tuple(("dep", j) for j in range(deps))
        self.named: dict[str, tuple] = {}
        self.reads: _Named = _Named()
        self.last: tuple | None = None
        self._made: list[tuple] | None = None

    def add(self, cls, *, stream: str = "compute", deps: tuple = (), **kw):  # noqa: ANN001, ANN201
        key = kw.get("key")
        if key is not None:
            kw["key"] = key.split("-1:", 1)  # (prefix, rest): the micro-batch goes between
        # the op's fields but its id and deps, as a made op holds them
        proto = dict(cls(id=0, stream=stream, deps=(), **kw).__dict__)
        # not a field: which script op an op was replayed from, so that the engine can price
        # a run of replayed ops once for every micro-batch (``runner._folded_run``)
        proto["_t"] = next(_TEMPLATES)
        self.ops.append((cls, deps, proto))
        return ("op", len(self.ops) - 1)

    def _compiled(self) -> list[tuple]:
        """Per op: (index, class, prototype, offsets of its dependencies when all are ops of
        this phase else None, its references, whether it has a micro-batch, its key parts)."""
        if self._made is None or len(self._made) != len(self.ops):
            self._made = [
                (k, cls, proto,
                 tuple(x for _kind, x in refs) if refs and all(r[0] == "op" for r in refs)
                 else None,
                 refs, "micro_batch" in proto, proto.get("key"))
                for k, (cls, refs, proto) in enumerate(self.ops)]
        return self._made

    def replay(self, b: ProgramBuilder, mb: int, deps: tuple[int, ...]) -> int | None:
        ops = b.ops
        base = len(ops)  # the phase's ops take the next ids in order
        named = b.named

        def real(ref: tuple) -> int | None:
            kind, x = ref
            if kind == "op":
                return base + x
            if kind == "dep":
                return deps[x]
            return named.get(f"{x[0]}{mb}:{x[1]}")

        new, put = object.__new__, object.__setattr__
        for k, cls, proto, local, refs, has_mb, key in self._compiled():
            fields = proto.copy()
            fields["id"] = base + k
            if local is not None:  # every dependency is an op of this phase
                fields["deps"] = ((base + local[0],) if len(local) == 1
                                  else tuple([base + x for x in local]))
            elif refs:
                fields["deps"] = tuple(d for d in map(real, refs) if d is not None)
            if has_mb:
                fields["micro_batch"] = mb
            if key is not None:
                fields["key"] = f"{key[0]}{mb}:{key[1]}"
            # a frozen op made from its fields without running __init__ again: the fields
            # were checked when the prototype was made (plan building is per-op bound)
            op = new(cls)
            put(op, "__dict__", fields)
            ops.append(op)
        for name, ref in self.named.items():
            named[f"{name[0]}{mb}:{name[1]}"] = real(ref)
        return None if self.last is None else real(self.last)


class _Named(dict):
    """What a script reads of ops other phases named: a symbolic reference, resolved when it
    is replayed."""

    def get(self, key: str, default=None):  # noqa: ANN001, ANN201
        return ("named", tuple(key.split("-1:", 1)))


def _emit(b, ctx: Context, layers: list[str], lay: Layout, phase: str,  # noqa: ANN001
          samples: int, group: str, *, micro_batch: int = 0, shard: int = 0,
          deps: tuple = (), boundary_grad: str = "allreduce",
          recompute: dict[str, str] | None = None, recomputing: bool = False):
    """``emit``'s work, into a ``Script`` (``recomputing`` marks a unit's forward run again)."""
    k, st, seq = lay.k, lay.states, lay.seq
    inside = set(layers)
    last = None  # the last op appended
    waiting: tuple[int, ...] = deps  # what the next kernel must wait for (it needs the result)
    prefix = f"r{phase}" if recomputing else phase
    redone: set[str] = set()

    def coll(kind: str, layer_elems: float, key: str, tensor: str, axis: str,
             nbytes: float | None = None) -> int:
        size = layer_elems * samples * ctx.bpe if nbytes is None else nbytes
        return b.add(Collective, stream=COMM, deps=(last,) if last is not None else deps,
                     collective=kind, algorithm="ring", group=group, bytes=float(size),
                     key=f"{prefix}{micro_batch}:{key}", tensor=tensor, axis=axis,
                     micro_batch=micro_batch)

    order = layers if phase == "fwd" else list(reversed(layers))
    for n in order:
        node = ctx.node(n)
        s = st[n]
        preds = list(ctx.graph.predecessors(n))
        if phase == "bwd" and recompute and n in recompute and recompute[n] not in redone:
            unit = recompute[n]
            redone.add(unit)
            mine = [x for x in layers if recompute.get(x) == unit]
            done = _emit(b, ctx, mine, lay, "fwd", samples, group, micro_batch=micro_batch,
                         shard=shard, deps=(last,) if last is not None else waiting,
                         recomputing=True)
            last, waiting = done, (done,) if done is not None else waiting
        if phase == "fwd" and s in ("col", "rep") and n not in seq:
            gathers = tuple(coll("allgather", ctx.node(p)["out_elems"], f"{n}<{p}", f"act:{p}",
                                 "feature") for p in preds if _split(st, p))
            gathers += tuple(coll("allgather", ctx.node(p)["out_elems"], f"{n}<{p}",
                                  f"act:{p}", "sequence") for p in preds if p in seq)
            waiting += gathers
        if phase == "bwd" and k > 1 and seq:
            if s == "row":  # its output gradient arrives split along the sequence
                waiting += (coll("allgather", node["out_elems"], f"{n}>", f"dout:{n}",
                                 "sequence"),)
            if s == "col":  # its kept input is sequence-split: gathered again (Megatron-LM)
                waiting += tuple(coll("allgather", ctx.node(p)["out_elems"],
                                      f"{n}<{p}:again", f"act:{p}", "sequence")
                                 for p in preds if p in seq)
        if phase == "bwd" and vocab_parallel_loss(ctx, lay, n):
            stats = b.reads.get(f"fwd{micro_batch}:xent:{n}")
            waiting += (stats,) if stats is not None else ()
        last = compute_op(b, ctx, n, phase, samples, micro_batch=micro_batch, shard=shard,
                          shards=lay.compute_shards(n), deps=waiting, recompute=recomputing,
                          split_input=s in ("local", "row") or n in seq)
        waiting = ()
        if k == 1:
            continue
        if phase == "fwd" and s == "row":
            if seq:
                last = coll("reduce_scatter", node["out_elems"], n, f"act:{n}", "sequence")
            else:
                last = coll("allreduce", node["out_elems"], n, f"act:{n}", "")
            waiting = (last,)
        if phase == "fwd" and vocab_parallel_loss(ctx, lay, n) and not recomputing:
            rows = node["out_elems"] // node["out_shape"][-1]
            last = coll("allgather", 0, f"xent:{n}", f"xent:{n}", "feature",
                        nbytes=LOSS_STATS * 4 * rows * samples * k)
            b.named[("fwd", f"xent:{n}")] = last
        if phase == "bwd" and s == "col":
            din = f"din:{n}"
            if any(_split(st, p) for p in preds):
                last = coll("reduce_scatter", node["in_elems"], n, din, "feature")
            elif any(p in seq for p in preds):
                last = coll("reduce_scatter", node["in_elems"], n, din, "sequence")
            elif any(p in inside for p in preds):
                last = coll("allreduce", node["in_elems"], n, din, "")
            elif preds:  # input from outside these layers (the model's input needs no gradient)
                # gathered over the batch (hybrid): scattered back over the batch
                axis = "batch" if boundary_grad == "reduce_scatter" else ""
                last = coll(boundary_grad, node["in_elems"], n, din, axis)
            waiting = (last,)
    return last


def sp_grad_layers(ctx: Context, lay: Layout, layers: list[str]) -> list[str]:
    """Sequence-split layers with parameters: their gradients are partial sums over the
    sequence shards, all-reduced over the tensor group once per step."""
    return [n for n in layers if n in lay.seq and ctx.node(n)["params"]]


def sp_grad_allreduce(b: ProgramBuilder, ctx: Context, layers: list[str], group: str,
                      deps: tuple[int, ...]) -> int:
    """The all-reduce of the sequence-split layers' weight gradients over the tensor group."""
    return b.add(Collective, stream=COMM, deps=deps, collective="allreduce", algorithm="ring",
                 group=group, bytes=float(sum(ctx.node(n)["params"] for n in layers) * ctx.bpe),
                 key="sp_grads", tensor="wgrad:" + ",".join(layers))

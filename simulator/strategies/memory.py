"""Memory per device: weights, gradients and optimizer state (with ZeRO), and the activations
kept for backward, by tensor (with tensor and sequence parallelism and recomputation).

Model states (Rajbhandari et al. 2020, ZeRO, section 3): for the Psi parameters a device holds,
weights Psi x B and gradients Psi x B at the training precision's B bytes, and optimizer state of
K bytes per parameter: the optimizer's copies (momentum one, Adam two) at B bytes, or, in mixed
precision (B < 4), at 4 bytes plus a 4-byte master copy (K = 12 with Adam: 16 Psi in all). ZeRO
over a data-parallel group of N divides the optimizer state by N (stage 1), the gradients too
(stage 2), the weights too (stage 3): (2 + 2 + K) Psi / N at stage 3. Stage 3 also holds, for
the moment they are used, the gathered parameters of the unit computing and of the one being
prefetched, and one unit's whole gradients before they are reduce-scattered (``buffers``).

Activations: every layer keeps what its backward needs (``simulator.model.saved``), per sample,
times the samples in flight when the most are (the schedule's count). A kept tensor is divided
by T over a tensor group when it is split there: something a split layer makes (``col``,
``local``), the input of a layer that reads a split input (``local``, ``row``), and, with
sequence parallelism, everything of a sequence-split layer and the kept input of a column layer.
For a GPT layer this gives Korthikanti et al. 2022's sbh (10 + 24/t + 5as/(ht)) with tensor
parallelism and sbh/t (34 + 5as/h) with sequence parallelism too. Recomputation: ``full`` keeps
only each unit's input (2sbh per layer, /t with sequence parallelism) and holds one unit's
activations of one micro-batch while it is recomputed (a buffer); ``selective`` drops the
attention's seq x seq tensors (34sbh/t left with sequence parallelism) and holds one layer's
while recomputed.
"""

from __future__ import annotations

from collections import defaultdict

from simulator.model.saved import Saved, saved_tensors
from simulator.plan import MemoryNeed
from simulator.strategies.common import OPTIMIZER_COPIES, Context
from simulator.strategies.sharding import Layout
from simulator.strategies.techniques import recomputed, units


def layer_params(ctx: Context, layer: str, shards: int) -> float:
    """Parameters of ``layer`` one device holds when it is split over ``shards`` devices (an
    embedding's position table is not split)."""
    node = ctx.node(layer)
    whole = node.get("unsplit_params", 0) if shards > 1 else 0
    return (node["params"] - whole) / shards + whole


def optimizer_bytes_per_param(ctx: Context) -> float:
    """K: optimizer state per parameter (module docstring)."""
    copies = OPTIMIZER_COPIES[ctx.training.optimizer]
    return copies * 4 + 4 if ctx.bpe < 4 else copies * ctx.bpe


def _split(lay: Layout, ctx: Context, layer: str, t: Saved) -> bool:
    st, seq = lay.states, lay.seq
    s = st.get(layer, "rep")
    if layer in seq:
        return True
    if t.of == "out":
        return s in ("col", "local")
    return s in ("local", "row") or (s == "col" and any(p in seq for p in
                                                        ctx.graph.predecessors(layer)))


def kept(ctx: Context, layers: list[str], lay: Layout, samples: dict[str, float],
         drop: set[tuple[str, str]] = frozenset()) -> dict[tuple[str, str], tuple[str, float]]:
    """Each kept tensor (by identity) -> (its name, bytes over the samples in flight)."""
    out: dict[tuple[str, str], tuple[str, float]] = {}
    for n in layers:
        for t in saved_tensors(ctx.graph, n):
            if t.key in out or t.key in drop:
                continue
            size = t.elems * (t.nbytes or ctx.bpe) * samples[n]
            out[t.key] = (t.tensor, size / (lay.k if _split(lay, ctx, n, t) else 1))
    return out


def activations(ctx: Context, layers: list[str], lay: Layout, samples: dict[str, float],
                micro: float, recompute: str = "none"
                ) -> tuple[dict[str, float], dict[str, float]]:
    """(kept activations by tensor name, transient buffers by name) in bytes."""
    redo = recomputed(ctx, layers, recompute)
    acts: dict[str, float] = defaultdict(float)
    buffers: dict[str, float] = {}
    if recompute == "full" and redo:
        by_unit: dict[str, list[str]] = defaultdict(list)
        for n in layers:
            if n in redo:
                by_unit[redo[n]].append(n)
        outside = [n for n in layers if n not in redo]
        for _, (name, size) in kept(ctx, outside, lay, samples).items():
            acts[name] += size
        checkpoints: dict[str, float] = {}  # each unit's input, the point it restarts from
        for members in by_unit.values():
            for n in members:
                for p in ctx.graph.predecessors(n):
                    if p not in members and p not in checkpoints:
                        split = p in lay.seq or lay.states.get(p, "rep") in ("col", "local")
                        checkpoints[p] = (ctx.node(p)["out_elems"] * ctx.bpe * samples[n]
                                          / (lay.k if split else 1))
        acts["recomputation checkpoints (unit inputs)"] = sum(checkpoints.values())
        one = max(sum(size for _, size in kept(ctx, m, lay, {x: micro for x in m}).values())
                  for m in by_unit.values())
        buffers["one unit's activations while recomputed"] = one
        return dict(acts), buffers
    drop: set[tuple[str, str]] = set()
    if recompute == "selective" and redo:
        drop = {t.key for n in redo for t in saved_tensors(ctx.graph, n) if t.of == "out"}
        buffers["one attention core's tensors while recomputed"] = max(
            sum(size for key, (_, size) in kept(ctx, [n], lay, {n: micro}).items()
                if key in drop) for n in redo)
    for _, (name, size) in kept(ctx, layers, lay, samples, drop).items():
        acts[name] += size
    return dict(acts), buffers


def memory_need(ctx: Context, device: str, layers: list[str], *,
                act_samples: float | dict[str, float], layout: Layout | None = None,
                zero: int = 0, dp: int = 1, recompute: str = "none",
                micro_batch: float | None = None, extra_params: float = 0.0) -> MemoryNeed:
    """What ``device`` needs to hold ``layers`` (module docstring).

    ``act_samples``: samples whose activations are kept at the peak, for every layer or per
    layer; ``layout``: their split over a tensor group (none: whole); ``zero`` over ``dp``
    data-parallel ranks;
    ``micro_batch``: the samples one recomputation works on; ``extra_params``: parameters held
    besides the layers' own (a tied embedding's copy on the last pipeline stage).
    """
    if layout is None:
        layout = Layout({n: "rep" for n in layers}, 1)
    sh = layout.param_shards()
    params = sum(layer_params(ctx, n, sh.get(n, 1)) for n in layers) + extra_params
    samples = (act_samples if isinstance(act_samples, dict)
               else {n: float(act_samples) for n in layers})
    micro = micro_batch if micro_batch is not None else max(samples.values(), default=0.0)
    acts, buffers = activations(ctx, layers, layout, samples, micro, recompute)
    bpe = ctx.bpe
    weights = params * bpe
    optimizer = params * optimizer_bytes_per_param(ctx)
    gradients = params * bpe
    if zero >= 1:
        optimizer /= dp
    if zero >= 2:
        gradients /= dp
    if zero >= 3:
        weights /= dp
        unit_params: dict[str, float] = defaultdict(float)
        unit_of = units(ctx, layers)
        for n, u in unit_of.items():
            unit_params[u] += layer_params(ctx, n, sh.get(n, 1))
        for n in layers:
            if n not in unit_of:
                unit_params[n] += layer_params(ctx, n, sh.get(n, 1))
        largest = max(unit_params.values(), default=0.0) * bpe
        buffers["ZeRO-3 gathered parameters (unit computing + unit prefetched)"] = 2 * largest
        buffers["ZeRO-3 one unit's gradients before reduce-scatter"] = largest
    detail = tuple(sorted(acts.items())) + tuple(buffers.items())
    return MemoryNeed(device=device, weights=weights, gradients=gradients, optimizer=optimizer,
                      activations=sum(acts.values()), capacity=ctx.cluster.device_spec.memory,
                      buffers=sum(buffers.values()), detail=detail)


def combine(a: MemoryNeed, b: MemoryNeed) -> MemoryNeed:
    """One device's need for two sets of layers it holds (``a``'s device and capacity)."""
    detail: dict[str, float] = defaultdict(float)
    for name, size in a.detail + b.detail:
        detail[name] += size
    return MemoryNeed(device=a.device, weights=a.weights + b.weights,
                      gradients=a.gradients + b.gradients, optimizer=a.optimizer + b.optimizer,
                      activations=a.activations + b.activations, capacity=a.capacity,
                      buffers=a.buffers + b.buffers, detail=tuple(detail.items()))

"""Which of a model's layers each operator of a PyTorch profiler trace ran
(``executor/calibration/trace_read.py`` reads the trace).

Matched:

* forward: the outermost operator of a layer (``aten::conv2d``, ``aten::linear``,
  ``aten::tanh``, ``aten::avg_pool2d``, ``aten::cross_entropy_loss``, ... in ``FORWARD``) to
  the model's layers of that kind whose per-sample input shape equals its ``Input Dims`` less
  the batch (a convolution's output channels, window and groups from its weight's dims, and its
  stride and padding from its ``Concrete Inputs`` when recorded); the layers it can be must
  share one kernel shape (``simulator.strategies.common.kernel_shape``), else it is ambiguous.
  The loss (log-softmax and negative log-likelihood) is the model's ``softmax`` layer, where
  parasim counts it;
* backward: an autograd node (``autograd::engine::evaluate_function: ConvolutionBackward0``)
  to the layer its forward operator matched, by the ``Sequence number`` autograd gives both;
* the optimizer's step (``Optimizer.step#...``) to the ``update`` op.

Every kernel of a matched operator counts, its children's included; NCCL kernels are
communication (``trace_import``), never a layer's. Operators with kernels that match nothing
are counted by name. Steps are the ``ProfilerStep#N`` ranges, else the spans between
optimizer steps, else the whole trace is one step.
"""

from __future__ import annotations

import ast
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from executor.calibration.trace_read import Kernel, Op, Trace
from simulator.strategies.common import kernel_kind, kernel_shape

BACKWARD = "autograd::engine::evaluate_function: "
OPTIMIZER = "Optimizer.step#"
# the outermost operator of a layer's forward: (graph kind, the activation's function or the
# pooling's mode)
FORWARD = {
    **dict.fromkeys(("aten::conv2d", "aten::convolution", "aten::_convolution",
                     "aten::cudnn_convolution"), ("conv", None)),
    **dict.fromkeys(("aten::linear", "aten::addmm", "aten::matmul", "aten::mm"),
                    ("dense", None)),
    **{f"aten::{fn}{tail}": ("act", fn) for fn in ("relu", "tanh", "sigmoid", "gelu")
       for tail in ("", "_")},
    **dict.fromkeys(("aten::max_pool2d", "aten::max_pool2d_with_indices"), ("pool", "max")),
    **dict.fromkeys(("aten::avg_pool2d", "aten::adaptive_avg_pool2d"), ("pool", "avg")),
    **dict.fromkeys(("aten::batch_norm", "aten::native_batch_norm", "aten::cudnn_batch_norm",
                     "aten::layer_norm", "aten::native_layer_norm"), ("norm", None)),
    **dict.fromkeys(("aten::dropout", "aten::native_dropout", "aten::feature_dropout"),
                    ("dropout", None)),
    **dict.fromkeys(("aten::cross_entropy_loss", "aten::log_softmax", "aten::_log_softmax",
                     "aten::softmax", "aten::_softmax", "aten::nll_loss_nd", "aten::nll_loss",
                     "aten::nll_loss_forward"), ("softmax", None)),
    "aten::add": ("add", None),
}
# where a convolution's or pooling's Concrete Inputs hold stride and padding
WINDOW_ARGS = {"aten::conv2d": (3, 4), "aten::convolution": (3, 4), "aten::_convolution": (3, 4),
               "aten::max_pool2d": (2, 3), "aten::max_pool2d_with_indices": (2, 3),
               "aten::avg_pool2d": (2, 3)}


@dataclass
class Match:
    """One matched operator: the curve it measures, ``(kernel kind, phase, shape, samples)``
    (``update`` for the optimizer), the model's layers of that kind and shape, the FLOPs one of
    them counts for the op, its kernels, and its step."""

    key: tuple[str, str, str, int]
    layers: tuple[str, ...]
    flops: float
    op: Op
    kernels: list[Kernel]
    step: int


@dataclass
class Matching:
    matches: list[Match] = field(default_factory=list)
    # per operator name that matched nothing: [operators, kernels, kernel seconds]
    unmatched: dict[str, list] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0.0]))
    steps: int = 1
    step_source: str = ""
    dtypes: set[str] = field(default_factory=set)
    outside: int = 0  # operators with kernels outside every step (a step cut by the window)


def match_trace(trace: Trace, graph: nx.DiGraph) -> Matching:
    out = Matching()
    windows, out.step_source = _steps(trace)
    out.steps = len(windows)
    by_seq: dict[Any, Match | None] = {}
    params = sum(graph.nodes[n]["params"] for n in graph.nodes)
    for role, op in _claims(trace):
        kernels = [k for k in op.all_kernels() if not k.is_nccl]
        if not kernels:
            continue
        step = _step_of(windows, op.ts)
        if step is None:
            out.outside += 1
            continue
        found: Match | None = None
        if role == "fwd":
            found = _forward(op, graph, kernels, step, out)
            for o in op.subtree():
                if "Sequence number" in o.args:
                    by_seq[o.args["Sequence number"]] = found
        elif role == "bwd":
            fwd = by_seq.get(op.args.get("Sequence number"))
            if fwd is not None:
                node = graph.nodes[fwd.layers[0]]
                found = Match((fwd.key[0], "bwd", fwd.key[2], fwd.key[3]), fwd.layers,
                              node["bwd_flops"] * fwd.key[3], op, kernels, step)
        elif role == "update":
            found = Match(("update", "", "", 0), ("update",), 4.0 * params, op, kernels, step)
        if found is None:
            name = op.name[len(BACKWARD):] if op.name.startswith(BACKWARD) else op.name
            row = out.unmatched[name]
            row[0] += 1
            row[1] += len(kernels)
            row[2] += sum(k.dur for k in kernels) * 1e-6
        else:
            out.matches.append(found)
    return out


def _claims(trace: Trace) -> list[tuple[str, Op]]:
    """The operators that own kernels, outermost first: (role, operator), role one of fwd,
    bwd, update, other."""
    out: list[tuple[str, Op]] = []

    def known(op: Op) -> bool:
        return any(o.name in FORWARD or o.name.startswith((BACKWARD, OPTIMIZER))
                   for o in op.subtree())

    def walk(op: Op) -> None:
        if op.name.startswith(BACKWARD):
            out.append(("bwd", op))
        elif op.name.startswith(OPTIMIZER):
            out.append(("update", op))
        elif op.name in FORWARD:
            out.append(("fwd", op))
        elif op.cat == "user_annotation" or known(op):
            if op.kernels:
                out.append(("other", Op(op.name, op.cat, op.thread, op.ts, op.dur, op.args,
                                        kernels=op.kernels)))
            for c in op.children:
                walk(c)
        else:
            out.append(("other", op))

    for root in trace.roots:
        walk(root)
    return out


def _steps(trace: Trace) -> tuple[list[tuple[float, float]], str]:
    if trace.steps:
        return [(s, e) for _, s, e in trace.steps], f"{len(trace.steps)} ProfilerStep ranges"
    ends = sorted(op.end for op in trace.ops() if op.name.startswith(OPTIMIZER))
    if ends:
        starts = [-math.inf] + ends[:-1]
        return list(zip(starts, ends)), f"{len(ends)} optimizer steps (no ProfilerStep marks)"
    return [(-math.inf, math.inf)], "no step marks: the whole trace taken as one step"


def _step_of(windows: list[tuple[float, float]], ts: float) -> int | None:
    return next((i for i, (s, e) in enumerate(windows) if s <= ts < e), None)


def _forward(op: Op, graph: nx.DiGraph, kernels: list[Kernel], step: int,
             out: Matching) -> Match | None:
    kind, variant = FORWARD[op.name]
    got = _geometry(op, kind)
    if got is None:
        return None
    x, want, dtype = got
    if dtype:
        out.dtypes.add(dtype)
    nodes = [n for n in graph.nodes if graph.nodes[n]["kind"] == kind
             and (variant is None or variant in (graph.nodes[n].get("fn"),
                                                 graph.nodes[n].get("mode")))
             and tuple(graph.nodes[n]["in_shape"]) == tuple(x[1:])
             and all(_same(_attribute(graph.nodes[n], k), v) for k, v in want.items())]
    shapes = {(kernel_kind(graph.nodes[n]), kernel_shape(graph.nodes[n])) for n in nodes}
    if len(shapes) != 1:
        return None  # no layer of that geometry, or several (ambiguous without Concrete Inputs)
    ((kk, shape),) = shapes
    samples = int(x[0])
    flops = graph.nodes[nodes[0]]["fwd_flops"] * samples
    return Match((kk, "fwd", shape, samples), tuple(sorted(nodes)), flops, op, kernels, step)


def _attribute(node: dict, key: str) -> Any:
    """A layer's figure a trace shows: its own keys, and the output channels (``channels``)
    or features (``units``) from its output shape."""
    if key == "channels":
        return node["out_shape"][0]
    if key == "units":
        return node["out_shape"][-1]
    return node.get(key)


def _same(have: Any, want: Any) -> bool:
    if isinstance(have, (tuple, list)):
        return tuple(have) == tuple(want)
    return have == want


def _geometry(op: Op, kind: str) -> tuple[list[int], dict[str, Any], str] | None:
    """The input's dims (batch first), what else the layer must have, and the input's dtype,
    from the first operator of the subtree that recorded its shapes."""
    for o in op.subtree():
        dims = o.args.get("Input Dims")
        if not dims or not isinstance(dims[0], list) or not dims[0]:
            continue
        dtype = (o.args.get("Input type") or [""])[0]
        want: dict[str, Any] = {}
        if kind == "conv":
            if len(dims) < 2 or len(dims[1]) != 4 or len(dims[0]) != 4:
                continue
            k, per_group = dims[1][0], dims[1][1]
            groups = dims[0][1] // per_group if per_group else 1
            want = {"kernel": tuple(dims[1][2:]), "groups": groups}
            want.update(_window(o))
            return dims[0], {**want, "channels": k}, dtype
        if kind == "dense":
            if o.name == "aten::addmm" and len(dims) >= 3 and len(dims[1]) >= 2:
                return dims[1], {"units": dims[2][-1]}, dtype
            if o.name == "aten::linear" and len(dims) >= 2 and dims[1]:
                return dims[0], {"units": dims[1][0]}, dtype
            if len(dims) >= 2 and dims[1]:
                return dims[0], {"units": dims[1][-1]}, dtype
            continue
        if kind == "pool":
            want = _window(o)
            if o.name == "aten::adaptive_avg_pool2d":
                size = _concrete(o, 1)
                if size in ([1, 1], 1) and len(dims[0]) == 4:
                    want = {"kernel": tuple(dims[0][2:])}
                else:
                    continue
            elif _concrete(o, 1) is not None:
                want["kernel"] = tuple(_pair(_concrete(o, 1)))
            return dims[0], want, dtype
        return dims[0], want, dtype
    return None


def _window(op: Op) -> dict[str, Any]:
    """Stride and padding from the Concrete Inputs, when recorded."""
    at = WINDOW_ARGS.get(op.name)
    if at is None:
        return {}
    stride, padding = _concrete(op, at[0]), _concrete(op, at[1])
    if stride is None or padding is None or isinstance(padding, str):
        return {}
    if stride == []:  # pooling's default: the window
        window = _concrete(op, 1)
        stride = window if window is not None else stride
    return {"stride": tuple(_pair(stride)), "padding": tuple(_pair(padding))}


def _concrete(op: Op, i: int) -> Any:
    values = op.args.get("Concrete Inputs")
    if not isinstance(values, list) or i >= len(values) or values[i] in ("", None):
        return None
    try:
        return ast.literal_eval(values[i])
    except (ValueError, SyntaxError):
        return values[i]


def _pair(v: Any) -> list[int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * 2 if len(v) == 1 else v

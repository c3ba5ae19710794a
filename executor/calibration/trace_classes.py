"""The kernel curves ``parasim calibrate --from-profile`` writes from a trace's op times
(``trace_import``): per shape, per kind, and per shape class inside the per-kernel GPU model.

* ``kind.phase@shape``: a point per batch measured, the efficiency FLOPs / (peak x (time -
  launch overhead)) at which the engine gives the measured time back (it replaces the model
  for that shape: the traced shapes are reproduced exactly);
* ``PRECISION:kind.phase#CLASS`` (conv and dense ops): the efficiency of an SM's peak at which
  the per-kernel model (``simulator/engine/gpu.py``: tiles, waves, split-K, the autotuned
  convolution algorithm, the bias pass, a launch overhead per kernel), on the profile's device
  at the scenario's precision, takes the measured time (``simulator/engine/gpu_fit.py``, as the
  catalogue's curves are fitted from published tables); the engine uses it inside the model for
  every shape of that class the trace did not run. The op's geometry, whether it computes an
  input gradient (not for a network's first layer) and whether it adds a bias are the plan's
  own ``Compute`` op's for that layer. A point the model cannot reach at any efficiency (a
  kernel memory- or launch-bound in the model, measured faster than that floor, or slower than
  at the lowest efficiency), or whose time the efficiency hardly governs (``MIN_SHARE``), is
  left out of the class curve and reported;
* ``kind.phase``: the per-shape points over every shape's FLOPs (their median at equal FLOPs),
  for shapes of the kinds without a class (activations, pooling, the loss: memory-bound in the
  model, bytes over bandwidth, with no efficiency to fit) and of classes the trace did not run.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from simulator.catalogue import MAX_EFFECTIVE
from simulator.engine import gpu
from simulator.engine.gpu_fit import LOW, class_name, curve, op_efficiency
from simulator.plan import Compute
from simulator.specs import DeviceSpec

if TYPE_CHECKING:
    from simulator.scenario import Scenario

# the least share of an op's time its kernels' efficiency must govern (1 - the model's time at
# the highest efficiency / the measured time) for its point to join a class curve: below it a
# 1% error in the time is more than a 10% error in the efficiency (a kernel memory- or
# launch-bound in the model, whose time's noise the efficiency would absorb)
MIN_SHARE = 0.1


def plan_ops(scenario: Scenario, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Compute]:
    """Per (layer, phase) in ``wanted`` the plan's unsharded ``Compute`` op for it, from the
    first of the scenario's strategies that has one."""
    from simulator.predict import plans

    found: dict[tuple[str, str], Compute] = {}
    for strategy in scenario.strategies:
        (plan,) = plans(scenario, [strategy.name])
        for rank in plan.ranks:
            for op in rank.ops:
                key = (getattr(op, "layer", ""), getattr(op, "phase", ""))
                if (isinstance(op, Compute) and op.shards == 1 and not op.recompute
                        and key in wanted and key not in found):
                    found[key] = op
        if wanted <= set(found):
            break
    return found


def class_points(rows: list[dict[str, Any]], ops: dict[tuple[str, str], Compute],
                 spec: DeviceSpec, peak: float, bpe: int, precision: str) -> list[str]:
    """Give each conv and dense row its class curve, its efficiency in the model and the share
    of its time that efficiency governs (``class``, ``class_efficiency``, ``class_share``;
    ``class_left_out``: why it is not in the curve); what was left out, as lines to print."""
    notes = []
    for r in rows:
        kind, _, phase = r["curve"].partition(".")
        op = ops.get((r["layers"][0], phase)) if r["layers"] else None
        geo = gpu.parse_shape(r["shape"])
        name = class_name(precision, kind, phase, geo)
        if not name:
            continue
        label = f"{r['curve']}@{r['shape']}"
        if op is None:
            notes.append(f"{name}: {label} is no unsharded op of the scenario's plans")
            continue
        e, bound = op_efficiency(spec, peak, bpe, kind, phase, geo, r["samples"], r["seconds"],
                                 op.input_grad, op.bias)
        floor = gpu.Model(spec, peak, bpe, None, MAX_EFFECTIVE).choose(
            kind, phase, geo, r["samples"], op.input_grad, op.bias).seconds
        r["class"] = name
        r["class_efficiency"] = float(f"{e:.6g}")
        r["class_share"] = round(max(0.0, 1.0 - floor / r["seconds"]), 4)
        where = f"{name}: {label} (batch {r['samples']}) took {r['seconds'] * 1e6:.2f} us"
        if bound:
            r["class_left_out"] = f"at the {bound} bound"
            edge = floor if bound == "high" else gpu.Model(spec, peak, bpe, None, LOW).choose(
                kind, phase, geo, r["samples"], op.input_grad, op.bias).seconds
            notes.append(f"{where}, the model {'at least' if bound == 'high' else 'at most'} "
                         f"{edge * 1e6:.2f} us at any efficiency: left out of the class curve")
        elif r["class_share"] < MIN_SHARE:
            r["class_left_out"] = "memory- or launch-bound in the model"
            notes.append(f"{where}, the model at least {floor * 1e6:.2f} us at any efficiency "
                         f"(memory- or launch-bound): the efficiency governs "
                         f"{r['class_share']:.0%} of its time, left out of the class curve")
    return notes


def fit_curves(rows: list[dict[str, Any]], leave_out: tuple[str, str] | None = None
               ) -> dict[str, dict[str, list[float]]]:
    """The profile's ``kernels``: a curve per shape, per class, and per kind for the kinds the
    per-kernel model does not time (memory-bound ones, on the roofline); without the rows
    of ``leave_out`` (``(curve, shape)``, e.g. ``("conv.fwd", "1x32x32>6x28x28k5x5s1x1p0x0")``)
    when given: the profile as a trace without that shape would have fitted it."""
    points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    classes: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if leave_out is not None and (r["curve"], r["shape"]) == leave_out:
            continue
        points[r["curve"]][r["flops"]].append(r["efficiency"])
        if r["shape"]:
            points[f"{r['curve']}@{r['shape']}"][r["flops"]].append(r["efficiency"])
        if "class" in r and "class_left_out" not in r:
            classes[r["class"]].append((r["flops"], r["class_efficiency"]))
    # a kind the per-kernel model times (a class was solved for) gets no kind-wide curve: it
    # would replace the model for the shapes the trace did not run
    modelled = {r["curve"] for r in rows if "class" in r}
    out = {name: {"flops": sorted(p), "efficiency": [float(statistics.median(p[f]))
                                                     for f in sorted(p)]}
           for name, p in points.items() if name not in modelled}
    for name, pts in classes.items():
        flops, eff = curve(pts)
        out[name] = {"flops": flops, "efficiency": eff}
    return dict(sorted(out.items()))

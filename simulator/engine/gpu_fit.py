"""Shape-class kernel curves from measured kernel times: the efficiency at which the per-kernel
model (``simulator/engine/gpu.py``) takes a measured time, and a curve over op FLOPs from such
points.

A point: the efficiency ``e`` of an SM's peak at which ``gpu.Model(spec, peak, bpe, None,
e)`` times the op (its GEMMs, the autotuned convolution algorithm, its bias pass, a launch
overhead per kernel) as measured, found by bisection (``solve``, between
``LOW`` and the catalogue's ``MAX_EFFECTIVE``). A time the model cannot reach at any
efficiency in those bounds (a kernel memory- or launch-bound in the model, measured faster
than that floor; or slower than at ``LOW``) comes back at the bound, named.

A curve: the points of one ``PRECISION:KIND.PHASE#CLASS`` (``gpu.shape_class``) sorted by op
FLOPs, in up to ``BINS`` bins of equal count (at least three points a bin), each bin the
geometric mean of its FLOPs and the median of its efficiencies; ``hardware.efficiency_at``
reads it (linear in log FLOPs, constant past its ends). Used by the catalogue's fit from
published tables (``benchmarks/gpu_curves.py``) and by the import of a framework's profile
(``executor/calibration/trace_classes.py``).

Only conv and dense layers have a class: the memory-bound kinds' time in the model is bytes
over bandwidth, with no efficiency to fit.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from simulator.catalogue import MAX_EFFECTIVE
from simulator.engine import gpu
from simulator.specs import DeviceSpec

BINS = 6
LOW = 0.02  # below this a kernel's math is not what made it slow: the fit is at its bound


def solve(time_at: Callable[[float], float], seconds: float) -> tuple[float, str]:
    """The efficiency at which ``time_at(e)`` is ``seconds`` (bisection in log e: the time
    falls as the efficiency grows), and ``"low"``/``"high"`` when it is past a bound (the
    bound returned)."""
    lo, hi = math.log(LOW), math.log(MAX_EFFECTIVE)
    if time_at(MAX_EFFECTIVE) > seconds:
        return MAX_EFFECTIVE, "high"
    if time_at(LOW) < seconds:
        return LOW, "low"
    for _ in range(50):
        mid = (lo + hi) / 2
        if time_at(math.exp(mid)) > seconds:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2), ""


def class_name(precision: str, kind: str, phase: str, geo: gpu.Geometry | None) -> str:
    """The curve a conv or dense op's point belongs to (``fp32:conv.fwd#large_s1``); empty
    for kinds without a shape class."""
    cls = gpu.shape_class(kind, geo)
    return f"{precision}:{kind}.{phase}#{cls}" if cls else ""


def op_efficiency(spec: DeviceSpec, peak: float, bpe: int, kind: str, phase: str,
                  geo: gpu.Geometry, samples: int, seconds: float, input_grad: bool = True,
                  bias: bool = False, algorithms: tuple[str, ...] | None = None
                  ) -> tuple[float, str]:
    """The efficiency at which the model times the op as ``seconds`` (launch overheads
    included), and the bound it is at, if any; ``algorithms``: the convolution algorithms
    the measured library had (None: every one)."""
    def time_at(e: float) -> float:
        choice = gpu.Model(spec, peak, bpe, None, e, algorithms).choose(
            kind, phase, geo, samples, input_grad, bias)
        if choice is None:
            raise ValueError(f"the per-kernel model does not time {kind} ops")
        return choice.seconds

    return solve(time_at, seconds)


def curve(pts: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Medians of up to ``BINS`` bins of equal count, by FLOPs: (flops, efficiency)."""
    pts = sorted(pts)
    bins = min(BINS, max(1, len(pts) // 3))
    size = len(pts) / bins
    flops, eff = [], []
    for b in range(bins):
        chunk = pts[round(b * size):round((b + 1) * size)]
        f = float(f"{math.exp(statistics.fmean(math.log(x) for x, _ in chunk)):.6g}")
        if flops and f <= flops[-1]:  # equal FLOPs in two bins: keep the axis increasing
            f = float(f"{flops[-1] * 1.001:.6g}")
        flops.append(f)
        eff.append(round(statistics.median(e for _, e in chunk), 4))
    return flops, eff

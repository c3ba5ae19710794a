"""Fit the steps-to-target model (``simulator/convergence.py``) to measured runs.

Each observation is one run at one setting (batch, rate, staleness, averaging period, replicas)
with the steps it took to reach each level of the metric. Per level the fit has ``steps_min``
and ``noise_batch``; shared by the levels, ``lr_max`` (when the runs used two or more rates; with
one rate it cannot be told from ``steps_min`` and is set to that rate, which leaves predictions
at that rate exact and those at other rates uncalibrated), ``staleness_penalty`` (when a run had
stale gradients) and ``averaging_penalty`` (when a run averaged replicas every k > 1 steps). A
coefficient no run can show stays at 0 and the fit says so.

Least squares on the logarithm of the steps (a 10% miss weighs the same at 20 steps as at 2,000)
with ``scipy.optimize.least_squares``, from a few starting points; the residual printed is the
root mean square of those logarithms (0.10 is about 10%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.convergence import Setting, batch_steps, penalty
from simulator.errors import UserError
from simulator.specs import ConvergenceSpec


class FitError(UserError):
    """The runs cannot determine the coefficients (too few, or too alike)."""


@dataclass(frozen=True)
class Observation:
    setting: Setting
    steps: tuple[float | None, ...]  # per level, the steps that reached it (None: not reached)
    label: str = ""


@dataclass(frozen=True)
class Fit:
    convergence: ConvergenceSpec
    residual: float  # RMS of log(predicted / measured) over every (run, level)
    fitted: tuple[str, ...]  # the shared coefficients the runs determined
    not_measured: tuple[str, ...]  # those left at their default, and why
    points: int


def _drift(s: Setting) -> float:
    return (s.local_steps - 1) * (1.0 - 1.0 / s.workers) if s.workers > 1 else 0.0


def check_enough(obs: list[Observation]) -> None:
    """Too few or too alike runs: one line saying what is missing."""
    batches = {o.setting.batch for o in obs}
    if len(obs) < 3 or len(batches) < 2:
        raise FitError(f"the fit needs at least 3 runs at 2 or more batch sizes to separate "
                       f"steps_min from noise_batch; it has {len(obs)} run(s) at "
                       f"{len(batches)} batch size(s): add strategies or --batch-size values")


def fit(obs: list[Observation], values: list[float], source: str) -> Fit:
    """Coefficients for the levels ``values`` (the target last) from ``obs``."""
    check_enough(obs)
    if not any(o.steps[-1] is not None for o in obs):
        raise FitError("no run reached the target")
    rates = sorted({o.setting.learning_rate for o in obs})
    fit_lr = len(rates) > 1
    fit_stale = any(o.setting.staleness > 0 for o in obs)
    fit_avg = any(_drift(o.setting) > 0 for o in obs)
    shared = ["lr_max"] * fit_lr + ["staleness_penalty"] * fit_stale + \
        ["averaging_penalty"] * fit_avg
    n_levels = len(values)
    points = [(i, li, s) for i, o in enumerate(obs) for li, s in enumerate(o.steps)
              if s is not None and 0 < s < math.inf]
    if len(points) < 2 * n_levels + len(shared):
        raise FitError(f"{len(points)} measured level crossings cannot fit "
                       f"{2 * n_levels + len(shared)} coefficients: add runs")
    lr_fixed = None if fit_lr else rates[0]

    def unpack(theta: np.ndarray) -> ConvergenceSpec:
        levels = tuple((v, math.exp(theta[2 * k]), math.exp(theta[2 * k + 1]))
                       for k, v in enumerate(values))
        at = 2 * n_levels
        lr_max = math.exp(theta[at]) if fit_lr else lr_fixed
        at += fit_lr
        stale = theta[at] if fit_stale else 0.0
        at += fit_stale
        avg = theta[at] if fit_avg else 0.0
        return ConvergenceSpec(levels=levels, lr_max=lr_max, staleness_penalty=float(stale),
                               averaging_penalty=float(avg), source=source)

    def residuals(theta: np.ndarray) -> np.ndarray:
        conv = unpack(theta)
        out = np.empty(len(points))
        for j, (i, li, measured) in enumerate(points):
            s = obs[i].setting
            _, s_min, bn = conv.levels[li]
            base = batch_steps(s_min, bn, conv.lr_max, s.batch, s.learning_rate)
            # a diverging rate is a steep wall, not an infinity the solver cannot step over
            if not math.isfinite(base):
                base = 1e6 * s_min
            out[j] = math.log(base * penalty(conv, s)) - math.log(measured)
        return out

    from scipy.optimize import least_squares

    smallest = min(o.setting.batch for o in obs)
    best = None
    for scale_bn in (0.05, 0.5, 2.0):
        theta0, lo, hi = [], [], []
        for li in range(n_levels):
            seen = [o.steps[li] for o in obs if o.steps[li] and o.steps[li] < math.inf]
            theta0 += [math.log(max(min(seen, default=1.0) * 0.3, 1e-3)),
                       math.log(scale_bn * smallest)]
            lo += [-20.0, -20.0]
            hi += [20.0, 20.0]
        if fit_lr:
            theta0.append(math.log(2.0 * rates[-1]))
            lo.append(-20.0)
            hi.append(20.0)
        for _ in range(fit_stale + fit_avg):
            theta0.append(0.05)
            lo.append(0.0)
            hi.append(100.0)
        r = least_squares(residuals, np.array(theta0), bounds=(lo, hi), method="trf")
        if best is None or r.cost < best.cost:
            best = r
    conv = unpack(best.x)
    rms = float(np.sqrt(np.mean(residuals(best.x) ** 2)))
    missing = []
    if not fit_lr:
        missing.append(f"lr_max: every run used learning rate {rates[0]:g} (set to it: "
                       "predictions at other rates are not calibrated)")
    if not fit_stale:
        missing.append("staleness_penalty: no run had stale gradients (left at 0)")
    if not fit_avg:
        missing.append("averaging_penalty: no run averaged replicas every k > 1 steps "
                       "(left at 0)")
    return Fit(conv, rms, tuple(shared), tuple(missing), len(points))


def predicted(conv: ConvergenceSpec, o: Observation) -> list[float]:
    """The fitted model's steps at each level of ``o``'s setting (for the residual table)."""
    out = []
    for _, s_min, bn in conv.levels:
        base = batch_steps(s_min, bn, conv.lr_max, o.setting.batch, o.setting.learning_rate)
        out.append(base * penalty(conv, o.setting))
    return out

"""Statistical efficiency: how many steps a plan needs to reach ``training.target``.

The engine predicts seconds per step; this module predicts steps, so that a prediction becomes
time to target. Forms, each with its source (docs/time_to_accuracy.md derives them):

- **Batch size and learning rate.** McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model
  of Large-Batch Training" (arXiv:1812.06162), section 2.2: to second order the loss falls per
  SGD step of rate e on a batch of B by ``e |G|^2 - e^2/2 (G'HG + tr(H Sigma)/B)``. Written with
  ``e_max = |G|^2 / G'HG`` (``lr_max``) and the noise scale ``B_noise = tr(H Sigma) / G'HG``
  (``noise_batch``), the fall is ``dL_max (2x - x^2 (1 + B_noise/B))`` with ``x = e / e_max``,
  so a run at a fixed rate needs ``S = S_min / (2x - x^2 (1 + B_noise/B))`` steps, ``S_min``
  (``steps_min``) being the steps at an infinite batch and the best rate; it diverges when
  ``x >= 2 / (1 + B_noise/B)``. At the best rate for each batch (``x = 1/(1 + B_noise/B)``)
  this is the paper's ``S = S_min (1 + B_noise/B)`` (its eq. 2.11), which is the form used when
  ``lr_max`` is not given (the rate is taken to be tuned for every batch size).
- **Staleness** (asynchronous SGD, Downpour): every gradient computed on parameters ``s``
  updates old is worth less; a penalty ``1 + staleness_penalty x mean staleness`` on the steps.
  Linear in the mean delay as the bounds of Lian et al. 2015 (arXiv:1506.08272) and the
  measured slowdowns of Dai et al. 2019 (arXiv:1810.03264) are; the coefficient is fitted.
- **Periodic averaging** (``local_steps``; a DBN's averaging once per epoch): ``W`` replicas
  each taking ``k`` local steps on their own batches between averagings drift apart; a penalty
  ``1 + averaging_penalty x (k - 1) x (1 - 1/W)``, zero for every-step averaging (``k = 1``,
  synchronous SGD on the global batch) and for one replica (no one to drift from). Linear in
  the period as the local-SGD bounds of Stich 2019 (arXiv:1805.09767) and Lin et al. 2020
  (arXiv:1808.07217) are in their leading term; the coefficient is fitted.

What a step is: synchronous schemes, one optimizer step on the global batch (a local step under
``local_steps``); Downpour, one worker's step on its batch (all workers' steps counted) at the
rate ``lr x b / B`` (the executor normalises a worker's gradient by the global batch ``B`` of
the period, so that the ``W`` workers' pushes of a period add up to one synchronous step); DBN
pre-training, an epoch of the first RBM layer (the target is its reconstruction error). Each
coefficient is a scenario value (``training.convergence``) or fitted by ``parasim
calibrate-convergence`` into a profile; the fit measures several levels of the metric on the way
to the target, so a prediction also draws the curve. Left out: learning-rate schedules and
warm-up, momentum beyond a constant factor on the rate (it is inside ``lr_max``), the curvature
changing along the run (each level has its own ``steps_min`` and ``noise_batch``), and
generalisation (the target is on the training data).

Standard library only: the plan search and the tests read it without the engines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from simulator.errors import ScenarioError
from simulator.specs import ConvergenceSpec, TargetSpec, TrainingSpec


@dataclass(frozen=True)
class Setting:
    """What the steps to a target depend on, for one plan."""

    batch: float  # samples behind one step (the averaged batch of the replicas stepping at once)
    learning_rate: float
    staleness: float = 0.0  # mean updates between a gradient's parameters and its update
    local_steps: int = 1  # steps between averagings
    workers: int = 1  # replicas that average
    steps_per_unit: int = 1  # steps in one counted unit (an epoch for DBN pre-training)
    unit: str = "step"


def gain(x: float, noise_batch: float, batch: float) -> float:
    """The loss a step takes, in units of the best step's at an infinite batch."""
    return 2.0 * x - x * x * (1.0 + noise_batch / batch)


def batch_steps(steps_min: float, noise_batch: float, lr_max: float | None, batch: float,
                learning_rate: float) -> float:
    """Steps of synchronous SGD on ``batch`` samples at ``learning_rate`` (inf: it diverges)."""
    if lr_max is None:
        return steps_min * (1.0 + noise_batch / batch)
    g = gain(learning_rate / lr_max, noise_batch, batch)
    return steps_min / g if g > 0 else math.inf


def penalty(conv: ConvergenceSpec, s: Setting) -> float:
    """The staleness and averaging factors on the steps."""
    drift = (s.local_steps - 1) * (1.0 - 1.0 / s.workers) if s.workers > 1 else 0.0
    return (1.0 + conv.staleness_penalty * s.staleness) * (1.0 + conv.averaging_penalty * drift)


def level(conv: ConvergenceSpec, value: float, where: str = "training.target.value"
          ) -> tuple[float, float]:
    """``(steps_min, noise_batch)`` at metric ``value``: a level's own, or between the two
    levels around it (log-linear in ``steps_min``, linear in ``noise_batch``)."""
    levels = conv.levels
    for v, s_min, bn in levels:
        if math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-12):
            return s_min, bn
    for (v0, s0, b0), (v1, s1, b1) in zip(levels, levels[1:]):
        if min(v0, v1) <= value <= max(v0, v1):
            f = (value - v0) / (v1 - v0)
            return math.exp((1 - f) * math.log(s0) + f * math.log(s1)), (1 - f) * b0 + f * b1
    span = (f"{levels[0][0]:g}" if len(levels) == 1 else
            f"{min(v for v, *_ in levels):g} to {max(v for v, *_ in levels):g}")
    raise ScenarioError(f"the convergence coefficients ({conv.source}) are for {span}; "
                        "calibrate them for this target (parasim calibrate-convergence)",
                        path=where, value=value, has_value=True)


def steps(conv: ConvergenceSpec, value: float, s: Setting) -> float:
    """Steps to reach ``value`` (inf when the rate diverges at this batch)."""
    s_min, bn = level(conv, value)
    return batch_steps(s_min, bn, conv.lr_max, s.batch, s.learning_rate) * penalty(conv, s)


def units(conv: ConvergenceSpec, value: float, s: Setting) -> float:
    """Counted units (steps, or whole epochs) to reach ``value``."""
    n = steps(conv, value, s)
    return n if s.steps_per_unit == 1 or math.isinf(n) else math.ceil(n / s.steps_per_unit)


# ---- a plan's setting and its prediction -----------------------------------------------------

def setting_of(plan: Any, training: TrainingSpec, entry: dict[str, Any]) -> Setting:
    """The plan's batch, rate, staleness (the engine's, for Downpour), averaging period."""
    lr = training.learning_rate
    workers = max(1, len([r for r in plan.ranks if r.role == "worker"]))
    if plan.scheme == "dbn_pretrain":
        from simulator.strategies.dbn_pretrain import mini_batches, shard_bounds

        k, b = plan.options["workers"], plan.options["batch_per_rank"]
        m = len(mini_batches(shard_bounds(plan.options["samples"], k, 0)[1], b))
        return Setting(batch=k * b, learning_rate=lr, local_steps=m, workers=k,
                       steps_per_unit=m, unit="epoch")
    per_step = plan.samples_per_period / plan.period_steps
    if plan.mode == "async":
        # a worker's gradient is normalised by the whole period's samples (its W workers'
        # pushes add up to one synchronous step): each push steps by lr x b / (W b)
        b = per_step / workers
        return Setting(batch=b, learning_rate=lr * b / per_step, workers=workers,
                       staleness=float((entry.get("staleness") or {}).get("mean") or 0.0))
    return Setting(batch=per_step, learning_rate=lr, workers=workers,
                   local_steps=int(plan.options.get("local_steps", 1) or 1))


def step_time(plan: Any, s: Setting, entry: dict[str, Any]) -> float | None:
    """Seconds per counted unit: an optimizer step, all workers' steps' share (Downpour), or
    an epoch of the first layer (DBN pre-training)."""
    if s.unit == "epoch":
        layers = (entry.get("pretraining") or {}).get("layers") or []
        if not layers or not layers[0].get("epochs"):
            return None
        return layers[0]["time_s"] / layers[0]["epochs"]
    if plan.mode == "async":
        tp = entry.get("throughput_samples_per_s")
        return s.batch / tp if tp else None
    return entry.get("iteration_time_s")


def cap(plan: Any, training: TrainingSpec, s: Setting) -> int:
    """The most units a run may take: ``training.iterations`` periods (all workers' steps for
    Downpour), or a DBN layer's ``epochs``."""
    if s.unit == "epoch":
        return int(plan.options["epochs"])
    return training.iterations * plan.period_steps * (s.workers if plan.mode == "async" else 1)


def check_target(target: TargetSpec, plan: Any, path: str) -> None:
    """The plan must measure the target's metric: a DBN's pre-training its reconstruction
    error, every other scheme its loss and accuracy."""
    check_scheme(target, plan.scheme, plan.strategy, path)


def check_scheme(target: TargetSpec, scheme: str, strategy: str, path: str) -> None:
    dbn = scheme == "dbn_pretrain"
    if dbn != (target.metric == "reconstruction_error"):
        raise ScenarioError(
            f"strategy {strategy!r} ({scheme}) measures "
            f"{'the reconstruction error of its first layer' if dbn else 'loss and accuracy'}"
            f", not {target.metric}", path=path, value=target.metric, has_value=True)


def predict_target(plan: Any, training: TrainingSpec, entry: dict[str, Any]) -> dict[str, Any]:
    """The ``target`` block of a predicted entry, and (with several calibrated levels) the
    predicted curve of the metric against time in ``entry["training"]``."""
    target, conv = training.target, training.convergence
    if conv is None:
        raise ScenarioError("has no convergence coefficients to predict the steps with: give "
                            "training.convergence, or a profile fitted by parasim "
                            "calibrate-convergence", path="training.target",
                            value=target.describe(), has_value=True)
    s = setting_of(plan, training, entry)
    need = units(conv, target.value, s)
    t = step_time(plan, s, entry)
    limit = cap(plan, training, s)
    block: dict[str, Any] = {"metric": target.metric, "value": target.value, "on": target.on,
                             "step_unit": s.unit, "steps_needed": need, "cap": limit,
                             "batch": s.batch, "staleness": s.staleness,
                             "local_steps": s.local_steps, "workers": s.workers}
    why = None
    if math.isinf(need):
        why = (f"a step at rate {s.learning_rate:g} diverges at a batch of {s.batch:g} "
               f"(stable below {2 * conv.lr_max / (1 + level(conv, target.value)[1] / s.batch):g})")
    elif need > limit:
        why = f"needs {need:,.0f} {s.unit}s, more than the {limit:,} the run may take"
    elif t is None:
        why = "the prediction has no time per step (no timeline of the first layer's epochs)"
    reached = why is None and t is not None
    block.update(reached=reached, steps=need if reached else None,
                 time_s=need * t if reached else None, step_time_s=t,
                 samples=need * s.batch * s.steps_per_unit if reached else None)
    if why:
        block["why"] = why
    if reached and len(conv.levels) > 1:
        entry["training"] = curve(conv, target, s, t)
    return block


def curve(conv: ConvergenceSpec, target: TargetSpec, s: Setting, t: float
          ) -> dict[str, list[float]]:
    """The predicted metric against time: each calibrated level the run passes before the
    target, and the target."""
    values = [v for v, *_ in conv.levels
              if not target.reached(v) or math.isclose(v, target.value)]
    if not any(math.isclose(v, target.value) for v in values):
        values.append(target.value)
    points = sorted((units(conv, v, s), v) for v in values)
    key = "loss" if target.metric != "accuracy" else "accuracy"
    return {"wall_time_s": [n * t for n, _ in points],
            "samples": [n * s.batch * s.steps_per_unit for n, _ in points],
            key: [v for _, v in points]}


def attach(entry: dict[str, Any], block: dict[str, Any]) -> None:
    """Put a target block, and its three headline figures, on an entry."""
    entry["target"] = block
    entry["steps_to_target"] = block.get("steps")
    entry["time_to_target_s"] = block.get("time_s")
    entry["step_time_s"] = block.get("step_time_s")

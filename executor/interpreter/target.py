"""Running to ``training.target``: the windowed metric a run stops on, and the target block of a
measured entry (the simulator writes the same block: ``simulator/convergence.py``).

The window: the training metric (loss, or accuracy) of the last ``ceil(window / samples per
period)`` periods, each period's sum weighted by the predictions it counted, so the value is
the mean over about ``window`` samples. Before that many periods have run, the periods so far
make the window. A synchronous run's sums are the global batch's (all-reduced: every rank holds
the same figures and takes the same decision); a Downpour worker's are its own batch's.

What a step is, per scheme: an optimizer step (``period_steps`` per period) for synchronous
schemes, one worker's mini-batch step for Downpour (all workers' counted), an epoch of the first
RBM layer for DBN pre-training (its reconstruction error is the metric, no window).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from simulator.convergence import attach
from simulator.specs import TargetSpec


class Window:
    """The windowed training metric of one run (or of one Downpour worker)."""

    def __init__(self, target: TargetSpec, samples_per_period: int):
        self.target = target
        self.periods = max(1, math.ceil(target.window / max(samples_per_period, 1)))
        self.recent: deque[tuple[float, float]] = deque(maxlen=self.periods)
        self.value: float | None = None
        self.best: float | None = None

    def add(self, loss_sum: float, correct: float, counted: float) -> bool:
        """One period's sums; True when the windowed value reaches the target."""
        self.recent.append((correct if self.target.metric == "accuracy" else loss_sum, counted))
        counted_all = sum(c for _, c in self.recent)
        if counted_all <= 0:
            return False
        self.value = sum(m for m, _ in self.recent) / counted_all
        self.best = self.value if self.best is None else better(self.target, self.best,
                                                                  self.value)
        return self.target.reached(self.value)


def better(target: TargetSpec, a: float, b: float) -> float:
    return max(a, b) if target.higher_is_better else min(a, b)


def snapshot(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of ``checkpoint.state_of``'s arrays (on the CPU they are the live ones, updated
    in place by every step)."""
    return {k: np.array(v, copy=True) for k, v in state.items()}


def target_block(target: TargetSpec, *, unit: str, steps: int | None, time_s: float | None,
                 samples: int | None, cap: int, cap_source: str, best: float | None,
                 window: bool = True) -> dict[str, Any]:
    """The ``target`` block of a measured entry: ``steps`` and ``time_s`` when the target was
    reached (None otherwise, with ``why``)."""
    reached = steps is not None
    block: dict[str, Any] = {
        "metric": target.metric, "value": target.value, "on": target.on, "step_unit": unit,
        "reached": reached, "steps": steps, "time_s": time_s if reached else None,
        "samples": samples if reached else None,
        "step_time_s": time_s / steps if reached and time_s is not None and steps else None,
        "cap": cap,
    }
    if window:
        block["window"] = target.window
    block["best"] = best
    if not reached:
        shown = "none measured" if best is None else f"{best:.4g}"
        block["why"] = (f"not reached in {cap:,} {unit}s ({cap_source}); best "
                        f"{target.metric} {shown}")
    return block


def put(entry: dict[str, Any], block: dict[str, Any]) -> None:
    """The block and its headline figures on a (rank 0's, non-empty) entry."""
    if entry:
        attach(entry, block)


def describe(entry: dict[str, Any]) -> str | None:
    """One line on the target outcome of an entry that ran to one, else None."""
    block = entry.get("target")
    if not block:
        return None
    what = f"{block['metric']} {'>=' if block['metric'] == 'accuracy' else '<='} {block['value']:g}"
    if not block["reached"]:
        return f"{entry['strategy']}: {what} not reached: {block.get('why', '')}"
    unit = block["step_unit"]
    per = block.get("step_time_s")
    tail = f" ({per * 1e3:.3g} ms/{unit})" if per is not None else ""
    return (f"{entry['strategy']}: {what} reached in {block['steps']:,} {unit}s, "
            f"{block['time_s']:.3g} s{tail}")

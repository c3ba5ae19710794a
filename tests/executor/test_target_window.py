"""The window a run to ``training.target`` stops on, and the target block, by hand (no MPI)."""

from __future__ import annotations

from executor.interpreter.target import Window, describe, target_block
from simulator.specs import TargetSpec


def test_the_window_spans_enough_periods_for_its_samples_weighted_by_predictions():
    w = Window(TargetSpec("loss", 0.5, window=100), samples_per_period=32)
    assert w.periods == 4  # ceil(100 / 32)
    assert not w.add(32.0, 0, 32)  # loss 1.0: the window so far is this one period
    assert w.value == 1.0
    assert not w.add(8.0, 0, 16)  # (32 + 8) / (32 + 16)
    assert w.value == 40 / 48
    w.add(0.0, 0, 32)
    w.add(0.0, 0, 32)
    assert w.value == 40 / 112
    assert w.add(0.0, 0, 32)  # the first period leaves the window: 8 / 112
    assert w.value == 8 / 112 and w.best == 8 / 112


def test_accuracy_is_reached_from_below_and_its_best_is_the_highest():
    w = Window(TargetSpec("accuracy", 0.75, window=10), samples_per_period=10)
    assert w.periods == 1
    assert not w.add(5.0, 6, 10) and w.value == 0.6
    assert not w.add(5.0, 4, 10) and w.best == 0.6
    assert w.add(5.0, 8, 10) and w.best == 0.8


def test_a_block_not_reached_says_why_and_a_line_per_outcome():
    t = TargetSpec("loss", 0.3)
    no = target_block(t, unit="step", steps=None, time_s=1.0, samples=640, cap=200,
                      cap_source="training.iterations", best=0.41)
    assert no == {"metric": "loss", "value": 0.3, "on": "train", "step_unit": "step",
                  "reached": False, "steps": None, "time_s": None, "samples": None,
                  "step_time_s": None, "cap": 200, "window": 512, "best": 0.41,
                  "why": "not reached in 200 steps (training.iterations); best loss 0.41"}
    yes = target_block(t, unit="step", steps=57, time_s=1.23, samples=1824, cap=200,
                       cap_source="training.iterations", best=0.29)
    assert yes["reached"] and yes["step_time_s"] == 1.23 / 57 and "why" not in yes
    assert describe({"strategy": "dp", "target": yes}) == (
        "dp: loss <= 0.3 reached in 57 steps, 1.23 s (21.6 ms/step)")
    assert describe({"strategy": "dp", "target": no}) == (
        "dp: loss <= 0.3 not reached: not reached in 200 steps (training.iterations); best "
        "loss 0.41")
    assert describe({"strategy": "dp"}) is None

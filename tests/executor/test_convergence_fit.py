"""The convergence fit on synthetic runs with known coefficients (it must find them), and the
reading of a run's curve into steps per level. The prediction itself is checked against real
runs by benchmarks/time_to_accuracy.py."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from executor.calibration.convergence_fit import FitError, Observation, fit
from executor.calibration.convergence_runs import choose_levels, windowed
from simulator.convergence import Setting, batch_steps, penalty
from simulator.specs import ConvergenceSpec, TargetSpec

TRUE = ConvergenceSpec(levels=((1.0, 20.0, 8.0), (0.6, 60.0, 30.0), (0.3, 200.0, 90.0)),
                       lr_max=0.5, staleness_penalty=0.15, averaging_penalty=0.03)


def synthetic(settings: list[Setting], noise: float = 0.0, seed: int = 0) -> list[Observation]:
    rng = random.Random(seed)
    out = []
    for s in settings:
        steps = tuple(batch_steps(m, b, TRUE.lr_max, s.batch, s.learning_rate) *
                      penalty(TRUE, s) * math.exp(rng.gauss(0.0, noise))
                      for _, m, b in TRUE.levels)
        steps = tuple(x if math.isfinite(x) else None for x in steps)  # diverged: not reached
        out.append(Observation(s, steps, f"B={s.batch:g} lr={s.learning_rate:g}"))
    return out


SETTINGS = ([Setting(batch=b, learning_rate=lr) for b in (8, 32, 128, 512) for lr in (0.05, 0.2)]
            + [Setting(batch=16, learning_rate=0.1, staleness=s, workers=3) for s in (1.0, 4.0)]
            + [Setting(batch=64, learning_rate=0.1, local_steps=k, workers=4) for k in (4, 16)])
VALUES = [v for v, *_ in TRUE.levels]


def test_the_fit_recovers_known_coefficients():
    got = fit(synthetic(SETTINGS), VALUES, "synthetic")
    c = got.convergence
    assert got.residual < 1e-6
    assert c.lr_max == pytest.approx(TRUE.lr_max, rel=1e-3)
    assert c.staleness_penalty == pytest.approx(TRUE.staleness_penalty, rel=1e-3)
    assert c.averaging_penalty == pytest.approx(TRUE.averaging_penalty, rel=1e-3)
    for (v, m, b), (v2, m2, b2) in zip(c.levels, TRUE.levels):
        assert v == v2 and m == pytest.approx(m2, rel=1e-3) and b == pytest.approx(b2, rel=1e-3)
    assert set(got.fitted) == {"lr_max", "staleness_penalty", "averaging_penalty"}


def test_noisy_runs_give_the_residual_of_their_noise():
    got = fit(synthetic(SETTINGS, noise=0.05, seed=3), VALUES, "synthetic")
    assert 0.01 < got.residual < 0.06  # the fit absorbs part of the 5% noise, not more
    assert got.convergence.staleness_penalty == pytest.approx(0.15, abs=0.08)


def test_one_rate_is_exact_at_that_rate_and_says_lr_max_is_not_measured():
    one = [replace(s, learning_rate=0.05) for s in SETTINGS if s.learning_rate != 0.2]
    got = fit(synthetic(one), VALUES, "synthetic")
    assert got.convergence.lr_max == 0.05
    assert any(m.startswith("lr_max") for m in got.not_measured)
    for o in synthetic(one):  # the same runs predicted back
        for li, (_, m, b) in enumerate(got.convergence.levels):
            fitted = (batch_steps(m, b, got.convergence.lr_max, o.setting.batch,
                                  o.setting.learning_rate) * penalty(got.convergence, o.setting))
            assert fitted == pytest.approx(o.steps[li], rel=0.02)


def test_too_few_runs_are_refused():
    with pytest.raises(FitError, match="at least 3 runs at 2 or more batch sizes"):
        fit(synthetic(SETTINGS[:2]), VALUES, "x")
    same = [Setting(batch=32, learning_rate=lr) for lr in (0.05, 0.1, 0.2)]
    with pytest.raises(FitError, match="1 batch size"):
        fit(synthetic(same), VALUES, "x")


def test_the_window_is_the_executors():
    # periods of 100 samples, a window of 250: the last 3 periods, sample-weighted
    entry = {"training": {"samples": [100, 200, 300, 400], "loss": [4.0, 3.0, 2.0, 1.0]}}
    got = windowed(entry, TargetSpec(metric="loss", value=1.0, window=250))
    assert [w for _, w in got] == pytest.approx([4.0, 3.5, 3.0, 2.0])
    levels = choose_levels([entry], TargetSpec(metric="loss", value=1.0, window=250), dbn=False)
    assert levels[-1] == 1.0 and levels[0] < 4.0 and levels == sorted(levels, reverse=True)


def test_a_derived_run_names_the_scenarios_files_from_anywhere(tmp_path):
    import yaml

    from executor.calibration.convergence_runs import derived_scenario

    (tmp_path / "s").mkdir()
    scenario = tmp_path / "s" / "x.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "x", "seed": 1, "data": {"kind": "cifar10", "batches": ["b1", "/abs/b2"]},
        "cluster": {"profile": "p.yaml"},
        "training": {"batch_size": 8, "learning_rate": 0.1, "convergence": {"profile": "c"}},
        "strategies": [{"name": "a"}, {"name": "b"}], "sweep": {"devices": [1, 2]}}))
    out = yaml.safe_load(derived_scenario(scenario, "b", 0.2, 3, tmp_path, 16).read_text())
    base = scenario.parent.resolve()
    assert out["data"]["batches"] == [str(base / "b1"), "/abs/b2"]
    assert out["cluster"]["profile"] == str(base / "p.yaml")
    assert out["training"] == {"batch_size": 16, "learning_rate": 0.2}
    assert out["strategies"] == [{"name": "b"}] and out["seed"] == 3 and "sweep" not in out

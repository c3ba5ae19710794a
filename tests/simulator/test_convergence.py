"""The steps-to-target model's closed forms (simulator/convergence.py), the scenario's target and
coefficients, and what a prediction with a target carries."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from simulator.convergence import (
    Setting,
    batch_steps,
    gain,
    level,
    penalty,
    steps,
    units,
)
from simulator.errors import ScenarioError
from simulator.predict import simulate_scenario
from simulator.scenario import load_scenario, parse_scenario
from simulator.specs import ConvergenceSpec


def conv(**kw) -> ConvergenceSpec:
    base = {"levels": ((0.3, 100.0, 50.0),), "lr_max": None}
    return ConvergenceSpec(**{**base, **kw})


def test_tuned_rate_is_mccandlish_steps():
    # S = S_min (1 + B_noise / B): 100 (1 + 50/25) = 300, and S_min at an infinite batch
    assert batch_steps(100.0, 50.0, None, 25.0, 0.1) == pytest.approx(300.0)
    assert batch_steps(100.0, 50.0, None, 1e12, 0.1) == pytest.approx(100.0)


def test_fixed_rate_form_and_its_optimum():
    s_min, bn, lr_max = 100.0, 50.0, 1.0
    for batch in (5.0, 50.0, 500.0):
        best = 1.0 / (1.0 + bn / batch)  # the paper's optimal step fraction
        # at the best rate the fixed-rate form is the tuned form
        assert batch_steps(s_min, bn, lr_max, batch, best * lr_max) == pytest.approx(
            batch_steps(s_min, bn, None, batch, 1.0))
        # and any other rate needs more steps
        for x in (0.5 * best, 1.5 * best):
            assert batch_steps(s_min, bn, lr_max, batch, x * lr_max) > s_min * (1 + bn / batch)
    # the gain at x: 2x - x^2 (1 + B_noise/B); it diverges at x >= 2 / (1 + B_noise/B)
    assert gain(0.5, 50.0, 50.0) == pytest.approx(1.0 - 0.5)
    assert math.isinf(batch_steps(s_min, bn, lr_max, 50.0, 1.0))
    assert math.isfinite(batch_steps(s_min, bn, lr_max, 50.0, 0.99))


def test_small_rates_make_the_batch_matter_less():
    # at x << 1 the steps go as S_min / 2x whatever the batch (the noise term is x^2)
    small = [batch_steps(100.0, 50.0, 1.0, b, 0.01) for b in (10.0, 1000.0)]
    assert small[0] / small[1] == pytest.approx(1.0, rel=0.03)
    large = [batch_steps(100.0, 50.0, 1.0, b, 0.3) for b in (10.0, 1000.0)]
    assert large[0] / large[1] > 2.0


def test_penalties():
    c = conv(staleness_penalty=0.1, averaging_penalty=0.02)
    assert penalty(c, Setting(batch=32, learning_rate=0.1)) == 1.0
    assert penalty(c, Setting(batch=32, learning_rate=0.1, staleness=2.5)) == pytest.approx(1.25)
    # k local steps over W replicas: 1 + 0.02 (k - 1)(1 - 1/W)
    assert penalty(c, Setting(batch=32, learning_rate=0.1, local_steps=11, workers=4)) == \
        pytest.approx(1 + 0.02 * 10 * 0.75)
    # one replica drifts from no one
    assert penalty(c, Setting(batch=32, learning_rate=0.1, local_steps=11, workers=1)) == 1.0


def test_epochs_are_whole():
    c = conv()
    s = Setting(batch=32, learning_rate=0.1, steps_per_unit=56, unit="epoch")
    # 100 (1 + 50/32) = 256.25 steps: the fifth epoch of 56 reaches it
    assert steps(c, 0.3, s) == pytest.approx(256.25)
    assert units(c, 0.3, s) == 5


def test_levels_interpolate_and_refuse_outside():
    c = conv(levels=((1.0, 10.0, 20.0), (0.5, 40.0, 40.0), (0.3, 160.0, 80.0)))
    assert level(c, 0.5) == (40.0, 40.0)
    s_min, bn = level(c, 0.4)  # half way: geometric in steps_min, arithmetic in noise_batch
    assert s_min == pytest.approx(80.0)
    assert bn == pytest.approx(60.0)
    with pytest.raises(ScenarioError, match="are for 0.3 to 1"):
        level(c, 0.2)


SCENARIO = """\
name: target
seed: 1
model: {zoo: mlp, params: {sizes: [64, 32, 10]}}
cluster: {nodes: 1, devices_per_node: 4, device: cpu_core_modern, intra_link: shm,
          parameter_servers: {hosts: 1, device: cpu_core, nic: eth_10g}}
training: {batch_size: 64, iterations: 1000, warmup_iterations: 1, learning_rate: 0.1,
           target: {metric: loss, value: 0.3}, CONVERGENCE}
strategies:
  - {name: one, scheme: data_parallel, devices: 1}
  - {name: four, scheme: data_parallel, devices: 4}
  - {name: four-local4, scheme: data_parallel, devices: 4, local_steps: 4}
  - {name: downpour, scheme: downpour, workers: 3}
"""
COEFFS = ("convergence: {steps_min: 50, noise_batch: 32, lr_max: 0.4, staleness_penalty: 0.2, "
          "averaging_penalty: 0.05}")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_prediction_carries_steps_and_time_to_target(tmp_path: Path):
    sc = load_scenario(write(tmp_path, SCENARIO.replace("CONVERGENCE", COEFFS)))
    result, _ = simulate_scenario(sc)
    e = {x["strategy"]: x for x in result["results"]}
    x = 0.1 / 0.4
    sync = 50 / (2 * x - x * x * (1 + 32 / 64))  # the closed form at B = 64
    assert e["one"]["steps_to_target"] == pytest.approx(sync)
    assert e["four"]["steps_to_target"] == pytest.approx(sync)  # the same global batch
    for name in ("one", "four", "four-local4"):
        assert e[name]["time_to_target_s"] == pytest.approx(
            e[name]["steps_to_target"] * e[name]["iteration_time_s"])
        assert e[name]["step_time_s"] == e[name]["iteration_time_s"]
    assert e["four-local4"]["steps_to_target"] == pytest.approx(sync * (1 + 0.05 * 3 * 0.75))
    # Downpour: each worker steps on its share of the batch (21 of 64) at the engine's
    # staleness
    d = e["downpour"]
    b = d["samples_per_iteration"] / 3
    stale = d["staleness"]["mean"]
    assert stale > 0
    # each push steps by lr x b / (3 b): a third of the rate (the executor's normalisation)
    xw = x / 3
    assert d["steps_to_target"] == pytest.approx(
        50 / (2 * xw - xw * xw * (1 + 32 / b)) * (1 + 0.2 * stale))
    assert d["time_to_target_s"] == pytest.approx(
        d["steps_to_target"] * b / d["throughput_samples_per_s"])


def test_a_target_past_the_cap_or_diverging_is_not_reached(tmp_path: Path):
    text = SCENARIO.replace("CONVERGENCE", COEFFS).replace("iterations: 1000", "iterations: 10")
    result, _ = simulate_scenario(load_scenario(write(tmp_path, text)), ["one"])
    t = result["results"][0]["target"]
    assert not t["reached"] and "more than the 10" in t["why"]
    assert result["results"][0]["time_to_target_s"] is None
    text = SCENARIO.replace("CONVERGENCE", COEFFS).replace("learning_rate: 0.1", "learning_rate: 1")
    result, _ = simulate_scenario(load_scenario(write(tmp_path, text)), ["one"])
    assert "diverges" in result["results"][0]["target"]["why"]


def test_without_coefficients_the_prediction_says_why(tmp_path: Path):
    text = SCENARIO.replace(", CONVERGENCE", "")
    result, _ = simulate_scenario(load_scenario(write(tmp_path, text)), ["one"])
    e = result["results"][0]
    assert e["time_to_target_s"] is None and "no convergence coefficients" in e["target"]["why"]
    assert e["throughput_samples_per_s"] > 0


@pytest.mark.parametrize("training, message", [
    ("target: {metric: accuracy, value: 1.5}", "training.target.value"),
    ("target: {metric: perplexity, value: 1}", "training.target.metric"),
    ("target: {metric: loss, value: 0.3, data: test}", "training.target.data"),
    ("target: {metric: reconstruction_error, value: 0.1}", "measures loss and accuracy"),
    ("convergence: {steps_min: 10}", "needs training.target"),
    ("target: {metric: loss, value: 0.3}, convergence: {noise_batch: 3}",
     "training.convergence.steps_min: is required"),
])
def test_bad_targets_name_the_field(training: str, message: str):
    text = SCENARIO.replace("target: {metric: loss, value: 0.3}, CONVERGENCE", training)
    with pytest.raises(ScenarioError, match=message.replace(".", r"\.")):
        parse_scenario(__import__("yaml").safe_load(text), "s.yaml")


PROFILE = """\
convergence:
  metric: METRIC
  lr_max: 0.5
  levels:
    - {value: FIRST, steps_min: 10, noise_batch: 5}
    - {value: VALUE, steps_min: 40, noise_batch: 20}
"""


@pytest.mark.parametrize("metric, first, value, message", [
    ("loss", "1.0", "0.3", None),
    ("accuracy", "0.1", "0.3", "its coefficients are for accuracy; the target is loss"),
    ("loss", "1.0", "2.0", "must be in the order a run passes them (falling loss)"),
    ("accuracy", "0.5", "0.3", "must be in the order a run passes them (rising accuracy)"),
    ("loss", "1.0", "[1]", "convergence.levels[1].value"),
])
def test_a_convergence_profile_is_checked(tmp_path: Path, metric, first, value, message):
    (tmp_path / "fit.yaml").write_text(PROFILE.replace("METRIC", metric).replace(
        "FIRST", first).replace("VALUE", value))
    text = SCENARIO.replace("CONVERGENCE", "convergence: {profile: fit.yaml}")
    if message is None:
        sc = load_scenario(write(tmp_path, text))
        assert sc.training.convergence.levels[-1] == (0.3, 40.0, 20.0)
        assert sc.training.convergence.lr_max == 0.5
        return
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario(write(tmp_path, text))


def test_a_missing_profile_names_the_field(tmp_path: Path):
    text = SCENARIO.replace("CONVERGENCE", "convergence: {profile: nowhere.yaml}")
    with pytest.raises(ScenarioError, match="no such convergence profile"):
        load_scenario(write(tmp_path, text))

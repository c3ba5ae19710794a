"""``parasim calibrate-convergence`` for real: it launches each run with mpiexec, fits, writes a
profile a scenario can use; bad input is one line and exit 2 with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simulator.convergence_file import load_convergence
from simulator.predict import simulate_scenario
from simulator.scenario import load_scenario

SCENARIO = """\
name: convergence test
seed: 2
model: {{zoo: mlp, params: {{sizes: [64, 32, 10]}}}}
cluster: {{nodes: 1, devices_per_node: 2, device: cpu_core, intra_link: shm}}
training: {{batch_size: 32, iterations: {iterations}, warmup_iterations: 1, learning_rate: 0.2,
           momentum: 0.0, target: {{metric: loss, value: {value}, window: 128}}}}
data: {{kind: digits}}
strategies:
  - {{name: one, scheme: data_parallel, devices: 1}}
  - {{name: avg2, scheme: data_parallel, devices: 2, local_steps: 2}}
"""


def parasim(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "parasim", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def write(tmp_path: Path, iterations: int = 300, value: float = 0.6) -> Path:
    path = tmp_path / "conv.yaml"
    path.write_text(SCENARIO.format(iterations=iterations, value=value))
    return path


def test_fit_writes_a_profile_the_scenario_predicts_with(tmp_path: Path):
    path = write(tmp_path)
    out = tmp_path / "fitted.yaml"
    done = parasim("calibrate-convergence", str(path), "--batch-size", "8", "-o", str(out),
                   "--backend", "reference")
    assert done.returncode == 0, done.stderr
    assert "residual" in done.stdout and "averaging_penalty" in done.stdout
    conv, metric, record = load_convergence(out)
    assert metric == "loss" and conv.levels[-1][0] == 0.6
    assert len(record["settings"]) == 4  # 2 strategies x batches 32 and 8
    # the fit reproduces its own runs to the residual it printed
    assert record["fit"]["residual_log_rms"] < 0.3
    # and a scenario that names it predicts steps and time to the target
    text = path.read_text().replace("window: 128}", "window: 128},\n"
                                    f"           convergence: {{profile: {out}}}")
    path.write_text(text)
    result, _ = simulate_scenario(load_scenario(path))
    one = next(e for e in result["results"] if e["strategy"] == "one")
    measured = next(s for s in record["settings"] if s["run"].startswith("one B 32"))
    assert one["steps_to_target"] == pytest.approx(measured["steps_to_levels"][-1], rel=0.3)
    assert one["training"]["loss"][-1] == 0.6  # the predicted curve ends at the target


def test_too_few_runs_are_refused_before_running(tmp_path: Path):
    out = tmp_path / "fitted.yaml"
    done = parasim("calibrate-convergence", str(write(tmp_path)), "--strategy", "one",
                   "-o", str(out), timeout=60)
    assert done.returncode == 2
    assert "at least 3 runs at 2 or more batch sizes" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_target_out_of_reach_writes_nothing(tmp_path: Path):
    out = tmp_path / "fitted.yaml"
    out.write_text("kept\n")
    done = parasim("calibrate-convergence", str(write(tmp_path, iterations=3, value=0.01)),
                   "--batch-size", "8", "-o", str(out), "--force", "--backend", "reference")
    assert done.returncode == 2
    assert "did not reach loss <= 0.01" in done.stderr and "not reached in 3" in done.stderr
    assert out.read_text() == "kept\n"


@pytest.mark.parametrize("change, message", [
    (lambda d: d["training"].pop("target"), "training.target is required"),
    (lambda d: d["training"]["target"].update(metric="reconstruction_error"),
     "measures loss and accuracy, not reconstruction_error"),
])
def test_a_scenario_without_a_usable_target_is_refused(tmp_path: Path, change, message):
    path = write(tmp_path)
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))
    done = parasim("calibrate-convergence", str(path), "-o", str(tmp_path / "x.yaml"),
                   timeout=60)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

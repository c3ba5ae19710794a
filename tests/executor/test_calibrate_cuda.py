"""``parasim calibrate --backend cuda`` with real ranks (``mpiexec -n 2``) under numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``): the command a GPU machine runs, checked end to end on a
machine without one.

Under the simulator the kernels are timed on the smallest shapes, once each
(``executor/calibration/kernels.py``: ``SIMULATED``), and the calibration takes about 35 s on
this project's 2-core test machine. The profile must read back, be a GPU's, carry a curve under
every name the simulator looks up for a model's kernels (``simulator/engine/hardware.py``:
``curve_key``), record the host-device copies, and say that its figures are the emulator's.
The figures themselves are not checked: a Python thread per GPU thread measures nothing a GPU
does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from parasim.cli import main
from simulator.engine.hardware import curve_key
from simulator.plan import Compute, Update
from simulator.predict import plans
from simulator.profile import load_profile
from simulator.scenario import load_scenario
from tests.executor.test_execute import launch

pytest.importorskip("numba.cuda")

TIMEOUT_S = 300  # about 35 s on 2 cores; a loaded machine takes several times that
# every kernel the executor calls for these layers, forward and backward, and the updates
KINDS = {"dense", "conv", "pool_max", "pool_avg", "act_relu", "act_sigmoid", "act_tanh",
         "softmax", "rbm"}
SCENARIO = """\
name: cuda profile
seed: 1
model: {{zoo: {model}}}
cluster: {{profile: {profile}, nodes: 1, devices_per_node: 2}}
training: {{batch_size: 8, iterations: 2, warmup_iterations: 1}}
strategies:
  - {{name: dp, scheme: data_parallel, exchange: ring}}
"""


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One simulated calibration on two ranks. ``--accept-noisy``: the test machine is shared
    (the figures checked here do not depend on its load)."""
    out = tmp_path_factory.mktemp("calibrate_cuda") / "profile.yaml"
    done = launch(2, ["calibrate", "--backend", "cuda", "--grid", "tiny", "--accept-noisy",
                      "-o", str(out)], timeout=TIMEOUT_S, env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout, done.stderr


def test_the_profile_is_a_gpus_with_a_curve_for_every_kernel(calibrated):
    path, stdout, _ = calibrated
    assert f"profile written to {path}" in stdout
    p = load_profile(path)
    d = p.device
    assert d.kind == "gpu" and d.sms >= 1 and d.peak_flops["fp32"] > 0
    assert d.memory > 0 and d.memory_bandwidth > 0 and d.launch_overhead >= 0
    assert d.cache == 0  # a GPU profile has no cache size: every working set takes these curves
    kinds = {f"{kind}.{phase}" for kind in KINDS for phase in ("fwd", "bwd")}
    assert kinds | {"rbm.cd1", "update"} == {key for key in d.kernels if "@" not in key}
    assert not [key for key in d.kernels if key.startswith("hot:")]  # timed back to back only
    for key, curve in d.kernels.items():
        assert curve and all(0 < e <= 1 for _, e in curve), key
    assert p.calibration["backend"] == "cuda"
    assert "numba-cuda" in p.calibration["versions"]


def test_the_host_device_copies_are_measured(calibrated):
    copies = load_profile(calibrated[0]).calibration["measured"]["host_device_copy"]
    assert copies["bytes"] == [1 << 16, 1 << 20, 1 << 24]
    assert all(t > 0 for t in copies["host_to_device_s"] + copies["device_to_host_s"])
    assert copies["host_to_device_GBps"] > 0 and copies["device_to_host_GBps"] > 0


def test_the_profile_says_its_figures_are_the_emulators(calibrated):
    path, _, stderr = calibrated
    p = load_profile(path)
    cond = p.calibration["conditions"]
    assert cond["simulated"] is True
    assert cond["warnings"][0].startswith("the cuda kernels ran under numba's CUDA simulator "
                                          "(NUMBA_ENABLE_CUDASIM=1), CPU emulation")
    assert f"parasim: warning: {cond['warnings'][0]}" in stderr
    assert "NUMBA_ENABLE_CUDASIM=1" in p.device.source
    assert "simulator" in p.calibration["versions"]["gpu"]


@pytest.mark.parametrize("model", ["mlp", "lenet5"])
def test_a_scenario_on_the_profile_takes_its_curves(calibrated, tmp_path: Path, model: str,
                                                   capsys):
    path = calibrated[0]
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO.format(model=model, profile=path))
    sc = load_scenario(scenario)
    kernels = load_profile(path).device.kernels
    # zero-FLOP layers (flatten) cost the launch overhead only: no curve
    ops = [op for plan in plans(sc) for rank in plan.ranks for op in rank.ops
           if isinstance(op, (Compute, Update)) and op.flops]
    assert ops and {curve_key(op) for op in ops} <= set(kernels)
    assert main(["simulate", str(scenario)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and any(line.startswith("dp ") for line in out.splitlines())

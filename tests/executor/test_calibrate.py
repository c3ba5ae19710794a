"""``parasim calibrate`` and ``parasim validate`` with real ranks (``mpiexec -n 2``).

One tiny-grid calibration for the module; the profile it writes must read back with the
simulator's loader, serve a scenario, and drive ``validate`` (predicted against measured).
Bad requests (one rank, an existing output, a missing profile) exit 2 with one clear line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parasim.cli import main
from simulator.profile import load_profile
from simulator.scenario import load_scenario
from tests.executor.test_execute import launch

VALIDATE = """\
name: validate test
seed: 1
model: {zoo: mlp, params: {sizes: [64, 32, 10]}}
cluster: {nodes: 1, devices_per_node: 2, device: cpu_core_modern, intra_link: shm}
training: {batch_size: 32, iterations: 3, warmup_iterations: 1}
data: {kind: digits}
strategies:
  - {name: dp, scheme: data_parallel, exchange: ring}
  - {name: pp, scheme: pipeline, micro_batches: 2}
"""


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, str]:
    """One tiny calibration on two ranks: the profile and what rank 0 printed."""
    out = tmp_path_factory.mktemp("calibrate") / "profile.yaml"
    done = launch(2, ["calibrate", "-o", str(out), "--grid", "tiny"], timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_calibrate_writes_a_profile_the_simulator_reads(calibrated):
    path, stdout = calibrated
    assert f"profile written to {path}" in stdout
    p = load_profile(path)
    assert len(p.devices) == 1
    d = p.device
    assert d.kind == "cpu" and d.peak_flops["fp32"] > 0 and d.launch_overhead >= 0
    assert {"dense.fwd", "dense.bwd", "conv.fwd", "update"} <= set(d.kernels)
    for key, curve in d.kernels.items():
        flops = [f for f, _ in curve]
        assert flops == sorted(flops) and len(set(flops)) == len(flops), key
        assert all(0 <= e <= 1 for _, e in curve), key
    intra = p.link("intra")
    assert intra is not None and intra.bandwidth > 0 and intra.latency > 0
    # MPI sends small messages eagerly and large ones by rendezvous: somewhere between
    # (MPICH's shared memory: 4 KiB on the test machine)
    assert 256 <= intra.eager_limit < 4 << 20
    assert p.calibration["measured"]["p2p"]["intra"]["eager_limit_bytes"] == intra.eager_limit
    assert p.cores_per_node >= 1
    assert p.measured.co_run[0] >= 1 and p.measured.co_run[1] >= 1.0
    assert set(p.measured.collectives) == {"ring", "tree", "mpi"}
    assert all(lat >= 0 and bw > 0 for lat, bw in p.measured.collectives.values())
    assert p.measured.collectives_scope == "intra"  # one host
    # measured at one rank per core on any machine with two cores (and at two, on one core)
    m = p.measured
    assert m.wakeup and all(v >= 0 for v in m.wakeup.values())
    assert m.spread and all(std >= 0 and work > 0 for std, work in m.spread.values())
    assert set(m.wakeup) == set(m.spread)
    assert m.message_wakeup and set(m.message_wakeup) <= set(m.wakeup)
    # measured only with more ranks than cores
    over = p.calibration["ranks_per_node"] > p.cores_per_node
    assert bool(m.migration) == over and all(v >= 0 for v in m.migration.values())
    assert all(0 < v < 1.0 for v in m.message_wakeup.values())
    shared = {r["ranks_per_core"] for r in p.calibration["measured"]["allreduce"]} - {1.0}
    assert set(p.measured.collectives_shared) == {x for x in shared if x > 1}
    cal = p.calibration
    assert cal["hosts"] and cal["ranks"] == 2
    assert {"numpy", "mpi"} <= set(cal["versions"])
    assert cal["measured"]["allreduce"] and cal["measured"]["kernels_s"]


def test_a_scenario_naming_the_calibrated_profile_simulates(calibrated, tmp_path: Path,
                                                           capsys):
    path, _ = calibrated
    scenario = tmp_path / "s.yaml"
    scenario.write_text(VALIDATE.replace(
        "cluster: {nodes: 1, devices_per_node: 2, device: cpu_core_modern, intra_link: shm}",
        f"cluster: {{profile: {path}, nodes: 1, devices_per_node: 2}}"))
    profile = load_profile(path)
    c = load_scenario(scenario).cluster
    assert c.device == profile.device and c.intra_link == profile.link("intra")
    assert c.measured == profile.measured  # co-running, collectives, wake-ups, spread
    assert c.cores_per_node == profile.cores_per_node
    assert main(["simulate", str(scenario)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and f"2 x {profile.device.name}" in out
    assert any(line.startswith("dp ") for line in out.splitlines())


def test_calibrate_needs_two_ranks(tmp_path: Path):
    out = tmp_path / "one.yaml"
    done = launch(1, ["calibrate", "-o", str(out), "--grid", "tiny"], timeout=120)
    assert done.returncode == 2
    assert "at least two ranks" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_calibrate_keeps_an_existing_output_without_force(tmp_path: Path):
    out = tmp_path / "exists.yaml"
    out.write_text("keep me\n")
    done = launch(2, ["calibrate", "-o", str(out), "--grid", "tiny"], timeout=120)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("parasim: error:")
    assert "--force" in lines[0] and str(out) in lines[0]
    assert out.read_text() == "keep me\n"


def test_validate_predicts_runs_and_compares(calibrated, tmp_path: Path):
    profile, _ = calibrated
    scenario = tmp_path / "v.yaml"
    scenario.write_text(VALIDATE)
    pred, meas, report = tmp_path / "p.json", tmp_path / "m.json", tmp_path / "r.html"
    done = launch(2, ["validate", str(scenario), "--profile", str(profile), "--predicted",
                      str(pred), "--measured", str(meas), "--report", str(report)],
                  timeout=300)
    assert done.returncode == 0, done.stderr
    # calibrated on this machine and measured on it: no warning, and the report has no banner
    assert "warning" not in done.stderr and "class=banner" not in report.read_text()
    rows = {ln.split()[0]: ln for ln in done.stdout.splitlines() if ln.split()}
    assert {"dp", "pp"} <= rows.keys()
    assert "%" in rows["dp"] and "%" in rows["pp"]
    for path, mode in ((pred, "predicted"), (meas, "measured")):
        result = json.loads(path.read_text())
        entries = {e["strategy"]: e for e in result["results"]}
        assert set(entries) == {"dp", "pp"}, path
        assert all(e["mode"] == mode for e in entries.values())
        assert all(e["iteration_time_s"] > 0 for e in entries.values())
        assert result["profile"] == str(profile)
        # predicted on the profile's device, not the scenario's catalogue one
        assert result["scenario"]["device"] == (load_profile(profile).device.name
                                                if mode == "predicted" else "cpu rank")
        checks = result["validation"]
        assert isinstance(checks, list) and {r["strategy"] for r in checks} == {"dp", "pp"}
        for r in checks:
            assert r["predicted_s"] > 0 and r["measured_s"] > 0
            assert r["error"] == pytest.approx((r["predicted_s"] - r["measured_s"])
                                               / r["measured_s"])
    # both Results carry the same comparison, and it matches the entries
    p_res, m_res = json.loads(pred.read_text()), json.loads(meas.read_text())
    assert p_res["validation"] == m_res["validation"]
    row = next(r for r in p_res["validation"] if r["strategy"] == "dp")
    assert row["predicted_s"] == next(e["iteration_time_s"] for e in p_res["results"]
                                      if e["strategy"] == "dp")
    assert row["measured_s"] == next(e["iteration_time_s"] for e in m_res["results"]
                                     if e["strategy"] == "dp")
    assert "<html" in report.read_text().lower()


def test_validate_with_a_missing_profile_is_one_clear_line(tmp_path: Path):
    scenario = tmp_path / "v.yaml"
    scenario.write_text(VALIDATE)
    missing = tmp_path / "no-profile.yaml"
    done = launch(2, ["validate", str(scenario), "--profile", str(missing)], timeout=120)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("parasim: error:")
    assert str(missing) in lines[0] and "Traceback" not in done.stderr


def test_the_migration_lag_is_fitted_back_from_the_burst_pattern():
    """calibrate sets the engine's model of ranks computing in bursts against the measured
    pattern: a ratio the model gives with a known lag fits back to that lag."""
    from executor.calibration.sharing import fit_migration
    from simulator.engine.node import bursts

    work, pause = 13e-3, 6.5e-3
    shared = bursts(4, 2, work, pause)
    assert bursts(4, 2, work, pause, 1e-3) > shared  # a lag costs
    lag, base = fit_migration(4, 2, work, pause, bursts(4, 2, work, pause, 1.5e-3))
    assert base == pytest.approx(shared) and lag == pytest.approx(1.5e-3, rel=0.02)
    assert fit_migration(4, 2, work, pause, shared * 0.95) == (0.0, pytest.approx(shared))

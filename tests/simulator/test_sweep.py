"""Sweeps: the grid, how a point changes the scenario, and running it locally and over MPI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.errors import ScenarioError
from simulator.scenario import load_scenario
from simulator.sweep import apply_point, grid, run_sweep

SCENARIO = """\
name: sweep test
model: {zoo: mlp, params: {sizes: [64, 128, 10]}}
cluster: {nodes: 1, devices_per_node: 4, device: V100, intra_link: nvlink2, inter_link: ib_edr}
training: {batch_size: 64, iterations: 1, warmup_iterations: 0}
strategies:
  - {name: ring, scheme: data_parallel, devices: 2}
  - {name: pipe, scheme: pipeline, replicas: 2, micro_batches: 2}
  - {name: tp2, scheme: parallel_3d, tensor: 2}
"""


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(SCENARIO)
    return path


def raw() -> dict:
    import yaml

    return yaml.safe_load(SCENARIO)


def test_grid_is_the_cartesian_product_in_order():
    assert grid((("devices", (1, 2)), ("training.batch_size", (8, 16)))) == [
        {"devices": 1, "training.batch_size": 8}, {"devices": 1, "training.batch_size": 16},
        {"devices": 2, "training.batch_size": 8}, {"devices": 2, "training.batch_size": 16}]


def test_devices_within_a_node_shrink_the_node():
    data, skipped = apply_point(raw(), {"devices": 2}, strong=False)
    assert (data["cluster"]["nodes"], data["cluster"]["devices_per_node"]) == (1, 2)
    assert data["training"]["batch_size"] == 32  # 16 per device kept (weak scaling)
    ring, pipe, tp2 = data["strategies"]
    assert ring["devices"] == 2 and pipe["stages"] == 1 and tp2["data"] == 1
    assert skipped == []


def test_devices_beyond_a_node_add_whole_nodes_and_strong_scaling_keeps_the_batch():
    data, _ = apply_point(raw(), {"devices": 12}, strong=True)
    assert (data["cluster"]["nodes"], data["cluster"]["devices_per_node"]) == (3, 4)
    assert data["training"]["batch_size"] == 64


def test_a_strategy_that_cannot_run_at_a_size_is_skipped():
    _, skipped = apply_point(raw(), {"devices": 1}, strong=False)
    assert skipped == ["pipe", "tp2"]  # 2 replicas, tensor 2: not on one device


def test_devices_that_are_not_whole_nodes_are_an_error():
    with pytest.raises(ScenarioError, match=r"sweep.devices: 6 devices are not whole nodes of 4"):
        apply_point(raw(), {"devices": 6}, strong=False)


def test_a_field_path_sets_that_field_and_a_catalogue_name_becomes_an_override():
    data, _ = apply_point(raw(), {"cluster.inter_link.bandwidth_GBps": 50}, strong=False)
    assert data["cluster"]["inter_link"] == {"base": "ib_edr", "bandwidth_GBps": 50}


def test_an_unknown_field_path_is_an_error():
    with pytest.raises(ScenarioError, match=r"sweep.cluster.nodez.x: the scenario has no such "
                                            r"field \(got 'cluster.nodez'\)"):
        apply_point(raw(), {"cluster.nodez.x": 3}, strong=False)


def test_sweep_block_is_read_and_bad_values_name_the_field(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO + "sweep:\n  devices: [1, 2]\n  training.batch_size: [32]\n")
    assert load_scenario(path).sweep == (("devices", (1, 2)), ("training.batch_size", (32,)))
    path.write_text(SCENARIO + "sweep:\n  devices: [1, 0]\n")
    with pytest.raises(ScenarioError, match=r"s.yaml:10: sweep.devices\[1\]: must be at least 1"):
        load_scenario(path)


def test_a_bad_value_at_a_point_is_the_loaders_error(scenario_file: Path):
    scenario_file.write_text(SCENARIO + "sweep:\n  training.batch_size: [0]\n")
    with pytest.raises(ScenarioError, match=r"training.batch_size: at sweep point "
                                            r"training.batch_size=0: must be at least 1"):
        run_sweep(load_scenario(scenario_file))


def test_local_sweep_scales_weakly_and_speedup_at_one_device_is_one(scenario_file: Path, capsys):
    result = run_sweep(load_scenario(scenario_file), devices=[1, 2, 4])
    entries = result["results"]
    assert result["sweep"]["points"] == 3
    assert result["sweep"]["skipped"] == {"devices=1": ["pipe", "tp2"]}
    assert [(e["strategy"], e["devices"]) for e in entries] == [
        ("ring", 1), ("ring", 2), ("pipe", 2), ("tp2", 2), ("ring", 4), ("pipe", 4), ("tp2", 4)]
    assert all(e["samples_per_iteration"] == 16 * e["devices"] for e in entries)
    assert entries[0]["speedup_over_one_device"] == pytest.approx(1.0)
    # not a terminal: plain progress lines
    assert "point 3/3 done: devices=4" in capsys.readouterr().err


def run_cli(args: list[str], timeout: float, launcher: list[str] | None = None):
    """Run the CLI in its own process group; kill the whole group on timeout (never hang)."""
    cmd = (launcher or []) + [sys.executable, "-m", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s")
    return proc.returncode, out, err


def test_cli_sweep_writes_the_result(scenario_file: Path, tmp_path: Path):
    out = tmp_path / "sweep.json"
    rc, stdout, err = run_cli(["parasim", "sweep", str(scenario_file), "--devices", "2,4",
                               "--json", str(out)], timeout=120)
    assert rc == 0, err
    assert "ring" in stdout and "efficiency" in stdout
    assert json.loads(out.read_text())["sweep"]["axes"] == {"devices": [2, 4]}


def test_sweep_over_mpi_ranks_matches_the_local_sweep(scenario_file: Path, tmp_path: Path):
    assert shutil.which("mpiexec"), "mpiexec missing: pip install -e '.[dev]' brings mpich"
    out = tmp_path / "mpi.json"
    rc, _, err = run_cli(["mpi4py.futures", "-m", "parasim", "sweep", str(scenario_file),
                          "--devices", "2,4", "--json", str(out)], timeout=180,
                         launcher=["mpiexec", "-n", "3"])
    assert rc == 0, err
    mpi = json.loads(out.read_text())
    assert mpi["sweep"]["ran_on"] == "MPI"
    local = run_sweep(load_scenario(scenario_file), devices=[2, 4])
    key = ("strategy", "devices", "throughput_samples_per_s", "iteration_time_s")
    assert [[e[k] for k in key] for e in mpi["results"]] == \
        [[e[k] for k in key] for e in local["results"]]


@pytest.mark.parametrize("text,expected", [
    ("8,16,32", [8, 16, 32]),
    ("8,16,...,1024", [8, 16, 32, 64, 128, 256, 512, 1024]),
    ("4,8,12,...,24", [4, 8, 12, 16, 20, 24]),
])
def test_device_lists_accept_a_progression(text, expected):
    from simulator.cli import _int_list

    assert _int_list(text) == expected


@pytest.mark.parametrize("text", ["8,16,...,100", "8,...,64", "a,b", "0,1", ""])
def test_bad_device_lists_are_refused(text):
    import argparse

    from simulator.cli import _int_list

    with pytest.raises(argparse.ArgumentTypeError):
        _int_list(text)


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise():
    import io

    from simulator.sweep import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term, pipe = Terminal(), io.StringIO()
    for out in (term, pipe):
        bar = Progress(2, out, "this process")
        bar.step({"devices": 8})
        bar.step({"devices": 16})
        bar.close()
    assert "\r[###############...............] 1/2 devices=8" in term.getvalue()
    assert "\r[##############################] 2/2 devices=16" in term.getvalue()
    assert pipe.getvalue().splitlines() == ["sweep: 2 point(s) on this process",
                                            "point 1/2 done: devices=8",
                                            "point 2/2 done: devices=16"]

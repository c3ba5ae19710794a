"""``parasim calibrate`` and ``parasim validate`` with real ranks (``mpiexec -n 2``), and the
checks calibrate makes of its own measurements.

One tiny-grid calibration for the module; the profile it writes must read back with the
simulator's loader, serve a scenario, and drive ``validate`` (predicted against measured).
Bad requests (one rank, an existing output, a missing profile) exit 2 with one clear line.
A calibration beside a CPU-bound process per core refuses, naming the load, and writes the
profile with the warnings recorded when told to. The checks themselves (spread of repeats,
foreign load, physical bounds) are tested on synthetic measurements with round numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from executor.calibration import checks
from executor.calibration.checks import Refused, Repeats, check_load, check_profile, spread
from executor.calibration.load import busy_seconds, foreign, from_load_average, worst
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
def calibrated(tmp_path_factory) -> tuple[Path, str, str]:
    """One tiny calibration on two ranks: the profile and what rank 0 printed (standard output
    and error). ``--accept-noisy``: the machine the tests run on is shared, and other jobs
    there would make a plain calibration refuse; what it measured in is in the profile."""
    out = tmp_path_factory.mktemp("calibrate") / "profile.yaml"
    done = launch(2, ["calibrate", "-o", str(out), "--grid", "tiny", "--accept-noisy"],
                  timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done.stdout, done.stderr


def test_calibrate_writes_a_profile_the_simulator_reads(calibrated):
    path, stdout, _ = calibrated
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


def test_every_kernel_curve_has_a_hot_twin_on_the_same_points(calibrated):
    """Each point timed cold (the cache spilled) is also timed hot (back to back), and hot is
    not the slower of the two where the data are small (the median over the points, allowing
    for a shared machine's noise); the cache the simulator compares working sets against is
    recorded, within the last-level cache the timer spilled, by the documented rule on the
    rates it recorded (whether the smallest buffer beat the bound is the machine's load's to
    say, not this test's)."""
    p = load_profile(calibrated[0])
    d = p.device
    cold = {k: v for k, v in d.kernels.items() if not k.startswith("hot:")}
    assert cold and set(d.kernels) == set(cold) | {f"hot:{k}" for k in cold}
    for key, curve in cold.items():
        assert [f for f, _ in d.kernels[f"hot:{key}"]] == [f for f, _ in curve], key
    seconds = p.calibration["measured"]["kernels_s"]
    ratios = sorted(hot / c for key, points in seconds.items() if not key.startswith("hot:")
                    for (f, c), (_, hot) in zip(points, seconds[f"hot:{key}"]) if f < 1e6)
    assert len(ratios) > 10 and ratios[len(ratios) // 2] <= 1.1
    cache = p.calibration["measured"]["cache"]
    assert d.cache == cache["effective_MiB"] * 2**20 <= cache["last_level_MiB"] * 2**20
    if cache["last_level_MiB"]:
        assert cache["sweep"][0][0] == 1.0
        kept = 0.0  # the largest buffer before the first to run under the bound
        for mib, rate in cache["sweep"]:
            if rate < cache["bound_GBps"]:
                break
            kept = mib
        assert cache["effective_MiB"] == kept


def test_a_scenario_naming_the_calibrated_profile_simulates(calibrated, tmp_path: Path,
                                                           capsys):
    path, _, _ = calibrated
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
    profile, _, _ = calibrated
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


# ---- what calibrate records about its conditions, and a busy machine ---------------------------

def test_the_profile_records_its_conditions_and_the_warnings_printed(calibrated):
    path, stdout, stderr = calibrated
    cond = load_profile(path).calibration["conditions"]
    assert set(cond["load"]) == {"before", "during", "after"}
    cores = len(os.sched_getaffinity(0))
    for window in cond["load"].values():
        assert window["seconds"] > 0 and 0 <= window["foreign_share"] <= 1
        assert window["foreign_cores"] == pytest.approx(window["foreign_share"] * cores,
                                                        abs=0.001 * cores)
    assert cond["foreign_share"] == max(w["foreign_share"] for w in cond["load"].values())
    r = cond["repeats"]
    assert r["limit"] == checks.SPREAD_LIMIT and r["timings"] > 100  # kernels, links, ...
    assert 0 <= r["median_spread"] <= r["max_spread"]
    assert all(n["spread"] > r["limit"] and n["measurements"] == 3 for n in r["noisy"])
    assert cond["accepted_noisy"] is True
    # every warning recorded was printed, one line each, and nothing else went to stderr
    printed = [ln.removeprefix("parasim: warning: ") for ln in stderr.splitlines() if ln]
    assert printed == cond["warnings"]
    assert "  conditions: other processes took " in stdout


def competing(n: int) -> list[subprocess.Popen]:
    """``n`` CPU-bound processes (another user's jobs); the caller kills them."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_a_busy_machine_is_refused_naming_the_load_or_recorded_when_accepted(tmp_path: Path):
    cores = len(os.sched_getaffinity(0))
    refused, accepted = tmp_path / "refused.yaml", tmp_path / "accepted.yaml"
    hogs = competing(cores)
    try:
        done = launch(2, ["calibrate", "-o", str(refused), "--grid", "tiny"], timeout=300)
        noisy = launch(2, ["calibrate", "-o", str(accepted), "--grid", "tiny",
                           "--accept-noisy"], timeout=300)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    # a process per core took (almost) all of them before anything was measured
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    line = lines[0]
    assert line.startswith("parasim: error: calibrate refuses to measure: "
                           "conditions.load.before.foreign_share = ")
    assert f"of the {cores} core(s) this job runs on" in line and "--accept-noisy" in line
    assert not refused.exists()
    # told to, it measures anyway and records why it would have refused
    assert noisy.returncode == 0, noisy.stderr
    cond = load_profile(accepted).calibration["conditions"]
    assert cond["accepted_noisy"] and cond["load"]["before"]["foreign_share"] > checks.LOAD_LIMIT
    assert any(w.startswith("accepted with --accept-noisy: conditions.load.before.")
               for w in cond["warnings"])
    assert "parasim: warning: accepted with --accept-noisy: conditions.load.before" in \
        noisy.stderr


# ---- the checks, on synthetic measurements -----------------------------------------------------

def test_spread_is_the_coefficient_of_variation_and_ignores_one_outlier():
    assert spread([5.0]) == 0.0 and spread([2.0, 2.0, 2.0]) == 0.0
    # quartiles of 9, 10, 11: 9.5 and 10.5; IQR 1 over 1.349 x the median 10
    assert spread([9.0, 10.0, 11.0]) == pytest.approx(1 / 13.49)
    assert spread([10.0] * 19 + [1000.0]) == 0.0  # one preempted repeat: the median holds
    assert spread([10.0, 10.0, 20.0, 20.0]) == pytest.approx(10 / 1.349 / 15)


def attempts(*runs: tuple[float, list[float]]):
    """A measurement that gives ``runs`` in turn, counting its calls."""
    calls = []

    def once() -> tuple[float, list[float]]:
        calls.append(1)
        return runs[len(calls) - 1]

    return once, calls


def test_a_calm_timing_is_measured_once():
    r = Repeats()
    once, calls = attempts((1.0, [1.0, 1.0, 1.0]))
    assert r.measure("a", once) == 1.0 and len(calls) == 1
    assert r.record() == {"limit": 0.25, "remeasures": 2, "timings": 1, "measured_again": 0,
                          "median_spread": 0.0, "max_spread": 0.0, "noisy": []}


def test_a_spread_timing_is_measured_again_until_calm():
    r = Repeats()
    once, calls = attempts((5.0, [1.0, 5.0, 9.0]), (2.0, [2.0, 2.0, 2.0]))
    assert r.measure("b", once) == 2.0 and len(calls) == 2
    assert r.record()["measured_again"] == 1 and r.record()["noisy"] == []


def test_a_timing_spread_every_time_keeps_the_calmest_and_is_named():
    r = Repeats()
    # interquartile ranges 2, 4 and 3.5 over 1.349 x the medians 5, 6 and 7: spreads 0.297,
    # 0.494 and 0.371, all above 0.25; the first is the calmest
    once, calls = attempts((5.0, [3.0, 5.0, 7.0]), (6.0, [2.0, 6.0, 10.0]),
                           (7.0, [4.0, 7.0, 11.0]))
    assert r.measure("dense.fwd@64>64 batch 16", once) == 5.0 and len(calls) == 3
    calmest = 2 / 1.349 / 5
    assert r.record()["noisy"] == [{"timing": "dense.fwd@64>64 batch 16",
                                    "spread": round(calmest, 3), "measurements": 3}]
    assert checks.noisy_lines(r.record()) == [
        f"timing 'dense.fwd@64>64 batch 16': spread {round(calmest, 3):.3g} of its repeats "
        "after 3 measurements is above the doubt bound 0.25"]


def test_ranks_measuring_together_act_on_the_largest_spread():
    """``agree`` stands for MPI's all-reduce: this rank's repeats are calm, another's are not,
    so this rank measures again too."""
    r = Repeats()
    other = iter([1.0, 0.0])  # the other rank's spread: noisy, then calm
    once, calls = attempts((1.0, [1.0, 1.0, 1.0]), (1.1, [1.1, 1.1, 1.1]))
    assert r.measure("together", once, agree=lambda s: max(s, next(other))) == 1.1
    assert len(calls) == 2


def test_many_noisy_timings_are_printed_five_and_counted():
    r = Repeats(remeasures=0)
    for i in range(7):
        r.measure(f"t{i}", lambda i=i: (1.0, [1.0, 1.0 + i + 1, 3.0 * (i + 1)]))
    lines = checks.noisy_lines(r.record())
    assert len(lines) == 6 and lines[0].startswith("timing 't6'")
    assert lines[-1] == ("2 more timings spread above 0.25: calibration.conditions.repeats.noisy "
                         "lists them")


# A profile as calibrate builds it, of a sound 2-core machine (round numbers), and the change
# each bound catches: (figure, refused?, limit).
def sound() -> tuple[dict[str, Any], tuple[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    calibration = {
        "ranks_per_node": 2, "cores_per_node": 2,
        "wakeup": [{"ranks_per_core": 1.0, "latency_us": 20.0}],
        "message_wakeup": [{"ranks_per_core": 1.0, "latency_us": 100.0}],
        "migration": [],
        "spread": [{"ranks_per_core": 1.0, "std_us": 50.0, "work_us": 1000.0}],
        "collectives": {"scope": "intra", "ring": {"latency_us": 100.0, "bandwidth_GBps": 2.0,
                                                   "ranks": [2]}},
        "measured": {"core_sharing": {"alone_s": 0.01, "together_s": 0.012, "together_ranks": 2},
                     "kernels_s": {"dense.fwd": [[1e6, 1e-4], [1e8, 1e-2]]}},
    }
    device = {"kind": "cpu", "peak_TFLOPS": {"fp32": 0.05}, "memory_bandwidth_GBps": 20.0,
              "launch_overhead_us": 10.0}
    links = {"calibrated_intra": {"scope": "intra", "latency_us": 5.0, "bandwidth_GBps": 5.0},
             "calibrated_inter": {"scope": "inter", "latency_us": 50.0, "bandwidth_GBps": 1.0}}
    return calibration, ("calibrated", device), links


def oversubscribed(waiting: float, polling: float):  # noqa: ANN201
    """4 ranks on the 2 cores (2 ranks per core), with the slowdowns beside waiting ranks."""
    def change(cal, dev, links):  # noqa: ANN001, ANN202
        cal["ranks_per_node"] = 4
        cal["measured"]["core_sharing"].update(waiting_slowdown=waiting,
                                               polling_wait_slowdown=polling)
    return change


def setting(where: str, key: str, value: Any):  # noqa: ANN201
    def change(cal, dev, links):  # noqa: ANN001, ANN202
        target = {"cal": cal, "dev": dev, "intra": links["calibrated_intra"],
                  "inter": links["calibrated_inter"], "ring": cal["collectives"]["ring"],
                  "sharing": cal["measured"]["core_sharing"], "wakeup": cal["wakeup"][0],
                  "spread": cal["spread"][0]}[where]
        target[key] = value
    return change


BOUNDS = {
    "co-run 114x": (setting("sharing", "together_s", 1.14), "calibration.co_run.slowdown",
                    True, 2.5),
    "co-run 1.7x": (setting("sharing", "together_s", 0.017), "calibration.co_run.slowdown",
                    False, 1.5),
    "co-run faster than alone": (setting("sharing", "together_s", 0.007),
                                 "calibration.co_run.slowdown", False, 0.8),
    "quiet waits 5.5x at 2 per core": (oversubscribed(5.5, 2.0),
                                       "calibration.measured.core_sharing.waiting_slowdown",
                                       True, 5.0),
    "quiet waits 1.7x": (oversubscribed(1.7, 2.0),
                         "calibration.measured.core_sharing.waiting_slowdown", False, 1.5),
    "polling waits 6x at 2 per core": (
        oversubscribed(1.0, 6.0), "calibration.measured.core_sharing.polling_wait_slowdown",
        True, 5.0),
    "memory 0.09 GB/s": (setting("dev", "memory_bandwidth_GBps", 0.09),
                         "devices.calibrated.memory_bandwidth_GBps", True, 0.5),
    "memory 1.5 GB/s": (setting("dev", "memory_bandwidth_GBps", 1.5),
                        "devices.calibrated.memory_bandwidth_GBps", False, 2.0),
    "memory 300 GB/s": (setting("dev", "memory_bandwidth_GBps", 300.0),
                        "devices.calibrated.memory_bandwidth_GBps", False, 200.0),
    "memory 2 TB/s": (setting("dev", "memory_bandwidth_GBps", 2000.0),
                      "devices.calibrated.memory_bandwidth_GBps", True, 1000.0),
    "memory not a number": (setting("dev", "memory_bandwidth_GBps", float("nan")),
                            "devices.calibrated.memory_bandwidth_GBps", True, 1000.0),
    "a core at 1.5 TFLOPS": (setting("dev", "peak_TFLOPS", {"fp32": 1.5}),
                             "devices.calibrated.peak_TFLOPS.fp32", True, 1.0),
    "a core at 0.05 GFLOP/s": (setting("dev", "peak_TFLOPS", {"fp32": 5e-5}),
                               "devices.calibrated.peak_TFLOPS.fp32", True, 1e-4),
    "a core at 0.5 GFLOP/s": (setting("dev", "peak_TFLOPS", {"fp32": 5e-4}),
                              "devices.calibrated.peak_TFLOPS.fp32", False, 1e-3),
    "a kernel in no time": (setting("cal", "measured", {"kernels_s": {"relu.fwd": [[1e3, 0.0]]},
                                                        "core_sharing": {}}),
                            "calibration.measured.kernels_s.relu.fwd", True, 0.0),
    "launch 2 ms per op": (setting("dev", "launch_overhead_us", 2000.0),
                           "devices.calibrated.launch_overhead_us", False, 1000.0),
    "launch 0.2 s per op": (setting("dev", "launch_overhead_us", 200_000.0),
                            "devices.calibrated.launch_overhead_us", True, 100_000.0),
    "negative link latency": (setting("intra", "latency_us", -1.0),
                              "links.calibrated_intra.latency_us", True, 0.0),
    "link latency 2 ms": (setting("intra", "latency_us", 2000.0),
                          "links.calibrated_intra.latency_us", False, 1000.0),
    "link latency 0.2 s": (setting("inter", "latency_us", 200_000.0),
                           "links.calibrated_inter.latency_us", True, 100_000.0),
    "intra link 0.005 GB/s": (setting("intra", "bandwidth_GBps", 0.005),
                              "links.calibrated_intra.bandwidth_GBps", True, 0.01),
    "intra link 0.2 GB/s": (setting("intra", "bandwidth_GBps", 0.2),
                            "links.calibrated_intra.bandwidth_GBps", False, 0.5),
    "inter link 0.05 GB/s": (setting("inter", "bandwidth_GBps", 0.05),
                             "links.calibrated_inter.bandwidth_GBps", False, 0.1),
    "inter link 2 TB/s": (setting("inter", "bandwidth_GBps", 2000.0),
                          "links.calibrated_inter.bandwidth_GBps", True, 1000.0),
    "wake-up 2 ms at a core per rank": (setting("wakeup", "latency_us", 2000.0),
                                        "calibration.wakeup[ranks_per_core=1].latency_us",
                                        False, 1000.0),
    "wake-up of 2 s": (setting("wakeup", "latency_us", 2e6),
                       "calibration.wakeup[ranks_per_core=1].latency_us", True, 1e6),
    "negative wake-up": (setting("wakeup", "latency_us", -5.0),
                         "calibration.wakeup[ranks_per_core=1].latency_us", True, 0.0),
    "ranks a third of the work apart": (
        setting("spread", "std_us", 300.0),
        "calibration.spread[ranks_per_core=1].std_us / work_us", False, 0.25),
    "all-reduce 2 ms a step": (setting("ring", "latency_us", 2000.0),
                               "calibration.collectives.ring.latency_us", False, 1000.0),
    "all-reduce fit at 5 TB/s": (setting("ring", "bandwidth_GBps", 5000.0),
                                 "calibration.collectives.ring.bandwidth_GBps", False, 1000.0),
}


def test_a_sound_profile_passes_every_bound():
    assert check_profile(*sound()) == []


@pytest.mark.parametrize("case", sorted(BOUNDS))
def test_each_bound_names_the_figure_its_value_and_the_limit(case: str):
    change, figure, refuse, limit = BOUNDS[case]
    cal, device, links = sound()
    change(cal, device[1], links)
    found = check_profile(cal, device, links)
    assert len(found) == 1, found
    f = found[0]
    assert (f.figure, f.refuse, f.limit) == (figure, refuse, limit)
    text = f.text()
    assert text.startswith(f"{figure} = ") and f.why in text
    assert ("the floor" in text or "the ceiling" in text) == refuse
    assert "doubtful" in text or refuse


def test_a_wake_up_of_a_time_slice_is_sound_when_ranks_share_cores():
    cal, device, links = sound()
    cal["wakeup"] = [{"ranks_per_core": 2.0, "latency_us": 2000.0}]
    assert check_profile(cal, device, links) == []
    cal["wakeup"][0]["latency_us"] = 200_000.0
    assert [f.limit for f in check_profile(cal, device, links)] == [100_000.0]


def window(share: float, cores: int = 2) -> dict[str, Any]:
    return {"seconds": 0.2, "foreign_cores": share * cores, "foreign_share": share}


def test_foreign_load_warns_from_a_tenth_and_refuses_from_three_tenths():
    assert check_load({"before": window(0.05), "during": window(0.1)}, 2) == []
    (doubt,) = check_load({"during": window(0.2)}, 2)
    assert doubt.figure == "conditions.load.during.foreign_share" and not doubt.refuse
    (heavy,) = check_load({"before": window(1.0), "after": window(0.0)}, 2)
    assert heavy.refuse and heavy.limit == checks.LOAD_LIMIT
    assert heavy.text().startswith("conditions.load.before.foreign_share = 1 is above the "
                                   "ceiling 0.3 (other processes took 2.00 of the 2 core(s) "
                                   "this job runs on; ")
    unmeasured = {"foreign_cores": None, "foreign_share": None}
    assert check_load({"before": unmeasured}, 2) == []


def test_the_verdict_refuses_in_one_line_unless_accepted():
    found = check_load({"before": window(0.9), "after": window(0.5), "during": window(0.15)}, 2)
    warnings, refusal = checks.verdict(found, accept_noisy=False)
    assert isinstance(refusal, Refused)
    text = str(refusal)
    assert "\n" not in text and text.startswith(
        "calibrate refuses to write the profile: conditions.load.before.foreign_share = 0.9 ")
    assert "(and 1 more)" in text and text.endswith(
        "pass --accept-noisy to write the profile with the warnings recorded")
    assert [w.split(" = ")[0] for w in warnings] == ["conditions.load.during.foreign_share"]
    warnings, refusal = checks.verdict(found, accept_noisy=True)
    assert refusal is None and len(warnings) == 3
    assert warnings[0].startswith("accepted with --accept-noisy: conditions.load.before.")


# ---- the load figures ---------------------------------------------------------------------------

PROC_STAT = """\
cpu  300 0 300 1000 0 0 0 0 0 0
cpu0 100 10 50 500 40 5 5 30 7 0
cpu1 200 0 50 500 0 0 0 0 0 0
intr 12345
"""


def test_busy_time_is_read_from_proc_stat_for_the_jobs_cpus():
    hz = os.sysconf("SC_CLK_TCK")
    # cpu0: user 100 + nice 10 + system 50 + irq 5 + softirq 5 + steal 30 (not idle, iowait,
    # guest: guest time is inside user)
    assert busy_seconds({0}, PROC_STAT) == pytest.approx(200 / hz)
    assert busy_seconds({0, 1}, PROC_STAT) == pytest.approx(450 / hz)
    assert busy_seconds({2}, PROC_STAT) is None  # a CPU it does not list
    assert busy_seconds({0}, "") is None


def test_foreign_cores_are_busy_time_less_the_jobs_own_over_the_wall():
    assert foreign(busy=3.0, own=1.0, wall=2.0, cores=2) == {
        "seconds": 2.0, "foreign_cores": 1.0, "foreign_share": 0.5}
    # ticks are counted whole, the job's time exact: a window can pass either end by a tick
    assert foreign(busy=0.98, own=1.0, wall=1.0, cores=2)["foreign_cores"] == 0.0
    assert foreign(busy=2.1, own=0.0, wall=1.0, cores=2)["foreign_share"] == 1.0
    assert from_load_average(3.0, 2) == {"foreign_cores": 3.0, "foreign_share": 1.5}
    assert from_load_average(None, 2) == {"foreign_cores": None, "foreign_share": None}


def test_the_worst_node_is_the_one_whose_cores_others_took_most_of():
    a, b = window(0.1), window(0.4)
    assert worst([a, None, b, None]) is b
    assert worst([{"foreign_share": None}, a]) is a


class OneRank:
    """A communicator of one rank, for the load probe's collective calls."""

    def allgather(self, value: Any) -> list[Any]:
        return [value]

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's name
        return 0

    def Ibarrier(self):  # noqa: ANN201, N802
        return type("Done", (), {"Test": lambda self: True})()


def probe_with(monkeypatch, busy: list[float | None], load_average: float | None = None):  # noqa: ANN201
    """A probe on a clock that moves 0.5 s between readings, on 2 cores, the CPUs' busy
    seconds read from ``busy`` in turn, and the job itself taking no CPU time."""
    from executor.calibration import load

    clock, readings = iter(x * 0.5 for x in range(100)), iter(busy)
    monkeypatch.setattr(load, "time", type("Clock", (), {
        "monotonic": staticmethod(lambda: next(clock)),
        "process_time": staticmethod(lambda: 0.0), "sleep": staticmethod(lambda s: None)}))
    monkeypatch.setattr(load, "busy_seconds", lambda cpus: next(readings))
    monkeypatch.setattr(load, "job_cpus", lambda: {0, 1})
    monkeypatch.setattr(load, "load_average", lambda: load_average)
    return load.LoadProbe(OneRank(), OneRank())


def test_a_burst_of_load_is_looked_at_again_and_the_calmest_look_kept(monkeypatch):
    # each look is 0.5 s on 2 cores, a core-second: busy 0.9 s is a share of 0.9, and so on
    probe = probe_with(monkeypatch, [0.0, 0.9, 0.9, 1.3, 1.3, 1.35])
    got = probe.idle(0.2, tries=3, enough=0.1)
    assert got == {"seconds": 0.5, "foreign_cores": 0.1, "foreign_share": 0.05,
                   "load_average": None}


def test_load_that_lasts_is_looked_at_three_times_at_most(monkeypatch):
    probe = probe_with(monkeypatch, [0.0, 0.9, 0.9, 1.7, 1.7, 2.5, 2.5, 99.0])
    assert probe.idle(0.2, tries=3, enough=0.1)["foreign_share"] == 0.8  # the calmest of three


def test_without_proc_stat_the_load_average_stands_for_the_load(monkeypatch):
    probe = probe_with(monkeypatch, [None] * 4, load_average=3.0)
    got = probe.idle(0.2, tries=3, enough=0.1)
    assert got["foreign_cores"] == 3.0 and got["foreign_share"] == 1.5
    assert probe.since(probe.mark())["foreign_share"] is None  # during: not measured

"""Calibration profiles: the file format (``simulator/profile.py``), a scenario naming one
(``cluster.profile``), and what the engine does with it: measured kernel efficiency curves,
core sharing and fitted all-reduce costs, each against a closed form written in the test.

Profiles are written by hand here (``dump_profile`` of small dicts with round numbers), never by
``parasim calibrate`` (that is ``tests/executor/test_calibrate.py``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simpy
import yaml

from parasim.cli import main
from simulator import catalogue
from simulator.engine.collectives import allreduce_terms, reduced_bytes
from simulator.engine.hardware import Device, core_sharing, curve_key, efficiency_at
from simulator.errors import ScenarioError
from simulator.plan import Compute, Update
from simulator.predict import simulate_scenario
from simulator.profile import Profile, dump_profile, load_profile, parse_profile
from simulator.scenario import load_scenario
from simulator.specs import DeviceSpec
from simulator.yaml_input import load_yaml

NAME = "meas"  # the profile's device
# one kernel curve with round numbers: efficiency 0.1 at 1 kFLOP, 0.5 at 100 kFLOP, 0.9 at 10 MFLOP
CURVE = {"flops": [1e3, 1e5, 1e7], "efficiency": [0.1, 0.5, 0.9]}
RING = (3e-6, 2e9)  # the fitted ring all-reduce: 3 us per step, 2 GB/s
TREE = (4e-6, 1.5e9)


def calibration(**changes: Any) -> dict[str, Any]:
    cal = {
        "date": "2026-01-02T03:04:05+00:00",
        "hosts": ["node-a"],
        "ranks": 2,
        "ranks_per_node": 2,
        "cores_per_node": 2,
        "co_run": {"ranks": 2, "slowdown": 1.1},
        "collectives": {"scope": "intra",
                        "ring": {"latency_us": RING[0] * 1e6, "bandwidth_GBps": RING[1] / 1e9,
                                 "ranks": [2]},
                        "tree": {"latency_us": TREE[0] * 1e6, "bandwidth_GBps": TREE[1] / 1e9,
                                 "ranks": [2]}},
        "backend": "cpu",
        "versions": {"numpy": "2.0", "mpi": "MPICH 4"},
        "measured": {"memory_bandwidth_GBps": 10.0},
    }
    cal.update(changes)
    return cal


def device_entry(**changes: Any) -> dict[str, Any]:
    dev = {
        "kind": "cpu", "sms": 1, "peak_TFLOPS": {"fp32": 0.2}, "memory_GiB": 4,
        "memory_bandwidth_GBps": 10.0, "launch_overhead_us": 2.0, "compute_efficiency": 0.5,
        "memory_efficiency": 1.0, "blocks_per_sm": 1, "comm_sms": 0,
        "kernels": {"dense.fwd": dict(CURVE),
                    "update": {"flops": [1e2, 1e6], "efficiency": [0.01, 0.2]}},
        "source": "written by hand for a test",
    }
    dev.update(changes)
    return dev


def link_entries(inter: bool = False) -> dict[str, dict[str, Any]]:
    out = {f"{NAME}_intra": {"scope": "intra", "bandwidth_GBps": 5.0, "latency_us": 1.0,
                             "efficiency": 1.0, "source": "ping-pong"}}
    if inter:
        out[f"{NAME}_inter"] = {"scope": "inter", "bandwidth_GBps": 1.0, "latency_us": 20.0,
                                "efficiency": 0.9, "source": "ping-pong"}
    return out


def profile_text(cal: dict | None = None, dev: dict | None = None,
                 links: dict | None = None) -> str:
    return dump_profile(cal or calibration(), (NAME, dev or device_entry()),
                        links or link_entries())


def write_profile(path: Path, **parts: Any) -> Path:
    path.write_text(profile_text(**parts))
    return path


SCENARIO = """\
name: profiled
model: {{zoo: mlp, params: {{sizes: [256, 256, 10]}}}}
cluster:
  profile: {profile}
  nodes: {nodes}
  devices_per_node: {per_node}
{extra}
training: {{batch_size: 32, precision: fp32, optimizer: sgd, iterations: 2,
           warmup_iterations: 1}}
strategies:
  - {{name: dp, scheme: data_parallel, exchange: {exchange}, bucket_MiB: 0, overlap: false}}
"""


def write_scenario(folder: Path, profile: str = "prof.yaml", *, nodes: int = 1,
                   per_node: int = 2, extra: str = "", exchange: str = "ring",
                   name: str = "scenario.yaml") -> Path:
    path = folder / name
    path.write_text(SCENARIO.format(profile=profile, nodes=nodes, per_node=per_node,
                                    extra=extra, exchange=exchange))
    return path


# ---- the file format ---------------------------------------------------------------------------

def check_profile(p: Profile) -> None:
    assert list(p.devices) == [NAME]
    d = p.device
    assert d.name == NAME and d.kind == "cpu" and d.sms == 1
    assert d.peak_flops == {"fp32": pytest.approx(0.2e12)}
    assert d.memory == 4 * 2**30
    assert d.memory_bandwidth == pytest.approx(10e9)
    assert d.launch_overhead == pytest.approx(2e-6)
    assert d.compute_efficiency == 0.5 and d.memory_efficiency == 1.0
    assert d.kernels == {"dense.fwd": ((1e3, 0.1), (1e5, 0.5), (1e7, 0.9)),
                         "update": ((1e2, 0.01), (1e6, 0.2))}
    assert d.cache == 0.0  # no cache_MiB: a profile written before the hot curves
    assert all(isinstance(c, tuple) and all(isinstance(pt, tuple) for pt in c)
               for c in d.kernels.values())
    intra = p.link("intra")
    assert intra is not None and intra.name == f"{NAME}_intra"
    assert intra.latency == pytest.approx(1e-6) and intra.bandwidth == pytest.approx(5e9)
    assert p.link("inter") is None
    assert p.cores_per_node == 2
    assert p.measured.co_run == (2, pytest.approx(1.1))
    assert p.measured.collectives_scope == "intra"
    assert set(p.measured.collectives) == {"ring", "tree"}
    assert p.measured.collectives["ring"] == (pytest.approx(RING[0]), pytest.approx(RING[1]))
    assert p.measured.collectives["tree"] == (pytest.approx(TREE[0]), pytest.approx(TREE[1]))
    assert p.calibration["hosts"] == ["node-a"]
    assert p.calibration["versions"] == {"numpy": "2.0", "mpi": "MPICH 4"}
    assert p.calibration["date"] == "2026-01-02T03:04:05+00:00"


def test_a_dumped_profile_reads_back_from_a_file(tmp_path: Path):
    path = write_profile(tmp_path / "prof.yaml")
    p = load_profile(path)
    assert p.file == str(path)
    check_profile(p)


def test_a_dumped_profile_reads_back_from_text():
    p = parse_profile(load_yaml(profile_text()), "x.yaml")
    assert p.file == "x.yaml"
    check_profile(p)


def test_an_unquoted_date_and_an_inter_node_link_read_back(tmp_path: Path):
    text = profile_text(cal=calibration(collectives={"scope": "inter", "mpi": {
        "latency_us": 0, "bandwidth_GBps": 0.5}}), links=link_entries(inter=True))
    text = text.replace("'2026-01-02T03:04:05+00:00'", "2026-01-02T03:04:05+00:00")
    p = load_profile(_write(tmp_path, text))
    assert p.calibration["date"].startswith("2026-01-02T03:04:05")
    inter = p.link("inter")
    assert inter is not None and inter.name == f"{NAME}_inter"
    assert inter.latency == pytest.approx(20e-6) and inter.effective_bandwidth == \
        pytest.approx(0.9e9)
    assert p.measured.collectives_scope == "inter"
    assert p.measured.collectives == {"mpi": (0.0, pytest.approx(0.5e9))}


def _write(folder: Path, text: str, name: str = "p.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_an_edited_profile_is_read_again(tmp_path: Path):
    """``load_profile`` caches by modification time: an edit is seen."""
    path = write_profile(tmp_path / "prof.yaml")
    assert load_profile(path).cores_per_node == 2
    path.write_text(profile_text(cal=calibration(cores_per_node=7)))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_profile(path).cores_per_node == 7


def _bad_curve_order() -> dict:
    return device_entry(kernels={"dense.fwd": {"flops": [1e3, 1e7, 1e5],
                                               "efficiency": [0.1, 0.5, 0.9]}})


BAD_PROFILES = {
    "efficiency past any fast algorithm's": (
        dict(dev=device_entry(kernels={"dense.fwd": {"flops": [1e3, 1e5],
                                                     "efficiency": [0.1, 20.0]}})),
        f"devices.{NAME}.kernels.dense.fwd.efficiency", "at most 16.0"),
    "flops not increasing": (
        dict(dev=_bad_curve_order()), f"devices.{NAME}.kernels.dense.fwd.flops",
        "strictly increasing"),
    "lengths differ": (
        dict(dev=device_entry(kernels={"dense.fwd": {"flops": [1e3, 1e5, 1e7],
                                                     "efficiency": [0.1, 0.5]}})),
        f"devices.{NAME}.kernels.dense.fwd.efficiency", "one value per flops entry"),
    "negative cache": (
        dict(dev=device_entry(cache_MiB=-1)), f"devices.{NAME}.cache_MiB", "at least 0.0"),
    "slowdown below 1": (
        dict(cal=calibration(co_run={"ranks": 2, "slowdown": 0.9})),
        "calibration.co_run.slowdown", "at least 1.0"),
    "zero fitted bandwidth": (
        dict(cal=calibration(collectives={"ring": {"latency_us": 1, "bandwidth_GBps": 0}})),
        "calibration.collectives.ring.bandwidth_GBps", "must be positive"),
    "unknown calibration key": (
        dict(cal=calibration(bogus=1)), "calibration.bogus", "unknown key"),
    "no intra link": (
        dict(links={"x": link_entries(inter=True)[f"{NAME}_inter"]}), "links",
        "one intra-node link"),
    "unknown conditions key": (
        dict(cal=calibration(conditions={"load": {}, "bogus": 1})),
        "calibration.conditions.bogus", "unknown key"),
    "conditions warnings not a list": (
        dict(cal=calibration(conditions={"warnings": "busy"})),
        "calibration.conditions.warnings", "must be a list"),
    "negative foreign share": (
        dict(cal=calibration(conditions={"foreign_share": -0.5})),
        "calibration.conditions.foreign_share", "at least 0.0"),
    "accepted_noisy not a boolean": (
        dict(cal=calibration(conditions={"accepted_noisy": "yes"})),
        "calibration.conditions.accepted_noisy", "true or false"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_a_bad_profile_names_its_file_and_field(tmp_path: Path, case: str):
    parts, field, message = BAD_PROFILES[case]
    path = write_profile(tmp_path / "bad.yaml", **parts)
    with pytest.raises(ScenarioError) as info:
        load_profile(path)
    e = info.value
    assert e.file == str(path)
    assert e.path.startswith(field)
    text = str(e)
    assert text.startswith(f"{path}:") and field in text and message in text
    assert e.line is not None and e.line > 1  # the line in the profile file


def test_a_profile_with_two_devices_is_an_error(tmp_path: Path):
    data = yaml.safe_load(profile_text())
    data["devices"]["other"] = dict(data["devices"][NAME])
    path = _write(tmp_path, yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ScenarioError) as info:
        load_profile(path)
    text = str(info.value)
    assert text.startswith(f"{path}:") and ": devices:" in text
    assert "exactly one device" in text and "'other'" in text


# what calibrate records about the conditions it measured in (round figures)
CONDITIONS = {
    "load": {"before": {"seconds": 0.2, "foreign_cores": 0.5, "foreign_share": 0.25,
                        "load_average": 1.5},
             "during": {"seconds": 6.0, "foreign_cores": 0.2, "foreign_share": 0.1,
                        "load_average": 2.0},
             "after": {"seconds": 0.2, "foreign_cores": 0.0, "foreign_share": 0.0,
                       "load_average": 2.0}},
    "foreign_share": 0.25,
    "repeats": {"limit": 0.25, "remeasures": 2, "timings": 100, "measured_again": 3,
                "median_spread": 0.05, "max_spread": 0.5,
                "noisy": [{"timing": "dense.fwd@64>64 batch 16", "spread": 0.5,
                           "measurements": 3}]},
    "warnings": ["accepted with --accept-noisy: conditions.load.before.foreign_share = 0.25 is "
                 "above 0.1, doubtful (...)"],
    "accepted_noisy": True,
}


def test_a_profile_records_the_conditions_it_was_measured_in(tmp_path: Path):
    p = load_profile(write_profile(tmp_path / "prof.yaml", cal=calibration(
        conditions=CONDITIONS)))
    check_profile(p)  # the rest reads as without them
    assert p.calibration["conditions"] == CONDITIONS


def test_a_profile_without_conditions_still_reads(tmp_path: Path):
    """Profiles written before calibrate checked its measurements have no ``conditions``."""
    p = load_profile(write_profile(tmp_path / "prof.yaml"))
    check_profile(p)
    assert "conditions" not in p.calibration


def test_conditions_measured_without_proc_stat_read_back(tmp_path: Path):
    """Where the foreign load could not be measured its share is ``null``; every key but the
    ones given is optional."""
    conditions = {"load": {"before": {"foreign_cores": None, "foreign_share": None,
                                      "load_average": None}},
                  "foreign_share": None, "warnings": []}
    p = load_profile(write_profile(tmp_path / "prof.yaml", cal=calibration(
        conditions=conditions)))
    assert p.calibration["conditions"] == {**conditions, "repeats": {},
                                           "accepted_noisy": False}


def test_a_missing_profile_file_is_an_error_naming_it(tmp_path: Path):
    with pytest.raises(ScenarioError) as info:
        load_profile(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(info.value)
    assert "cannot read the profile" in str(info.value)


# ---- a scenario naming a profile ---------------------------------------------------------------

def test_a_scenario_takes_the_profiles_device_links_and_measurements(tmp_path: Path,
                                                                       monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    prof_path = write_profile(folder / "prof.yaml")
    path = write_scenario(folder)
    monkeypatch.chdir(tmp_path)  # the profile is found next to the scenario, not in the cwd
    sc = load_scenario(path)
    c = sc.cluster
    profile = load_profile(prof_path)
    assert c.device == profile.device and c.device.name == NAME
    assert c.device.kernels["dense.fwd"] == ((1e3, 0.1), (1e5, 0.5), (1e7, 0.9))
    assert c.intra_link == profile.link("intra")
    assert c.inter_link == catalogue.links()["eth_10g"]  # one node, none measured
    assert c.cores_per_node == 2
    assert c.measured.co_run == (2, pytest.approx(1.1))
    assert c.measured.collectives == {"ring": (pytest.approx(RING[0]), pytest.approx(RING[1])),
                             "tree": (pytest.approx(TREE[0]), pytest.approx(TREE[1]))}
    assert c.measured.collectives_scope == "intra"
    assert Path(c.profile) == prof_path


def test_a_scenario_without_a_profile_has_no_measurements(tmp_path: Path):
    text = SCENARIO.format(profile="x", nodes=1, per_node=2, extra="  device: cpu_core\n"
                           "  intra_link: shm", exchange="ring")
    path = _write(tmp_path, text.replace("  profile: x\n", ""), "s.yaml")
    c = load_scenario(path).cluster
    assert c.cores_per_node == 0 and c.measured.co_run == (1, 1.0) and c.measured.collectives == {}
    assert c.profile == ""


def test_an_absolute_profile_path_works(tmp_path: Path):
    prof = write_profile(tmp_path / "prof.yaml")
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    sc = load_scenario(write_scenario(sub, str(prof)))
    assert sc.cluster.device.name == NAME


def test_a_catalogue_device_overrides_the_profiles(tmp_path: Path):
    write_profile(tmp_path / "prof.yaml")
    c = load_scenario(write_scenario(tmp_path, extra="  device: cpu_core_modern")).cluster
    assert c.device == catalogue.devices()["cpu_core_modern"]
    assert c.intra_link.name == f"{NAME}_intra"  # the link still comes from the profile


def test_the_profiles_device_names_a_base_and_its_own_name_works(tmp_path: Path):
    write_profile(tmp_path / "prof.yaml")
    c = load_scenario(write_scenario(
        tmp_path, extra=f"  device: {{base: {NAME}, launch_overhead_us: 9}}")).cluster
    assert c.device.launch_overhead == pytest.approx(9e-6)
    assert c.device.peak_flops == {"fp32": pytest.approx(0.2e12)}
    assert c.device.kernels == load_profile(tmp_path / "prof.yaml").device.kernels
    named = load_scenario(write_scenario(tmp_path, extra=f"  device: {NAME}",
                                         name="named.yaml")).cluster
    assert named.device == load_profile(tmp_path / "prof.yaml").device


def test_the_scenarios_cores_per_node_overrides_the_profiles(tmp_path: Path):
    write_profile(tmp_path / "prof.yaml")
    c = load_scenario(write_scenario(tmp_path, extra="  cores_per_node: 8")).cluster
    assert c.cores_per_node == 8 and c.measured.co_run == (2, pytest.approx(1.1))


def test_a_missing_profile_names_the_scenario_the_field_and_the_path(tmp_path: Path):
    path = write_scenario(tmp_path, "missing.yaml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    text = str(info.value)
    assert text.startswith(str(path))
    assert "cluster.profile" in text
    assert str(tmp_path / "missing.yaml") in text


def test_a_bad_profile_named_by_a_scenario_is_an_error_with_the_field(tmp_path: Path):
    write_profile(tmp_path / "prof.yaml", dev=_bad_curve_order())
    with pytest.raises(ScenarioError) as info:
        load_scenario(write_scenario(tmp_path))
    # the scenario's field, then the profile's own
    assert info.value.path == "cluster.profile"
    assert f": devices.{NAME}.kernels.dense.fwd.flops: " in str(info.value)
    assert "strictly increasing" in str(info.value)


def test_a_bad_profile_named_by_a_scenario_names_both_files(tmp_path: Path):
    prof = write_profile(tmp_path / "prof.yaml", dev=_bad_curve_order())
    scenario = write_scenario(tmp_path)
    with pytest.raises(ScenarioError) as info:
        load_scenario(scenario)
    assert info.value.file == str(scenario)
    assert str(info.value).startswith(f"{scenario}:")
    assert f"not a usable calibration profile: {prof}:" in str(info.value)


def test_a_file_that_is_not_a_profile_is_not_printed(tmp_path: Path):
    (tmp_path / "prof.yaml").write_text("hello " * 10_000)
    with pytest.raises(ScenarioError) as info:
        load_scenario(write_scenario(tmp_path))
    assert "cluster.profile" in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("profile,expected", [
    ("missing.yaml", "cluster.profile"),
    ("prof.yaml", f"devices.{NAME}.kernels.dense.fwd.flops"),
])
def test_the_cli_reports_a_profile_error_in_one_line(tmp_path: Path, capsys, profile: str,
                                                    expected: str):
    write_profile(tmp_path / "prof.yaml", dev=_bad_curve_order())
    path = write_scenario(tmp_path, profile)
    assert main(["simulate", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parasim: error:")
    assert expected in lines[0] and "Traceback" not in err
    assert out == ""


def test_the_cli_simulates_a_profiled_scenario(tmp_path: Path, capsys):
    write_profile(tmp_path / "prof.yaml")
    assert main(["simulate", str(write_scenario(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert f"2 x {NAME}" in out and "dp" in out and err == ""


# ---- the engine: kernel curves -----------------------------------------------------------------

PEAK = 1e11
LAUNCH = 2e-6
SPEC = DeviceSpec(name="t", kind="cpu", sms=1, peak_flops={"fp32": PEAK}, memory=1e9,
                  memory_bandwidth=1e10, launch_overhead=LAUNCH, compute_efficiency=0.5,
                  memory_efficiency=0.8, blocks_per_sm=1, comm_sms=0, source="test",
                  kernels={"dense.fwd": ((1e3, 0.1), (1e5, 0.5), (1e7, 0.9)),
                           "update": ((1e2, 0.02), (1e4, 0.2))})


def compute(flops: float, *, kind: str = "dense", phase: str = "fwd", nbytes: float = 0.0,
            kernels: int = 1) -> Compute:
    return Compute(id=0, stream="compute", deps=(), layer="l", phase=phase, micro_batch=0,
                   samples=1, shard=0, shards=1, flops=flops, bytes=nbytes, blocks=1,
                   kernels=kernels, layer_kind=kind)


def device(slowdown: float = 1.0) -> Device:
    return Device(simpy.Environment(), "d0", SPEC, "fp32", slowdown)


@pytest.mark.parametrize("flops,eff", [
    (1e4, 0.3),  # halfway between 1e3 and 1e5 in log FLOPs
    (1e6, 0.7),  # halfway between 1e5 and 1e7
    (3e3, 0.1 + 0.4 * math.log(3) / math.log(100)),
    (2e6, 0.5 + 0.4 * math.log(20) / math.log(100)),
    (1e3, 0.1), (1e5, 0.5), (1e7, 0.9),  # the points themselves
    (10.0, 0.1), (1e9, 0.9),  # clamped past the ends
])
def test_a_kernel_with_a_curve_takes_flops_over_peak_times_the_curve(flops: float, eff: float):
    assert efficiency_at(SPEC.kernels["dense.fwd"], flops) == pytest.approx(eff, rel=1e-12)
    t = device().kernel_time(compute(flops))
    assert t == pytest.approx(LAUNCH + flops / (PEAK * eff), rel=1e-12)


def test_a_curve_ignores_memory_traffic_and_counts_launches_and_slowdown():
    op = compute(1e4, nbytes=1e9, kernels=3)  # 1e9 B would take 0.125 s on the roofline
    assert device(2.0).kernel_time(op) == pytest.approx(2 * (3 * LAUNCH + 1e4 / (PEAK * 0.3)))


def test_a_kind_without_a_curve_takes_the_roofline():
    flops_bound = compute(1e6, kind="conv")
    assert device().kernel_time(flops_bound) == pytest.approx(LAUNCH + 1e6 / (PEAK * 0.5))
    memory_bound = compute(1e6, kind="conv", nbytes=1e6)  # 1e6 B at 8 GB/s: 125 us > 20 us
    assert device().kernel_time(memory_bound) == pytest.approx(LAUNCH + 1e6 / 8e9)
    bwd = compute(1e4, phase="bwd")  # dense.bwd has no curve either
    assert device().kernel_time(bwd) == pytest.approx(LAUNCH + 1e4 / (PEAK * 0.5))


def test_an_update_uses_the_update_curve():
    op = Update(id=0, stream="compute", deps=(), params=250, flops=1e3, bytes=1e6)
    eff = 0.02 + 0.18 * 0.5
    assert device().kernel_time(op) == pytest.approx(LAUNCH + 1e3 / (PEAK * eff))


def test_curve_keys_and_a_one_point_curve():
    assert curve_key(compute(1.0, kind="conv", phase="bwd")) == "conv.bwd"
    assert curve_key(compute(1.0)) == "dense.fwd"
    assert curve_key(Update(id=0, stream="compute", deps=(), params=1, flops=1.0,
                            bytes=1.0)) == "update"
    one = ((1e4, 0.4),)
    assert efficiency_at(one, 1.0) == efficiency_at(one, 1e4) == efficiency_at(one, 1e8) == 0.4


# ---- the engine: hot and cold curves -----------------------------------------------------------

def hot_curves(efficiency: float) -> dict[str, Any]:
    """The default entry's curves, and hot twins of them at one efficiency."""
    kernels = dict(device_entry()["kernels"])
    kernels.update({f"hot:{key}": {"flops": [1e2, 1e7], "efficiency": [efficiency] * 2}
                    for key in list(kernels)})
    return kernels


def test_a_profiles_cache_reads_in_bytes_and_its_hot_curves_by_name():
    d = parse_profile(load_yaml(profile_text(dev=device_entry(kernels=hot_curves(1.0),
                                                              cache_MiB=12)))).device
    assert d.cache == 12 * 2**20
    assert d.kernels["hot:dense.fwd"] == ((1e2, 1.0), (1e7, 1.0))


def test_a_profile_without_hot_curves_or_a_cache_prices_every_kernel_cold(tmp_path: Path):
    """A profile written before the hot curves (the default entry has neither) predicts what
    it did; hot curves change nothing without a cache size, and with one that the ranks'
    working sets fit (the MLP 256-256-10 at 16 samples a rank: under 1 MiB each, against
    halves of 32 MiB shares) the kernels take them."""
    def compute_s(folder: str, **dev: Any) -> float:
        (tmp_path / folder).mkdir()
        write_profile(tmp_path / folder / "prof.yaml", dev=device_entry(**dev))
        result = simulate_scenario(load_scenario(write_scenario(tmp_path / folder)))[0]
        return result["results"][0]["breakdown_s"]["compute"]

    old = compute_s("old")
    assert old > 0
    assert compute_s("no_cache", kernels=hot_curves(1.0)) == old
    assert compute_s("cache_without_hot_curves", cache_MiB=64) == old
    assert compute_s("hot", kernels=hot_curves(1.0), cache_MiB=64) < old


# ---- the engine: core sharing ----------------------------------------------------------------

def test_core_sharing_closed_forms():
    assert core_sharing(2, 4, (2, 1.1)) == pytest.approx(2 * 1.1)  # time-shared and contended
    assert core_sharing(2, 2, (2, 1.1)) == pytest.approx(1.1)  # contention only
    assert core_sharing(4, 3, (2, 1.2)) == pytest.approx(1 + 0.2 * 2)  # linear in the ranks
    assert core_sharing(8, 5, (5, 1.4)) == pytest.approx(1.4)
    assert core_sharing(1, 3, (1, 1.0)) == pytest.approx(3.0)  # time sharing only
    assert core_sharing(0, 4, (2, 1.1)) == 1.0  # a core per device: no sharing
    assert core_sharing(4, 1, (2, 1.1)) == 1.0  # one rank: nothing to share


def test_the_engine_slows_compute_by_the_profiles_co_run(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_profile(a / "prof.yaml", cal=calibration(co_run={"ranks": 2, "slowdown": 1.0}))
    write_profile(b / "prof.yaml", cal=calibration(co_run={"ranks": 2, "slowdown": 1.25}))
    compute_s = [simulate_scenario(load_scenario(write_scenario(f)))[0]["results"][0]
                 ["breakdown_s"]["compute"] for f in (a, b)]
    assert compute_s[0] > 0
    assert compute_s[1] == pytest.approx(1.25 * compute_s[0], rel=1e-9)


# ---- the engine: fitted all-reduce costs ------------------------------------------------------

def test_allreduce_terms_closed_forms():
    S = 1000.0
    assert allreduce_terms("ring", 4, S) == (6, pytest.approx(1.5 * S))
    assert allreduce_terms("ring", 2, S) == (2, pytest.approx(S))
    assert allreduce_terms("mpi", 5, S) == (6, pytest.approx(1.6 * S))  # 2 ceil(log2 5)
    assert allreduce_terms("tree", 4, S) == (4, pytest.approx(4 * S))
    assert allreduce_terms("tree", 5, S) == (6, pytest.approx(6 * S))
    assert allreduce_terms("ring", 1, S) == (0, 0.0)


def test_reduced_bytes_closed_forms():
    S = 1000.0
    assert reduced_bytes("allreduce", "ring", 4, S) == pytest.approx(0.75 * S)
    assert reduced_bytes("allreduce", "mpi", 4, S) == pytest.approx(0.75 * S)
    assert reduced_bytes("allreduce", "tree", 4, S) == pytest.approx(2 * S)
    assert reduced_bytes("allreduce", "tree", 5, S) == pytest.approx(3 * S)
    assert reduced_bytes("reduce_scatter", "ring", 5, S) == pytest.approx(0.8 * S)
    assert reduced_bytes("allgather", "ring", 4, S) == 0.0
    assert reduced_bytes("broadcast", "tree", 4, S) == 0.0
    assert reduced_bytes("allreduce", "ring", 1, S) == 0.0


# the mlp [256, 256, 10]: weights and biases, fp32
PARAM_BYTES = 4 * ((256 * 256 + 256) + (256 * 10 + 10))
PACK_S = 2 * PARAM_BYTES / 10e9  # packing the gradients: read and write at 10 GB/s


def exposed(path: Path) -> float:
    result, _ = simulate_scenario(load_scenario(path))
    (entry,) = result["results"]
    return entry["breakdown_s"]["exposed_communication"]


@pytest.mark.parametrize("exchange,fit", [("ring", RING), ("hierarchical", RING),
                                          ("tree", TREE)])
def test_an_allreduce_on_one_node_costs_the_profiles_fit(tmp_path: Path, exchange: str,
                                                        fit: tuple[float, float]):
    """One all-reduce of every gradient after backward: steps x latency + volume / bandwidth
    (a hierarchical all-reduce on one node is a ring; no host-side sums on top: the fit has
    them). Ring on 2 ranks: 2 steps, 2(p-1)/p S = S; tree: 2 ceil(log2 2) = 2 steps of S. The
    executor first packs the gradients into one buffer: S read and S written at the device's
    10 GB/s memory bandwidth."""
    write_profile(tmp_path / "prof.yaml")
    steps, volume = (2, 2 * PARAM_BYTES) if exchange == "tree" else (2, PARAM_BYTES)
    expected = steps * fit[0] + volume / fit[1] + PACK_S
    assert exposed(write_scenario(tmp_path, exchange=exchange)) == pytest.approx(expected,
                                                                                   rel=1e-6)


def test_an_algorithm_without_a_fit_uses_the_flow_model(tmp_path: Path):
    fitted, plain = tmp_path / "fitted", tmp_path / "plain"
    fitted.mkdir()
    plain.mkdir()
    write_profile(fitted / "prof.yaml")  # ring and tree fitted, mpi not
    write_profile(plain / "prof.yaml", cal=calibration(collectives={}))
    got = exposed(write_scenario(fitted, exchange="mpi"))
    assert got > 0
    assert got == pytest.approx(exposed(write_scenario(plain, exchange="mpi")), rel=1e-12)
    # and the flow model is not what the ring fit would give
    assert got != pytest.approx(2 * RING[0] + PARAM_BYTES / RING[1] + PACK_S, rel=1e-3)


SHARED = (2e-3, 0.5e9)  # the ring fit measured with 2 ranks per core: 2 ms per step, 0.5 GB/s


def shared_profile(path: Path, cores: int) -> None:
    cal = calibration(cores_per_node=cores)
    cal["collectives"] = {**cal["collectives"], "oversubscribed": [
        {"ranks_per_core": 2.0, "ring": {"latency_us": SHARED[0] * 1e6,
                                         "bandwidth_GBps": SHARED[1] / 1e9, "ranks": [4]}},
        {"ranks_per_core": 4.0, "ring": {"latency_us": 1e4, "bandwidth_GBps": 0.1}}]}
    write_profile(path, cal=cal)


@pytest.mark.parametrize("cores,fit", [(2, RING), (1, SHARED)])
def test_oversubscribed_nodes_use_the_fit_measured_at_their_ranks_per_core(
        tmp_path: Path, cores: int, fit: tuple[float, float]):
    """2 ranks on 2 cores: the plain fit; on 1 core (2 ranks per core): the fit measured at 2
    ranks per core, not the one at 4."""
    shared_profile(tmp_path / "prof.yaml", cores)
    p = load_profile(tmp_path / "prof.yaml")
    assert sorted(p.measured.collectives_shared) == [2.0, 4.0]
    assert p.measured.collectives_shared[2.0]["ring"] == (pytest.approx(SHARED[0]),
                                                 pytest.approx(SHARED[1]))
    expected = 2 * fit[0] + PARAM_BYTES / fit[1] + PACK_S
    assert exposed(write_scenario(tmp_path, extra=f"  cores_per_node: {cores}")) == (
        pytest.approx(expected, rel=1e-6))


@pytest.mark.parametrize("entries,where,message", [
    ({"ranks_per_core": 2.0}, "oversubscribed", "must be a list"),
    ([{"ranks_per_core": 1.0, "ring": {"latency_us": 1, "bandwidth_GBps": 1}}],
     "oversubscribed[0].ranks_per_core", "must be above 1"),
    ([{"ranks_per_core": 2.0, "rign": {"latency_us": 1, "bandwidth_GBps": 1}}],
     "oversubscribed[0].rign", "unknown key"),
])
def test_bad_oversubscribed_fits_name_the_entry(entries: Any, where: str, message: str):
    cal = calibration()
    cal["collectives"] = {**cal["collectives"], "oversubscribed": entries}
    with pytest.raises(ScenarioError) as e:
        parse_profile(load_yaml(profile_text(cal=cal)), "p.yaml")
    assert f"calibration.collectives.{where}" in str(e.value)
    assert message in str(e.value)


def test_an_intra_node_fit_does_not_price_a_group_across_nodes(tmp_path: Path):
    fitted, plain = tmp_path / "fitted", tmp_path / "plain"
    fitted.mkdir()
    plain.mkdir()
    write_profile(fitted / "prof.yaml")
    write_profile(plain / "prof.yaml", cal=calibration(collectives={}))
    extra = "  inter_link: eth_10g"
    got = exposed(write_scenario(fitted, nodes=2, per_node=1, extra=extra))
    assert got == pytest.approx(exposed(write_scenario(plain, nodes=2, per_node=1,
                                                       extra=extra)), rel=1e-12)
    assert got != pytest.approx(2 * RING[0] + PARAM_BYTES / RING[1], rel=1e-3)


def test_an_inter_node_fit_prices_a_group_across_nodes(tmp_path: Path):
    cal = calibration()
    cal["collectives"] = {**cal["collectives"], "scope": "inter"}
    write_profile(tmp_path / "prof.yaml", cal=cal, links=link_entries(inter=True))
    path = write_scenario(tmp_path, nodes=2, per_node=1)
    assert load_scenario(path).cluster.inter_link.name == f"{NAME}_inter"
    assert exposed(path) == pytest.approx(2 * RING[0] + PARAM_BYTES / RING[1] + PACK_S,
                                          rel=1e-6)


# ---- thread wake-ups and the spread of ranks' finish times ------------------------------------

def iteration(path: Path) -> float:
    result, _ = simulate_scenario(load_scenario(path))
    (entry,) = result["results"]
    return entry["iteration_time_s"]


@pytest.mark.parametrize("cores,paid", [(2, 1e-3), (1, 5e-3)])
def test_a_stream_that_waited_for_another_pays_the_wake_up_at_its_ranks_per_core(
        tmp_path: Path, cores: int, paid: float):
    """Data parallel without overlap: the all-reduce (comm stream) waits for backward, the
    update (compute stream) for the all-reduce: two wake-ups per iteration, at the latency
    measured for the node's ranks per core (2 ranks on 2 cores: 1 ms; on 1 core: 5 ms)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wakeup = [{"ranks_per_core": 1.0, "latency_us": 1000.0},
              {"ranks_per_core": 2.0, "latency_us": 5000.0}]
    write_profile(tmp_path / "a" / "prof.yaml", cal=calibration(cores_per_node=cores))
    write_profile(tmp_path / "b" / "prof.yaml",
                  cal=calibration(cores_per_node=cores, wakeup=wakeup))
    p = load_profile(tmp_path / "b" / "prof.yaml")
    assert p.measured.wakeup == {1.0: pytest.approx(1e-3), 2.0: pytest.approx(5e-3)}
    without, with_ = (iteration(write_scenario(tmp_path / f)) for f in "ab")
    assert with_ - without == pytest.approx(2 * paid, rel=1e-9)


DOWNPOUR = """\
name: downpour on shared cores
model: {{zoo: mlp, params: {{sizes: [256, 256, 10]}}}}
cluster:
  profile: prof.yaml
  nodes: 1
  devices_per_node: 3
  parameter_servers: {{hosts: 1, device: {name}, nic: eth_10g}}
training: {{batch_size: 48, precision: fp32, iterations: 2, warmup_iterations: 1}}
strategies:
  - {{name: downpour, scheme: downpour, workers: 3}}
"""


@pytest.mark.parametrize("cores,rank_pays,server_pays", [(2, 200e-6, 200e-6),
                                                         (4, 0.0, 50e-6)])
def test_a_quiet_wait_for_a_message_pays_a_process_s_wake_up(tmp_path: Path, cores: int,
                                                            rank_pays: float,
                                                            server_pays: float):
    """3 workers and a server: 4 processes. On 2 cores they wait quietly and pay the message
    wake-up measured at 2 ranks per core (not the thread wake-up); on 4 cores a worker polls
    and pays nothing, and the server, which polls between sleeps, the 1-rank-per-core one."""
    from simulator.cluster import build_cluster
    from simulator.engine.simulate import predict
    from simulator.scenario import build_graph
    from simulator.strategies import build_plan
    from simulator.strategies.common import Context

    woken = [{"ranks_per_core": 1.0, "latency_us": 50.0},
             {"ranks_per_core": 2.0, "latency_us": 200.0}]
    threads = [{"ranks_per_core": 1.0, "latency_us": 1000.0},
               {"ranks_per_core": 2.0, "latency_us": 5000.0}]
    write_profile(tmp_path / "prof.yaml", cal=calibration(cores_per_node=cores, wakeup=threads,
                                                          message_wakeup=woken))
    assert load_profile(tmp_path / "prof.yaml").measured.message_wakeup == {
        1.0: pytest.approx(50e-6), 2.0: pytest.approx(200e-6)}
    path = tmp_path / "s.yaml"
    path.write_text(DOWNPOUR.format(name=NAME))
    sc = load_scenario(path)
    cluster = build_cluster(sc.cluster)
    ctx = Context(build_graph(sc.model), cluster, sc.training)
    engine = predict(build_plan(ctx, sc.strategies[0]), cluster, sc.training).engine
    assert list(engine.message_wake.values()) == pytest.approx([rank_pays] * 3)
    assert engine.servers[0].wake == pytest.approx(server_pays)


def test_the_spread_moves_runs_of_kernels_early_or_late_in_proportion():
    spec = DeviceSpec(name="d", kind="cpu", sms=1, peak_flops={"fp32": 1e9}, memory=1,
                      memory_bandwidth=1e9, launch_overhead=0.0, compute_efficiency=1.0,
                      memory_efficiency=1.0, blocks_per_sm=1, comm_sms=0, source="test")
    rng = np.random.default_rng(3)
    dev = Device(simpy.Environment(), "d", spec, "fp32", rng=rng, spread=(2e-3, 10e-3))
    long_runs = np.array([dev.skewed(20e-3) for _ in range(20000)])  # longer than the work
    assert long_runs.mean() == pytest.approx(20e-3, rel=2e-3)
    assert long_runs.std() == pytest.approx(2e-3, rel=0.03)
    short = np.array([dev.skewed(1e-3) for _ in range(20000)])  # a tenth of it: a tenth
    assert short.std() == pytest.approx(0.2e-3, rel=0.03)
    assert short.min() >= 0.5e-3  # at least half a run remains
    assert Device(simpy.Environment(), "d", spec, "fp32", rng=rng).skewed(1.0) == 1.0


@pytest.mark.parametrize("key,entries,where,message", [
    ("wakeup", {"ranks_per_core": 1.0}, "wakeup", "must be a list"),
    ("wakeup", [{"ranks_per_core": 1.0, "latency_us": 5}, {"ranks_per_core": 1.0,
                                                          "latency_us": 6}],
     "wakeup[1].ranks_per_core", "must appear once"),
    ("message_wakeup", [{"ranks_per_core": 2.0, "latency_us": -1}],
     "message_wakeup[0].latency_us", "must be at least 0"),
    ("migration", [{"ranks_per_core": 1.0, "latency_us": 500}], "migration[0].ranks_per_core",
     "must be above 1"),
    ("spread", [{"ranks_per_core": 1.0, "std_us": 5}], "spread[0].work_us", "is required"),
    ("spread", [{"ranks_per_core": 1.0, "std_us": -5, "work_us": 1}], "spread[0].std_us",
     "must be at least 0"),
])
def test_bad_wake_up_and_spread_entries_name_the_entry(key: str, entries: Any, where: str,
                                                      message: str):
    with pytest.raises(ScenarioError) as e:
        parse_profile(load_yaml(profile_text(cal=calibration(**{key: entries}))), "p.yaml")
    assert f"calibration.{where}" in str(e.value)
    assert message in str(e.value)


def test_search_with_a_profile_searches_the_machine_it_measured(tmp_path: Path, capsys):
    # a scenario written for a catalogue CPU: --profile puts the measured device in its place
    write_profile(tmp_path / "prof.yaml")
    path = tmp_path / "plain.yaml"
    path.write_text(SCENARIO.replace("  profile: {profile}\n", "  device: cpu_core_modern\n"
                                     "  intra_link: shm\n").format(
        nodes=1, per_node=2, extra="", exchange="ring"))
    assert main(["search", str(path), "--top", "2", "--synchronous",
                 "--profile", str(tmp_path / "prof.yaml")]) == 0
    out, _err = capsys.readouterr()
    assert f"search over 2 x {NAME}" in out
    assert main(["search", str(path), "--profile", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("parasim: error:") and "missing.yaml" in err[0]

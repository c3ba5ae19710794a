"""``parasim calibrate --from-profile``: a profile from a PyTorch profiler (Kineto) trace.

The shipped trace (``scenarios/data/traces/lenet5_ddp2_v100.json``, made by hand by
``make_traces.py`` beside it, its kernel times the catalogue V100's per-kernel model with a
seeded noise per layer) is imported against its scenario; predicting the same model with the
profile must give back every layer's kernel time of the trace, per forward and backward, within
5%, and a layer whose shape is left out of the fit must be priced from the other shapes' class
(or kind) curves within 25% -- the figures compared come from the generator's own record of
what it wrote, not from the import. Bad inputs exit 2 with one line naming the file. No MPI, no
Numba.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import simpy

from executor.calibration.trace_classes import fit_curves
from executor.calibration.trace_import import catalogue_name
from parasim.cli import main
from simulator.catalogue import devices
from simulator.engine import gpu
from simulator.engine.collectives import allreduce_terms
from simulator.engine.hardware import Device
from simulator.plan import Compute, Update
from simulator.predict import context, plans
from simulator.profile import load_profile
from simulator.scenario import with_profile

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "scenarios" / "data" / "traces"
TRACE = TRACES / "lenet5_ddp2_v100.json"
SCENARIO = ROOT / "scenarios" / "lenet5_traced_v100.yaml"


def generator():
    spec = importlib.util.spec_from_file_location("make_traces", TRACES / "make_traces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("trace") / "profile.yaml"
    proc = subprocess.run([sys.executable, "-m", "parasim", "calibrate", "--from-profile",
                           str(TRACE), "--scenario", str(SCENARIO), "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def cli(tmp_path: Path, trace: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parasim", "calibrate", "--from-profile",
                           str(trace), "--scenario", str(SCENARIO),
                           "-o", str(tmp_path / "p.yaml"), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_the_shipped_trace_is_what_its_generator_writes():
    module = generator()
    assert module.dump(module.lenet5()[0]) == TRACE.read_text()


def test_predicting_with_the_imported_profile_gives_back_each_layers_kernel_time(imported):
    """Every layer's forward and backward, and the optimizer's update, as the engine prices
    the plan's ops on a device of the profile, against the median over the trace's steps of
    the kernels the trace gave that layer (the generator's record)."""
    path, _ = imported
    truth = {key: statistics.median(v) * 1e-6 for key, v in generator().lenet5()[1].items()}
    scenario = with_profile(str(SCENARIO), str(path))
    ctx = context(scenario)
    (plan,) = plans(scenario, ["ddp-2gpu"])
    device = Device(simpy.Environment(), "gpu0", ctx.cluster.device_spec,
                    scenario.training.precision)
    errors = {}
    for op in plan.ranks[0].ops:
        if isinstance(op, Compute) and (op.layer, op.phase) in truth:
            key = (op.layer, op.phase)
        elif isinstance(op, Update):
            key = ("update", "")
        else:
            continue
        errors[key] = device.kernel_time(op) / truth[key] - 1
    assert set(errors) == set(truth)
    worst = max(errors, key=lambda k: abs(errors[k]))
    print(f"worst: {worst} {errors[worst]:+.3%} over {len(errors)} ops")
    assert abs(errors[worst]) <= 0.05


def test_each_class_point_is_the_efficiency_at_which_the_model_takes_the_measured_time(imported):
    path, _ = imported
    p = load_profile(path)
    scenario = with_profile(str(SCENARIO), str(path))
    (plan,) = plans(scenario, ["ddp-2gpu"])
    ops = {(op.layer, op.phase): op for op in plan.ranks[0].ops if isinstance(op, Compute)}
    spec = replace(p.device, kernels={})
    rows = [r for r in p.calibration["measured"]["ops"] if "class" in r]
    assert len(rows) == 10
    for r in rows:
        kind, phase = r["curve"].split(".")
        op = ops[(r["layers"][0], phase)]
        model = gpu.Model(spec, spec.peak_flops["fp32"], 4, None, r["class_efficiency"])
        got = model.choose(kind, phase, gpu.parse_shape(r["shape"]), r["samples"],
                           op.input_grad, op.bias)
        assert got.seconds == pytest.approx(r["seconds"], rel=1e-5)
    assert [r["layers"] for r in rows if "class_left_out" in r] == [["c1"]]


def held_out(path: Path) -> dict[tuple[str, str], tuple[str, float]]:
    """Per traced (layer, phase) of the plan's rank 0: the curve that priced it and the
    relative error of the engine's time against the generator's record, on a device whose
    curves were fitted from the profile's measured rows less that layer's shape (its
    ``@shape`` curve, its point in the class and kind curves)."""
    truth = {key: statistics.median(v) * 1e-6 for key, v in generator().lenet5()[1].items()}
    scenario = with_profile(str(SCENARIO), str(path))
    p = load_profile(path)
    rows = p.calibration["measured"]["ops"]
    (plan,) = plans(scenario, ["ddp-2gpu"])
    out = {}
    for op in plan.ranks[0].ops:
        if not isinstance(op, Compute) or (op.layer, op.phase) not in truth:
            continue
        key = f"{op.layer_kind}.{op.phase}"
        spec = replace(p.device, kernels={k: tuple(zip(c["flops"], c["efficiency"]))
                                          for k, c in fit_curves(rows, (key, op.shape)).items()})
        device = Device(simpy.Environment(), "gpu0", spec, scenario.training.precision)
        cls = gpu.shape_class(op.layer_kind, gpu.parse_shape(op.shape))
        used = next((n for n in (f"{scenario.training.precision}:{key}#{cls}", key)
                     if n in spec.kernels and (cls or "#" not in n)), "model")
        out[(op.layer, op.phase)] = (used, device.kernel_time(op) / truth[(op.layer, op.phase)]
                                     - 1)
    return out


def test_a_shape_left_out_of_the_fit_is_predicted_from_its_class(imported):
    """Leave one shape out: each conv and dense layer's time predicted by the per-kernel model
    with its class curve fitted on the other shapes of the trace, the memory-bound layers' from
    their kind's curve over the other shapes, against what the trace measured (the generator's
    record). The shipped trace's times are the catalogue V100's per-kernel model with a
    lognormal noise of sigma 0.1 per layer and phase on the kernels' work (make_traces.py): a
    held-out shape's error is its own noise against its class's, about sqrt(2) x 0.1 in log,
    so 25% is some two standard deviations. Measured: 15.9% and 12.1% at worst; the same check
    gave 27.1% with the first layer's forward point in its class curve (memory-bound in the
    model, its efficiency fitted the noise: now left out) and 126.8% on the trace's former,
    hand-chosen times."""
    path, _ = imported
    errors = held_out(path)
    for (layer, phase), (used, err) in errors.items():
        print(f"{layer:8} {phase:4} {used:28} {err:+7.1%}")
    classed = [abs(e) for used, e in errors.values() if "#" in used]
    other = [abs(e) for used, e in errors.values() if "#" not in used]
    print(f"conv and dense, class curves: worst {max(classed):.1%}, median "
          f"{statistics.median(classed):.1%} over {len(classed)} ops; memory-bound, kind "
          f"curves: worst {max(other):.1%}, median {statistics.median(other):.1%} over "
          f"{len(other)} ops")
    assert len(classed) == 10 and len(other) == 14
    assert max(classed) <= 0.25 and max(other) <= 0.25


def test_the_all_reduce_fit_gives_back_the_traces_nccl_times(imported):
    path, stdout = imported
    p = load_profile(path)
    assert p.measured.collectives_scope == "intra"
    lat, bw = p.measured.collectives["ring"]
    rows = p.calibration["measured"]["allreduce"]
    assert {r["bytes"] for r in rows} == {59134 * 4, 2572 * 4}  # In msg nelems x float's 4 B
    for r in rows:
        steps, volume = allreduce_terms("ring", r["ranks"], r["bytes"])
        assert steps * lat + volume / bw == pytest.approx(r["seconds"], rel=0.05)
    assert "all-reduce ring:" in stdout


def test_the_profile_names_the_trace_and_takes_the_rest_from_the_catalogue(imported):
    path, stdout = imported
    p = load_profile(path)
    d = p.device
    assert d.name == "V100_traced" and d.kind == "gpu" and d.sms == 80
    assert d.memory == 16945512448  # the trace's deviceProperties, not the catalogue's 32 GB
    assert d.peak_flops["fp32"] == pytest.approx(15.7e12)  # the catalogue's V100
    assert 1e-6 < d.launch_overhead < 2e-6  # the generator's 1.5 us gap between queued kernels
    assert "conv.fwd@1x32x32>6x28x28k5x5s1x1p0x0" in d.kernels
    # conv and dense shapes the trace did not run take the per-kernel model with a class
    # curve, the trace's or the catalogue's V100 ones, never a kind-wide curve
    assert "conv.fwd" not in d.kernels and "dense.bwd" not in d.kernels
    assert "act_tanh.fwd" in d.kernels  # memory-bound kinds keep theirs
    traced = {"fp32:conv.fwd#large_s1", "fp32:conv.bwd#large_s1", "fp32:dense.fwd#gemm",
              "fp32:dense.bwd#gemm"}
    catalogue = {k for k in devices()["V100"].kernels if "#" in k}
    assert {k for k in d.kernels if "#" in k} == traced | catalogue
    assert d.kernels["fp32:conv.fwd#3x3s1"] == devices()["V100"].kernels["fp32:conv.fwd#3x3s1"]
    assert d.kernels["fp32:dense.fwd#gemm"] != devices()["V100"].kernels["fp32:dense.fwd#gemm"]
    assert "conv.fwd@1x32x32>6x28x28k5x5s1x1p0x0 (batch 64) took 14.91 us" in stdout
    assert p.cores_per_node == 0 and p.link("intra").name == "V100_traced_intra"
    assert "not fitted: 6 memory copies" in stdout and "not matched" not in stdout


def test_an_operator_that_matches_no_layer_is_counted_by_name(tmp_path: Path):
    data = json.loads(TRACE.read_text())
    step = next(e for e in data["traceEvents"] if e.get("name") == "ProfilerStep#3")
    t = step["ts"] + 1.0
    data["traceEvents"] += [
        {"ph": "X", "cat": "cpu_op", "name": "aten::zeros", "pid": 2101, "tid": 9, "ts": t,
         "dur": 5.0, "args": {"External id": 99001}},
        {"ph": "X", "cat": "kernel", "name": "fill", "pid": 0, "tid": 7, "ts": t + 2.0,
         "dur": 2.0, "args": {"External id": 99001, "correlation": 99002, "stream": 7,
                              "device": 0}}]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(data))
    done = cli(tmp_path, trace)
    assert done.returncode == 0, done.stderr
    assert "not matched: aten::zeros: 1 operator(s), 1 kernel(s), 0.0020 ms" in done.stdout


def bad(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("not json {", "not a trace: not JSON"),
    ('{"events": []}', "not a Kineto trace: no traceEvents list"),
    ('{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::relu", "ts": 1, "dur": 2,'
     ' "pid": 1, "tid": 1}]}', "the trace has no GPU kernels"),
])
def test_a_file_that_is_not_a_usable_trace_exits_2_naming_it(tmp_path, text, message):
    path = bad(tmp_path, text)
    done = cli(tmp_path, path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"parasim: error: {path}: ") and message in line
    assert not (tmp_path / "p.yaml").exists()


def test_a_trace_of_another_model_matches_nothing_and_exits_2(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "parasim", "calibrate", "--from-profile",
                           str(TRACE), "--scenario", str(ROOT / "scenarios/resnet50_dgx.yaml"),
                           "-o", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert f"{TRACE}: no operator of the trace matches a layer of resnet50" in line


def test_an_existing_output_is_not_overwritten_without_force(tmp_path: Path):
    (tmp_path / "p.yaml").write_text("mine")
    done = cli(tmp_path, TRACE)
    assert done.returncode == 2
    assert done.stderr.strip() == f"parasim: error: {tmp_path / 'p.yaml'} exists; pass --force " \
                                  "to overwrite it"
    assert (tmp_path / "p.yaml").read_text() == "mine"
    assert cli(tmp_path, TRACE, "--force").returncode == 0


def test_from_profile_goes_with_scenario(tmp_path: Path, capsys):
    assert main(["calibrate", "--from-profile", str(TRACE), "-o", str(tmp_path / "p")]) == 2
    assert "--from-profile TRACE and --scenario SCENARIO go together" in capsys.readouterr().err


def test_the_import_loads_neither_mpi_nor_numba(tmp_path: Path):
    code = ("import sys\nfrom executor.calibration.trace_import import import_trace\n"
            f"import_trace({str(TRACE)!r}, {str(SCENARIO)!r})\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mpi4py', 'numba'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("gpu, entry", [
    ("Tesla V100-SXM2-16GB", "V100"), ("NVIDIA A100-SXM4-80GB", "A100_80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100_40GB"), ("NVIDIA A100-PCIE-40GB", "A100_PCIe_40GB"),
    ("NVIDIA A100 80GB PCIe", "A100_PCIe_80GB"), ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100_PCIe"), ("Tesla P100-PCIE-16GB", "P100"), ("Tesla K40m", "K40"),
    ("NVIDIA GeForce RTX 4090", None)])
def test_a_gpu_name_gives_its_catalogue_entry(gpu, entry):
    assert catalogue_name(gpu) == entry


def test_a_profile_on_a_device_with_a_gemm_convolution_curve_keeps_it(tmp_path):
    # the K40's convolutions have no class curves but its GEMM convolution curve
    # (kernel_curves.yaml's fp32:conv.PHASE): a profile made on it carries that curve for the
    # classes the trace did not run, as it carries a device's class curves
    proc = cli(tmp_path, TRACE, "--device", "K40")
    assert proc.returncode == 0, proc.stderr
    (spec,) = load_profile(tmp_path / "p.yaml").devices.values()
    k40 = devices()["K40"].kernels
    for name in ("fp32:conv.fwd", "fp32:conv.bwd"):
        assert spec.kernels[name] == k40[name]
    # the trace's own class curves win over the K40's
    assert spec.kernels["fp32:dense.fwd#gemm"] != k40["fp32:dense.fwd#gemm"]

"""``parasim calibrate --from-profile TRACE --scenario S``: a profile from a PyTorch profiler
trace of a real training job, fitted to the scenario's model (no MPI, no Numba, no GPU).

Fitted, into the profile ``simulator/profile.py`` reads:

* kernel curves (``trace_classes``): per matched (kernel kind, phase, layer shape) the op's
  time, the sum of the kernels its operators launched in a step (``trace_match``), divided
  among the model's layers of that kind and shape, median over the steps. Per shape a curve
  the engine (``simulator/engine/hardware.py``) gives the measured time back from
  (``conv.fwd@1x32x32>6x28x28k5x5s1x1p0x0``, a point per batch measured); per conv or dense
  shape class a curve of the efficiency at which the per-kernel GPU model takes the measured
  times (``fp32:conv.fwd#large_s1``), for the class's shapes the trace did not run; per kind
  one over every shape's FLOPs (``conv.fwd``);
* ``launch_overhead_us``: the median idle time on a stream between two kernels when the second
  was already launched (its ``cudaLaunchKernel`` returned before the first ended): the GPU's
  own cost per kernel, not the CPU's. Without such pairs, the catalogue device's figure;
* ``calibration.collectives``: NCCL all-reduce kernel times against message bytes (``In msg
  nelems`` x the dtype's size) and group size, per algorithm named in the kernel (RING, TREE),
  fitted to T = steps x latency + volume / bandwidth (``allreduce_terms``) by least squares of
  the relative error, as ``parasim calibrate`` fits the executor's (``comm.fit_collectives``).

Taken from the catalogue entry the trace's GPU name gives (``--device`` overrides): peaks,
memory bandwidth and the roofline's efficiencies, for kinds without a curve. Not fitted: the
idle gaps between kernels (a launch-bound step's CPU time), memory copies, operators that match
no layer, other collectives and NCCL algorithms; an all-reduce kernel's time includes waiting
for the slowest rank.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from executor.calibration.trace_classes import class_points, fit_curves, plan_ops
from executor.calibration.trace_match import Matching, match_trace
from executor.calibration.trace_read import Trace, TraceError, read_trace
from simulator.catalogue import MAX_EFFECTIVE, devices, links
from simulator.engine.collectives import allreduce_terms, fit_allreduce
from simulator.specs import DeviceSpec
from simulator.units import BYTES_PER_ELEMENT, TFLOPS

# a GPU name as CUDA reports it -> the catalogue's entry (first match wins)
GPU_NAMES = [(r"H200", "H200"), (r"H100.*PCIE", "H100_PCIe"), (r"H100", "H100"),
             (r"A100.*PCIE.*80|A100 80GB PCIE", "A100_PCIe_80GB"),
             (r"A100.*PCIE", "A100_PCIe_40GB"), (r"A100.*80GB", "A100_80GB"),
             (r"A100", "A100_40GB"), (r"V100", "V100"), (r"P100", "P100"),
             (r"TITAN X\b|TITANX", "TitanX"), (r"K40", "K40"), (r"K20", "K20"),
             (r"GTX 580", "GTX580")]
DTYPE_BYTES = {"float": 4, "float32": 4, "half": 2, "float16": 2, "bfloat16": 2, "double": 8,
               "float64": 8, "int": 4, "long": 8, "int64": 8, "char": 1, "byte": 1}
PRECISION_OF = {"float": ("fp32", "tf32"), "c10::half": ("fp16",), "c10::bfloat16": ("bf16",),
                "double": ("fp64",)}
NCCL_ALGORITHM = re.compile(r"_(RING|TREE|NVLS|NVLSTREE|COLLNET_DIRECT|COLLNET_CHAIN)(?:_|\(|$)")


@dataclass
class Imported:
    text: str = ""
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def import_trace(trace_path: str, scenario_path: str, *, device: str | None = None,
                 name: str | None = None, comm_scope: str = "intra",
                 intra_link: str | None = None) -> Imported:
    """The profile's text and what to print; a trace that cannot give one is a
    ``TraceError`` (one line naming the file)."""
    from simulator.predict import code_version
    from simulator.profile import dump_profile
    from simulator.scenario import build_graph, load_scenario

    scenario = load_scenario(scenario_path)
    graph = build_graph(scenario.model)
    trace = read_trace(trace_path)
    base_name, base = _catalogue_device(trace, device)
    matching = match_trace(trace, graph)
    if not any(m.key[0] != "update" for m in matching.matches):  # an optimizer step alone
        # says nothing of the model's layers
        raise TraceError(f"{trace.file}: no operator of the trace matches a layer of "
                         f"{graph.graph['name']} (the scenario's model); was it profiled with "
                         f"record_shapes=True? {_unmatched_summary(matching)}")
    out = Imported()
    precision = scenario.training.precision
    peak = base.peak_flops.get(precision) or base.peak_flops.get("fp32") or max(
        base.peak_flops.values())
    for dtype in sorted(matching.dtypes):
        if precision not in PRECISION_OF.get(dtype.lower(), (precision,)):
            out.warnings.append(f"the trace computed in {dtype} but the scenario trains in "
                                f"{precision}: the curves are against its {precision} peak")
    launch, gaps = _launch_overhead(trace)
    launch_source = (f"the median of {gaps} idle gaps between a kernel and the next one "
                     "already launched on its stream" if gaps else
                     f"no kernel was launched before the previous one ended: the catalogue's "
                     f"{base_name} figure")
    if not gaps:
        launch = base.launch_overhead
    rows, skipped = _op_times(matching, launch, peak)
    gpu = trace.devices[0] if trace.devices else {}
    sms = int(gpu.get("numSms") or base.sms)
    ops = plan_ops(scenario, {(r["layers"][0], r["curve"].partition(".")[2]) for r in rows
                              if r["shape"]})
    skipped += class_points(rows, ops, replace(base, sms=sms, launch_overhead=launch, kernels={}),
                            peak, BYTES_PER_ELEMENT[precision], precision)
    # the catalogue's class curves for the classes the trace did not run (and its GEMM
    # convolution curve, PRECISION:conv.PHASE, where it has one), the trace's own win
    curves = {**{k: {"flops": [f for f, _ in c], "efficiency": [e for _, e in c]}
                 for k, c in base.kernels.items() if ":" in k}, **fit_curves(rows)}
    fits, comm_rows, comm_notes = _collectives(trace)
    group = max((r["ranks"] for r in comm_rows), default=_world(trace))
    date = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    name = name or f"{base_name}_traced"
    where = f"imported by parasim calibrate --from-profile from {Path(trace.file).name}"
    dev = {
        "kind": "gpu", "sms": sms,
        "peak_TFLOPS": {p: v / TFLOPS for p, v in base.peak_flops.items()},
        "memory_GiB": (gpu["totalGlobalMem"] / 2**30 if gpu.get("totalGlobalMem")
                       else base.memory / 2**30),
        "memory_bandwidth_GBps": base.memory_bandwidth / 1e9,
        "launch_overhead_us": round(launch * 1e6, 4),
        "compute_efficiency": base.compute_efficiency,
        "memory_efficiency": base.memory_efficiency, "blocks_per_sm": base.blocks_per_sm,
        "comm_sms": base.comm_sms, "kernels": curves, "cache_MiB": 0.0,
        "source": f"{where} ({gpu.get('name', 'GPU not named')}) on {date}: kernel "
                  f"efficiency curves of the operators matched to {graph.graph['name']}'s "
                  f"layers, against the {precision} peak, per shape, per conv and dense shape "
                  f"class (the class's inside the per-kernel model; the catalogue's for the "
                  f"classes the trace did not run) and per memory-bound kind; launch "
                  f"overhead from {launch_source}; "
                  f"peaks, SMs (unless the trace gives them), memory bandwidth and the "
                  f"roofline's efficiencies from the catalogue's {base_name} entry",
    }
    link = _intra_link(name, fits, intra_link, trace)
    calibration = {
        "date": date, "hosts": [f"{gpu.get('name', 'GPU')} in {Path(trace.file).name}"],
        "ranks": group, "ranks_per_node": group,
        "cores_per_node": 0,  # GPU kernels do not share the host's cores: no core sharing
        "co_run": {"ranks": 1, "slowdown": 1.0},
        **({"collectives": {"scope": comm_scope, **fits}} if fits else {}),
        "backend": "trace",
        "versions": {"parasim": code_version(),
                     **{k: trace.meta[k] for k in ("cuda_runtime_version",
                                                   "cuda_driver_version", "cupti_version")
                        if k in trace.meta}},
        "measured": {"trace": trace.file, "device_properties": gpu,
                     "steps": matching.steps, "step_source": matching.step_source,
                     "ops": rows, "allreduce": comm_rows,
                     "launch_gaps": gaps,
                     "unmatched": {k: {"operators": v[0], "kernels": v[1],
                                       "kernel_seconds": v[2]}
                                   for k, v in sorted(matching.unmatched.items())}},
    }
    out.text = dump_profile(calibration, (name, dev), link)
    out.lines = _summary(trace, matching, base_name, rows, skipped, launch, launch_source,
                         fits, comm_rows, comm_notes, name, curves)
    return out


def _catalogue_device(trace: Trace, device: str | None) -> tuple[str, DeviceSpec]:
    table = devices()
    if device is not None:
        if device not in table:
            raise TraceError(f"--device {device}: not a catalogue device (one of "
                             f"{', '.join(sorted(table))})")
        return device, table[device]
    gpu = trace.devices[0].get("name", "") if trace.devices else ""
    if not gpu:
        raise TraceError(f"{trace.file}: the trace names no GPU (no deviceProperties): give "
                         "the catalogue device with --device NAME")
    entry = catalogue_name(gpu)
    if entry is not None:
        return entry, table[entry]
    raise TraceError(f"{trace.file}: the catalogue has no entry for the GPU {gpu!r}: give the "
                     "closest with --device NAME")


def catalogue_name(gpu: str) -> str | None:
    """The catalogue entry of a GPU as CUDA names it (``Tesla V100-SXM2-16GB``: V100)."""
    upper = gpu.upper()
    return next((entry for pattern, entry in GPU_NAMES if re.search(pattern, upper)), None)


def _launch_overhead(trace: Trace) -> tuple[float, int]:
    """The median gap between consecutive compute kernels on a stream whose second was
    launched before the first ended (seconds), and how many such gaps there were."""
    gaps = []
    by_stream: dict[Any, list] = defaultdict(list)
    for k in trace.kernels:
        if not k.is_nccl:
            by_stream[(k.device, k.stream)].append(k)
    for ks in by_stream.values():
        ks.sort(key=lambda k: k.ts)
        for a, b in zip(ks, ks[1:]):
            if b.launch_end is not None and b.launch_end <= a.end and b.ts >= a.end:
                gaps.append(b.ts - a.end)
    return (statistics.median(gaps) * 1e-6 if gaps else 0.0), len(gaps)


def _op_times(matching: Matching, launch: float, peak: float
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """Per matched (kind, phase, shape, samples): the op's median time over the steps (one
    layer's share of the kernels of a step), its FLOPs and its efficiency."""
    per_step: dict[tuple, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    info: dict[tuple, Any] = {}
    for m in matching.matches:
        per_step[m.key][m.step] += sum(k.dur for k in m.kernels) * 1e-6 / len(m.layers)
        info[m.key] = m
    rows, skipped = [], []
    for key in sorted(per_step):
        kind, phase, shape, samples = key
        times = [per_step[key][s] for s in sorted(per_step[key])]
        t, m = statistics.median(times), info[key]
        curve = "update" if kind == "update" else f"{kind}.{phase}"
        row = {"curve": curve, "shape": shape, "samples": samples, "layers": list(m.layers),
               "flops": m.flops, "seconds": t, "steps": times,
               "kernels_per_op": len(m.kernels)}
        if t <= launch:
            skipped.append(f"{curve}@{shape}: its kernels took {t * 1e6:.2f} us, no more than "
                           f"the launch overhead ({launch * 1e6:.2f} us)")
            continue
        eff = m.flops / (peak * (t - launch)) if m.flops else 0.0
        if not 0 < eff <= MAX_EFFECTIVE:
            skipped.append(f"{curve}@{shape}: efficiency {eff:.3g} is outside (0, "
                           f"{MAX_EFFECTIVE:g}]" + (" (no FLOPs)" if not m.flops else ""))
            continue
        row["efficiency"] = float(f"{eff:.6g}")
        rows.append(row)
    return rows, skipped


def _collectives(trace: Trace) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """The all-reduce fits per algorithm, the points they were fitted on (median per size),
    and what was not fitted."""
    samples: dict[tuple, list[float]] = defaultdict(list)
    other: dict[str, int] = defaultdict(int)
    for k in trace.kernels:
        if not k.is_nccl:
            continue
        meta = _comm_args(k)
        alg = NCCL_ALGORITHM.search(k.name)
        collective = str(meta.get("Collective name", "")).lower().replace("_", "")
        if "allreduce" not in k.name.lower().replace("_", "") and collective != "allreduce":
            other[f"{collective or k.name.split('(')[0]}"] += 1
            continue
        nbytes = _message_bytes(meta)
        if alg is None or alg.group(1) not in ("RING", "TREE") or nbytes is None:
            why = ("no message size recorded" if nbytes is None
                   else f"algorithm {alg.group(1) if alg else 'not named in the kernel'}")
            other[f"all-reduce ({why})"] += 1
            continue
        ranks = int(meta.get("Group size") or _world(trace))
        samples[(alg.group(1).lower(), ranks, nbytes)].append(k.dur * 1e-6)
    rows = [{"algorithm": a, "ranks": p, "bytes": b, "seconds": statistics.median(t),
             "kernels": len(t)} for (a, p, b), t in sorted(samples.items())]
    fits, notes = {}, [f"{n} NCCL kernel(s) of {what}: only ring and tree all-reduces are fitted"
                       for what, n in sorted(other.items())]
    for alg in ("ring", "tree"):
        pts = [r for r in rows if r["algorithm"] == alg and r["ranks"] > 1]
        if not pts:
            continue
        terms = np.array([allreduce_terms(alg, r["ranks"], r["bytes"]) for r in pts], float)
        t = np.array([r["seconds"] for r in pts])
        if len({(r["ranks"], r["bytes"]) for r in pts}) < 2:
            lat, per_byte = 0.0, float(np.median(t / terms[:, 1]))
            notes.append(f"{alg} all-reduce: one message size, so latency and bandwidth cannot "
                         "be told apart: all of the time taken as per byte (latency 0)")
        else:
            lat, per_byte = fit_allreduce(terms, t)
        fits[alg] = {"latency_us": round(float(lat) * 1e6, 4),
                     "bandwidth_GBps": round(1e-9 / per_byte, 6),
                     "ranks": sorted({r["ranks"] for r in pts})}
        for r in pts:
            steps, volume = allreduce_terms(alg, r["ranks"], r["bytes"])
            r["fitted_seconds"] = steps * lat + volume * per_byte
    return fits, rows, notes


def _comm_args(k: Any) -> dict[str, Any]:
    """The collective's record: on the kernel (recent Kineto) or on the operator that
    launched it or one around it (``record_param_comms``)."""
    if "In msg nelems" in k.args:
        return k.args
    op = k.op
    while op is not None:
        if "In msg nelems" in op.args:
            return op.args
        op = op.parent
    return k.args


def _message_bytes(meta: dict[str, Any]) -> int | None:
    n, dtype = meta.get("In msg nelems"), str(meta.get("dtype", "")).lower()
    size = DTYPE_BYTES.get(dtype.replace("torch.", "").replace("c10::", ""))
    if not isinstance(n, (int, float)) or n <= 0 or size is None:
        return None
    return int(n) * size


def _world(trace: Trace) -> int:
    info = trace.meta.get("distributedInfo") or {}
    return int(info.get("world_size") or 1) if isinstance(info, dict) else 1


def _intra_link(name: str, fits: dict[str, Any], intra_link: str | None,
                trace: Trace) -> dict[str, dict[str, Any]]:
    if intra_link is not None:
        table = links()
        if intra_link not in table or table[intra_link].scope != "intra":
            known = ", ".join(k for k, v in table.items() if v.scope == "intra")
            raise TraceError(f"--intra-link {intra_link}: not an intra-node catalogue link "
                             f"(one of {known})")
        lk = table[intra_link]
        return {intra_link: {"scope": "intra", "bandwidth_GBps": lk.bandwidth / 1e9,
                             "latency_us": lk.latency * 1e6, "efficiency": lk.efficiency,
                             "source": f"the catalogue's {intra_link}: {lk.source}"}}
    fit = fits.get("ring") or fits.get("tree")
    if fit is None:
        raise TraceError(f"{trace.file}: the trace has no NCCL all-reduce to take the intra-node "
                         "link from: name one with --intra-link (a catalogue link, e.g. nvlink2)")
    return {f"{name}_intra": {
        "scope": "intra", "bandwidth_GBps": fit["bandwidth_GBps"],
        "latency_us": fit["latency_us"], "efficiency": 1.0,
        "source": f"the NCCL all-reduce fit of {Path(trace.file).name} (per step and per byte "
                  "one rank sends), not a point-to-point measurement"}}


def _unmatched_summary(matching: Matching) -> str:
    if not matching.unmatched:
        return "No operator with kernels was found."
    names = sorted(matching.unmatched, key=lambda n: -matching.unmatched[n][2])[:5]
    return "Unmatched: " + ", ".join(f"{n} ({matching.unmatched[n][0]})" for n in names)


def _summary(trace: Trace, matching: Matching, base_name: str, rows: list, skipped: list,
             launch: float, launch_source: str, fits: dict, comm_rows: list,
             comm_notes: list, name: str, curves: dict) -> list[str]:
    gpu = trace.devices[0].get("name", "GPU") if trace.devices else "GPU"
    nccl = sum(k.is_nccl for k in trace.kernels)
    out = [f"imported {trace.file}: {gpu} (catalogue {base_name}), {matching.step_source}, "
           f"{len(trace.kernels)} kernels ({nccl} NCCL)",
           f"  device {name}: launch overhead {launch * 1e6:.2f} us ({launch_source})",
           f"  {'curve':<48} {'batch':>5} {'us (median)':>12} {'efficiency':>11} "
           f"{'in model':>9}"]
    for r in rows:
        label = r["curve"] + (f"@{r['shape']}" if r["shape"] else "")
        cls = (f"{r['class_efficiency']:.4g}" + ("*" if "class_left_out" in r else "")
               if "class" in r else "-")
        out.append(f"  {label:<48} {r['samples'] or '':>5} {r['seconds'] * 1e6:>12.2f} "
                   f"{r['efficiency']:>11.4g} {cls:>9}")
    for cname, c in curves.items():
        if "#" in cname:
            n = sum(r.get("class") == cname and "class_left_out" not in r for r in rows)
            pts = ", ".join(f"{e:.4g} at {f / 1e6:.3g} MFLOP"
                            for f, e in zip(c["flops"], c["efficiency"]))
            out.append(f"  class curve {cname} (in the per-kernel model, {n} point(s)): {pts}")
    for alg, f in fits.items():
        pts = [r for r in comm_rows if r["algorithm"] == alg]
        worst = max(abs(r["fitted_seconds"] / r["seconds"] - 1) for r in pts)
        out.append(f"  all-reduce {alg}: {f['latency_us']:.2f} us per step, "
                   f"{f['bandwidth_GBps']:.3g} GB/s over {len(pts)} message size(s) on "
                   f"{f['ranks']} ranks ({sum(r['kernels'] for r in pts)} kernels; fit within "
                   f"{worst:.1%})")
    busy = _busy(trace)
    if busy is not None:
        out.append(f"  not fitted: the GPU's idle time between kernels: compute kernels "
                   f"busy {busy[0]:.0%} of a step (medians; a step took {busy[1] * 1e3:.3f} "
                   "ms), the rest is not in the curves")
    for what, (n, k, s) in sorted(matching.unmatched.items(), key=lambda kv: -kv[1][2]):
        out.append(f"  not matched: {what}: {n} operator(s), {k} kernel(s), "
                   f"{s * 1e3:.4f} ms")
    if matching.outside:
        out.append(f"  not matched: {matching.outside} operator(s) with kernels outside "
                   "every step")
    unlinked = [k for k in trace.kernels if k.op is None and not k.is_nccl]
    if unlinked:
        out.append(f"  not matched: {len(unlinked)} kernel(s) linked to no operator")
    if trace.copies:
        out.append(f"  not fitted: {len(trace.copies)} memory copies/sets "
                   f"({sum(e['dur'] for e in trace.copies) / 1e3:.4f} ms)")
    out += [f"  not fitted: {s}" for s in skipped + comm_notes]
    return out


def _busy(trace: Trace) -> tuple[float, float] | None:
    """The medians over ProfilerSteps of compute kernel time / the step's span, and of the
    span (seconds)."""
    if not trace.steps:
        return None
    shares = []
    for _, s, e in trace.steps:
        busy = sum(k.dur for k in trace.kernels if not k.is_nccl and s <= k.ts < e)
        shares.append(busy / (e - s) if e > s else math.nan)
    return (statistics.median(shares),
            statistics.median(e - s for _, s, e in trace.steps) * 1e-6)

"""The catalogue's GPU kernel curves, fitted from published per-layer tables.

    python benchmarks/gpu_curves.py            # print the fitted curves and per-row residuals
    python benchmarks/gpu_curves.py --write    # rewrite simulator/catalogue/kernel_curves.yaml
    python benchmarks/gpu_curves.py --held-out # each row predicted from the others: by FLOPs
                                               # (the curves), or within its channel count
    python benchmarks/gpu_curves.py --fft      # the model's FFT against fbfft's layer times

Input: ``benchmarks/data/gpu_layers.yaml`` (every row cites its source). For each catalogue
device with published rows (P100, V100 and the Maxwell Titan X: Baidu's DeepBench convolution
and GEMM training tables; K40: cuBLAS 7.0 SGEMM, and cuDNN R2's convolutions on a GTX Titan
Black, the K40's chip), each row is timed by parasim's per-kernel
model (``simulator/engine/gpu.py``: tiles, waves, the autotuned convolution algorithm) and the
efficiency a kernel's math must reach for the model to take the published time is solved for
(bisection; the model's time falls as the efficiency grows). The points are grouped by
precision, kernel (``conv.fwd``, ``conv.bwd`` = data + weight gradient, ``dense.fwd`` and
``dense.bwd`` = a GEMM) and shape class (``gpu.shape_class``), and each group becomes a curve
over the op's FLOPs: the median efficiency of up to ``BINS`` bins of equal count (the solve and
the binning are ``simulator/engine/gpu_fit.py``'s, which the import of a framework's profile
shares); a class of fewer than ``MIN_POINTS`` published rows gets no curve. A row whose time
the model cannot reach even at the bound (faster than this model allows, or slower at any
efficiency) is kept at that bound and counted.

A table whose library computed every convolution as a GEMM (``GEMM_ONLY``) gives instead the
device's GEMM convolution curve, ``PRECISION:conv.PHASE``: its rows solved with the model's
GEMM algorithms alone (``gpu.GEMM_ALGORITHMS``), as the median fraction of the device's GEMM
curve they reached, that fraction of the GEMM curve at every size. The other tables' rows of
shapes that run as GEMMs only (1x1, strided: ``gpu.runs_as_gemm``) are points of their class
curve and of ``PRECISION:conv.PHASE#gemm`` too, the device's convolutions run as GEMMs. A
convolution of a class no curve covers takes the first of those that applies (as GEMMs), else
stays on the device roofline at ``compute_efficiency`` (devices.yaml says where that comes
from; in the per-kernel model on a device with curves, its direct FLOPs on one without), and
the prediction says which: large filters on the P100 and V100, every device without tables.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.catalogue import catalogue_devices  # noqa: E402
from simulator.engine import gpu  # noqa: E402
from simulator.engine.gpu_fit import class_name, curve, op_efficiency, solve  # noqa: E402
from simulator.engine.hardware import efficiency_at  # noqa: E402
from simulator.units import BYTES_PER_ELEMENT, TFLOPS  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "gpu_layers.yaml"
OUT = ROOT / "simulator" / "catalogue" / "kernel_curves.yaml"
# the tables' gpu_class -> the catalogue device
FITTED = {"P100": "P100", "V100": "V100", "K40": "K40", "TitanX_Maxwell": "TitanX",
          # the GTX Titan Black is the K40's chip (GK110B: 15 SMX, 2880 cores) at another
          # clock: its kernels' fraction of peak is the K40's (times scaled by the clocks)
          "TitanBlack": "K40"}
# a device whose SMs are another's (same microarchitecture, another count and clock) takes its
# curves: an efficiency is a fraction of an SM's peak, the count and the clock are in the
# model. The K20 is Kepler GK110, the K40's SMX (192 cores, 4 schedulers) 13 times over
SAME_SMS = {"K20": "K40"}
# a curve needs two bins of three rows at least: a class seen in fewer published shapes
# describes those shapes, not the class, and stays on the roofline
MIN_POINTS = 6
# A library that computed every convolution as a GEMM (cuDNN R1 and R2: FFT convolutions came
# with v3, Winograd with v5) prices the device's GEMM algorithms only. Its rows give no class
# curve but the device's GEMM convolution curve, PRECISION:conv.PHASE (``gemm_scaled``), pooled
# over every shape, from KIND_MIN_POINTS rows up.
GEMM_ONLY = ("cuDNN R1", "cuDNN R2")
KIND_MIN_POINTS = 3


def precision_of(row: dict) -> str | None:
    p = str(row.get("precision", ""))
    if p == "fp32":
        return "fp32"
    if p.startswith("fp16 inputs, fp16 multiply"):  # V100 tensor cores, fp32 accumulate
        return "fp16"
    return None  # P100's "pseudo fp16" (fp32 math) is no precision a scenario trains in


def clock_scale(row: dict, device: str) -> float:
    """Times measured at another clock than the catalogue's peak assumes, scaled to it: the
    K40 rows ran at the 875 MHz boost clock, the catalogue's K40 is the 745 MHz base."""
    mhz = row.get("clock_MHz")
    if not mhz:
        return 1.0
    base = {"K40": 745}[device]
    return mhz / base


def gemm_only(row: dict) -> bool:
    return str(row.get("library", "")).startswith(GEMM_ONLY)


def conv_geometry(row: dict) -> gpu.Geometry:
    r, s = int(row["R"]), int(row["S"])
    sh, sw = int(row["stride_h"]), int(row["stride_w"])
    ph, pw = int(row["pad_h"]), int(row["pad_w"])
    h, w = int(row["H"]), int(row["W"])
    p = (h + 2 * ph - r) // sh + 1
    q = (w + 2 * pw - s) // sw + 1
    return gpu.Geometry((int(row["C"]), h, w), (int(row["K"]), p, q), (r, s), (sh, sw),
                        (ph, pw))


def fit_row(row: dict, spec, prec: str, scale: float) -> list[tuple[str, float, float, str]]:  # noqa: ANN001
    """The curve points one published row gives: (curve name, op FLOPs, efficiency, bound)."""
    peak = spec.peak_flops.get(prec) or spec.peak_flops["fp32"]
    bpe = BYTES_PER_ELEMENT[prec]
    if row["kind"] == "gemm":
        g = gpu.Gemm(int(row["M"]), int(row["N"]), int(row["K"]))
        e, bound = solve(lambda e: gpu.Model(spec, peak, bpe, None, e).run([gpu.Kernel(g)]),
                         float(row["time_ms"]) * 1e-3 * scale)
        flops = 2.0 * g.m * g.n * g.k
        return [(f"{prec}:dense.{phase}#gemm", flops, e, bound) for phase in ("fwd", "bwd")]
    times = row["time_ms"]
    if not isinstance(times, dict) or "fwd" not in times:
        return []
    geo = conv_geometry(row)
    n = int(row["N"])
    fwd_flops = 2.0 * n * math.prod(geo.out_shape) * geo.in_shape[0] * math.prod(geo.kernel)
    fwd = float(times["fwd"]) * 1e-3 * scale
    data, filt = times.get("bwd_data"), times.get("bwd_filter")
    grad = isinstance(data, (int, float))  # no data gradient: a network's first layer
    bwd = ((float(filt) + (float(data) if grad else 0.0)) * 1e-3 * scale
           if isinstance(filt, (int, float)) else None)
    # a GEMM-only library's rows: the device's GEMM convolution curve, for every shape
    algorithms = gpu.GEMM_ALGORITHMS if gemm_only(row) else None
    kinds = (f"{prec}:conv.fwd", f"{prec}:conv.bwd")
    names = (kinds if algorithms else
             (class_name(prec, "conv", "fwd", geo), class_name(prec, "conv", "bwd", geo)))
    out = [(names[0], fwd_flops,
            *op_efficiency(spec, peak, bpe, "conv", "fwd", geo, n, fwd, algorithms=algorithms))]
    if bwd is not None:
        out.append((names[1], 2 * fwd_flops,
                    *op_efficiency(spec, peak, bpe, "conv", "bwd", geo, n, bwd, grad,
                                   algorithms=algorithms)))
    if not algorithms and gpu.runs_as_gemm(geo):
        # a shape every algorithm of which is a GEMM one measures the device's convolutions
        # computed as GEMMs too: a point of its class curve and of PRECISION:conv.PHASE#gemm
        out += [(f"{kind}#{gpu.GEMM_CLASS}", flops, e, "")
                for kind, (_, flops, e, _) in zip(kinds, list(out))]
    return out


def points(rows: list[dict], libraries: dict[str, str] | None = None
           ) -> tuple[dict, list[str]]:
    """(device, library, curve name) -> [(flops, efficiency)], and notes on rows kept at a
    bound; ``libraries``: source id -> the library version its rows are a table of ("" or
    absent: the device's default tables)."""
    cat = catalogue_devices()
    out: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    notes = []
    for row in rows:
        device = FITTED.get(row.get("gpu_class"))
        prec = precision_of(row)
        if device is None or prec is None or row["kind"] not in ("gemm", "conv2d"):
            continue
        lib = (libraries or {}).get(row["source_id"], "")
        for name, flops, e, bound in fit_row(row, cat[device], prec, clock_scale(row, device)):
            out[(device, lib, name)].append((flops, e))
            if bound:
                notes.append(f"{device} {name} {row['source']}: at the {bound} bound")
    return out, notes


def library_tables(sources: list[dict]) -> dict[str, str]:
    """Source id -> the library version its rows are a table of (a source's ``library``)."""
    return {s["id"]: str(s["library"]) for s in sources if s.get("library")}


def build(rows: list[dict], sources: list[dict],
          fitted_points: tuple[dict, list[str]] | None = None) -> tuple[dict, list[str]]:
    """Per device, the curves of its default tables, and under ``libraries`` those of each
    table of a named library version (a source's ``library``); ``fitted_points``: what
    ``points`` gave for these rows, if the caller has it already."""
    libraries = library_tables(sources)
    pts, notes = fitted_points or points(rows, libraries)
    notes = list(notes)
    by_id = {s["id"]: s for s in sources}
    used: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        if FITTED.get(row.get("gpu_class")) and precision_of(row):
            used[(FITTED[row["gpu_class"]], libraries.get(row["source_id"], ""))].add(
                row["source_id"])
    fitted: dict[tuple[str, str], dict] = {}
    for (device, lib, name) in sorted(pts):
        least = MIN_POINTS if "#" in name else KIND_MIN_POINTS
        label = f"{device}{'@' + lib if lib else ''}"
        if len(pts[(device, lib, name)]) < least:
            notes.append(f"{label} {name}: {len(pts[(device, lib, name)])} published rows, "
                         f"fewer than {least}: no curve")
            continue
        if "#" in name:
            flops, eff = curve(pts[(device, lib, name)])
        else:
            flops, eff = gemm_scaled(pts, device, lib, name)
        entry = fitted.setdefault((device, lib), {"source": "", "kernels": {}})
        entry["kernels"][name] = {"flops": flops, "efficiency": eff}
    for key, entry in fitted.items():
        refs = "; ".join(f"{by_id[i]['title']} ({by_id[i]['ref']})" for i in sorted(used[key]))
        entry["source"] = (f"fitted by benchmarks/gpu_curves.py from {refs}: per row, the "
                           "efficiency at which simulator/engine/gpu.py's model takes the "
                           "published time; per curve, medians of equal-count bins by FLOPs"
                           + ("; PRECISION:conv.PHASE (a GEMM-only library's rows): their "
                              "median fraction of the GEMM curve, times that curve"
                              if any("#" not in n for n in entry["kernels"]) else ""))
    out: dict = {}
    for (device, lib), entry in sorted(fitted.items()):
        if not lib:
            out.setdefault(device, {}).update(entry)
    for device, like in SAME_SMS.items():
        if like in out:
            out[device] = {"kernels": copy.deepcopy(out[like]["kernels"]),
                           "source": f"the {like}'s (the same SMs): {out[like]['source']}"}
    for (device, lib), entry in sorted(fitted.items()):
        if lib:
            if device not in out:
                raise ValueError(f"{device}: a {lib} table but no default one")
            out[device].setdefault("libraries", {})[lib] = entry
    return out, notes


def gemm_scaled(pts: dict, device: str, lib: str, name: str) -> tuple[list[float], list[float]]:
    """A GEMM-only library's convolution curve ``PRECISION:conv.PHASE``: its rows'
    efficiencies as a fraction of the device's GEMM curve at the same op FLOPs (the median
    fraction), over that GEMM curve's FLOPs: a convolution computed as GEMMs falls off with
    its size as the device's GEMMs do. Without a GEMM curve, the rows' curve as it is."""
    gemm, ratio = gemm_fraction(pts, device, lib, name)
    if gemm is None:
        return curve(pts[(device, lib, name)])
    return gemm[0], [round(ratio * e, 4) for e in gemm[1]]


def gemm_fraction(pts: dict, device: str, lib: str, name: str
                  ) -> tuple[tuple[list[float], list[float]] | None, float]:
    """The device's GEMM curve at ``name``'s precision (None without one of ``MIN_POINTS``
    rows) and the median fraction of it that ``name``'s rows reached at their FLOPs."""
    prec = name.split(":", 1)[0]
    gemm = pts.get((device, lib, f"{prec}:dense.fwd#gemm")) or pts.get(
        (device, "", f"{prec}:dense.fwd#gemm"))
    if not gemm or len(gemm) < MIN_POINTS:
        return None, 1.0
    g_flops, g_eff = curve(gemm)
    at = tuple(zip(g_flops, g_eff))
    return (g_flops, g_eff), statistics.median(e / efficiency_at(at, f)
                                               for f, e in pts[(device, lib, name)])


def library_ratios(rows: list[dict], sources: list[dict]) -> list[str]:
    """Per library table, how much longer its fp32 convolutions took than the same shapes in
    the device's default tables: the geometric mean of the time ratios, per class and phase."""
    libraries = library_tables(sources)

    def key(r: dict) -> tuple:
        return (r.get("gpu_class"), r["precision"], *(r.get(k) for k in (
            "N", "C", "H", "W", "K", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w")))
    convs = [r for r in rows if r["kind"] == "conv2d" and r["precision"] == "fp32"
             and isinstance(r.get("time_ms"), dict) and r.get("gpu_class") in FITTED]
    default = {key(r): r for r in convs if r["source_id"] not in libraries}
    ratios: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for r in convs:
        lib = libraries.get(r["source_id"])
        other = default.get(key(r)) if lib else None
        if other is None:
            continue
        cls = gpu.shape_class("conv", conv_geometry(r))
        for phase in ("fwd", "bwd_data", "bwd_filter"):
            a, b = r["time_ms"].get(phase), other["time_ms"].get(phase)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 < b:
                ratios[(FITTED[r["gpu_class"]], lib, cls, phase)].append(a / b)
    return [f"{dev} {lib} / default, fp32 conv {cls} {phase}: {len(v)} shapes, time ratio "
            f"{math.exp(sum(map(math.log, v)) / len(v)):.2f} (geometric mean)"
            for (dev, lib, cls, phase), v in sorted(ratios.items())]


def channel_points(rows: list[dict], libraries: dict[str, str]) -> dict:
    """(device, library, curve name) -> [(op FLOPs, efficiency, channels)] of the fp32 class
    curves' points (``fit_row``), ``channels`` the layer's smaller channel count."""
    cat = catalogue_devices()
    out: dict[tuple[str, str, str], list[tuple[float, float, int]]] = defaultdict(list)
    for row in rows:
        device = FITTED.get(row.get("gpu_class"))
        if (device is None or precision_of(row) != "fp32" or row["kind"] != "conv2d"
                or gemm_only(row)):
            continue
        geo = conv_geometry(row)
        channels = min(geo.in_shape[0], geo.out_shape[0])
        for name, flops, e, _ in fit_row(row, cat[device], "fp32", clock_scale(row, device)):
            if not name.endswith(f"#{gpu.GEMM_CLASS}"):
                out[(device, libraries.get(row["source_id"], ""), name)].append(
                    (flops, e, channels))
    return out


def held_out(pts: list[tuple[float, float, int]], by: str) -> list[float]:
    """Each point's efficiency predicted from the others' (leave one out), as |ln(predicted /
    fitted)|: ``by="flops"`` the catalogue's curve over FLOPs; ``by="channels"`` that curve
    over the points of the same channel count only (three at least, else all of them)."""
    errors = []
    for i, (flops, e, channels) in enumerate(pts):
        rest = pts[:i] + pts[i + 1:]
        if by == "channels":
            same = [p for p in rest if p[2] == channels]
            rest = same if len(same) >= 3 else rest
        f, eff = curve([(p[0], p[1]) for p in rest])
        errors.append(abs(math.log(e / efficiency_at(tuple(zip(f, eff)), flops))))
    return errors


def fft_check(rows: list[dict]) -> list[tuple[str, str, float, float]]:
    """The model's FFT convolution (``gpu.fft``, at the device's ``compute_efficiency``)
    against the published times of fbfft's layers (convnet-benchmarks, the Maxwell Titan X;
    layers given without padding): (layer, phase, model seconds, published seconds), the
    forward, and the data plus weight gradients as the table sums them."""
    cat = catalogue_devices()
    out = []
    for row in rows:
        if row.get("library") != "fbfft" or row["kind"] != "conv2d":
            continue
        spec = cat[FITTED[row["gpu_class"]]]
        geo = conv_geometry(dict(row, pad_h=0, pad_w=0))
        n = int(row["N"])
        if min(geo.kernel) < gpu.FFT_MIN_KERNEL or geo.stride != (1, 1):
            continue
        m = gpu.Model(spec, spec.peak_flops["fp32"], 4)
        fft = {role: next(c.kernels for c in gpu.conv_candidates(geo, n, role, 4)
                          if c.name == "fft") for role in ("fwd", "dgrad", "wgrad")}
        times = row["time_ms"]
        out.append((row["layer"], "fwd", m.run(fft["fwd"]), float(times["fwd"]) * 1e-3))
        bwd = times.get("bwd_data_plus_bwd_filter")
        if isinstance(bwd, (int, float)):
            out.append((row["layer"], "bwd", m.run(fft["dgrad"]) + m.run(fft["wgrad"]),
                        float(bwd) * 1e-3))
    return out


HEADER = """\
# GPU kernel curves per catalogue device, fitted from published per-layer tables: written by
# `python benchmarks/gpu_curves.py --write` from benchmarks/data/gpu_layers.yaml; do not edit.
# A curve `PRECISION:KIND.PHASE#CLASS` gives, over an op's FLOPs, the efficiency its kernels'
# math reaches in simulator/engine/gpu.py's model (tiles, waves, the convolution algorithm)
# at that precision and shape class; what no curve covers takes the device's
# compute_efficiency (devices.yaml). A device's `libraries` hold the curves of tables measured
# with a named library version, which a device's `library` selects instead.
"""


def dump(curves: dict) -> str:
    return HEADER + yaml.safe_dump(curves, sort_keys=True, width=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {OUT.relative_to(ROOT)}")
    ap.add_argument("--held-out", action="store_true",
                    help="predict each fp32 convolution row's efficiency from the other rows of "
                    "its class, by a curve over FLOPs and by one over the rows of its channel "
                    "count, and print the mean error of each")
    ap.add_argument("--fft", action="store_true",
                    help="the model's FFT convolution against fbfft's published layer times")
    args = ap.parse_args(argv)
    data = yaml.safe_load(DATA.read_text())
    if args.fft:
        checked = fft_check(data["entries"])
        for layer, phase, model, published in checked:
            print(f"{layer} {phase}: model FFT {model * 1e3:.2f} ms, fbfft {published * 1e3:.2f} "
                  f"ms (model / published {model / published:.2f})")
        ratios = [m / p for _, _, m, p in checked]
        print(f"{len(ratios)} fbfft layer times: model / published geometric mean "
              f"{math.exp(statistics.fmean(math.log(r) for r in ratios)):.2f}, from "
              f"{min(ratios):.2f} to {max(ratios):.2f}")
        return 0
    if args.held_out:
        errors: dict[str, list[float]] = {"flops": [], "channels": []}
        for (device, lib, name), p in sorted(
                channel_points(data["entries"], library_tables(data["sources"])).items()):
            if len(p) < MIN_POINTS:
                continue
            got = {by: held_out(p, by) for by in errors}
            for by, e in got.items():
                errors[by] += e
            print(f"{device}{'@' + lib if lib else ''} {name}: {len(p)} rows, mean |ln| held out: "
                  + ", ".join(f"over {by} {statistics.fmean(e):.3f}" for by, e in got.items()))
        print(f"all {len(errors['flops'])} rows: mean |ln(predicted / fitted efficiency)| held "
              f"out, curve over FLOPs {statistics.fmean(errors['flops']):.3f}, over FLOPs "
              f"within a channel count {statistics.fmean(errors['channels']):.3f}")
        return 0
    fitted = points(data["entries"], library_tables(data["sources"]))  # the slow part: once
    curves, notes = build(data["entries"], data["sources"], fitted)
    for device, entry in curves.items():
        for label, one in [(device, entry)] + [(f"{device} library {lib}", e) for lib, e
                                               in entry.get("libraries", {}).items()]:
            print(label)
            for name, c in one["kernels"].items():
                pts = " ".join(f"{f / TFLOPS * 1e3:.3g}GF:{e:.2f}"
                               for f, e in zip(c["flops"], c["efficiency"]))
                print(f"  {name:28s} {pts}")
    print(f"{len(notes)} notes (rows at a bound, classes without a curve)")
    # a GEMM convolution curve is a median of few rows: show the rows and the fraction
    for (device, lib, name), p in sorted(fitted[0].items()):
        if "#" not in name:
            _, ratio = gemm_fraction(fitted[0], device, lib, name)
            print(f"{device} {name} per row, by FLOPs: "
                  + " ".join(f"{f / TFLOPS * 1e3:.3g}GF:{e:.2f}" for f, e in sorted(p))
                  + f"; {ratio:.2f} of the device's GEMM curve (median)")
    for line in library_ratios(data["entries"], data["sources"]):
        print(line)
    if args.write:
        OUT.write_text(dump(curves))
        print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

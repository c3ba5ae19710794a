"""Single-GPU training throughput: parasim's predictions against published figures.

    python benchmarks/gpu_models.py            # the table, MAPE, worst error, PASS/FAIL
    python benchmarks/gpu_models.py --all      # every published row, not only the selection
    python benchmarks/gpu_models.py --roofline # the same rows on the device roofline alone
    python benchmarks/gpu_models.py --default-curves  # each GPU's default curves for all
    python benchmarks/gpu_models.py --no-workspace-limit  # no framework's workspace cap
    python benchmarks/gpu_models.py --layers   # ... and the model against per-layer tables

The published figures are data in ``benchmarks/data/gpu_throughput.yaml``, each with its source
and a quote of the row it came from. Which rows are compared (fixed before looking at any
prediction, and applied to every source alike):

* the four models AlexNet, VGG-16, ResNet-50 and Inception V3, on K40, P100 and V100, fp32;
* synthetic data or data not stated (a real input pipeline is not modelled);
* per source, model and device, the largest published batch per GPU up to 512: at small
  batches a framework's host-side time per operator, which parasim does not model, dominates
  (MXNet's Inception V3 at batch 1 ran 21.8 images/s on a V100, at batch 128 253.7).

Each prediction is ``parasim``'s single-device data-parallel step on the catalogue device
(``simulator/engine/gpu.py``'s per-kernel model with the catalogue's kernel curves,
``simulator/catalogue/kernel_curves.yaml``, fitted from the *per-layer* tables in
``benchmarks/data/gpu_layers.yaml`` by ``benchmarks/gpu_curves.py``; nothing here is fitted to
these per-model figures), with the curves of the cuDNN version the figure states where the
catalogue has a table of that version for the device (a device's ``library``; the ``curves``
column, ``default`` where it has not). A source that timed forward and backward only (the
Torch tables) is compared without the optimizer step; one whose code computes the input's
gradient too (Torch7's ``nn``, a PyTorch input with ``requires_grad``: the source's
``input_gradient`` says which, and where in its code) is predicted with
``training.input_gradient``; what a benchmark's timed region runs besides the step (the
source's ``timed_region``: gradients zeroed in place, gradients fetched to the host) is added
to it (``timed_extra``).

The bars (the issue that asked for this table): every prediction within 25%, MAPE within 12%.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import simpy
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpu_curves  # noqa: E402  (benchmarks/: the per-layer tables' reader)

from simulator.catalogue import library_curves  # noqa: E402
from simulator.cluster import build_cluster  # noqa: E402
from simulator.engine.gpu import parse_shape  # noqa: E402
from simulator.engine.hardware import Device  # noqa: E402
from simulator.plan import Compute, Update  # noqa: E402
from simulator.predict import simulate_scenario  # noqa: E402
from simulator.scenario import build_graph, parse_scenario  # noqa: E402
from simulator.strategies import build_plan  # noqa: E402
from simulator.strategies.common import Context  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "gpu_throughput.yaml"
MODELS = ("alexnet", "vgg16", "resnet50", "inception_v3")
DEVICES = {"K40": "K40", "P100": "P100", "V100": "V100"}  # gpu_class -> catalogue entry
MAX_BATCH = 512
WITHIN, MAPE = 0.25, 0.12


def _conv(out: int, k: int, s: int = 1, p: int = 0) -> list[dict]:
    return [{"kind": "conv", "out_channels": out, "kernel": k, "stride": s, "padding": p},
            {"kind": "act", "fn": "relu"}]


def _classifier() -> list[dict]:
    out: list[dict] = [{"kind": "flatten"}]
    for units in (4096, 4096):
        out += [{"kind": "dense", "units": units}, {"kind": "act", "fn": "relu"},
                {"kind": "dropout"}]
    return out + [{"kind": "dense", "units": 1000}, {"kind": "softmax"}]


POOL = {"kind": "pool", "kernel": 3, "stride": 2}
LRN = {"kind": "lrn", "size": 5}

# AlexNet differs by framework; each as the benchmark's own model code defines it
ALEXNETS = {
    # tf_cnn_benchmarks models/alexnet_model.py: 227x227 input, VALID first conv, widths
    # 64-192-384-384-256, no LRN, no groups
    "tensorflow": {"layers": _conv(64, 11, 4) + [POOL] + _conv(192, 5, 1, 2) + [POOL]
                   + _conv(384, 3, 1, 1) + _conv(384, 3, 1, 1) + _conv(256, 3, 1, 1)
                   + [POOL] + _classifier(), "input_shape": [3, 227, 227]},
    # MXNet example/image-classification/symbols/alexnet.py: widths 96-256-384-384-256 with
    # LRN after the first two convs, no groups, 224x224 input
    "mxnet": {"layers": _conv(96, 11, 4) + [LRN, POOL] + _conv(256, 5, 1, 2) + [LRN, POOL]
              + _conv(384, 3, 1, 1) + _conv(384, 3, 1, 1) + _conv(256, 3, 1, 1) + [POOL]
              + _classifier(), "input_shape": [3, 224, 224]},
    # the Torch tables ran BVLC AlexNet (Caffe's, grouped convs and LRN) on 224x224 inputs
    "torch": {"zoo": "alexnet_2gpu", "params": {"input_shape": [3, 224, 224]}},
}


def framework(entry: dict) -> str:
    f = str(entry.get("framework", "")).lower()
    for name in ("tensorflow", "mxnet", "pytorch", "caffe"):
        if name in f:
            return name
    return "torch"  # Torch7


def model_spec(entry: dict) -> dict[str, Any]:
    name = entry["model"]
    if name == "alexnet":
        return dict(ALEXNETS[framework(entry)] if framework(entry) in ALEXNETS
                    else ALEXNETS["torch"])
    return {"zoo": name}


def forward_backward_only(entry: dict) -> bool:
    m = str(entry.get("measured", "")).lower()
    return "forward" in m and ("no parameter update" in m or "pass pair" in m)


def selected(entries: list[dict]) -> list[dict]:
    """The rows the table compares (the rule in the module docstring)."""
    keep: dict[tuple, dict] = {}
    for e in entries:
        if (e["model"] not in MODELS or e.get("gpu_class") not in DEVICES
                or not str(e.get("precision", "")).startswith("fp32")
                or not isinstance(e.get("batch_size"), int)
                or not 16 <= e["batch_size"] <= MAX_BATCH
                or str(e.get("data", "")).startswith("real")):
            continue
        key = (e["source_id"], e["model"], e["gpu_class"], e.get("framework"))
        if key not in keep or e["batch_size"] > keep[key]["batch_size"]:
            keep[key] = e
    return list(keep.values())


@dataclass
class Row:
    entry: dict
    predicted: float  # images/s
    measured: float
    library: str = ""  # the library whose curves predicted it ("" the default's)

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1


def cudnn(entry: dict, sources: dict[str, dict] | None = None) -> str:
    """The cuDNN major.minor a figure states (its row's ``cudnn``, else its device or
    CUDA/cuDNN cell, else its source's description), "" if none."""
    if entry.get("cudnn"):
        m = re.match(r"(\d+)\.(\d+)", str(entry["cudnn"]))
        if m:
            return f"{m[1]}.{m[2]}"
    texts = [entry.get("device", ""), entry.get("cuda_cudnn", "")]
    texts.append(((sources or {}).get(entry["source_id"]) or {}).get("hardware_software", ""))
    for text in texts:
        m = re.search(r"cudnn\s*v?(\d+)\.(\d+)", str(text), re.IGNORECASE)
        if m:
            return f"{m[1]}.{m[2]}"
    return ""


def library(entry: dict, sources: dict[str, dict] | None = None) -> str:
    """The catalogue library whose curves predict this figure: its cuDNN version's, where
    kernel_curves.yaml has a table of it for the device; "" (the default curves) if not."""
    lib = f"cudnn{cudnn(entry, sources)}"
    return lib if lib in library_curves().get(DEVICES[entry["gpu_class"]], {}) else ""


def input_gradient(entry: dict, sources: dict[str, dict] | None = None) -> bool:
    """Whether the benchmark's code computes the gradient of its input (its source's
    ``input_gradient`` names the frameworks whose code does, with the evidence)."""
    said = ((sources or {}).get(entry["source_id"]) or {}).get("input_gradient") or {}
    return framework(entry) in said.get("frameworks", ())


def timed_region(entry: dict, sources: dict[str, dict] | None = None) -> set[str]:
    """What the benchmark's timed region runs besides the training step, by its source's
    ``timed_region`` (per item, the frameworks whose benchmark code does it, and where):
    ``zero_grad``, every parameter's gradient zeroed in place before the backward, which adds
    its new gradient into it (PyTorch's ``Module.zero_grad`` before 1.7 and its
    ``AccumulateGrad``); ``fetch_gradients``, the gradients copied to the host as the
    backward makes them (a TensorFlow ``sess.run`` of the gradient tensors)."""
    said = ((sources or {}).get(entry["source_id"]) or {}).get("timed_region") or {}
    return {item for item, v in said.items() if framework(entry) in v.get("frameworks", ())}


def timed_extra(items: set[str], sc: Any, ops: list, dev: Device, params: dict[str, int]
                ) -> float:
    """Seconds the ``timed_region`` items add to a step of ``ops`` on ``dev``.

    ``zero_grad``: four passes over the parameters' bytes (the zeroing writes each gradient,
    the accumulation reads it and the new one and writes it), two kernels per parameter tensor
    (a weight and a bias per layer). ``fetch_gradients``: each layer's gradient is copied over
    the host link (the cluster's intra-node link, a copy per tensor) when its backward op ends,
    one copy at a time, beside the kernels that follow (TensorFlow copies on a stream of its
    own); what the copies take past the backward's end is added."""
    spec, bpe = dev.spec, 4  # the table's figures are fp32
    extra = 0.0
    held = [n for n, p in params.items() if p]
    if "zero_grad" in items:
        nbytes = 4 * sum(params.values()) * bpe
        extra += (2 * 2 * len(held) * spec.launch_overhead
                  + nbytes / (spec.memory_bandwidth * spec.memory_efficiency))
    if "fetch_gradients" in items:
        link = sc.cluster.intra_link
        t = copied = 0.0
        for op in ops:
            if not isinstance(op, Compute):
                continue
            t += dev.kernel_time(op)
            if op.phase == "bwd" and params.get(op.layer):
                copied = (max(t, copied) + 2 * link.latency
                          + params[op.layer] * bpe / link.effective_bandwidth)
        extra += max(0.0, copied - t)
    return extra


def workspace_limit(entry: dict, sources: dict[str, dict] | None = None) -> float:
    """The MiB of workspace the figure's framework lets cuDNN's autotuner give a convolution
    algorithm (its source's ``workspace_limit``, per framework, with the code that sets it);
    0: none stated (the autotuner tries every algorithm)."""
    said = ((sources or {}).get(entry["source_id"]) or {}).get("workspace_limit") or {}
    return float((said.get(framework(entry)) or {}).get("MiB", 0))


def device(entry: dict, sources: dict[str, dict] | None = None, lib: str = "") -> Any:
    """The scenario's device: the catalogue GPU, with the curves of ``lib`` and the
    framework's workspace limit where there are."""
    extra = {"library": lib} if lib else {}
    if limit := workspace_limit(entry, sources):
        extra["workspace_MiB"] = limit
    return {"base": DEVICES[entry["gpu_class"]], **extra} if extra else None


def optimizer(entry: dict) -> str:
    """The optimizer a figure's row states (tf_cnn_benchmarks' default ``--optimizer=sgd``),
    else SGD with momentum, what the other benchmarks' training scripts default to."""
    stated = str(entry.get("optimizer", "")).lower()
    return stated if stated in ("sgd", "momentum", "adam") else "momentum"


def scenario(entry: dict, device: Any = None, input_grad: bool = False) -> Any:
    return parse_scenario({
        "name": f"{entry['model']} on {entry['gpu_class']}", "seed": 1,
        "model": model_spec(entry),
        "cluster": {"nodes": 1, "devices_per_node": 1,
                    "device": device or DEVICES[entry["gpu_class"]],
                    "intra_link": "pcie3", "inter_link": "ib_edr"},
        "training": {"batch_size": entry["batch_size"], "precision": "fp32",
                     "optimizer": optimizer(entry), "iterations": 2, "warmup_iterations": 1,
                     "input_gradient": input_grad},
        "strategies": [{"name": "one-gpu", "scheme": "data_parallel"}],
    }, file=f"<{entry['source_id']}>")


def step_parts(sc: Any) -> tuple[Any, list, Device]:
    """A one-GPU scenario's model graph, its rank's ops in order, and its device."""
    graph = build_graph(sc.model)
    ops = build_plan(Context(graph, build_cluster(sc.cluster), sc.training),
                     sc.strategies[0]).ranks[0].ops
    return graph, ops, Device(simpy.Environment(), "gpu", sc.cluster.device, "fp32")


def predict(entry: dict, roofline: bool = False, sources: dict[str, dict] | None = None,
            default_curves: bool = False) -> Row:
    """``roofline``: every kernel on the device roofline (``kernel_model: roofline``, no
    curves), the model this one replaced, for comparison; ``default_curves``: the GPU's
    default curves whatever cuDNN the figure states."""
    lib = "" if default_curves else library(entry, sources)
    dev = ({"base": DEVICES[entry["gpu_class"]], "kernel_model": "roofline", "kernels": {}}
           if roofline else device(entry, sources, lib))
    sc = scenario(entry, dev, input_gradient(entry, sources))
    result, _ = simulate_scenario(sc)
    step = result["results"][0]["iteration_time_s"]
    items = set() if roofline else timed_region(entry, sources)
    if forward_backward_only(entry) or items:
        graph, ops, dev = step_parts(sc)
        if forward_backward_only(entry):  # the source timed no optimizer step
            step -= sum(dev.kernel_time(op) for op in ops if isinstance(op, Update))
        step += timed_extra(items, sc, ops, dev,
                            {n: int(d["params"]) for n, d in graph.nodes(data=True)})
    return Row(entry, entry["batch_size"] / step, float(entry["images_per_s"]),
               "" if roofline else lib)


def layer_check(entry: dict, sources: dict[str, dict] | None = None) -> list[tuple]:
    """The figure's convolutions that a per-layer table of its GPU and library timed at its
    batch (``benchmarks/data/gpu_layers.yaml``): (layer, phase, the model's seconds, the
    table's seconds). The model's include the layer's bias passes, which the tables' do not."""
    data = yaml.safe_load(gpu_curves.DATA.read_text())
    lib = library(entry, sources)
    wanted = {s["id"] for s in data["sources"] if str(s.get("library", "")) == lib}
    table = {}
    for r in data["entries"]:
        if (r["kind"] == "conv2d" and r["source_id"] in wanted and r.get("precision") == "fp32"
                and r.get("gpu_class") == entry["gpu_class"] and r["N"] == entry["batch_size"]
                and isinstance(r["time_ms"], dict)):
            table[gpu_curves.conv_geometry(r)] = r["time_ms"]
    sc = scenario(entry, device(entry, sources, lib), input_gradient(entry, sources))
    _, ops, dev = step_parts(sc)
    out = []
    for op in ops:
        geo = parse_shape(getattr(op, "shape", "")) if getattr(op, "layer_kind", "") == "conv" \
            else None
        times = table.get(geo) if geo is not None else None
        if times is None:
            continue
        parts = ("fwd",) if op.phase == "fwd" else (
            ("bwd_data", "bwd_filter") if op.input_grad else ("bwd_filter",))
        if all(isinstance(times.get(p), (int, float)) for p in parts):
            out.append((op.layer, op.phase, dev.kernel_time(op),
                        sum(float(times[p]) for p in parts) * 1e-3))
    return out


def table(rows: list[Row]) -> str:
    lines = [f"{'model':13s}{'GPU':6s}{'framework':12s}{'batch':>6s}{'predicted':>11s}"
             f"{'published':>11s}{'error':>8s}  {'curves':10s}source"]
    for r in rows:
        e = r.entry
        lines.append(f"{e['model']:13s}{e['gpu_class']:6s}{framework(e):12s}"
                     f"{e['batch_size']:6d}{r.predicted:11.1f}{r.measured:11.1f}"
                     f"{r.error:+8.1%}  {r.library or 'default':10s}{e['source_id']}")
    return "\n".join(lines)


def summary(rows: list[Row]) -> tuple[float, Row, bool]:
    mape = sum(abs(r.error) for r in rows) / len(rows)
    worst = max(rows, key=lambda r: abs(r.error))
    return mape, worst, mape <= MAPE and abs(worst.error) <= WITHIN


def load() -> list[dict]:
    return yaml.safe_load(DATA.read_text())["entries"]


def load_sources() -> dict[str, dict]:
    return {s["id"]: s for s in yaml.safe_load(DATA.read_text())["sources"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true",
                    help="every fp32 row of the four models on K40/P100/V100, any batch")
    ap.add_argument("--default-curves", action="store_true",
                    help="predict every figure with its GPU's default curves, whatever cuDNN "
                    "it states")
    ap.add_argument("--roofline", action="store_true",
                    help="predict with every kernel on the device roofline (no per-kernel "
                    "model, no curves), for comparison")
    ap.add_argument("--no-workspace-limit", action="store_true",
                    help="predict as if no framework capped cuDNN's workspace (the sources' "
                    "workspace_limit left out), for comparison")
    ap.add_argument("--layers", action="store_true",
                    help="also each figure's convolutions that a per-layer table of its GPU "
                    "and library timed at its batch: the model's time against the table's")
    args = ap.parse_args(argv)
    entries = load()
    rows_in = selected(entries) if not args.all else [
        e for e in entries if e["model"] in MODELS and e.get("gpu_class") in DEVICES
        and str(e.get("precision", "")).startswith("fp32") and isinstance(e.get("batch_size"), int)]
    sources = load_sources()
    if args.no_workspace_limit:
        sources = {k: dict(v, workspace_limit={}) for k, v in sources.items()}
    rows = sorted((predict(e, args.roofline, sources, args.default_curves) for e in rows_in),
                  key=lambda r: (r.entry["gpu_class"], r.entry["model"], r.entry["batch_size"]))
    print(table(rows))
    mape, worst, ok = summary(rows)
    print(f"\n{len(rows)} published figures: MAPE {mape:.1%} (bar {MAPE:.0%}), worst "
          f"{worst.error:+.1%} ({worst.entry['model']} on {worst.entry['gpu_class']}, "
          f"bar {WITHIN:.0%})")
    print("PASS" if ok else "FAIL")
    if args.layers:
        for r in rows:
            e, matched = r.entry, layer_check(r.entry, sources)
            if matched:
                model, published = sum(m[2] for m in matched), sum(m[3] for m in matched)
                print(f"{e['model']} {e['gpu_class']} {framework(e)} batch {e['batch_size']}: "
                      f"{len(matched)} convolution ops in the per-layer tables, model "
                      f"{model * 1e3:.3f} ms (bias passes included), tables "
                      f"{published * 1e3:.3f} ms ({model / published - 1:+.1%})")
    return 0 if (ok or args.all or args.roofline or args.default_curves
                 or args.no_workspace_limit) else 1


if __name__ == "__main__":
    sys.exit(main())

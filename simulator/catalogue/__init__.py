"""The hardware catalogue: named devices and link types, with the source of every figure.

``devices.yaml`` and ``links.yaml`` beside this file use the same keys a scenario uses to give a
device or link inline, and a calibration profile writes the same format; one reader serves all.

``peak_TFLOPS`` takes the precisions in ``PRECISIONS``. ``tf32`` is the TF32 tensor-core rate (a
training precision that stores fp32, see ``simulator.units.BYTES_PER_ELEMENT``); a device without
a tf32 peak (V100 and older, CPU cores) runs a tf32 scenario at its fp32 peak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any

from simulator.errors import ScenarioError
from simulator.schema import Fields, boolean, choice, integer, list_of, number, string
from simulator.specs import DeviceSpec, LinkSpec, NodeTopology
from simulator.topology_file import read_node
from simulator.units import TFLOPS
from simulator.yaml_input import load_yaml

PRECISIONS = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8")
DEVICE_KEYS = ("kind", "sms", "peak_TFLOPS", "memory_GiB", "memory_bandwidth_GBps",
               "launch_overhead_us", "compute_efficiency", "memory_efficiency", "blocks_per_sm",
               "comm_sms", "kernels", "cache_MiB", "kernel_model", "library", "workspace_MiB",
               "source")
HOT = "hot:"  # a kernel curve's name prefix: the kernel timed with hot caches
# the largest effective efficiency a curve may give: Winograd F(4x4, 3x3) does 4x fewer
# multiplications than the direct convolution (Lavin & Gray 2016, sec. 4), FFT more for large
# kernels; beyond 16x the figure is a mistake (a time in the wrong unit)
MAX_EFFECTIVE = 16.0
KERNEL_MODELS = ("tiles", "roofline")  # a GPU's conv and dense kernels: simulator/engine/gpu.py
LINK_KEYS = ("scope", "bandwidth_GBps", "latency_us", "efficiency", "source", "eager_limit_KiB",
             "per_hop")


def read_device(name: str, f: Fields, base: DeviceSpec | None = None) -> DeviceSpec:
    """A device entry; with ``base`` every key is optional and overrides the base entry."""
    def get(key: str, check, attr: str):  # noqa: ANN001, ANN202
        return f.get(key, check, getattr(base, attr) if base else ...)

    peak = dict(base.peak_flops) if base else None
    if f.has("peak_TFLOPS") or base is None:
        pf = f.sub("peak_TFLOPS")
        peak = {p: pf.get(p, number(), None) for p in PRECISIONS}  # TFLOP/s -> FLOP/s below
        pf.done(PRECISIONS)
        peak = {p: v * TFLOPS for p, v in peak.items() if v is not None}
        if not peak:
            raise ScenarioError("must give at least one precision", path=pf.path,
                                line=pf.start_line)
    kernels = (read_kernel_curves(f.sub("kernels")) if f.has("kernels")
               else dict(base.kernels) if base else {})
    library = base.library if base else ""
    if f.has("library"):
        library = f.get("library", string)
        kernels = with_library(f, base, library, kernels)
    dev = DeviceSpec(
        name=name,
        kind=get("kind", choice(("gpu", "cpu")), "kind"),
        sms=get("sms", integer(1), "sms"),
        peak_flops=peak or {},
        memory=get("memory_GiB", number(), "memory"),
        memory_bandwidth=get("memory_bandwidth_GBps", number(), "memory_bandwidth"),
        launch_overhead=get("launch_overhead_us", number(positive=False, minimum=0),
                            "launch_overhead"),
        compute_efficiency=get("compute_efficiency", number(maximum=1.0), "compute_efficiency"),
        memory_efficiency=get("memory_efficiency", number(maximum=1.0), "memory_efficiency"),
        blocks_per_sm=get("blocks_per_sm", integer(1), "blocks_per_sm"),
        comm_sms=get("comm_sms", integer(0), "comm_sms"),
        kernels=kernels,
        library=library,
        cache=f.get("cache_MiB", number(positive=False, minimum=0.0),
                    base.cache if base else 0.0),
        kernel_model=f.get("kernel_model", choice(KERNEL_MODELS),
                           base.kernel_model if base else "tiles"),
        workspace=f.get("workspace_MiB", number(positive=False, minimum=0.0),
                        base.workspace if base else 0.0),
        source=get("source", string, "source") if base is None else f.get("source", string,
                                                                         base.source),
    )
    f.done(DEVICE_KEYS + (("base",) if base else ()))
    if dev.comm_sms >= dev.sms:
        raise f.error("comm_sms", f"must be fewer than the device's {dev.sms} SMs")
    return dev


def with_library(f: Fields, base: DeviceSpec | None, library: str,
                 kernels: dict[str, tuple[tuple[float, float], ...]]
                 ) -> dict[str, tuple[tuple[float, float], ...]]:
    """``kernels`` with the catalogue device's fitted curves swapped for those of the
    ``library`` version kernel_curves.yaml has a table of (curves the entry gives win)."""
    name = base.name if base else ""
    libs = library_curves().get(name, {})
    if library not in libs:
        where = f"the catalogue's {name}" if libs else "a device without library tables"
        have = f" (catalogue has: {', '.join(sorted(libs))})" if libs else ""
        raise f.error("library", f"no kernel curves for this library on {where}{have}",
                      value=library)
    if f.has("kernels"):  # this entry's own curves win over the library's
        return {**libs[library], **kernels}
    fitted = kernel_curves().get(name, {})
    own = {k: v for k, v in kernels.items() if k not in fitted}  # the base entry's own
    return {**libs[library], **own}


def read_kernel_curves(f: Fields) -> dict[str, tuple[tuple[float, float], ...]]:
    """``kernels``: per kernel kind (``dense.fwd``, ``conv.bwd``, ``update``, ...) a measured
    efficiency curve, ``{flops: [...], efficiency: [...]}`` with FLOPs strictly increasing; a
    name prefixed ``hot:`` is the same kernel timed with hot caches (``cache_MiB``).

    An efficiency is the op's own FLOPs (the direct count, ``simulator/model/layers.py``) over
    peak x time: a kernel that does fewer multiplications than that (Winograd, FFT) can run
    above 1, up to ``MAX_EFFECTIVE``."""
    out = {}
    for name in list(f.data):
        if not isinstance(name, str) or not name:
            raise f.error(name, "must name a kernel kind such as dense.fwd", value=name)
        c = f.sub(name)
        flops = c.get("flops", list_of(number()))
        eff = c.get("efficiency", list_of(number(maximum=MAX_EFFECTIVE)))
        c.done(("flops", "efficiency"))
        if len(flops) != len(eff):
            raise c.error("efficiency", f"must have one value per flops entry ({len(flops)})",
                          value=list(eff))
        if any(b <= a for a, b in zip(flops, flops[1:])):
            raise c.error("flops", "must be strictly increasing", value=list(flops))
        out[name] = tuple(zip(flops, eff))
    f.done()
    return out


def read_link(name: str, f: Fields, base: LinkSpec | None = None) -> LinkSpec:
    def get(key: str, check, attr: str):  # noqa: ANN001, ANN202
        return f.get(key, check, getattr(base, attr) if base else ...)

    link = LinkSpec(
        name=name,
        scope=get("scope", choice(("intra", "inter")), "scope"),
        bandwidth=get("bandwidth_GBps", number(), "bandwidth"),
        latency=get("latency_us", number(positive=False, minimum=0), "latency"),
        efficiency=get("efficiency", number(maximum=1.0), "efficiency"),
        source=get("source", string, "source") if base is None else f.get("source", string,
                                                                         base.source),
        eager_limit=f.get("eager_limit_KiB", number(positive=False, minimum=0),
                          base.eager_limit if base else LinkSpec.eager_limit),
        per_hop=f.get("per_hop", boolean, base.per_hop if base else False),
    )
    f.done(LINK_KEYS + (("base",) if base else ()))
    return link


def _read_file(filename: str, reader: Callable[[str, Fields], Any]) -> dict[str, Any]:
    """Every entry of a catalogue file, read by ``reader``; errors name the file."""
    text = resources.files(__package__).joinpath(filename).read_text()
    try:
        top = Fields(load_yaml(text), "")
        return {name: reader(name, top.sub(name)) for name in top.data}
    except ScenarioError as e:
        raise e.with_file(f"catalogue/{filename}") from None


@cache
def devices() -> dict[str, DeviceSpec]:
    """The devices of devices.yaml, with the GPU kernel curves kernel_curves.yaml fits for
    them from published per-layer tables (a device entry's own ``kernels`` win)."""
    out = dict(catalogue_devices())
    for name, curves in kernel_curves().items():
        if name not in out:
            raise ScenarioError(f"curves for {name!r}, a device devices.yaml does not have",
                                file="catalogue/kernel_curves.yaml")
        out[name] = replace(out[name], kernels={**curves, **out[name].kernels})
    return out


@cache
def catalogue_devices() -> dict[str, DeviceSpec]:
    """devices.yaml's entries as written (no fitted curves)."""
    return _read_file("devices.yaml", read_device)


@cache
def kernel_curves() -> dict[str, dict[str, tuple[tuple[float, float], ...]]]:
    """kernel_curves.yaml: per device, the curves fitted from its default tables."""
    return {name: curves for name, (curves, _) in _curve_file().items()}


@cache
def library_curves() -> dict[str, dict[str, dict[str, tuple[tuple[float, float], ...]]]]:
    """kernel_curves.yaml: per device and library version (``cudnn7.0``), the curves fitted
    from a table measured with that version (a device's ``library`` selects them)."""
    return {name: libs for name, (_, libs) in _curve_file().items() if libs}


@cache
def _curve_file() -> dict[str, tuple[dict, dict]]:
    def read(name: str, f: Fields) -> tuple[dict, dict]:
        f.get("source", string)
        curves = read_kernel_curves(f.sub("kernels"))
        libs = {}
        if f.has("libraries"):
            lf = f.sub("libraries")
            for lib in list(lf.data):
                one = lf.sub(lib)
                one.get("source", string)
                libs[str(lib)] = read_kernel_curves(one.sub("kernels"))
                one.done(("source", "kernels"))
            lf.done()
        f.done(("source", "kernels", "libraries"))
        return curves, libs
    return _read_file("kernel_curves.yaml", read)


@cache
def links() -> dict[str, LinkSpec]:
    return _read_file("links.yaml", read_link)


@cache
def nodes() -> dict[str, NodeTopology]:
    """``nodes.yaml``: classic boxes' insides (``simulator/topology.py``), their links named
    from ``links.yaml``."""
    table = links()
    return _read_file("nodes.yaml", lambda name, f: read_node(name, f, table, read_link))

"""Predict one Plan: run the SimPy model and summarise it as a Result entry.

Breakdown per worker rank over the measured iterations (then averaged over workers, per
iteration): ``compute`` = time some kernel ran; ``exposed_communication`` = communication not
hidden under compute; ``ps_wait`` = parameter-server transfers, service and coordinator round
trips not hidden under either; ``idle`` = the rest (waiting for peers, pipeline bubble). The four
add up to the iteration time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from simulator import limits
from simulator.cluster import Cluster
from simulator.engine.runner import Engine
from simulator.errors import LimitError
from simulator.intervals import length, minus, union
from simulator.plan import Plan
from simulator.plan_report import memory_groups
from simulator.specs import TrainingSpec


@dataclass
class Prediction:
    entry: dict
    engine: Engine | None


def predict(plan: Plan, cluster: Cluster, training: TrainingSpec, *,
            record_trace: bool = False, seed: int = 0, progress=None,  # noqa: ANN001
            fold: bool = True, timeline_spans: int | None = None) -> Prediction:
    """``progress``: an object told ``start(estimated events)``, called with (events, simulated
    time) as the run goes, and told ``close()`` (the command line's progress bar); ``fold``:
    let collectives that meet nothing fold into runs of kernels (``engine/fold.py``; off to
    compare); ``timeline_spans``: keep at most this many timeline spans per device (None: all;
    what ``bounded`` keeps is the same)."""
    base = {
        "strategy": plan.strategy,
        "scheme": plan.scheme,
        "mode": "predicted",
        "devices": len(plan.workers()),
        "samples_per_iteration": plan.samples_per_period,
        "fits": plan.fits,
        "memory_bytes_per_device": {m.device: m.total for m in plan.memory},
        "memory_capacity_bytes": cluster.spec.device.memory,
    }
    if not plan.fits:
        worst = max(plan.memory, key=lambda m: m.total)
        parts = {"weights": worst.weights, "gradients": worst.gradients,
                 "optimizer state": worst.optimizer, "activations": worst.activations,
                 "buffers": worst.buffers}
        big = max(parts, key=parts.__getitem__)
        base.update(iteration_time_s=None, throughput_samples_per_s=None, breakdown_s=None,
                    note=f"does not fit: {worst.device} needs {worst.total / 2**30:.2f} GiB "
                         f"of {worst.capacity / 2**30:.2f} GiB, {big} "
                         f"{parts[big] / 2**30:.2f} GiB",
                    memory_over=memory_groups(plan, only_over=True))
        return Prediction(base, None)
    eng = Engine(plan, cluster, training.precision, training.optimizer,
                 training.warmup_iterations, training.iterations, record_trace, seed, fold,
                 timeline_spans)
    estimate = eng.estimate()
    too_long = limits.events_error(plan.strategy, estimate)
    if too_long:
        raise LimitError(too_long)
    if progress is None:
        eng.run()
    else:
        progress.start(estimate)
        try:
            eng.run(progress)
        finally:
            progress.close()
    iters = training.iterations
    logs = eng.logs
    warm = training.warmup_iterations
    t0 = max((lg.ends[warm - 1] for lg in logs.values()), default=0.0) if warm else 0.0
    t1 = max(lg.ends[-1] for lg in logs.values())
    window = t1 - t0
    asynchronous = plan.mode == "async"
    parts = {"compute": [], "exposed_communication": [], "ps_wait": [], "idle": []}
    spans = []
    for lg in logs.values():
        # a rank's measured work starts when its own warm-up ends (logs hold measured work
        # only); asynchronous workers also end on their own clocks
        lo = lg.ends[warm - 1] if warm else 0.0
        hi = lg.ends[-1] if asynchronous else t1
        span = hi - lo if asynchronous else window
        spans.append(span)
        c = union(lg.compute, lo, hi)
        m = union(lg.comm, lo, hi)
        p = union(lg.ps, lo, hi)
        cm = union(c + m, lo, hi)
        compute = length(c)
        exposed = minus(m, c)
        ps = minus(p, cm)
        parts["compute"].append(compute)
        parts["exposed_communication"].append(exposed)
        parts["ps_wait"].append(ps)
        parts["idle"].append(max(0.0, span - compute - exposed - ps))
    steps = iters * plan.period_steps
    # each simulated rank stands for its orbit (``symmetry``); orbits differ in size where
    # some ranks are simulated apart (stragglers)
    weights = _stands_for(eng)
    if len(set(weights)) <= 1:
        breakdown = {k: statistics.fmean(v) / steps for k, v in parts.items()}
    else:
        breakdown = {k: sum(w * x for w, x in zip(weights, v)) / sum(weights) / steps
                     for k, v in parts.items()}
    if asynchronous:
        # workers run on their own clocks: throughput is the sum of each worker's own rate,
        # the iteration time the mean time of one worker step
        per_worker = plan.samples_per_period / len(logs) * iters
        throughput = sum(per_worker / span for span in spans)
        iteration_time = statistics.fmean(spans) / steps
    else:
        iteration_time = window / steps
        throughput = plan.samples_per_period * iters / window
    link_util = {}
    for (u, v), st in eng.network.stats.items():
        if st.bytes > 0:
            link_util[f"{u}->{v}"] = st.bytes / (cluster.bandwidth((u, v)) * t1)
    base.update(
        iteration_time_s=iteration_time,
        throughput_samples_per_s=throughput,
        breakdown_s=breakdown,
        utilisation_per_device=_utilisation(eng, plan, window),
        utilisation_per_link=dict(sorted(link_util.items())),
    )
    roofline = sorted(set().union(*(d.on_roofline for d in eng.devices.values())))
    if roofline:  # GPU conv/dense kernels of classes no published curve covers
        base["kernels_on_roofline"] = roofline
    kind_wide = sorted(set().union(*(d.on_kind_curve for d in eng.devices.values())))
    if kind_wide:  # ... or by the device's curve of convolutions run as GEMMs
        base["kernels_on_gemm_curve"] = kind_wide
    if eng.timeline:
        t_start = min(s[3] for s in eng.timeline)
        base["timeline"] = {
            "iteration": warm,
            "devices_shown": len({s[0] for s in eng.timeline}),
            **({"spans_left_out": eng.timeline_left_out} if eng.timeline_left_out else {}),
            "spans": [[d, stream, name, start - t_start, dur]
                      for d, stream, name, start, dur in eng.timeline],
        }
    if eng.servers:
        base["utilisation_per_server"] = {s.host: s.busy / t1 for s in eng.servers}
    if plan.mode == "async":
        stale = [x for s in eng.servers for x in s.staleness]
        base["staleness"] = {"mean": statistics.fmean(stale) if stale else 0.0,
                             "max": max(stale, default=0),
                             "histogram": _histogram(stale)}
    if eng.coordinator:
        base["portions_per_worker"] = {eng.device_of[r]: n
                                       for r, n in sorted(eng.coordinator.handed.items())}
    return Prediction(base, eng)


TIMELINE_SPANS = 5_000  # spans a Result entry keeps of the timeline without --timeline
MAP_ENTRIES = 256  # per-device and per-link maps above this are summarised
BUSIEST = 64  # entries such a map keeps: the largest


def bounded(entry: dict, timeline: bool = False) -> dict:
    """The entry with a size that does not grow with the cluster: the timeline (the first
    measured iteration of up to 64 simulated devices) cut to ``TIMELINE_SPANS`` spans, whole
    devices first, unless ``timeline``; per-device and per-link maps of more than
    ``MAP_ENTRIES`` keys cut to the ``BUSIEST`` largest values, with the distribution of all
    of them beside (``<key>_summary``: count, min, percentiles, max, mean)."""
    tl = entry.get("timeline")
    if tl is not None and not timeline and len(tl["spans"]) > TIMELINE_SPANS:
        by_device: dict[str, list] = {}
        for span in tl["spans"]:
            by_device.setdefault(span[0], []).append(span)
        kept: list = []
        for spans in by_device.values():
            if kept and len(kept) + len(spans) > TIMELINE_SPANS:
                break
            kept += spans[:TIMELINE_SPANS]
        entry["timeline"] = {**tl, "devices_shown": len({s[0] for s in kept}), "spans": kept,
                             "spans_left_out": len(tl["spans"]) - len(kept)
                             + tl.get("spans_left_out", 0)}
    for key in ("memory_bytes_per_device", "utilisation_per_device", "utilisation_per_link"):
        values = entry.get(key)
        if values and len(values) > MAP_ENTRIES:
            entry[f"{key}_summary"] = _distribution(list(values.values()))
            top = sorted(values.items(), key=lambda kv: -kv[1])[:BUSIEST]
            entry[key] = dict(sorted(top))
    return entry


def _distribution(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    n = len(v)

    def pct(q: float) -> float:
        return v[min(n - 1, int(q * (n - 1) + 0.5))]

    return {"count": n, "min": v[0], "p10": pct(0.1), "p50": pct(0.5), "p90": pct(0.9),
            "p99": pct(0.99), "max": v[-1], "mean": statistics.fmean(v),
            "shown": min(n, BUSIEST)}


def _utilisation(eng: Engine, plan: Plan, window: float) -> dict[str, float]:
    """Compute time over the window per worker device; a mirrored rank has its
    representative's (``symmetry``)."""
    busy = {d.name: d.busy / window for d in eng.devices.values()}
    if eng.sym is None:
        return busy
    return {plan.ranks[r].device: busy[plan.ranks[eng.sym.rep[r]].device]
            for r in sorted(eng.sym.rep) if plan.ranks[r].role == "worker"}


def _stands_for(eng: Engine) -> list[int]:
    """How many worker ranks each simulated rank's log stands for, in the logs' order."""
    if eng.sym is None:
        return [1] * len(eng.logs)
    count: dict[int, int] = {}
    for r, rep in eng.sym.rep.items():
        if eng.plan.ranks[r].role == "worker":
            count[rep] = count.get(rep, 0) + 1
    return [count.get(r, 1) for r in eng.logs]


def _histogram(values: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in sorted(values):
        out[str(v)] = out.get(str(v), 0) + 1
    return out

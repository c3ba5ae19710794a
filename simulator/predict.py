"""Predict a scenario: build each strategy's Plan, simulate it, assemble the Result.

The Result is the schema both engines write: ``{"scenario", "code_version", "results": [...]}``
with one entry per strategy (see ``simulator.engine.simulate``).
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from simulator import __version__, convergence, plan_report
from simulator.cluster import build_cluster
from simulator.engine.simulate import TIMELINE_SPANS, bounded, predict
from simulator.model import summary as model_summary
from simulator.plan import Plan
from simulator.scenario import build_graph
from simulator.specs import Scenario, StrategySpec
from simulator.strategies import build_plan, default_options
from simulator.strategies.common import Context
from simulator.strategies.dbn_pretrain import predicted_pretraining


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def context(scenario: Scenario) -> Context:
    return Context(build_graph(scenario.model), build_cluster(scenario.cluster),
                   scenario.training)


def plans(scenario: Scenario, names: list[str] | None = None) -> list[Plan]:
    ctx = context(scenario)
    return [build_plan(ctx, s) for s in select(scenario, names)]


def select(scenario: Scenario, names: list[str] | None) -> list[StrategySpec]:
    if not names:
        return list(scenario.strategies)
    by_name = {s.name: s for s in scenario.strategies}
    return [by_name[n] for n in names]


def simulate_scenario(scenario: Scenario, names: list[str] | None = None, *,
                      trace: bool = False, timeline: bool = False, progress=None  # noqa: ANN001
                      ) -> tuple[dict[str, Any], list]:
    """The Result for the chosen strategies, and the engines (for a trace). Entries are
    ``bounded`` (every span of the timeline only with ``timeline``); ``progress`` is the
    engine's progress callback factory, called with each strategy's name."""
    ctx = context(scenario)
    baseline = _one_device_throughput(ctx)
    entries, engines = [], []
    for spec in select(scenario, names):
        plan = build_plan(ctx, spec)
        # the timeline a Result keeps (``bounded``), unless all of it is asked for or read
        cap = None if timeline or plan.scheme == "dbn_pretrain" else TIMELINE_SPANS
        pred = predict(plan, ctx.cluster, scenario.training, record_trace=trace,
                       seed=scenario.seed, timeline_spans=cap,
                       progress=progress(spec.name, plan) if progress is not None else None)
        entry = pred.entry
        entry["plan"] = plan_report.summary(plan, ctx.cluster)
        if plan.scheme == "dbn_pretrain" and entry.get("timeline"):
            entry["pretraining"] = predicted_pretraining(entry, plan)
        bounded(entry, timeline)
        tp = entry.get("throughput_samples_per_s")
        one = baseline
        if plan.scheme in OWN_YARDSTICK:
            one = _one_device_throughput(ctx, spec)
            entry["one_device_throughput_samples_per_s"] = one
        entry["speedup_over_one_device"] = tp / one if tp and one else None
        entry["efficiency"] = (tp / one / entry["devices"]) if tp and one else None
        if scenario.training.target is not None:
            to_target(entry, plan, scenario)
        entries.append(entry)
        if pred.engine is not None:
            engines.append((spec.name, pred.engine))
    result = {
        "scenario": {"name": scenario.name, "description": scenario.description,
                     "file": scenario.file, "seed": scenario.seed,
                     "devices": scenario.cluster.device_count,
                     "device": scenario.cluster.device.name,
                     "batch_size": scenario.training.batch_size,
                     "one_device_throughput_samples_per_s": baseline,
                     "model": {"name": ctx.graph.graph["name"], **model_summary(ctx.graph)},
                     "cluster": cluster_record(scenario),
                     "yaml": _text(scenario.file)},
        "code_version": code_version(),
        "results": entries,
    }
    return result, engines


def to_target(entry: dict[str, Any], plan: Plan, scenario: Scenario) -> None:
    """Steps and time to ``training.target`` (``simulator/convergence.py``); without
    coefficients, or for a plan that does not fit, the block says why there is no figure."""
    t = scenario.training
    if entry.get("throughput_samples_per_s") is None:
        block = {"metric": t.target.metric, "value": t.target.value, "reached": False,
                 "why": "the plan does not fit"}
    elif t.convergence is None:
        block = {"metric": t.target.metric, "value": t.target.value, "reached": False,
                 "why": "no convergence coefficients (training.convergence, or a profile "
                        "from parasim calibrate-convergence)"}
    else:
        block = convergence.predict_target(plan, t, entry)
    convergence.attach(entry, block)


# schemes whose work per sample is not a training step's (DBN pre-training runs CD-1 layer by
# layer, not forward and backward through the whole net): their speedup is over the same scheme
# with the same options on one device, not over one device training the global batch
OWN_YARDSTICK = frozenset({"dbn_pretrain"})


def _one_device_throughput(ctx: Context, like: StrategySpec | None = None) -> float:
    """Samples/s of the same global batch on one healthy device of the cluster (memory not
    checked: this is the yardstick for speedup, not a plan the user runs); with ``like``, of
    that strategy's scheme and options on one device."""
    clean = build_cluster(replace(ctx.cluster.spec, stragglers=(), degraded_links=(),
                                  compute_jitter=0.0))
    ctx = Context(ctx.graph, clean, ctx.training)
    spec = (StrategySpec(name="one device", scheme=like.scheme,
                         options={**like.options, "devices": 1}) if like is not None else
            StrategySpec(name="one device", scheme="data_parallel",
                         options=default_options("data_parallel", devices=1)))
    plan = build_plan(ctx, spec)
    plan = replace(plan, memory=())
    one = replace(ctx.training, warmup_iterations=0, iterations=1)
    return predict(plan, ctx.cluster, one).entry["throughput_samples_per_s"]


def cluster_record(scenario: Scenario) -> dict[str, Any]:
    c = scenario.cluster
    ps = c.parameter_servers
    return {"nodes": c.nodes, "devices_per_node": c.devices_per_node, "device": c.device.name,
            "device_memory_bytes": c.device.memory, "intra_link": c.intra_link.name,
            "inter_link": c.inter_link.name, "nics_per_node": c.nics_per_node,
            **({"host_link": c.host_link.name} if c.host_link else {}),
            **({"node": c.node.name} if c.node else {}),
            **({"fabric": c.fabric.kind} if c.fabric else {}),
            "parameter_server_hosts": ps.hosts if ps else 0,
            "stragglers": [{"device": s.device, "slowdown": s.slowdown} for s in c.stragglers],
            "degraded_links": [{"element": d.element, "factor": d.factor}
                               for d in c.degraded_links],
            "compute_jitter": c.compute_jitter,
            # what the device and link figures are: a calibration of some hosts, or the
            # catalogue's (``reports.compare.calibration_warning`` reads it)
            "profile": c.profile or None, "profile_hosts": list(c.profile_hosts)}


def _text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None

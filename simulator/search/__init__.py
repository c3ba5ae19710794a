"""``parasim search``: the fastest plan that fits, found rather than listed.

1. Candidates (``space``): every plan the model, the cluster and the constraints allow.
2. Rules: each candidate goes through its scheme's own load-time checks; what a scenario file
   would refuse is pruned, with that message.
3. Estimate and memory (``estimate``): closed forms rank the candidates; the memory each needs
   per device (the planner's own accounting) prunes those over the device's capacity less the
   headroom.
4. The simulator on the best ``top`` by estimate, in local processes or over MPI
   (``mpi4py.futures``, as ``sweep``); the Result ranks them by simulated throughput.

Deterministic: candidates come in a fixed order, ties in the estimate break by name, and the
simulator is deterministic for a scenario's seed.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from typing import Any

from simulator import limits
from simulator.errors import PlanError, ScenarioError
from simulator.search.estimate import Estimate, Estimator
from simulator.search.space import Constraints, candidates, label
from simulator.specs import Scenario, StrategySpec

WHY = 4  # plans whose lead over the next one the search explains


@dataclass
class Candidate:
    name: str
    scheme: str
    options: dict[str, Any]  # as a scenario entry writes them (without name and scheme)
    estimate: Estimate | None = None

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "scheme": self.scheme, **self.options}


def run_search(scenario: Scenario, constraints: Constraints, out=None,  # noqa: ANN001
               local: bool = False) -> dict[str, Any]:
    """The search's Result: the simulated candidates ranked, and what was considered;
    ``local``: simulate in this process (under mpiexec, where the ranks run the executor)."""
    from simulator.predict import cluster_record, code_version, context
    from simulator.strategies import default_options, scheme_module
    from simulator.strategies.stages import Grid
    from simulator.sweep import executor

    out = out or sys.stderr
    batches = constraints.batch or (scenario.training.batch_size,)
    considered = 0
    rule: dict[str, int] = {}
    memory_pruned = 0
    shortfall: tuple[float, str] | None = None
    fitting: list[Candidate] = []
    for batch in batches:
        sc = replace(scenario, training=replace(scenario.training, batch_size=batch))
        ctx = context(sc)
        est = Estimator(ctx)
        room = sc.cluster.device.memory * (1 - constraints.headroom)
        for scheme, opts in candidates(sc, ctx.graph, constraints, ctx):
            considered += 1
            name = label(scheme, opts) + (f"-b{batch}" if len(batches) > 1 else "")
            opts = {k: v for k, v in opts.items() if k != "from"}
            options = default_options(scheme, **opts)
            try:
                scheme_module(scheme).check(options, ctx.graph, sc.cluster, sc.training,
                                            "search")
                if scheme == "parallel_3d":
                    from simulator.strategies.parallel_3d import grid

                    g: Grid = grid(options)
                    e = est.grid(g, batch, room)
                else:
                    from simulator.strategies import build_plan

                    # a scheme that can say a device's need before its plan is built (a
                    # lower bound: the plan may add its inputs) is pruned without building
                    first = getattr(scheme_module(scheme), "need", None)
                    low = first(ctx, options).total if first is not None else 0.0
                    e = (Estimate(math.inf, {}, low, sc.cluster.device.memory) if low > room
                         else est.plan(build_plan(ctx, StrategySpec(name, scheme, options))))
            except (ScenarioError, PlanError) as err:
                reason = getattr(err, "message", str(err)).split(":")[0][:60]
                rule[reason] = rule.get(reason, 0) + 1
                continue
            if e.memory > room:
                memory_pruned += 1
                short = e.memory - room
                if shortfall is None or short < shortfall[0]:
                    shortfall = (short, name)
                continue
            fitting.append(Candidate(name, scheme, opts if len(batches) == 1 else
                                     {**opts, "batch": batch}, e))
    if not fitting:
        if shortfall is None:
            raise ScenarioError("no plan satisfies the constraints: every candidate broke a "
                                f"rule ({', '.join(sorted(rule)) or 'none considered'})",
                                file=scenario.file, path="search")
        allowed = scenario.cluster.device.memory * (1 - constraints.headroom)
        raise ScenarioError(f"nothing fits: the closest, {shortfall[1]}, needs "
                            f"{shortfall[0] / 2**30:.2f} GiB more per device than the "
                            f"{allowed / 2**30:.2f} GiB allowed", file=scenario.file,
                            path="search")
    fitting.sort(key=lambda c: (c.estimate.seconds, c.name))
    chosen = fitting[:constraints.top]
    pool, where = (None, "this process") if local else executor(len(chosen))
    print(f"search: {considered} candidates, {sum(rule.values())} pruned by rule, "
          f"{memory_pruned} by memory; simulating the best {len(chosen)} by estimate on "
          f"{where}", file=out, flush=True)
    entries = _simulate(scenario, chosen, pool, out)
    entries.sort(key=lambda e: (-(e["throughput_samples_per_s"] or 0.0), e["strategy"]))
    return {
        "scenario": {"name": scenario.name, "description": scenario.description,
                     "file": scenario.file, "seed": scenario.seed,
                     "devices": scenario.cluster.device_count,
                     "device": scenario.cluster.device.name,
                     "batch_size": scenario.training.batch_size,
                     "cluster": cluster_record(scenario)},
        "code_version": code_version(),
        "search": {"considered": considered, "pruned_by_rule": sum(rule.values()),
                   "rules": dict(sorted(rule.items(), key=lambda kv: -kv[1])),
                   "pruned_by_memory": memory_pruned, "fitting": len(fitting),
                   "simulated": len(entries), "ran_on": where,
                   "why": why(entries[:WHY]),
                   "constraints": {k: v for k, v in constraints.__dict__.items()}},
        "results": entries,
    }


def _simulate(scenario: Scenario, chosen: list[Candidate], pool, out) -> list[dict]:  # noqa: ANN001
    jobs = [(scenario, c.name, c.scheme, c.options, limits.active()) for c in chosen]
    best: tuple[float, str] | None = None
    done = []
    results = (map(_one, *zip(*jobs)) if pool is None
               else pool.map(_one, *zip(*jobs)))
    try:
        for i, (entry, c) in enumerate(zip(results, chosen), 1):
            entry["estimate"] = {"iteration_time_s": c.estimate.seconds,
                                 "parts_s": c.estimate.parts,
                                 "memory_bytes": c.estimate.memory}
            entry["strategy_entry"] = c.entry()
            done.append(entry)
            tp = entry["throughput_samples_per_s"] or 0.0
            if best is None or tp > best[0]:
                best = (tp, c.name)
            print(f"simulated {i}/{len(chosen)}: {c.name}; best so far {best[1]} "
                  f"({best[0]:.1f} samples/s)", file=out, flush=True)
    finally:
        if pool is not None:
            pool.shutdown()
    return done


def _one(scenario: Scenario, name: str, scheme: str, options: dict, limited: bool = True
         ) -> dict[str, Any]:
    """Simulate one candidate (in a worker process, which does not inherit the command's
    ``--no-limits``: ``limited`` carries it)."""
    with limits.lifted(not limited):
        return _simulate_one(scenario, name, scheme, options)


def _simulate_one(scenario: Scenario, name: str, scheme: str, options: dict) -> dict[str, Any]:
    from simulator import plan_report
    from simulator.engine.simulate import TIMELINE_SPANS, bounded, predict
    from simulator.predict import context
    from simulator.strategies import build_plan, default_options

    opts = dict(options)
    batch = opts.pop("batch", None)
    if batch is not None:
        scenario = replace(scenario, training=replace(scenario.training, batch_size=batch))
    ctx = context(scenario)
    plan = build_plan(ctx, StrategySpec(name, scheme, default_options(scheme, **opts)))
    pred = predict(plan, ctx.cluster, scenario.training, seed=scenario.seed,
                   timeline_spans=TIMELINE_SPANS)
    entry = pred.entry
    entry["plan"] = plan_report.summary(plan, ctx.cluster)
    entry.pop("timeline", None)
    return bounded(entry)


def why(entries: list[dict]) -> list[str]:
    """One sentence per ranked plan on why it beats the next: the breakdown part that differs
    most in its favour (the report's sentence, ``reports.compare.why_faster``)."""
    from reports.compare import why_faster

    ok = [e for e in entries if e["throughput_samples_per_s"]]
    return [line for a, b in zip(ok, ok[1:]) if (line := why_faster(a, b))]


def format_search(result: dict[str, Any]) -> str:
    from simulator.console import columns

    s = result["search"]
    sc = result["scenario"]
    lines = [f"{sc['name']}: search over {sc['devices']} x {sc['device']}: {s['considered']} "
             f"candidates considered, {s['pruned_by_rule']} pruned by rule, "
             f"{s['pruned_by_memory']} by memory, {s['simulated']} simulated",
             "(ms per iteration; est: the analytical estimate that ranked it)"]
    rows = [("rank", "plan", "devs", "samples/s", "iter ms", "est ms", "compute", "comm",
             "idle", "memory GiB")]
    for i, e in enumerate(result["results"], 1):
        bd = e["breakdown_s"]
        mem = max(e["memory_bytes_per_device"].values(), default=0.0)
        rows.append((str(i), e["strategy"], str(e["devices"]),
                     f"{e['throughput_samples_per_s']:.1f}",
                     f"{e['iteration_time_s'] * 1e3:.3f}",
                     f"{e['estimate']['iteration_time_s'] * 1e3:.3f}",
                     f"{bd['compute'] * 1e3:.3f}", f"{bd['exposed_communication'] * 1e3:.3f}",
                     f"{bd['idle'] * 1e3:.3f}",
                     f"{mem / 2**30:.1f}/{e['memory_capacity_bytes'] / 2**30:.0f}"))
    lines += columns(rows, left=2)
    lines += result["search"].get("why") or why(result["results"][:WHY])
    return "\n".join(lines)

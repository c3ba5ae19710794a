"""What a Plan does, without simulating it: op counts per rank, bytes per link type, memory."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from simulator.cluster import Cluster
from simulator.engine.collectives import phases
from simulator.plan import Collective, Plan, PSPull, PSPush, Send, WorkLoop


def link_bytes(plan: Plan, cluster: Cluster) -> dict[str, float]:
    """Bytes each link type carries in one period of the plan (no simulation needed)."""
    out: dict[str, float] = defaultdict(float)
    servers = [r.device for r in plan.ranks if r.role == "server"]

    def carry(a: str, b: str, nbytes: float) -> None:
        for e in cluster.route(a, b):
            out[cluster.graph.edges[e]["link"].name] += nbytes

    seen: set[tuple[str, str]] = set()
    workers = max(1, len(plan.workers()))
    for r in plan.ranks:
        for op in r.ops:
            ops = getattr(op, "body", None) or (op,)
            # a work loop's body runs once per portion: portions / workers times per worker
            times = plan.portions / workers if isinstance(op, WorkLoop) else 1.0
            for o in ops:
                if isinstance(o, Send):
                    carry(r.device, plan.ranks[o.peer].device, o.bytes * times)
                elif isinstance(o, PSPush):
                    carry(r.device, servers[o.shard], o.bytes * times)
                elif isinstance(o, PSPull):
                    carry(servers[o.shard], r.device, o.bytes * times)
                elif isinstance(o, Collective) and (o.group, o.key) not in seen:
                    seen.add((o.group, o.key))
                    devs = [plan.ranks[i].device for i in plan.groups[o.group]]
                    for ph in phases(o.collective, o.algorithm, devs, o.bytes, cluster.node_of):
                        for a, b in ph.pairs:
                            carry(a, b, ph.bytes_per_flow)
    return dict(out)


def describe_plan(plan: Plan, cluster: Cluster) -> str:
    gib = 2**30
    lines = [f"plan {plan.strategy!r}: scheme {plan.scheme}, mode {plan.mode}, "
             f"{len(plan.workers())} worker rank(s), {len(plan.ranks)} rank(s) in all, "
             f"{plan.samples_per_period} samples per period of {plan.period_steps} step(s)"]
    lines.append("")
    lines.append(f"{'rank':>5} {'device':<16} {'role':<12} ops")
    for r in plan.ranks:
        counts = Counter(op.kind for op in r.ops)
        text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "(serves requests)"
        lines.append(f"{r.rank:>5} {r.device:<16} {r.role:<12} {text}")
    lines.append("")
    lines.append("bytes moved per period, by link type:")
    moved = link_bytes(plan, cluster)
    for name, b in sorted(moved.items()):
        lines.append(f"  {name:<10} {b / 1e6:12.3f} MB (summed over every edge crossed)")
    if not moved:
        lines.append("  (none)")
    lines.append("")
    lines.append("memory per device (GiB): weights + gradients + optimizer + activations "
                 "= total / capacity")
    for m in plan.memory:
        flag = "" if m.fits else "   DOES NOT FIT"
        lines.append(f"  {m.device:<16} {m.weights / gib:7.2f} + {m.gradients / gib:7.2f} + "
                     f"{m.optimizer / gib:7.2f} + {m.activations / gib:7.2f} = "
                     f"{m.total / gib:7.2f} / {m.capacity / gib:.2f}{flag}")
    return "\n".join(lines)


def summary(plan: Plan, cluster: Cluster) -> dict[str, Any]:
    """A compact record of the plan for the Result file."""
    counts: Counter[str] = Counter()
    for r in plan.ranks:
        counts.update(op.kind for op in r.ops)
    return {"scheme": plan.scheme, "mode": plan.mode, "ranks": len(plan.ranks),
            "workers": len(plan.workers()), "op_counts": dict(sorted(counts.items())),
            "bytes_per_link_type_per_period": link_bytes(plan, cluster),
            "options": {k: v for k, v in plan.options.items() if k != "states"}}

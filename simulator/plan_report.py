"""What a Plan does, without simulating it: op counts per rank, bytes per link type, memory."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from simulator.cluster import Cluster
from simulator.engine.collectives import phases
from simulator.plan import Collective, ImageOps, Op, Plan, PSPull, PSPush, Send, WorkLoop


def link_bytes(plan: Plan, cluster: Cluster) -> dict[str, float]:
    """Bytes each link type carries in one period of the plan (no simulation needed). Each
    distinct program is read once: a rank running another's image (``ImageOps``) moves its
    source's transfers with its own peers and groups."""
    out: dict[str, float] = defaultdict(float)
    servers = [r.device for r in plan.ranks if r.role == "server"]

    def carry(a: str, b: str, nbytes: float) -> None:
        for e in cluster.route(a, b):
            out[cluster.graph.edges[e]["link"].name] += nbytes

    workers = max(1, len(plan.workers()))
    traffic: dict[int, tuple] = {}
    seen: set[str] = set()  # a collective is counted once, from its group's first member
    for r in plan.ranks:
        ops = r.ops
        peers, groups = (ops.peers, ops.groups) if isinstance(ops, ImageOps) else ({}, {})
        src = ops.source if isinstance(ops, ImageOps) else ops
        t = traffic.get(id(src))
        if t is None:
            t = traffic[id(src)] = _traffic(src, plan.portions / workers)
        sends, pushes, pulls, colls = t
        for peer, nbytes in sends.items():
            carry(r.device, plan.ranks[peers.get(peer, peer)].device, nbytes)
        for shard, nbytes in pushes.items():
            carry(r.device, servers[shard], nbytes)
        for shard, nbytes in pulls.items():
            carry(servers[shard], r.device, nbytes)
        for group, sizes in colls.items():
            group = groups.get(group, group)
            if group in seen:
                continue
            seen.add(group)
            devs = [plan.ranks[i].device for i in plan.groups[group]]
            for (collective, algorithm, nbytes), n in sizes.items():
                for ph in phases(collective, algorithm, devs, nbytes, cluster.node_of):
                    for a, b in ph.pairs:
                        carry(a, b, ph.bytes_per_flow * n)
    return dict(out)


def _traffic(ops: Sequence[Op], loop_times: float) -> tuple:
    """One program's transfers, summed: bytes per peer sent, per server shard pushed and
    pulled, and per group the collectives (kind, algorithm, size) -> how many distinct keys."""
    sends: Counter = Counter()
    pushes: Counter = Counter()
    pulls: Counter = Counter()
    keys: dict[str, dict[tuple, set]] = defaultdict(lambda: defaultdict(set))
    for op in ops:
        # a work loop's body runs once per portion: portions / workers times per worker
        times = loop_times if isinstance(op, WorkLoop) else 1.0
        for o in getattr(op, "body", None) or (op,):
            if isinstance(o, Send):
                sends[o.peer] += o.bytes * times
            elif isinstance(o, PSPush):
                pushes[o.shard] += o.bytes * times
            elif isinstance(o, PSPull):
                pulls[o.shard] += o.bytes * times
            elif isinstance(o, Collective):
                keys[o.group][(o.collective, o.algorithm, o.bytes)].add(o.key)
    colls = {g: {size: len(k) for size, k in by.items()} for g, by in keys.items()}
    return sends, pushes, pulls, colls


def memory_groups(plan: Plan, only_over: bool = False) -> list[dict[str, Any]]:
    """Devices with the same memory need, grouped: their need by part (weights, gradients,
    optimizer state, activations, buffers) and the detail (activations by tensor, buffers by
    name), in bytes. ``only_over``: only devices that do not fit."""
    groups: dict[tuple, dict[str, Any]] = {}
    for m in plan.memory:
        if only_over and m.fits:
            continue
        key = (m.weights, m.gradients, m.optimizer, m.activations, m.buffers, m.detail)
        g = groups.setdefault(key, {
            "devices": [], "need_bytes": m.total, "capacity_bytes": m.capacity,
            "weights": m.weights, "gradients": m.gradients, "optimizer": m.optimizer,
            "activations": m.activations, "buffers": m.buffers, "detail": dict(m.detail)})
        g["devices"].append(m.device)
    return sorted(groups.values(), key=lambda g: -g["need_bytes"])


def memory_text(group: dict[str, Any]) -> str:
    """One line: a group's devices, its need against capacity and its parts in GiB."""
    gib = 2**30
    devs = group["devices"]
    who = devs[0] if len(devs) == 1 else f"{devs[0]} and {len(devs) - 1} more"
    parts = ", ".join(f"{k} {group[k] / gib:.2f}" for k in ("weights", "gradients", "optimizer",
                                                            "activations", "buffers")
                      if group[k])
    top = sorted(group["detail"].items(), key=lambda kv: -kv[1])
    detail = "; ".join(f"{k} {v / gib:.2f}" for k, v in top if v >= 0.005 * gib)
    return (f"{who}: {group['need_bytes'] / gib:.2f} of {group['capacity_bytes'] / gib:.2f} GiB"
            f" ({parts})" + (f" [{detail}]" if detail else ""))


def describe_plan(plan: Plan, cluster: Cluster) -> str:
    gib = 2**30
    lines = [f"plan {plan.strategy!r}: scheme {plan.scheme}, mode {plan.mode}, "
             f"{len(plan.workers())} worker rank(s), {len(plan.ranks)} rank(s) in all, "
             f"{plan.samples_per_period} samples per period of {plan.period_steps} step(s)"]
    lines.append("")
    lines.append(f"{'rank':>5} {'device':<16} {'role':<12} ops")
    for r in plan.ranks:
        counts = Counter(op.kind for op in (r.ops.source if isinstance(r.ops, ImageOps)
                                            else r.ops))
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
        extra = f" + {m.buffers / gib:.2f} buffers" if m.buffers else ""
        lines.append(f"  {m.device:<16} {m.weights / gib:7.2f} + {m.gradients / gib:7.2f} + "
                     f"{m.optimizer / gib:7.2f} + {m.activations / gib:7.2f}{extra} = "
                     f"{m.total / gib:7.2f} / {m.capacity / gib:.2f}{flag}")
    groups = [g for g in memory_groups(plan) if g["detail"]]
    if groups:
        lines.append("")
        lines.append("activations kept for backward, by tensor, and transient buffers (GiB), "
                     "per group of devices with the same need:")
        for g in groups:
            devs = g["devices"]
            lines.append(f"  {devs[0]}" + (f" and {len(devs) - 1} more" if len(devs) > 1
                                           else ""))
            for name, size in sorted(g["detail"].items(), key=lambda kv: -kv[1]):
                lines.append(f"    {name:<60} {size / gib:9.3f}")
    return "\n".join(lines)


def summary(plan: Plan, cluster: Cluster) -> dict[str, Any]:
    """A compact record of the plan for the Result file."""
    counts: Counter[str] = Counter()
    per_program: dict[int, Counter] = {}
    for r in plan.ranks:
        src = r.ops.source if isinstance(r.ops, ImageOps) else r.ops
        c = per_program.get(id(src))
        if c is None:
            c = per_program[id(src)] = Counter(op.kind for op in src)
        counts.update(c)
    return {"scheme": plan.scheme, "mode": plan.mode, "ranks": len(plan.ranks),
            "workers": len(plan.workers()), "op_counts": dict(sorted(counts.items())),
            "bytes_per_link_type_per_period": link_bytes(plan, cluster),
            "options": {k: v for k, v in plan.options.items()
                        if k not in ("states", "sequence_split")}}

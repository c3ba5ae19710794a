"""The scenario behind the numbers (model, cluster, the YAML itself) and the list of Result
files. Every value is escaped; fields a Result lacks (a sweep's Result has no cluster record)
are left out."""

from __future__ import annotations

import json
import math
from typing import Any

from reports.html import esc, table

GIB = 2**30


def scenario_section(results: list[dict[str, Any]], sources: list[str]) -> str:
    seen: dict[str, list[str]] = {}
    scenarios: dict[str, dict[str, Any]] = {}
    for result, source in zip(results, sources):
        sc = result.get("scenario") or {}
        key = json.dumps(sc, sort_keys=True, default=str)
        scenarios.setdefault(key, sc)
        seen.setdefault(key, []).append(source)
        if result.get("sweep"):
            scenarios[key] = {**sc, "_sweep": result["sweep"]}
    parts = []
    for key, sc in scenarios.items():
        parts.append(_one(sc, seen[key], len(scenarios) > 1))
    return "".join(parts)


def _one(sc: dict[str, Any], files: list[str], many: bool) -> str:
    out = []
    if many or not sc:
        out.append(f"<h3>{esc(sc.get('name') or 'unnamed scenario')}</h3>")
    if sc.get("description"):
        out.append(f"<p>{esc(sc['description'])}</p>")
    facts = [("scenario file", sc.get("file")), ("seed", sc.get("seed")),
             ("global batch (samples)", sc.get("batch_size")),
             ("one device throughput (samples/s)",
              _fmt(sc.get("one_device_throughput_samples_per_s"), "{:,.1f}")),
             ("in the Result files", ", ".join(files))]
    sweep = sc.get("_sweep")
    if isinstance(sweep, dict):
        axes = sweep.get("axes") or {}
        facts.append(("sweep", "; ".join(f"{k}: {', '.join(map(str, v))}"
                                         for k, v in axes.items())
                      + (f" ({sweep['scaling']} scaling)" if sweep.get("scaling") else "")))
    blocks = ["<div><h3>Run</h3>" + _kv(facts) + "</div>"]
    model = sc.get("model")
    if isinstance(model, dict):
        blocks.append("<div><h3>Model</h3>" + _kv([
            ("name", model.get("name")), ("parameters", _fmt(model.get("params"), "{:,}")),
            ("forward FLOPs per sample", _fmt(model.get("fwd_flops"), "{:,}")),
            ("backward FLOPs per sample", _fmt(model.get("bwd_flops"), "{:,}")),
            ("layers", model.get("layers"))]) + "</div>")
    cluster = sc.get("cluster")
    if isinstance(cluster, dict):
        blocks.append("<div><h3>Cluster</h3>" + _kv(_cluster_facts(cluster)) + "</div>")
    out.append(f"<div class=facts>{''.join(blocks)}</div>")
    if sc.get("yaml"):
        out.append(f"<h3>Scenario YAML</h3><pre>{esc(sc['yaml'])}</pre>")
    return "".join(out)


def _cluster_facts(c: dict[str, Any]) -> list[tuple[str, Any]]:
    stragglers = c.get("stragglers") or []
    degraded = c.get("degraded_links") or []
    return [
        ("nodes", c.get("nodes")), ("devices per node", c.get("devices_per_node")),
        ("device", c.get("device")),
        ("device memory (GiB)", _fmt(_div(c.get("device_memory_bytes"), GIB), "{:,.1f}")),
        ("link inside a node", c.get("intra_link")), ("link between nodes", c.get("inter_link")),
        ("NICs per node", c.get("nics_per_node")),
        ("parameter-server hosts", c.get("parameter_server_hosts")),
        ("stragglers", ", ".join(f"device {s.get('device')} x{s.get('slowdown')} slower"
                                 for s in stragglers if isinstance(s, dict)) or "none"),
        ("degraded links", ", ".join(f"{d.get('element')} at x{d.get('factor')}"
                                     for d in degraded if isinstance(d, dict)) or "none"),
        ("compute jitter", c.get("compute_jitter"))]


def sources_section(results: list[dict[str, Any]], sources: list[str]) -> str:
    rows = [[esc(src), esc((r.get("scenario") or {}).get("name") or "–"),
             esc(r.get("code_version") or "–"), str(len(r["results"])),
             esc(", ".join(sorted({e.get("mode", "?") for e in r["results"]})) or "–")]
            for r, src in zip(results, sources)]
    return table(["file", "scenario", "code version", "entries", "modes"], rows, numeric={3})


def _kv(facts: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts
                   if v is not None and v != "")
    return f"<table class=kv><tbody>{rows}</tbody></table>" if rows else ""


def _div(v: Any, d: float) -> float | None:
    return v / d if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _fmt(v: Any, fmt: str) -> str | None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None if v is None else str(v)  # a 5,000-digit integer says so
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)

"""``parasim validate``: predict with a calibration profile, run the same plans, show the error.

Every rank loads the scenario with the profile in place of the cluster's device and links
(``with_profile``), builds the plans, and runs the strategies that fit the launched ranks; rank 0
simulates the same strategies and prints, per strategy, predicted and measured iteration time,
throughput and per-phase breakdown with the relative error ``(predicted - measured) /
measured``. Both Results are returned for the caller to write (and to report side by side).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simulator.errors import ScenarioError
from simulator.profile import load_profile
from simulator.scenario import parse_scenario
from simulator.schema import load_yaml
from simulator.specs import Scenario

PHASES = ("compute", "exposed_communication", "ps_wait", "idle")


def with_profile(scenario_path: str, profile_path: str) -> Scenario:
    """The scenario with ``cluster.profile`` set to the profile (absolute) and the cluster's
    own device and link names dropped, so the measured ones apply. On a profile of one host
    (no inter-node link measured), the inter-node link and parameter-server NICs are the host
    itself: the intra link's bandwidth with no latency of their own (one shared-memory hop)."""
    path = Path(scenario_path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(f"cannot read the scenario: {e.strerror}", file=str(path)) from None
    profile = load_profile(profile_path)
    try:
        data = load_yaml(text)
        cluster = data.get("cluster") if isinstance(data, dict) else None
        if isinstance(cluster, dict):
            for key in ("device", "intra_link", "inter_link", "profile"):
                cluster.pop(key, None)
            cluster["profile"] = os.path.abspath(profile_path)
            if profile.link("inter") is None:
                cluster["inter_link"] = _same_host(profile)
            ps = cluster.get("parameter_servers")
            if isinstance(ps, dict):
                ps["device"] = profile.device.name
                ps["nic"] = profile.link("inter").name if profile.link("inter") else (
                    _same_host(profile))
        return parse_scenario(data, str(path))
    except ScenarioError as e:
        raise (e if e.file else e.with_file(str(path))) from None


def _same_host(profile: Any) -> dict[str, Any]:
    intra = profile.link("intra")
    return {"scope": "inter", "bandwidth_GBps": intra.bandwidth / 1e9, "latency_us": 0.0,
            "efficiency": intra.efficiency, "eager_limit_KiB": intra.eager_limit / 1024,
            "source": f"one host ({profile.file}): the hop is the intra link's shared memory"}


def compare(predicted: dict[str, Any], measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Per strategy measured: predicted and measured figures with relative errors."""
    pred = {e["strategy"]: e for e in predicted["results"]}
    rows = []
    for m in measured["results"]:
        p = pred.get(m.get("strategy"))
        if not p or not p.get("iteration_time_s") or not m.get("iteration_time_s"):
            continue
        row = {"strategy": m["strategy"], "devices": m["devices"],
               "predicted_s": p["iteration_time_s"], "measured_s": m["iteration_time_s"],
               "predicted_throughput": p["throughput_samples_per_s"],
               "measured_throughput": m["throughput_samples_per_s"], "phases": {}}
        row["error"] = relative(row["predicted_s"], row["measured_s"])
        row["throughput_error"] = relative(row["predicted_throughput"],
                                           row["measured_throughput"])
        for ph in PHASES:
            a, b = (p.get("breakdown_s") or {}).get(ph, 0.0), (m.get("breakdown_s") or {}).get(
                ph, 0.0)
            row["phases"][ph] = (a, b)
        rows.append(row)
    return rows


def relative(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


def format_comparison(rows: list[dict[str, Any]], title: str) -> str:
    lines = [title, "(iteration and phases in ms; error = (predicted - measured) / measured)",
             f"{'strategy':<22}{'ranks':>6}{'predicted':>11}{'measured':>10}{'error':>8}"
             f"{'samples/s pred':>16}{'meas':>10}{'error':>8}"]
    for r in rows:
        lines.append(f"{r['strategy']:<22}{r['devices']:>6}{r['predicted_s'] * 1e3:>11.3f}"
                     f"{r['measured_s'] * 1e3:>10.3f}{r['error']:>+8.1%}"
                     f"{r['predicted_throughput']:>16.1f}{r['measured_throughput']:>10.1f}"
                     f"{r['throughput_error']:>+8.1%}")
    lines.append("")
    lines.append(f"{'strategy':<22}" + "".join(f"{ph.replace('exposed_', ''):>24}"
                                               for ph in PHASES))
    lines.append(f"{'':<22}" + "".join(f"{'pred / meas':>24}" for _ in PHASES))
    for r in rows:
        cells = []
        for ph in PHASES:
            a, b = r["phases"][ph]
            # an error against a phase that is a sliver of the iteration says nothing
            err = (f"{relative(a, b):+.0%}" if b > 0.02 * r["measured_s"] else "-")
            cells.append(f"{a * 1e3:.2f} / {b * 1e3:.2f} {err:>5}")
        lines.append(f"{r['strategy']:<22}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def predict_measured(scenario: Scenario, names: list[str]) -> dict[str, Any]:
    from simulator.predict import simulate_scenario

    result, _ = simulate_scenario(scenario, names)
    return result

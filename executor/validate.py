"""``parasim validate``: predict with a calibration profile, run the same plans, show the error.

Every rank loads the scenario with the profile in place of the cluster's device and links
(``simulator.scenario.with_profile``), builds the plans, and runs the strategies that fit the
launched ranks; rank 0 simulates the same strategies and prints, per strategy, predicted and
measured iteration time, throughput and per-phase breakdown with the relative error
``(predicted - measured) / measured``, and with ``training.target`` the steps and seconds to
it. Both Results are returned for the caller to write (and to report side by side).
"""

from __future__ import annotations

from typing import Any

from simulator.specs import Scenario

PHASES = ("compute", "exposed_communication", "ps_wait", "idle")


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
        if "target" in m or "target" in p:
            row["target"] = (p.get("target") or {}, m.get("target") or {})
        rows.append(row)
    return rows


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per strategy run to a target: predicted and measured steps and time to it."""
    from simulator.console import columns

    out = [("strategy", "steps pred", "meas", "error", "s to target pred", "meas", "error")]
    for r in rows:
        if "target" not in r:
            continue
        p, m = r["target"]
        cells = []
        for key, fmt in (("steps", "{:,.1f}"), ("time_s", "{:.4g}")):
            a, b = p.get(key), m.get(key)
            cells += [fmt.format(a) if a is not None else "-",
                      fmt.format(b) if b is not None else "not reached",
                      f"{relative(a, b):+.1%}" if a is not None and b else "-"]
        out.append((r["strategy"], *cells))
    if len(out) == 1:
        return []
    return ["", "to target (" + ", ".join(sorted({
        f"{r['target'][1].get('metric')} {r['target'][1].get('value')}" for r in rows
        if 'target' in r})) + ")", *columns(out)]


def relative(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


def format_comparison(rows: list[dict[str, Any]], title: str) -> str:
    """Predicted against measured per strategy, then per phase (columns as wide as their
    widest cell: a large error never runs into the next column)."""
    from simulator.console import columns

    head = [("strategy", "ranks", "predicted", "measured", "error", "samples/s pred", "meas",
             "error")]
    body = [(r["strategy"], str(r["devices"]), f"{r['predicted_s'] * 1e3:.3f}",
             f"{r['measured_s'] * 1e3:.3f}", f"{r['error']:+.1%}",
             f"{r['predicted_throughput']:.1f}", f"{r['measured_throughput']:.1f}",
             f"{r['throughput_error']:+.1%}") for r in rows]
    phases = [("strategy", *(ph.replace("exposed_", "") for ph in PHASES)),
              ("", *("pred / meas" for _ in PHASES))]
    for r in rows:
        cells = []
        for ph in PHASES:
            a, b = r["phases"][ph]
            # an error against a phase that is a sliver of the iteration says nothing
            err = (f"{relative(a, b):+.0%}" if b > 0.02 * r["measured_s"] else "-")
            cells.append(f"{a * 1e3:.2f} / {b * 1e3:.2f} {err:>5}")
        phases.append((r["strategy"], *cells))
    return "\n".join([title, "(iteration and phases in ms; error = (predicted - measured) / "
                      "measured)", *columns(head + body), "", *columns(phases),
                      *target_lines(rows)])


def predict_measured(scenario: Scenario, names: list[str]) -> dict[str, Any]:
    from simulator.predict import simulate_scenario

    result, _ = simulate_scenario(scenario, names)
    return result

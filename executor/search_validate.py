"""``parasim search --validate N``: run the search's picks for real and compare the orders.

Under ``mpiexec -n R``, rank 0 searches (its simulations in its own process, the other ranks
sleeping in a quiet barrier meanwhile), then every rank executes the top ``N`` simulated plans
that run on R ranks and, to see whether the predicted order holds below the top too, up to two
lower-ranked ones (the middle and the last of the rest). Rank 0 prints each plan's predicted
and measured throughput and rank, and whether the measured fastest is the search's first or
within 10% of it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from simulator.specs import Scenario, StrategySpec

WITHIN = 0.10  # the measured fastest counts as agreeing when the pick is within this of it


def quiet_barrier(comm: Any) -> None:  # noqa: ANN401
    """A barrier the waiting ranks sleep through (rank 0 may search for minutes meanwhile, and
    polling ranks would take its cores)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.05)


def picks(result: dict[str, Any], ranks: int, top: int) -> list[dict[str, Any]]:
    """The entries to execute: the best ``top`` that run on ``ranks`` ranks, then the middle
    and the last of the rest, in predicted order."""
    ok = [e for e in result["results"]
          if e.get("devices") == ranks and e.get("throughput_samples_per_s")]
    chosen = ok[:top]
    rest = ok[top:]
    for extra in (rest[len(rest) // 2:len(rest) // 2 + 1], rest[-1:]):
        for e in extra:
            if e not in chosen:
                chosen.append(e)
    return chosen


def scenario_of(scenario: Scenario, entries: list[dict[str, Any]]) -> Scenario:
    from simulator.strategies import default_options

    specs = []
    for e in entries:
        opts = {k: v for k, v in e["strategy_entry"].items()
                if k not in ("name", "scheme", "batch")}
        specs.append(StrategySpec(e["strategy"], e["strategy_entry"]["scheme"],
                                  default_options(e["strategy_entry"]["scheme"], **opts)))
    return replace(scenario, strategies=tuple(specs))


def compare(predicted: list[dict[str, Any]], measured: dict[str, Any]) -> dict[str, Any]:
    """Predicted against measured order of the executed plans."""
    got = {e["strategy"]: e["throughput_samples_per_s"] for e in measured["results"]}
    rows = [{"strategy": e["strategy"], "predicted_samples_per_s":
             e["throughput_samples_per_s"], "measured_samples_per_s": got.get(e["strategy"])}
            for e in predicted]
    order = sorted((r for r in rows if r["measured_samples_per_s"]),
                   key=lambda r: -r["measured_samples_per_s"])
    for i, r in enumerate(order, 1):
        r["measured_rank"] = i
    best = order[0]["measured_samples_per_s"] if order else None
    first = rows[0]["measured_samples_per_s"] if rows else None
    agrees = bool(best and first and first >= best * (1 - WITHIN))
    return {"plans": rows, "measured_fastest": order[0]["strategy"] if order else None,
            "pick_within_10_percent": agrees}


def format_validation(v: dict[str, Any]) -> str:
    from simulator.console import columns

    rows = [("predicted rank", "plan", "predicted samples/s", "measured samples/s",
             "measured rank")]
    for i, r in enumerate(v["plans"], 1):
        m = r["measured_samples_per_s"]
        rows.append((str(i), r["strategy"], f"{r['predicted_samples_per_s']:.1f}",
                     f"{m:.1f}" if m else "-", str(r.get("measured_rank", "-"))))
    verdict = ("the search's pick is the measured fastest or within 10% of it"
               if v["pick_within_10_percent"] else
               f"the measured fastest, {v['measured_fastest']}, beats the search's pick by "
               "more than 10%")
    return "\n".join(["validation: the executed plans, predicted against measured",
                      *columns(rows, left=2), verdict])

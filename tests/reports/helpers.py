"""Small hand-made Result entries for the report tests (round numbers, checkable by hand)."""

from __future__ import annotations

import copy
from typing import Any

from reports.load import Entry, entries

GIB = 2**30


def entry(strategy: str = "ring", mode: str = "predicted", devices: int = 2,
          iteration_time_s: float | None = 0.5, throughput: float | None = 200.0,
          **extra: Any) -> dict[str, Any]:
    e = {"strategy": strategy, "scheme": "data_parallel", "mode": mode, "devices": devices,
         "samples_per_iteration": 100, "fits": iteration_time_s is not None,
         "iteration_time_s": iteration_time_s, "throughput_samples_per_s": throughput,
         "speedup_over_one_device": throughput / 100.0 if throughput else None,
         "efficiency": throughput / 100.0 / devices if throughput else None,
         "breakdown_s": ({"compute": 0.3, "exposed_communication": 0.1, "ps_wait": 0.0,
                          "idle": 0.1} if iteration_time_s is not None else None),
         "memory_bytes_per_device": {f"node0.gpu{i}": 2 * GIB for i in range(devices)},
         "memory_capacity_bytes": 16 * GIB}
    e.update(extra)
    return e


def target(steps: float | None = 100, time_s: float | None = 50.0, reached: bool = True,
           metric: str = "loss", value: float = 0.5, step_unit: str = "step",
           **extra: Any) -> dict[str, Any]:
    """The ``target`` keys of an entry, as the simulator writes them: the block and the three
    headline figures (null when not reached)."""
    step_time = time_s / steps if time_s is not None and steps else 0.5
    block = {"metric": metric, "value": value, "on": "train", "step_unit": step_unit,
             "reached": reached, "steps": steps if reached else None,
             "time_s": time_s if reached else None, "samples": None, "step_time_s": step_time,
             "cap": 10_000, **extra}
    return {"target": block, "steps_to_target": block["steps"],
            "time_to_target_s": block["time_s"], "step_time_s": step_time}


def result(*entries_: dict[str, Any], name: str = "two GPUs", **scenario: Any) -> dict:
    return {"scenario": {"name": name, "description": "a test", **scenario},
            "code_version": "0.1.0+test", "results": [copy.deepcopy(e) for e in entries_]}


def rows(*results: dict[str, Any]) -> list[Entry]:
    return entries(list(results), [f"r{i}.json" for i in range(len(results))])


def hostile_entries() -> list[dict[str, Any]]:
    """Entries the reader accepts, with values at the edge of what it accepts: numbers at
    ±1e18, 5e-324 and 0, a million devices, instants for spans, names that are JavaScript's
    own properties, plotly template syntax, a lone surrogate, 5,000 digits or 100,000
    characters long, and more devices and streams than a timeline draws."""
    names = ["__proto__", "constructor", "%{x}<br>", "gpu²", "gpu" + "9" * 5000, "\ud800",
             "x" * 100_000]
    first = entry("__proto__", devices=1, throughput=1e18, iteration_time_s=1e-300,
                  memory_bytes_per_device={n: 1e18 for n in names}, memory_capacity_bytes=0,
                  utilisation_per_device={n: -1e18 for n in names},
                  utilisation_per_link={n: 5e-324 for n in names},
                  timeline={"iteration": -1e18, "spans": [[n, n, n, 0, 0] for n in names]})
    million = entry("__proto__", devices=1, throughput=-1e18, iteration_time_s=-1e18,
                    speedup_over_one_device=None, efficiency=None,
                    breakdown_s={"compute": 1e18, "idle": -1e18, "%{y}": 0, "\ud800": 1},
                    staleness={"mean": -0.0, "max": 1e18,
                               "histogram": {"-999999999999999999": 1e18, "0": 0}},
                    training={"wall_time_s": [0, 1e18, None], "samples": [None, -1e18, 0],
                              "loss": [1e-300, None, 1e18], "accuracy": [None, None, None]})
    instants = entry("__proto__", mode="measured", devices=1, throughput=0.0,
                     iteration_time_s=0.0, peak_rss_bytes_per_device={"\ud800": 1e18},
                     timeline={"spans": [["d", "compute", "op", 5e-324, 0]] * 3})
    crowded = entry("\ud800", mode="measured", devices=1, throughput=1e-300,
                    iteration_time_s=1e18, fits=True, note="\ud800" * 10,
                    sweep_point={"devices": 1e18, "\ud800": "x" * 10_000, "n": None},
                    timeline={"spans": [[f"d{i}", f"s{i % 20}", "op", i, 1]
                                        for i in range(300)]})
    # built with one device: the helper lists memory per device
    return [first, {**million, "devices": 1_000_000}, {**instants, "devices": 1_000_000},
            crowded]

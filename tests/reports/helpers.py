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


def result(*entries_: dict[str, Any], name: str = "two GPUs", **scenario: Any) -> dict:
    return {"scenario": {"name": name, "description": "a test", **scenario},
            "code_version": "0.1.0+test", "results": [copy.deepcopy(e) for e in entries_]}


def rows(*results: dict[str, Any]) -> list[Entry]:
    return entries(list(results), [f"r{i}.json" for i in range(len(results))])

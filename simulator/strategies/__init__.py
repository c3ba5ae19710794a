"""Partitioning schemes. Each module is a function from (graph, cluster, options) to a Plan.

A scheme module exports ``OPTIONS`` (key -> (checker, default): the scenario keys it accepts),
``check(options, graph, cluster_spec, training, path)`` for checks that need the model graph,
``build(ctx, spec) -> Plan``, and ``at_scale(raw_entry, devices)``: its scenario entry resized for
a sweep over device counts (None where it cannot run at that size). Adding a scheme is adding a
module and a line here.
"""

from __future__ import annotations

import json
from importlib import import_module
from types import ModuleType

SCHEMES = ("data_parallel", "downpour", "sandblaster", "pipeline", "tensor", "branch", "hybrid",
           "parallel_3d", "dbn_pretrain")


def scheme_module(scheme: str) -> ModuleType:
    if scheme not in SCHEMES:
        raise KeyError(scheme)
    return import_module(f"simulator.strategies.{scheme}")


def build_plan(ctx, spec):  # noqa: ANN001, ANN201 - (Context, StrategySpec) -> Plan
    """The Plan for one strategy entry of a scenario (its options in JSON's own types, so the
    plan survives a JSON round trip unchanged)."""
    from dataclasses import replace

    plan = scheme_module(spec.scheme).build(ctx, spec)
    return replace(plan, options=json.loads(json.dumps(plan.options)))

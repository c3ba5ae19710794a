"""Partitioning schemes. Each module is a function from (graph, cluster, options) to a Plan.

A scheme module exports ``OPTIONS`` (key -> (checker, default): the scenario keys it accepts),
``check(options, graph, cluster_spec, training, path)`` for checks that need the model graph,
``build(ctx, spec) -> Plan``, and ``at_scale(raw_entry, devices)``: its scenario entry resized for
a sweep over device counts (None where it cannot run at that size). Adding a scheme is adding a
module and a line here.
"""

from __future__ import annotations

import gc
import json
from importlib import import_module
from types import ModuleType

from simulator.errors import LimitError

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

    # A plan is up to millions of small immutable ops and holds no reference cycles: the
    # cycle collector has nothing to find in them, and walking them again and again while they
    # are made, then while they are simulated, cost half the time. It is paused while the plan
    # is built and the plan is left out of its later passes (gc.freeze); reference counting
    # still frees every op.
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            plan = scheme_module(spec.scheme).build(ctx, spec)
        except LimitError as e:
            raise LimitError(f"strategy {spec.name!r}: {e}") from None
        plan = replace(plan, options=json.loads(json.dumps(plan.options)))
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    return plan


def default_options(scheme: str, **given: object) -> dict:
    """A scheme's options as a scenario entry with only ``given`` written would have them
    (values in the unit their key names, ``bucket_MiB: 25``, become SI as at load)."""
    from simulator.schema import unit_factor

    options = {key: default for key, (_, default) in scheme_module(scheme).OPTIONS.items()}
    def si(key: str, value: object) -> object:
        factor = unit_factor(key)
        if factor == 1.0 or isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        return value * factor

    return {**options, **{k: si(k, v) for k, v in given.items()}}

"""What folding collectives into runs of kernels saves, and that it changes nothing: GPT-3-175B
grids of the plan search's benchmark (``benchmarks/search.py``) simulated with and without
folding, side by side in this process. Tensor groups of 4 on 8-GPU nodes share each node with
their pipeline neighbours, so their runs are watched (``simulator/engine/fold.py``); tensor 8
groups fill a node and fold without watching.

    python benchmarks/fold.py

Printed per grid: CPU seconds unfolded and folded, their ratio, how many watched runs a flow
reached mid-run, and the relative difference of the iteration times.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GRIDS = [  # the search's candidates: (data, pipeline, tensor, micro-batches, virtual stages)
    (16, 16, 4, 96, 2), (32, 8, 4, 48, 2), (32, 4, 8, 48, 2)]


def main() -> None:
    from search import scenario

    from simulator.engine.simulate import TIMELINE_SPANS, predict
    from simulator.predict import context
    from simulator.scenario import parse_scenario
    from simulator.specs import StrategySpec
    from simulator.strategies import build_plan, default_options

    sc = parse_scenario(scenario("gpt175b-1024"))
    ctx = context(sc)
    print(f"{'grid':<26}{'unfolded_s':>11}{'folded_s':>10}{'ratio':>7}{'reached':>9}"
          f"{'iteration rel. diff':>21}")
    for d, p, t, m, v in GRIDS:
        opts = default_options("parallel_3d", data=d, pipeline=p, tensor=t, micro_batches=m,
                               virtual_stages=v, recompute="selective",
                               sequence_parallel=True, zero=1)
        plan = build_plan(ctx, StrategySpec("g", "parallel_3d", opts))
        runs = {}
        for fold in (False, True):
            c0 = time.process_time()
            pred = predict(plan, ctx.cluster, sc.training, seed=sc.seed,
                           timeline_spans=TIMELINE_SPANS, fold=fold)
            runs[fold] = (time.process_time() - c0, pred)
        (off_s, off), (on_s, on) = runs[False], runs[True]
        diff = on.entry["iteration_time_s"] / off.entry["iteration_time_s"] - 1
        print(f"{f'd{d} p{p} t{t} m{m} x{v}':<26}{off_s:>11.2f}{on_s:>10.2f}"
              f"{off_s / on_s:>7.1f}{on.engine.fold_breaks:>9}{diff:>21.1e}")


if __name__ == "__main__":
    main()

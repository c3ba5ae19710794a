"""How the simulator's cost grows with the cluster: one iteration of ResNet-50 synchronous data
parallel (ring all-reduce) on 8, 64, 512 and 1,024 V100s (8 per node, EDR InfiniBand).

Prints, per size: wall time to build the plan and to simulate it, SimPy events processed, events
per second, and the cost per device relative to the smallest size (flat = linear growth).
Target (issue): 1,024 GPUs in at most 1 s on a 2-core machine, growing no faster than linearly.

    python benchmarks/sim_scale.py [--sizes 8,64,512,1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import simpy

from simulator.cluster import build_cluster
from simulator.engine.simulate import predict
from simulator.scenario import build_graph, parse_scenario
from simulator.strategies import build_plan
from simulator.strategies.common import Context

SCENARIO = """
name: resnet50 scale
model: {{zoo: resnet50}}
cluster: {{nodes: {nodes}, devices_per_node: 8, device: V100, intra_link: nvlink2,
           inter_link: ib_edr}}
training: {{batch_size: {batch}, precision: fp16, iterations: 1, warmup_iterations: 0}}
strategies:
  - {{name: ring, scheme: data_parallel, exchange: ring}}
"""


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes."""

    processed = 0

    def step(self) -> None:
        CountingEnvironment.processed += 1
        super().step()


def measure(devices: int) -> dict:
    scenario = parse_scenario(__import__("yaml").safe_load(
        SCENARIO.format(nodes=devices // 8, batch=64 * devices)))
    t0 = time.perf_counter()
    ctx = Context(build_graph(scenario.model), build_cluster(scenario.cluster),
                  scenario.training)
    plan = build_plan(ctx, scenario.strategies[0])
    t1 = time.perf_counter()
    simpy_env, CountingEnvironment.processed = simpy.Environment, 0
    import simulator.engine.runner as runner

    runner.simpy.Environment = CountingEnvironment
    try:
        pred = predict(plan, ctx.cluster, scenario.training)
    finally:
        runner.simpy.Environment = simpy_env
    t2 = time.perf_counter()
    return {"devices": devices, "plan_s": t1 - t0, "simulate_s": t2 - t1,
            "events": CountingEnvironment.processed,
            "iteration_ms": pred.entry["iteration_time_s"] * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8,64,512,1024")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per size")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        runs = [measure(n) for _ in range(args.repeat)]
        rows.append(min(runs, key=lambda r: r["plan_s"] + r["simulate_s"]))
    base = rows[0]
    base_per_dev = (base["plan_s"] + base["simulate_s"]) / base["devices"]
    print(f"{'GPUs':>6} {'plan s':>8} {'simulate s':>11} {'total s':>8} {'events':>8} "
          f"{'events/s':>10} {'cost/GPU vs first':>18} {'predicted iter ms':>18}")
    for r in rows:
        total = r["plan_s"] + r["simulate_s"]
        print(f"{r['devices']:>6} {r['plan_s']:>8.3f} {r['simulate_s']:>11.3f} {total:>8.3f} "
              f"{r['events']:>8} {r['events'] / r['simulate_s']:>10.0f} "
              f"{total / r['devices'] / base_per_dev:>18.2f} {r['iteration_ms']:>18.3f}")


if __name__ == "__main__":
    main()

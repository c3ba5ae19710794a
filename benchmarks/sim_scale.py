"""How the simulator's cost grows with the cluster, on the workloads people bring.

One row per (workload, devices), each measured in a fresh process so that its CPU time and peak
memory are its own:

- ``resnet50-dp-ring``: ResNet-50 synchronous data parallel, one ring all-reduce after backward,
  V100s 8 per node on EDR InfiniBand, 64 images per GPU, fp16;
- ``resnet50-dp-per-layer``: the same with one all-reduce per layer overlapping backward
  (buckets of one layer each: 54 collectives);
- ``resnet50-dp-degraded``: the ring with 1% of the nodes' NIC uplinks (every 100th node's) at
  half bandwidth;
- ``resnet50-dp-straggler``: the ring with one GPU computing 1.5x slower (no target: it shows
  that a straggler costs the ranks it touches, not the cluster);
- ``gpt175b-3d``: a GPT-3-175B-shaped model (96 layers, hidden 12288, sequence 2048) on A100s in
  8-GPU NVSwitch nodes with one HDR NIC per GPU on the GPU's PCIe 4 switch (``host_link``, as
  the DGX A100 System Architecture whitepaper draws it), tensor 8 x pipeline 8 x data D, 64
  micro-batches of one sequence per pipeline, 1F1B, sequence parallelism with selective
  recomputation (the configuration that fits in 80 GB, Korthikanti et al. 2022);
- ``downpour-1024``: AlexNet Downpour SGD on 1,024 K40 workers (2 per node, 10 GbE) with a
  parameter server sharded over 16 hosts.

Columns: ``plan_s`` (build the plan), ``simulate_s`` (run the SimPy model and summarise it),
``cpu_s`` (the process's CPU time for both: the figure that stays honest on a shared machine),
``peak_MB`` (the process's peak resident memory, interpreter and libraries included), ``events``
(SimPy events processed), ``predicted_ms`` (the predicted iteration time), and the JSON size of
the Result entry as ``parasim simulate`` writes it without ``--timeline`` (``result_kB``).

    python benchmarks/sim_scale.py [--only WORKLOAD[,WORKLOAD]] [--max-devices N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

ROWS = [
    ("resnet50-dp-ring", 1024), ("resnet50-dp-ring", 16384), ("resnet50-dp-ring", 65536),
    ("resnet50-dp-per-layer", 1024), ("resnet50-dp-per-layer", 16384),
    ("resnet50-dp-degraded", 16384), ("resnet50-dp-straggler", 16384),
    ("gpt175b-3d", 64), ("gpt175b-3d", 1024), ("gpt175b-3d", 16384),
    ("downpour-1024", 1024),
]

TARGETS_CPU_S = {("gpt175b-3d", 64): 1, ("gpt175b-3d", 1024): 2, ("gpt175b-3d", 16384): 10,
                 ("resnet50-dp-ring", 16384): 3, ("resnet50-dp-ring", 65536): 15,
                 ("resnet50-dp-per-layer", 16384): 10, ("resnet50-dp-degraded", 16384): 10,
                 ("downpour-1024", 1024): 10}


def scenario(workload: str, devices: int) -> dict:
    training = {"precision": "fp16", "iterations": 1, "warmup_iterations": 0}
    if workload.startswith("resnet50"):
        cluster = {"nodes": devices // 8, "devices_per_node": 8, "device": "V100",
                   "intra_link": "nvlink2", "inter_link": "ib_edr"}
        strategy = {"name": workload, "scheme": "data_parallel", "exchange": "ring"}
        if workload == "resnet50-dp-per-layer":
            strategy.update(bucket_MiB=1e-9, overlap=True)
        if workload == "resnet50-dp-degraded":
            cluster["degraded_links"] = [  # the NIC uplinks of every 100th node
                {"element": f"node{n}.nic0", "factor": 0.5} for n in range(0, devices // 8, 100)]
        if workload == "resnet50-dp-straggler":
            cluster["stragglers"] = [{"device": 1000, "slowdown": 1.5}]
        return {"name": workload, "model": {"zoo": "resnet50"}, "cluster": cluster,
                "training": {**training, "batch_size": 64 * devices},
                "strategies": [strategy]}
    if workload == "gpt175b-3d":
        data = devices // 64
        return {"name": workload,
                "model": {"zoo": "gpt", "params": {"layers": 96, "hidden": 12288, "heads": 96,
                                                   "seq_len": 2048, "vocab": 51200}},
                "cluster": {"nodes": devices // 8, "devices_per_node": 8, "device": "A100",
                            "intra_link": "nvlink3", "inter_link": "ib_hdr",
                            "nics_per_node": 8, "host_link": "pcie4"},
                "training": {**training, "precision": "bf16", "optimizer": "adam",
                             "batch_size": 64 * data},
                "strategies": [{"name": workload, "scheme": "parallel_3d", "tensor": 8,
                                "pipeline": 8, "data": data, "micro_batches": 64,
                                "sequence_parallel": True, "recompute": "selective"}]}
    if workload == "downpour-1024":
        return {"name": workload, "model": {"zoo": "alexnet"},
                "cluster": {"nodes": devices // 2, "devices_per_node": 2, "device": "K40",
                            "intra_link": "pcie3", "inter_link": "eth_10g",
                            "parameter_servers": {
                                "hosts": 16, "nic": "eth_25g",
                                # a server's socket: 8 channels of DDR4-3200 (Xeon 8380)
                                "device": {"base": "cpu_core_modern", "sms": 40,
                                           "memory_bandwidth_GBps": 204.8}}},
                "training": {"batch_size": 128 * devices, "precision": "fp32",
                             "optimizer": "momentum", "iterations": 2,
                             "warmup_iterations": 0},
                "strategies": [{"name": workload, "scheme": "downpour"}]}
    raise SystemExit(f"unknown workload {workload!r}")


def measure(workload: str, devices: int) -> dict:
    """One row, in this process (the parent runs each row in a fresh one)."""
    from simulator.cluster import build_cluster
    from simulator.engine.simulate import TIMELINE_SPANS, bounded, predict
    from simulator.scenario import build_graph, parse_scenario
    from simulator.strategies import build_plan
    from simulator.strategies.common import Context

    sc = parse_scenario(scenario(workload, devices))
    c0, t0 = time.process_time(), time.perf_counter()
    ctx = Context(build_graph(sc.model), build_cluster(sc.cluster), sc.training)
    plan = build_plan(ctx, sc.strategies[0])
    t1 = time.perf_counter()
    pred = predict(plan, ctx.cluster, sc.training, timeline_spans=TIMELINE_SPANS)  # as simulate
    t2, c2 = time.perf_counter(), time.process_time()
    entry = pred.entry
    return {"workload": workload, "devices": devices, "plan_s": t1 - t0, "simulate_s": t2 - t1,
            "cpu_s": c2 - c0,
            "peak_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "events": pred.engine.events if pred.engine is not None else 0,
            "predicted_ms": (entry["iteration_time_s"] or 0.0) * 1e3,
            "result_kB": len(json.dumps(bounded(entry))) / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated workloads (default: all)")
    ap.add_argument("--max-devices", type=int, default=None)
    ap.add_argument("--row", nargs=2, metavar=("WORKLOAD", "DEVICES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        print(json.dumps(measure(args.row[0], int(args.row[1]))))
        return
    only = set(args.only.split(",")) if args.only else None
    cols = ("workload", "devices", "plan_s", "simulate_s", "cpu_s", "peak_MB", "events",
            "predicted_ms")
    print(f"{cols[0]:<22} {cols[1]:>7} {cols[2]:>7} {cols[3]:>10} {cols[4]:>6} {cols[5]:>7} "
          f"{cols[6]:>9} {cols[7]:>12}  result_kB  target_cpu_s", flush=True)
    for workload, devices in ROWS:
        if (only and workload not in only) or (args.max_devices and devices > args.max_devices):
            continue
        out = subprocess.run([sys.executable, __file__, "--row", workload, str(devices)],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{workload:<22} {devices:>7}  failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        target = TARGETS_CPU_S.get((workload, devices))
        verdict = "" if target is None else (
            f"<= {target} {'ok' if r['cpu_s'] <= target else 'MISSED'}")
        print(f"{workload:<22} {devices:>7} {r['plan_s']:>7.2f} {r['simulate_s']:>10.2f} "
              f"{r['cpu_s']:>6.2f} {r['peak_MB']:>7.0f} {r['events']:>9} "
              f"{r['predicted_ms']:>12.3f}  {r['result_kB']:>9.0f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()

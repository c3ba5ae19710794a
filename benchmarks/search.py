"""How long a plan search takes, on the two workloads the search issue names:

- ``gpt175b-1024``: a GPT-3-175B-shaped model (96 layers, hidden 12288, 96 heads, sequence
  2048, the GPT-3 paper's batch of 1,536 sequences) on 1,024 A100s, DGX A100 nodes of 8 with one
  HDR NIC per GPU on the GPU's PCIe 4 switch, bf16 with Adam;
- ``resnet50-256``: ResNet-50 on 256 V100s in DGX-1-style nodes of 8 (NVLink 2, 4 EDR NICs per
  node), 64 images per GPU, fp16 with momentum.

Each runs in a fresh process; printed: candidates considered, pruned by rule and by memory,
simulated, the CPU seconds of the whole search (the process's: building, estimating,
simulating, and its worker processes'), and the best plan with its predicted throughput.

    python benchmarks/search.py [--only NAME] [--top K]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time

TARGETS_CPU_S = {"gpt175b-1024": 60, "resnet50-256": 10}


def scenario(name: str) -> dict:
    training = {"iterations": 1, "warmup_iterations": 0}
    if name == "gpt175b-1024":
        return {"name": name,
                "model": {"zoo": "gpt", "params": {"layers": 96, "hidden": 12288, "heads": 96,
                                                   "seq_len": 2048, "vocab": 51200}},
                "cluster": {"nodes": 128, "devices_per_node": 8, "device": "A100",
                            "intra_link": "nvlink3", "inter_link": "ib_hdr",
                            "nics_per_node": 8, "host_link": "pcie4"},
                "training": {**training, "batch_size": 1536, "precision": "bf16",
                             "optimizer": "adam"},
                "strategies": [{"name": "megatron", "scheme": "parallel_3d", "tensor": 8,
                                "pipeline": 8, "data": 16, "micro_batches": 96,
                                "sequence_parallel": True, "recompute": "selective"}]}
    if name == "resnet50-256":
        return {"name": name, "model": {"zoo": "resnet50"},
                "cluster": {"nodes": 32, "devices_per_node": 8, "device": "V100",
                            "intra_link": "nvlink2", "inter_link": "ib_edr",
                            "nics_per_node": 4},
                "training": {**training, "batch_size": 64 * 256, "precision": "fp16",
                             "optimizer": "momentum"},
                "strategies": [{"name": "ddp", "scheme": "data_parallel",
                                "bucket_MiB": 25, "overlap": True}]}
    raise SystemExit(f"unknown workload {name!r}")


def measure(name: str, top: int) -> dict:
    from simulator.scenario import parse_scenario
    from simulator.search import run_search
    from simulator.search.space import Constraints

    sc = parse_scenario(scenario(name))
    c0, t0 = time.process_time(), time.perf_counter()
    result = run_search(sc, Constraints(top=top), out=io.StringIO())
    own = time.process_time() - c0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    s, best = result["search"], result["results"][0]
    return {"name": name, "considered": s["considered"], "rule": s["pruned_by_rule"],
            "memory": s["pruned_by_memory"], "simulated": s["simulated"],
            "cpu_s": own + children.ru_utime + children.ru_stime,
            "wall_s": time.perf_counter() - t0, "best": best["strategy"],
            "samples_per_s": best["throughput_samples_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="one workload")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        print(json.dumps(measure(args.row, args.top)))
        return
    print(f"{'workload':<14} {'considered':>10} {'rule':>6} {'memory':>7} {'simulated':>9} "
          f"{'cpu_s':>7}  target  best plan (samples/s)", flush=True)
    for name in TARGETS_CPU_S:
        if args.only and name != args.only:
            continue
        out = subprocess.run([sys.executable, __file__, "--row", name, "--top", str(args.top)],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{name:<14} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        target = TARGETS_CPU_S[name]
        verdict = f"<= {target} {'ok' if r['cpu_s'] <= target else 'MISSED'}"
        print(f"{name:<14} {r['considered']:>10} {r['rule']:>6} {r['memory']:>7} "
              f"{r['simulated']:>9} {r['cpu_s']:>7.1f}  {verdict}  {r['best']} "
              f"({r['samples_per_s']:.1f})", flush=True)


if __name__ == "__main__":
    main()

"""Strong scaling of the executor's synchronous data parallel on this machine: an MLP
784-2048-2048-10 at a global batch of 512, on 1 and 2 ranks (one BLAS / Numba thread per rank),
CPU kernels, ring all-reduce with and without gradient buckets overlapping backward.

Prints each run's measured iteration time and throughput, and the 2-rank scaling efficiency
(throughput on 2 ranks / (2 x throughput on 1 rank)), measured side by side in one run.
Target (issue): at least 80% on a 2-core machine.

    python benchmarks/exec_scaling.py [--iterations 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SCENARIO = """\
name: executor scaling
seed: 1
model: {{zoo: mlp, params: {{sizes: [784, 2048, 2048, 10]}}}}
cluster: {{nodes: 1, devices_per_node: 2, device: cpu_core_modern, intra_link: shm}}
training: {{batch_size: 512, iterations: {iterations}, warmup_iterations: 2,
           learning_rate: 0.01}}
data: {{kind: synthetic, samples: 4096, classes: 10, seed: 1, shape: [784]}}
strategies:
  - {{name: one-rank, scheme: data_parallel, devices: 1}}
  - {{name: ring, scheme: data_parallel, devices: 2, exchange: ring}}
  - {{name: ring-buckets-overlap, scheme: data_parallel, devices: 2, exchange: ring,
      bucket_MiB: 4, overlap: true}}
"""

THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                            "NUMBA_NUM_THREADS")}


def run(ranks: int, scenario: Path, out: Path) -> dict:
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "parasim", "execute",
           str(scenario), "--backend", "cpu", "--json", str(out), "--force"]
    subprocess.run(cmd, check=True, env={**os.environ, **THREADS}, timeout=900,
                   stdout=subprocess.DEVNULL)
    return {e["strategy"]: e for e in json.loads(out.read_text())["results"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "scaling.yaml"
        scenario.write_text(SCENARIO.format(iterations=args.iterations))
        one = run(1, scenario, Path(tmp) / "one.json")["one-rank"]
        two = run(2, scenario, Path(tmp) / "two.json")
    base = one["throughput_samples_per_s"]
    print(f"{'run':<24} {'ranks':>5} {'iter ms':>9} {'samples/s':>10} {'compute ms':>11} "
          f"{'exposed comm ms':>16} {'efficiency':>11}")
    for name, e, ranks in (("one-rank", one, 1), ("ring", two["ring"], 2),
                           ("ring-buckets-overlap", two["ring-buckets-overlap"], 2)):
        eff = e["throughput_samples_per_s"] / (ranks * base)
        print(f"{name:<24} {ranks:>5} {e['iteration_time_s'] * 1e3:>9.1f} "
              f"{e['throughput_samples_per_s']:>10.1f} {e['breakdown_s']['compute'] * 1e3:>11.1f} "
              f"{e['breakdown_s']['exposed_communication'] * 1e3:>16.1f} {eff:>10.1%}"
              + ("" if ranks == 1 else ("  PASS" if eff >= 0.8 else "  FAIL")))
    print("target: 2-rank efficiency >= 80%")


if __name__ == "__main__":
    main()

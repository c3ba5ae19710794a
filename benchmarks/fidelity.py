"""How well does the simulator predict the executor on this machine? Calibrate, then validate a
grid of cases, and print the error.

    python benchmarks/fidelity.py [--profile P] [--grid small] [--repeats 3] [--out DIR]

Each of ``--repeats`` rounds first runs ``mpiexec -n 4 parasim calibrate`` (the ``--grid``
given; as many ranks as the largest case, so that the all-reduce is also measured with more
ranks than cores when the machine has fewer than 4), then validates every case with that
profile. With ``--profile`` every round uses that profile instead. A case's predicted and
measured times are the medians over the rounds: a machine shared with others drifts by 10% and
more within minutes, and one calibration or one run caught in a slow spell is not the model's
error; the spread between rounds is printed beside each case.

Cases: an MLP, a LeNet-5 (the CNN), the DBN fine-tuning network (sigmoid RBM layers) x
synchronous data parallel, GPipe pipelines, the hybrid conv-DP/FC-MP scheme and Downpour x 1, 2
and 4 ranks (4 ranks share 2 cores on a 2-core machine). Each (model, ranks) group is one
``mpiexec -n R parasim validate`` launch, which simulates and executes its strategies.

Printed: every case's predicted and measured iteration time and error, the mean absolute
percentage error (MAPE), the worst case, and the share of case pairs of one model that the
prediction ranks in the measured order by throughput (all pairs, and the pairs whose measured
throughputs differ by more than 10%). Targets: MAPE <= 10%, worst <= 25%, every pair that
differs by more than 10% ranked right.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

MLP = {"zoo": "mlp", "params": {"sizes": [784, 1024, 1024, 10]}}
LENET = {"zoo": "lenet5", "params": {"input_shape": [1, 32, 32]}}
DBN = {"zoo": "dbn", "params": {"sizes": [784, 500, 500, 2000], "classes": 10}}

# (model key, ranks, strategies)
GROUPS = [
    ("mlp", 1, [{"name": "mlp one rank", "scheme": "data_parallel", "devices": 1}]),
    ("mlp", 2, [{"name": "mlp dp ring x2", "scheme": "data_parallel", "exchange": "ring"},
                {"name": "mlp gpipe x2", "scheme": "pipeline", "micro_batches": 4},
                {"name": "mlp downpour 1w+1ps", "scheme": "downpour", "workers": 1}]),
    ("mlp", 4, [{"name": "mlp dp ring x4", "scheme": "data_parallel", "exchange": "ring"},
                {"name": "mlp downpour 3w+1ps", "scheme": "downpour", "workers": 3}]),
    ("lenet", 1, [{"name": "lenet one rank", "scheme": "data_parallel", "devices": 1}]),
    ("lenet", 2, [{"name": "lenet dp ring x2", "scheme": "data_parallel", "exchange": "ring"},
                  {"name": "lenet hybrid x2", "scheme": "hybrid"}]),
    ("lenet", 4, [{"name": "lenet dp ring x4", "scheme": "data_parallel", "exchange": "ring"}]),
    ("dbn", 1, [{"name": "dbn one rank", "scheme": "data_parallel", "devices": 1}]),
    ("dbn", 2, [{"name": "dbn dp tree x2", "scheme": "data_parallel", "exchange": "tree"},
                {"name": "dbn gpipe x2", "scheme": "pipeline", "micro_batches": 4}]),
    ("dbn", 4, [{"name": "dbn dp tree x4", "scheme": "data_parallel", "exchange": "tree"}]),
]
MODELS = {"mlp": MLP, "lenet": LENET, "dbn": DBN}
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "NUMBA_NUM_THREADS": "1"}


def scenario(model: str, ranks: int, strategies: list[dict]) -> dict:
    servers = any(s["scheme"] == "downpour" for s in strategies)
    cluster = {"nodes": 1, "devices_per_node": ranks, "device": "cpu_core_modern",
               "intra_link": "shm"}
    if servers:
        cluster["parameter_servers"] = {"hosts": 1, "device": "cpu_core_modern",
                                        "nic": "eth_10g"}
    return {"name": f"fidelity {model} on {ranks} rank(s)", "seed": 1,
            "model": MODELS[model], "cluster": cluster,
            "training": {"batch_size": 256, "iterations": 30, "warmup_iterations": 3,
                         "learning_rate": 0.01},
            "strategies": strategies}


def run(cmd: list[str], timeout: float) -> str:
    env = {**os.environ, **ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def median_case(runs: list[dict]) -> dict:
    """One case over the rounds: the median predicted and the median measured iteration time,
    the error between them, and the spread of the measured times (largest over smallest,
    less 1)."""
    measured = sorted(r["measured_s"] for r in runs)
    predicted = statistics.median(r["predicted_s"] for r in runs)
    first = runs[0]
    samples = first["measured_throughput"] * first["measured_s"]  # per iteration
    m = statistics.median(measured)
    return {**first, "measured_s": m, "predicted_s": predicted,
            "measured_throughput": samples / m, "predicted_throughput": samples / predicted,
            "error": (predicted - m) / m, "spread": measured[-1] / measured[0] - 1.0}


def ranking(cases: list[dict]) -> tuple[int, int, list[tuple[dict, dict]], int]:
    """(right, pairs, the pairs differing > 10% ranked wrong, such pairs), pairs within a
    model."""
    right = pairs = big = 0
    wrong_big = []
    for a, b in itertools.combinations(cases, 2):
        if a["model"] != b["model"]:
            continue
        pairs += 1
        ma, mb = a["measured_throughput"], b["measured_throughput"]
        pa, pb = a["predicted_throughput"], b["predicted_throughput"]
        ok = (ma > mb) == (pa > pb)
        right += ok
        if abs(ma - mb) / min(ma, mb) > 0.10:
            big += 1
            if not ok:
                wrong_big.append((a, b))
    return right, pairs, wrong_big, big


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse names the option and value)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="an existing profile (default: calibrate first)")
    ap.add_argument("--grid", default="small", choices=("tiny", "small", "full"))
    ap.add_argument("--out", help="keep the profile and every Result in this folder")
    ap.add_argument("--repeats", type=positive, default=3,
                    help="rounds of calibrating and validating the whole grid; each case's "
                         "times are the medians over them (default 3)")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="fidelity-"))
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        tag = f".{rep + 1}" if args.repeats > 1 else ""
        profile = args.profile
        if not profile:
            profile = str(out / f"profile{tag}.yaml")
            most = str(max(g[1] for g in GROUPS))
            print(f"calibrating (mpiexec -n {most}, {args.grid} grid, round {rep + 1} of "
                  f"{args.repeats}) ...", flush=True)
            run(["mpiexec", "-n", most, sys.executable, "-m", "parasim", "calibrate",
                 "-o", profile, "--grid", args.grid, "--force"], 900)
        for model, ranks, strategies in GROUPS:
            path = out / f"{model}_{ranks}.yaml"
            path.write_text(yaml.safe_dump(scenario(model, ranks, strategies), sort_keys=False))
            stem = f"{model}_{ranks}{tag}"
            pred, meas = out / f"{stem}.predicted.json", out / f"{stem}.measured.json"
            print(f"validating {model} on {ranks} rank(s) (round {rep + 1}) ...", flush=True)
            run(["mpiexec", "-n", str(ranks), sys.executable, "-m", "parasim",
                 "validate", str(path), "--profile", profile, "--predicted", str(pred),
                 "--measured", str(meas), "--force"], 900)
            rows = json.loads(meas.read_text())["validation"]
            if len(rows) != len(strategies):
                sys.exit(f"{path}: {len(strategies)} strategies, {len(rows)} validated")
            for r in rows:
                runs.setdefault(r["strategy"], []).append({**r, "model": model, "ranks": ranks})
    cases = [median_case(rs) for rs in runs.values()]
    print()
    print(f"{'case':<24}{'ranks':>6}{'predicted ms':>14}{'measured ms':>13}{'error':>9}"
          f"{'spread':>9}")
    for c in cases:
        print(f"{c['strategy']:<24}{c['ranks']:>6}{c['predicted_s'] * 1e3:>14.2f}"
              f"{c['measured_s'] * 1e3:>13.2f}{c['error']:>+9.1%}{c['spread']:>9.1%}")
    errors = [abs(c["error"]) for c in cases]
    mape = sum(errors) / len(errors)
    worst = max(cases, key=lambda c: abs(c["error"]))
    right, pairs, wrong_big, big = ranking(cases)
    print()
    print(f"cases: {len(cases)}  MAPE: {mape:.1%} (target <= 10%)  worst: {worst['error']:+.1%} "
          f"({worst['strategy']}, target <= 25%)")
    print(f"ranking: {right}/{pairs} pairs of one model in the measured order by throughput; "
          f"{big - len(wrong_big)}/{big} of the pairs that differ by more than 10% (target: all)")
    for a, b in wrong_big:
        print(f"  ranked wrong: {a['strategy']} against {b['strategy']}")
    print(f"profiles and Results in {out}; {time.time() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

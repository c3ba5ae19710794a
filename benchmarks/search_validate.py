"""Does the search's pick hold when the plans run? Calibrate this machine, search a small model
on 4 ranks with the profile, execute the picks, and print predicted against measured order.

    python benchmarks/search_validate.py [--profile P] [--model mlp|lenet] [--top 4]
                                         [--repeats 3] [--out DIR]

Each round runs ``mpiexec -n 4 parasim search SCENARIO --profile P --validate TOP``: rank 0
searches the plans of the model on 4 ranks of this machine as the profile measured it (4 ranks
share 2 cores on a 2-core machine, which the profile's core sharing models), then every rank
executes the best ``TOP`` simulated plans that run on 4 ranks and two lower-ranked ones. Without
``--profile``, ``mpiexec -n 4 parasim calibrate --grid small`` writes one first.

Printed per round: the command's table (predicted rank, plan, predicted and measured samples/s,
measured rank) and whether the measured fastest is the search's first or within 10% of it; with
several rounds, the median measured throughput per plan over them (a machine shared with others
drifts by 10% and more within minutes), and the verdict on the medians. Target: the search's
first is the measured fastest or within 10% of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from fidelity import positive, run  # (the benchmarks' folder is on the path when run)

MODELS = {"mlp": {"zoo": "mlp", "params": {"sizes": [784, 1024, 1024, 10]}},
          "lenet": {"zoo": "lenet5", "params": {"input_shape": [1, 32, 32]}}}
RANKS = 4
WITHIN = 0.10


def scenario(model: str) -> dict:
    return {"name": f"search {model} on {RANKS} ranks", "seed": 1, "model": MODELS[model],
            "cluster": {"nodes": 1, "devices_per_node": RANKS, "device": "cpu_core_modern",
                        "intra_link": "shm"},
            "training": {"batch_size": 256, "iterations": 30, "warmup_iterations": 3,
                         "learning_rate": 0.01},
            # the search reads the model, cluster and training; this entry is a yardstick
            "strategies": [{"name": "dp-ring", "scheme": "data_parallel", "exchange": "ring"}],
            "search": {"synchronous_only": True}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", help="an existing profile (default: calibrate first)")
    ap.add_argument("--model", default="mlp", choices=sorted(MODELS))
    ap.add_argument("--top", type=positive, default=4, help="plans executed from the top")
    ap.add_argument("--repeats", type=positive, default=3)
    ap.add_argument("--out", help="keep the profile, the scenario and the Results here")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="search-validate-"))
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    profile = args.profile
    if not profile:
        profile = str(out / "profile.yaml")
        print(f"calibrating (mpiexec -n {RANKS}, small grid) ...", flush=True)
        run(["mpiexec", "-n", str(RANKS), sys.executable, "-m", "parasim", "calibrate",
             "-o", profile, "--grid", "small", "--force"], 900)
    path = out / f"{args.model}_{RANKS}.yaml"
    path.write_text(yaml.safe_dump(scenario(args.model), sort_keys=False))
    measured: dict[str, list[float]] = {}
    first = None
    for rep in range(args.repeats):
        result = out / f"search.{rep + 1}.json"
        print(f"\nround {rep + 1} of {args.repeats}: mpiexec -n {RANKS} parasim search "
              f"{path.name} --profile {Path(profile).name} --validate {args.top}", flush=True)
        text = run(["mpiexec", "-n", str(RANKS), sys.executable, "-m", "parasim",
                    "search", str(path), "--profile", profile, "--validate", str(args.top),
                    "--json", str(result), "--force", "--timeout", "120"], 1800)
        print(text[text.index("validation:"):].rstrip(), flush=True)
        plans = json.loads(result.read_text())["validation"]["plans"]
        first = first or plans[0]["strategy"]
        for p in plans:
            if p["measured_samples_per_s"]:
                measured.setdefault(p["strategy"], []).append(p["measured_samples_per_s"])
    medians = {name: statistics.median(v) for name, v in measured.items()}
    order = sorted(medians, key=lambda n: -medians[n])
    print(f"\nmedian measured samples/s over {args.repeats} round(s), fastest first:")
    for i, name in enumerate(order, 1):
        tag = "  <- the search's pick" if name == first else ""
        print(f"  {i}. {name:<44} {medians[name]:>10.1f}{tag}")
    best = medians[order[0]]
    pick = medians.get(first, 0.0)
    ok = pick >= best * (1 - WITHIN)
    print(f"the search's pick {first}: {pick / best:.1%} of the measured fastest "
          f"({order[0]}); target >= {1 - WITHIN:.0%}: {'PASS' if ok else 'MISSED'}")
    print(f"profile, scenario and Results in {out}; {time.time() - began:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

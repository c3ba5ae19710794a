"""Model averaging for real (data parallel with ``local_steps`` > 1, mpiexec -n 2): every replica
leaves each period with the mean of the replicas' models, each replica having stepped on its own
batch's mean gradient at the training rate in between."""

from __future__ import annotations

import json
from pathlib import Path

from tests.executor.test_execute import launch

SCENARIO = """\
name: averaging test
seed: 5
model: {zoo: mlp, params: {sizes: [64, 16, 10]}}
cluster: {nodes: 1, devices_per_node: 2, device: cpu_core, intra_link: shm}
training: {batch_size: 32, iterations: 3, warmup_iterations: 0, learning_rate: 0.2,
           momentum: 0.0}
data: {kind: digits}
strategies:
  - {name: local3, scheme: data_parallel, devices: 2, local_steps: 3, exchange: tree}
"""

# Each rank runs three periods of the plan, recording its parameters just before the averaging
# (after its last local step) and after it; a second, plain runner on the rank's own samples
# replays the local steps at the rate the first must have used (lr on the local mean gradient).
CODE = """
import json, sys
import numpy as np
from mpi4py import MPI
from executor.interpreter.execute import dataset_for
from executor.interpreter.run_plan import _batches
from executor.interpreter.runner import RankRunner
from executor.kernels import get_backend
from simulator.predict import context
from simulator.scenario import load_scenario
from simulator.strategies import build_plan

comm = MPI.COMM_WORLD
sc = load_scenario(sys.argv[1])
ctx = context(sc)
plan = build_plan(ctx, sc.strategies[0])
backend = get_backend("reference")
t = sc.training
run = RankRunner(comm, plan, ctx.graph, backend, sc.seed, t.learning_rate, t.momentum)
flat = lambda r: np.concatenate([np.asarray(p).ravel() for n in sorted(r.layers)
                                 for k, p in sorted(r.layers[n].params.items())])
before = []
average = run._average_params
def record(group, op):
    names = [n for n in op.tensor.partition(":")[2].split(",") if n]
    run._update(names)  # the last local step, then nothing left for the averaging's own step
    before.append(flat(run))
    average(group, op)
run._average_params = record
data = dataset_for(sc, ctx.graph)
prog = plan.ranks[comm.Get_rank()]
starts, after = [], []
for period, (x, y) in zip(range(3), _batches(data, plan.samples_per_period, 0, prog)):
    starts.append(flat(run))
    run.run_period(x, y)
    after.append(flat(run))
out = comm.gather((starts, before, after), root=0)
if comm.Get_rank() == 0:
    (s0, b0, a0), (s1, b1, a1) = out
    report = {
        "replicas_equal": all(np.array_equal(x, y) for x, y in zip(a0, a1)),
        "mean_error": max(float(np.abs(a - (x + y) / 2).max()) for a, x, y in zip(a0, b0, b1)),
        "replicas_moved_apart": min(float(np.abs(x - y).max()) for x, y in zip(b0, b1)),
        "moved": float(np.abs(a0[-1] - s0[0]).max()),
    }
    print("REPORT " + json.dumps(report))
"""


def test_every_replica_leaves_with_the_mean_model(tmp_path: Path):
    path = tmp_path / "avg.yaml"
    path.write_text(SCENARIO)
    done = launch(2, [str(path)], code=CODE, timeout=180)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("REPORT "))
    r = json.loads(line[len("REPORT "):])
    assert r["replicas_moved_apart"] > 1e-4  # their local steps differ (their own batches)
    assert r["replicas_equal"]  # and the averaging puts them back together, bit for bit
    assert r["mean_error"] < 1e-6  # at the mean of what they held
    assert r["moved"] > 1e-3

"""Sandblaster run for real: portions go to whichever worker is idle, gradients accumulate on the
shards, one L-BFGS step per batch; the worker count does not change the result, and a slow
worker costs Sandblaster far less than a static equal split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.executor.test_execute import launch

SCENARIO = """\
name: sandblaster test
seed: 3
model: {{zoo: mlp, params: {{sizes: {sizes}}}}}
cluster: {{nodes: 1, devices_per_node: 2, device: cpu_core, intra_link: shm,
           parameter_servers: {{hosts: {hosts}, device: cpu_core, nic: eth_10g}}}}
training: {{batch_size: {batch}, iterations: {iterations}, warmup_iterations: 1,
           learning_rate: 0.1}}
data: {{kind: digits}}
strategies:
  - {{name: sb1, scheme: sandblaster, workers: 1, portions: {portions}}}
  - {{name: sb2, scheme: sandblaster, workers: 2, portions: {portions}}}
  - {{name: static-split, scheme: data_parallel, devices: 2}}
"""


def write(tmp_path: Path, **kw) -> Path:
    values = {"sizes": "[64, 32, 10]", "hosts": 2, "batch": 64, "portions": 8, "iterations": 3,
              **kw}
    path = tmp_path / "sb.yaml"
    path.write_text(SCENARIO.format(**values))
    return path


def test_the_worker_count_does_not_change_the_batch_step(tmp_path: Path):
    path = write(tmp_path)
    w1, w2 = tmp_path / "1.npz", tmp_path / "2.npz"
    res = tmp_path / "2.json"
    assert launch(3, ["execute", str(path), "--backend", "reference", "--strategy", "sb1",
                      "--weights", str(w1)]).returncode == 0
    done = launch(4, ["execute", str(path), "--backend", "reference", "--strategy", "sb2",
                      "--weights", str(w2), "--json", str(res)])
    assert done.returncode == 0, done.stderr
    a, b = np.load(w1), np.load(w2)
    for key in a.files:
        np.testing.assert_allclose(b[key.replace("sb1/", "sb2/")], a[key], rtol=1e-4,
                                   atol=1e-6, err_msg=key)
    entry = json.loads(res.read_text())["results"][0]
    assert sum(entry["portions_per_worker"].values()) == 8 * 3  # every portion of 3 batches
    loss = entry["training"]["loss"]
    assert loss[-1] < loss[0]


def batch_time(tmp_path: Path, ranks: int, strategy: str, slowdown: str) -> tuple[float, dict]:
    path = write(tmp_path, sizes="[64, 512, 512, 10]", hosts=1, batch=512, portions=32,
                 iterations=5)
    out = tmp_path / f"{strategy}{slowdown}.json"
    done = launch(ranks, ["execute", str(path), "--backend", "cpu", "--strategy", strategy,
                          "--json", str(out)], env={"PARASIM_SLOWDOWN": slowdown})
    assert done.returncode == 0, done.stderr
    entry = json.loads(out.read_text())["results"][0]
    return entry["iteration_time_s"], entry


def test_a_slow_worker_costs_sandblaster_far_less_than_a_static_split(tmp_path: Path):
    sb_fast, _ = batch_time(tmp_path, 3, "sb2", "")
    sb_slow, entry = batch_time(tmp_path, 3, "sb2", "3@1")
    dp_fast, _ = batch_time(tmp_path, 2, "static-split", "")
    dp_slow, _ = batch_time(tmp_path, 2, "static-split", "3@1")
    # the static split waits for the 3x slower worker every step; Sandblaster hands it fewer
    # portions. Ratios measured side by side and compared with each other, with margins that
    # hold with a competing process on the machine (which stretches every run, the fast ones
    # too)
    assert dp_slow / dp_fast > 1.3
    assert sb_slow / sb_fast < dp_slow / dp_fast
    portions = entry["portions_per_worker"]
    assert portions["node0.cpu1"] < 0.75 * portions["node0.cpu0"]

"""Downpour run for real: one worker and one shard is plain SGD; staleness is recorded; a dead
worker does not stop the others (the job exits 0), while synchronous data parallel aborts naming
the lost rank. (More failures and the launch line they need: test_reliability.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.executor.test_execute import launch

SCENARIO = """\
name: downpour test
seed: 3
model: {{zoo: mlp, params: {{sizes: [64, 32, 10]}}}}
cluster: {{nodes: 1, devices_per_node: 3, device: cpu_core, intra_link: shm,
           parameter_servers: {{hosts: {hosts}, device: cpu_core, nic: eth_10g}}}}
training: {{batch_size: 18, iterations: {iterations}, warmup_iterations: 0,
           learning_rate: 0.1, momentum: 0.0}}
data: {{kind: digits}}
strategies:
  - {{name: one, scheme: data_parallel, devices: 1}}
  - {{name: downpour-1x1, scheme: downpour, workers: 1, updater: sgd}}
  - {{name: downpour-3, scheme: downpour, workers: 3, n_fetch: 2, n_push: 1}}
  - {{name: sync-3, scheme: data_parallel, devices: 3}}
"""


def write(tmp_path: Path, hosts: int = 2, iterations: int = 6) -> Path:
    path = tmp_path / f"downpour{hosts}.yaml"
    path.write_text(SCENARIO.format(hosts=hosts, iterations=iterations))
    return path


def test_one_worker_and_one_shard_is_plain_sgd(tmp_path: Path):
    path = write(tmp_path, hosts=1)
    one, down = tmp_path / "one.npz", tmp_path / "down.npz"
    assert launch(1, ["execute", str(path), "--backend", "reference", "--weights",
                      str(one)]).returncode == 0
    done = launch(2, ["execute", str(path), "--backend", "reference", "--strategy",
                      "downpour-1x1", "--weights", str(down), "--json",
                      str(tmp_path / "d.json")])
    assert done.returncode == 0, done.stderr
    a, b = np.load(one), np.load(down)
    for key in a.files:
        np.testing.assert_allclose(b[key.replace("one/", "downpour-1x1/")], a[key],
                                   rtol=1e-5, atol=1e-6, err_msg=key)
    entry = json.loads((tmp_path / "d.json").read_text())["results"][0]
    assert entry["staleness"] == {"mean": 0.0, "max": 0, "histogram": {"0": 6}}


def test_three_workers_record_staleness_and_every_sample(tmp_path: Path):
    path = write(tmp_path)
    out = tmp_path / "r.json"
    done = launch(5, ["execute", str(path), "--backend", "reference", "--strategy",
                      "downpour-3", "--json", str(out)])
    assert done.returncode == 0, done.stderr
    e = json.loads(out.read_text())["results"][0]
    # 3 workers x 6 samples per step x 2 steps per period x 6 periods
    assert e["samples_processed"] == 3 * 6 * 2 * 6
    # every push (3 workers x 6 periods x 2 steps, to each of 2 shards) has a staleness
    assert sum(e["staleness"]["histogram"].values()) == 3 * 6 * 2 * 2
    assert e["failures"] == [] and e["mode"] == "measured"
    assert len(e["peak_rss_bytes_per_device"]) == 3  # the workers'
    assert "gradient staleness mean" in done.stdout


def test_a_dead_worker_does_not_stop_downpour(tmp_path: Path):
    path = write(tmp_path)
    out = tmp_path / "k.json"
    done = launch(5, ["execute", str(path), "--backend", "reference", "--strategy",
                      "downpour-3", "--json", str(out), "--lost-after", "2"],
                  timeout=120, launcher_args=["-disable-auto-cleanup"],
                  env={"PARASIM_INJECT_FAULT": "exit@2"})
    assert done.returncode == 0, done.stderr
    e = json.loads(out.read_text())["results"][0]
    # it died before its first push: the two survivors' samples are all there is
    assert e["failures"] == [{"rank": 2, "what": "lost (its heartbeat stopped); the others "
                              "went on", "samples_pushed": 0}]
    assert e["samples_processed"] == 2 * 6 * 2 * 6
    assert "rank 2 lost" in done.stdout
    assert "rank 2 (process" in done.stderr and "exited abruptly with code 17" in done.stderr


def test_synchronous_data_parallel_aborts_naming_the_lost_rank(tmp_path: Path):
    path = write(tmp_path)
    done = launch(3, ["execute", str(path), "--backend", "reference", "--strategy", "sync-3",
                      "--lost-after", "2"], timeout=120,
                  launcher_args=["-disable-auto-cleanup"], env={"PARASIM_INJECT_FAULT": "exit@1"})
    assert done.returncode != 0
    assert "rank 1 lost (no heartbeat for 2 s)" in done.stderr

"""The executor end to end with real ranks (mpiexec -n 1, 2, 4): training is real, partitions
compute what the unpartitioned model computes, failures end the job, never hang.

Every launch runs in its own process group with a timeout and a group kill, one BLAS / Numba
thread per rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.procs import run_group

MLP = """\
name: exec test
seed: 3
model: {{zoo: mlp, params: {{sizes: [64, 32, 16, 10]}}}}
cluster: {{nodes: 1, devices_per_node: 4, device: cpu_core, intra_link: shm,
           parameter_servers: {{hosts: 2, device: cpu_core, nic: eth_10g}}}}
training: {{batch_size: 32, iterations: {iterations}, warmup_iterations: 0, learning_rate: 0.2}}
data: {{kind: digits}}
strategies:
  - {{name: one, scheme: data_parallel, devices: 1}}
  - {{name: dp2-ring, scheme: data_parallel, devices: 2, exchange: ring}}
  - {{name: dp2-tree, scheme: data_parallel, devices: 2, exchange: tree}}
  - {{name: dp2-mpi, scheme: data_parallel, devices: 2, exchange: mpi}}
  - {{name: dp2-buckets, scheme: data_parallel, devices: 2, bucket_MiB: 0.001, overlap: true}}
  - {{name: gpipe2, scheme: pipeline, stages: 2, micro_batches: 4}}
  - {{name: 1f1b2, scheme: pipeline, stages: 2, micro_batches: 4, schedule: 1f1b}}
  - {{name: tensor2, scheme: tensor, devices: 2}}
  - {{name: dp4-ring, scheme: data_parallel, devices: 4, exchange: ring}}
  - {{name: dp4-hier, scheme: data_parallel, devices: 4, exchange: hierarchical}}
  - {{name: 1f1b2x2, scheme: pipeline, stages: 2, replicas: 2, micro_batches: 2,
      schedule: 1f1b}}
  - {{name: tensor4, scheme: tensor, devices: 4}}
  - {{name: dp2-ps2, scheme: data_parallel, devices: 2, exchange: ps}}
"""

CNN = """\
name: exec cnn
seed: 5
model:
  input_shape: [1, 8, 8]
  layers:
    - {kind: conv, name: c1, out_channels: 4, kernel: 3, padding: 1}
    - {kind: act, fn: relu}
    - {kind: pool, kernel: 2, stride: 2, mode: max}
    - {kind: flatten}
    - {kind: dense, name: f1, units: 16}
    - {kind: act, fn: tanh}
    - {kind: dense, name: f2, units: 10}
    - {kind: softmax}
cluster: {nodes: 1, devices_per_node: 2, device: cpu_core, intra_link: shm}
training: {batch_size: 16, iterations: 3, warmup_iterations: 0, learning_rate: 0.1}
data: {kind: digits}
strategies:
  - {name: one, scheme: data_parallel, devices: 1}
  - {name: dp2, scheme: data_parallel, devices: 2}
  - {name: hybrid2, scheme: hybrid, devices: 2}
  - {name: tensor2, scheme: tensor, devices: 2}
  - {name: gpipe2, scheme: pipeline, stages: 2, micro_batches: 2}
"""


def launch(ranks: int, args: list[str], timeout: float = 240, env: dict | None = None,
           launcher_args: list[str] | None = None, module: str = "parasim",
           code: str | None = None, one_core: bool = False) -> subprocess.CompletedProcess:
    """``mpiexec -n RANKS python -m MODULE ARGS`` (or ``python -c CODE ARGS``); with
    ``one_core`` every rank runs on the first core this process may use."""
    run = ["-c", code] if code is not None else ["-m", module]
    cmd = ["mpiexec", *(launcher_args or []), "-n", str(ranks), sys.executable, *run, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", **(env or {})}
    core = {min(os.sched_getaffinity(0))}
    pin = (lambda: os.sched_setaffinity(0, core)) if one_core else None
    return run_group(cmd, timeout, env=full_env, preexec_fn=pin)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """The MLP and CNN scenarios at 1, 2 and 4 ranks (reference kernels): Results and weights."""
    tmp = tmp_path_factory.mktemp("exec")
    out: dict[str, dict] = {}
    for name, text, sizes in (("mlp", MLP.format(iterations=4), (1, 2, 4)),
                              ("cnn", CNN, (1, 2))):
        path = tmp / f"{name}.yaml"
        path.write_text(text)
        for n in sizes:
            res, wts = tmp / f"{name}{n}.json", tmp / f"{name}{n}.npz"
            done = launch(n, ["execute", str(path), "--backend", "reference", "--json", str(res),
                              "--weights", str(wts)],
                          env={"MPIR_CVAR_NUM_CLIQUES": "2"} if n == 4 else None)
            assert done.returncode == 0, done.stderr
            weights = dict(np.load(wts))
            out[f"{name}{n}"] = {"result": json.loads(res.read_text()), "weights": weights,
                                 "stdout": done.stdout}
    return out


def weights_of(run: dict, strategy: str) -> dict[str, np.ndarray]:
    prefix = f"{strategy}/"
    return {k[len(prefix):]: v for k, v in run["weights"].items() if k.startswith(prefix)}


def entry(run: dict, strategy: str) -> dict:
    return next(e for e in run["result"]["results"] if e["strategy"] == strategy)


@pytest.mark.parametrize("model,ranks,strategy", [
    ("mlp", 2, "dp2-ring"), ("mlp", 2, "dp2-tree"), ("mlp", 2, "dp2-mpi"),
    ("mlp", 2, "dp2-buckets"), ("mlp", 2, "gpipe2"), ("mlp", 2, "1f1b2"), ("mlp", 2, "tensor2"),
    ("mlp", 4, "dp4-ring"), ("mlp", 4, "dp4-hier"), ("mlp", 4, "1f1b2x2"), ("mlp", 4, "tensor4"),
    ("mlp", 4, "dp2-ps2"),
    ("cnn", 2, "dp2"), ("cnn", 2, "hybrid2"), ("cnn", 2, "tensor2"), ("cnn", 2, "gpipe2"),
])
def test_a_partitioned_run_ends_with_the_one_device_weights(runs, model, ranks, strategy):
    one = weights_of(runs[f"{model}1"], "one")
    got = weights_of(runs[f"{model}{ranks}"], strategy)
    assert got.keys() == one.keys() and one
    for key in one:
        np.testing.assert_allclose(got[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_ranks_sharing_a_core_wait_quietly_and_train_alike(runs, tmp_path: Path):
    # 4 ranks on one core: every wait sleeps between tests of its request
    # (executor/mpi/collectives.py);
    # the ring all-reduce, the pipeline's messages, the barriers and the parameter servers'
    # pushes and pulls still give the one-device weights
    path = tmp_path / "mlp.yaml"
    path.write_text(MLP.format(iterations=4))
    res, wts = tmp_path / "q.json", tmp_path / "q.npz"
    names = ["dp4-ring", "1f1b2x2", "dp2-ps2"]
    done = launch(4, ["execute", str(path), "--backend", "reference", "--json", str(res),
                      "--weights", str(wts), *(a for n in names for a in ("--strategy", n))],
                  one_core=True)
    assert done.returncode == 0, done.stderr
    assert "quiet waits" in done.stdout
    assert json.loads(res.read_text())["scenario"]["waits"] == "quiet"
    assert runs["mlp1"]["result"]["scenario"]["waits"] == "polling"
    one = weights_of(runs["mlp1"], "one")
    run = {"weights": dict(np.load(wts))}
    for name in names:
        got = weights_of(run, name)
        assert got.keys() == one.keys()
        for key in one:
            np.testing.assert_allclose(got[key], one[key], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} {key}")


def test_training_is_real_the_loss_falls(tmp_path: Path):
    path = tmp_path / "long.yaml"
    # lr 0.05 with momentum 0.9 (the shared scenario's 0.2 overshoots over many steps; an
    # independent NumPy MLP follows the same curve, step for step)
    path.write_text(MLP.format(iterations=80).replace("learning_rate: 0.2",
                                                      "learning_rate: 0.05"))
    res = tmp_path / "r.json"
    done = launch(2, ["execute", str(path), "--backend", "reference", "--strategy", "dp2-ring",
                      "--json", str(res)])
    assert done.returncode == 0, done.stderr
    curve = json.loads(res.read_text())["results"][0]["training"]
    assert curve["loss"][-1] < 0.6 * curve["loss"][0]
    assert curve["accuracy"][-1] > 0.5  # ten classes: chance is 0.1


def test_the_measured_result_has_the_simulators_schema(runs):
    result = runs["mlp2"]["result"]
    assert {"scenario", "code_version", "results"} <= result.keys()
    e = entry(runs["mlp2"], "gpipe2")
    assert e["mode"] == "measured" and e["devices"] == 2
    assert set(e["breakdown_s"]) == {"compute", "exposed_communication", "ps_wait", "idle",
                                     "host_device_copy"}
    assert e["iteration_time_s"] > 0 and e["throughput_samples_per_s"] > 0
    # each rank's parts add up to its own period (idle is the rest); the iteration time is
    # rank 0's. They differ by how far apart the ranks leave each period's barrier, which a
    # busy machine (a rank waiting for a core) stretches: a bound that holds under load
    assert abs(sum(e["breakdown_s"].values()) - e["iteration_time_s"]) < 0.25 * \
        e["iteration_time_s"] + 1e-4
    assert len(e["training"]["loss"]) == 4
    assert {s[0] for s in e["timeline"]["spans"]} == {"node0.cpu0", "node0.cpu1"}
    # each rank's resident peak: at least the Python interpreter and NumPy (tens of MiB), and
    # below the machine's memory
    rss = e["peak_rss_bytes_per_device"]
    assert set(rss) == {"node0.cpu0", "node0.cpu1"}
    assert all(20 * 2**20 < b < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
               for b in rss.values())
    # strategies needing another rank count are skipped, and said so
    assert any("one: needs 1 ranks, 2 launched" in s for s in result["skipped"])
    assert "exec test: measured on 2 rank(s)" in runs["mlp2"]["stdout"]


def test_cpu_backend_trains_like_the_reference(tmp_path: Path):
    path = tmp_path / "cpu.yaml"
    path.write_text(MLP.format(iterations=3))
    outs = {}
    for backend in ("reference", "cpu"):
        w = tmp_path / f"{backend}.npz"
        done = launch(2, ["execute", str(path), "--backend", backend, "--strategy", "dp2-ring",
                          "--weights", str(w)])
        assert done.returncode == 0, done.stderr
        outs[backend] = dict(np.load(w))
    for key, ref in outs["reference"].items():
        np.testing.assert_allclose(outs["cpu"][key], ref, rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("fault", ["raise@1", "exit@1"])
def test_a_failing_rank_ends_the_whole_job(tmp_path: Path, fault: str):
    path = tmp_path / "f.yaml"
    path.write_text(MLP.format(iterations=3))
    done = launch(2, ["execute", str(path), "--backend", "reference", "--strategy", "dp2-ring"],
                  timeout=60, env={"PARASIM_INJECT_FAULT": fault})
    assert done.returncode != 0
    if fault.startswith("raise"):
        assert "rank 1: InjectedFault: fault injected" in done.stderr


def test_a_stuck_run_times_out_with_a_clear_message(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text(MLP.format(iterations=3))
    done = launch(2, ["execute", str(path), "--backend", "reference", "--strategy", "dp2-ring",
                      "--timeout", "3"], timeout=60, env={"PARASIM_INJECT_FAULT": "stall@0"})
    assert done.returncode != 0
    assert "no progress for 3 s" in done.stderr


@pytest.mark.parametrize("args,expected", [
    (["--strategy", "dp4-ring"], "strategy dp4-ring: needs 4 ranks, 2 launched"),
    (["--backend", "cuda"], "--backend cuda: no CUDA GPU found"),
])
def test_bad_requests_are_clear_errors(tmp_path: Path, args: list[str], expected: str):
    path = tmp_path / "b.yaml"
    path.write_text(MLP.format(iterations=1))
    done = launch(2, ["execute", str(path), *args], timeout=60,
                  env={"NUMBA_ENABLE_CUDASIM": "0"})
    assert done.returncode == 2
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_a_missing_data_file_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "d.yaml"
    path.write_text(MLP.format(iterations=1).replace(
        "data: {kind: digits}", "data: {kind: mnist, images: train-images.idx3-ubyte, "
                                "labels: train-labels.idx1-ubyte}"))
    done = launch(2, ["execute", str(path)], timeout=60)
    assert done.returncode == 2
    assert "train-images.idx3-ubyte" in done.stderr and "Traceback" not in done.stderr


def test_cuda_backend_end_to_end_under_the_simulator(tmp_path: Path):
    """Device buffers kept on the (simulated) GPU between layers, copied through host memory for
    MPI; the same weights as the reference kernels (tiny sizes: the simulator is slow)."""
    path = tmp_path / "cuda.yaml"
    path.write_text(MLP.format(iterations=1).replace("sizes: [64, 32, 16, 10]",
                                                     "sizes: [64, 8, 10]")
                    .replace("batch_size: 32", "batch_size: 4"))
    outs, results = {}, {}
    for backend in ("reference", "cuda"):
        w, r = tmp_path / f"{backend}.npz", tmp_path / f"{backend}.json"
        done = launch(2, ["execute", str(path), "--backend", backend, "--strategy", "dp2-ring",
                          "--weights", str(w), "--json", str(r)], timeout=600,
                      env={"NUMBA_ENABLE_CUDASIM": "1"})
        assert done.returncode == 0, done.stderr
        outs[backend] = dict(np.load(w))
        results[backend] = json.loads(r.read_text())["results"][0]
    for key, ref in outs["reference"].items():
        np.testing.assert_allclose(outs["cuda"][key], ref, rtol=1e-4, atol=1e-5, err_msg=key)
    assert results["cuda"]["backend"] == "cuda"
    assert results["cuda"]["breakdown_s"]["host_device_copy"] > 0

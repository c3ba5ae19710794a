"""Parallel DBN pre-training for real (mpiexec -n 1, 2, 4): the master's averaging equals a NumPy
reference written here, the tau rule stops layers, more ranks still converge, and the Result
has its fields.

Every launch runs in its own process group with a timeout and a group kill, one BLAS / Numba
thread per rank. The reference mirrors the reference backend's float32 arithmetic step for step,
so a Bernoulli draw never lands on the other side of a probability by rounding alone and the
runs can be compared to float tolerance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from executor.data import digits
from executor.model import init_weights
from simulator.model.zoo_small import dbn
from simulator.strategies.dbn_pretrain import layer_times, shard_bounds

F32 = np.float32
SEED, LR, SAMPLES, BATCH, SIZES = 7, 0.1, 240, 40, (64, 24, 12)
SCENARIO = f"""\
name: dbn exec test
seed: {SEED}
model: {{zoo: dbn, params: {{sizes: {list(SIZES)}}}}}
cluster: {{nodes: 1, devices_per_node: 4, device: cpu_core, intra_link: shm}}
training: {{batch_size: {BATCH}, iterations: 1, warmup_iterations: 0, learning_rate: {LR}}}
data: {{kind: digits}}
strategies:
  - {{name: one, scheme: dbn_pretrain, devices: 1, samples: {SAMPLES}, epochs: 6, tau: 0.0}}
  - {{name: one-stop, scheme: dbn_pretrain, devices: 1, samples: {SAMPLES}, epochs: 10,
      tau: 1.0}}
  - {{name: two, scheme: dbn_pretrain, devices: 2, samples: {SAMPLES}, epochs: 6, tau: 0.0}}
  - {{name: two-ring, scheme: dbn_pretrain, devices: 2, samples: {SAMPLES}, epochs: 6,
      tau: 0.0, exchange: ring}}
  - {{name: four, scheme: dbn_pretrain, devices: 4, samples: {SAMPLES}, epochs: 6, tau: 0.0}}
"""
# until simulator/strategies/__init__.py lists the scheme, the launch lists it first
BOOT = ("import sys; import simulator.strategies as s; "
        "s.SCHEMES = s.SCHEMES if 'dbn_pretrain' in s.SCHEMES else (*s.SCHEMES, 'dbn_pretrain'); "
        "from executor.dbn import main; sys.exit(main(sys.argv[1:]))")


def launch(ranks: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-c", BOOT, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dbn") / "dbn.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def runs(scenario_file) -> dict[str, dict]:
    """Every strategy at its rank count (reference kernels): entry and trained weights."""
    out = {}
    for n, names in ((1, ("one", "one-stop")), (2, ("two", "two-ring")), (4, ("four",))):
        res, wts = scenario_file.with_name(f"r{n}.json"), scenario_file.with_name(f"w{n}.npz")
        done = launch(n, [str(scenario_file), "--backend", "reference", "--json", str(res),
                          "--weights", str(wts)])
        assert done.returncode == 0, done.stderr
        result, weights = json.loads(res.read_text()), dict(np.load(wts))
        for name in names:
            entry = next(e for e in result["results"] if e["strategy"] == name)
            out[name] = {"entry": entry, "result": result,
                         "weights": {k[len(name) + 1:]: v for k, v in weights.items()
                                     if k.startswith(f"{name}/")}}
    return out


# ---- the NumPy reference ------------------------------------------------------------------------

def gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(F32)


def sigmoid32(a: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-a))).astype(F32)


def cd1(v0, w, b_vis, b_hid, u):  # noqa: ANN001, ANN201
    """One CD-1 step (Hinton 2002): up, Bernoulli sample, down, up; the update directions and
    the reconstruction error."""
    h0 = sigmoid32(gemm(v0, w) + b_hid)
    s = (u < h0).astype(F32)
    v1 = sigmoid32(gemm(s, w.T) + b_vis)
    h1 = sigmoid32(gemm(v1, w) + b_hid)
    n = v0.shape[0]
    dw = ((gemm(v0.T, h0) - gemm(v1.T, h1)) / n).astype(F32)
    return (dw, (v0 - v1).mean(axis=0).astype(F32), (h0 - h1).mean(axis=0).astype(F32),
            float(((v0 - v1) ** 2).mean()))


def tree_sum(parts: list[np.ndarray]) -> np.ndarray:
    """The master's sum in the order a binomial-tree reduce adds: ((0+1)+(2+3))..."""
    parts = [p.copy() for p in parts]
    step = 1
    while step < len(parts):
        for i in range(0, len(parts) - step, 2 * step):
            parts[i] += parts[i + step]
        step *= 2
    return parts[0]


def reference(k: int, epochs: int, tau: float) -> tuple[dict, list[list[float]]]:
    """Greedy layer-wise CD-1, each of k shards training one epoch from the same weights, the
    master averaging their changes; a layer stops when its error has not fallen by more than
    tau for three epochs. Returns the weights and the errors per layer."""
    graph = dbn(SIZES)
    layers = [f"rbm{i}" for i in range(1, len(SIZES))]
    start = init_weights(graph, layers, SEED)
    x = np.ascontiguousarray(digits().x[:SAMPLES].reshape(SAMPLES, -1), dtype=F32)
    shards = [shard_bounds(SAMPLES, k, r) for r in range(k)]
    batch = BATCH // k
    weights, errors = {}, []
    for li, name in enumerate(layers):
        p = {key: start[name][key].copy() for key in ("w", "b_vis", "b")}
        errs: list[float] = []
        stalled = 0
        for epoch in range(epochs):
            key = np.random.SeedSequence([SEED, li, epoch]).generate_state(2, np.uint64)
            u = np.random.Generator(np.random.Philox(key=key)).random(
                (SAMPLES, p["b"].size)).astype(F32)
            bufs = []
            for first, count in shards:
                mine = {k_: v.copy() for k_, v in p.items()}
                delta = {k_: np.zeros_like(v) for k_, v in p.items()}
                err_sum = 0.0
                for i in range(first, first + count, batch):
                    j = min(i + batch, first + count)
                    dw, dbv, dbh, err = cd1(x[i:j], mine["w"], mine["b_vis"], mine["b"], u[i:j])
                    for k_, g in (("w", dw), ("b_vis", dbv), ("b", dbh)):
                        mine[k_] += F32(LR) * g
                        delta[k_] += F32(LR) * g
                    err_sum += err * (j - i)
                bufs.append(np.concatenate([delta["w"].ravel(), delta["b_vis"], delta["b"],
                                            np.array([err_sum, count], F32)]))
            total = tree_sum(bufs)
            at = 0
            for k_ in ("w", "b_vis", "b"):
                size = p[k_].size
                p[k_] = p[k_] + total[at:at + size].reshape(p[k_].shape) * F32(1.0 / k)
                at += size
            errs.append(float(total[-2]) / float(total[-1]))
            if epoch > 0:
                stalled = stalled + 1 if errs[-2] - errs[-1] <= tau else 0
            if stalled >= 3:
                break
        weights[name], x = p, sigmoid64(gemm(x, p["w"]) + p["b"])
        errors.append(errs)
    return weights, errors


def sigmoid64(a: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-a.astype(np.float64)))).astype(F32)


# ---- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, k, epochs, tau", [
    ("one", 1, 6, 0.0), ("two", 2, 6, 0.0), ("two-ring", 2, 6, 0.0), ("four", 4, 6, 0.0),
    ("one-stop", 1, 10, 1.0),
])
def test_the_masters_averaging_equals_the_numpy_reference(runs, name, k, epochs, tau):
    weights, errors = reference(k, epochs, tau)
    got = runs[name]
    record = got["entry"]["pretraining"]["layers"]
    assert [r["layer"] for r in record] == list(weights)
    for r, errs in zip(record, errors):
        assert r["epochs"] == len(errs)
        np.testing.assert_allclose(r["reconstruction_error"], errs, rtol=1e-5)
    for layer, params in weights.items():
        for key, value in params.items():
            np.testing.assert_allclose(got["weights"][f"{layer}/{key}"], value, rtol=1e-5,
                                       atol=1e-6, err_msg=f"{layer}/{key}")


def test_tau_stops_every_layer_after_three_epochs_without_a_fall(runs):
    record = runs["one-stop"]["entry"]["pretraining"]["layers"]
    # tau 1.0: no epoch's error falls by more than 1, so the fourth epoch is each layer's last
    assert [(r["epochs"], r["converged"]) for r in record] == [(4, True), (4, True)]
    assert [(r["epochs"], r["converged"]) for r in runs["one"]["entry"]["pretraining"]
            ["layers"]] == [(6, False), (6, False)]


@pytest.mark.parametrize("name", ["two", "four"])
def test_more_ranks_still_converge(runs, name):
    for r in runs[name]["entry"]["pretraining"]["layers"]:
        errs = r["reconstruction_error"]
        assert errs[-1] < 0.8 * errs[0], errs


def test_the_measured_result_has_its_fields(runs):
    e = runs["two"]["entry"]
    assert (e["mode"], e["scheme"], e["devices"], e["backend"]) == (
        "measured", "dbn_pretrain", 2, "reference")
    pt = e["pretraining"]
    assert {"layers", "epochs_to_convergence", "total_time_s"} <= pt.keys()
    assert pt["epochs_to_convergence"] == 12 and pt["total_time_s"] > 0
    assert all({"layer", "epochs", "reconstruction_error", "time_s"} <= r.keys()
               for r in pt["layers"])
    assert e["iteration_time_s"] == pytest.approx(pt["total_time_s"] / 12)
    assert e["throughput_samples_per_s"] == pytest.approx(SAMPLES * 12 / pt["total_time_s"])
    assert len(e["iteration_times_s"]) == 12
    assert set(e["breakdown_s"]) == {"compute", "exposed_communication", "ps_wait",
                                     "host_device_copy", "idle"}
    tr = e["training"]
    assert len(tr["wall_time_s"]) == len(tr["samples"]) == len(tr["loss"]) == 12
    assert tr["wall_time_s"] == sorted(tr["wall_time_s"]) and tr["samples"][-1] == SAMPLES * 12
    assert tr["loss"] == [x for r in pt["layers"] for x in r["reconstruction_error"]]
    names = {s[2] for s in e["timeline"]["spans"]}
    assert {"rbm1.cd1", "allreduce:rbm1.e0", "rbm1.fwd", "rbm2.cd1", "allreduce:rbm2.e5"} <= names
    assert "rbm2.fwd" not in names  # the top layer's output feeds nothing in pre-training
    # every CD-1 step of both ranks: 120 samples in mini-batches of 20, 12 epochs
    assert sum(s[2].endswith(".cd1") for s in e["timeline"]["spans"]) == 2 * 6 * 12
    # the simulator's per-layer reading of a timeline agrees with the measured layer times
    times = layer_times(e, ["rbm1", "rbm2"])
    assert sum(times.values()) == pytest.approx(pt["total_time_s"], rel=0.05)


def test_the_cpu_backend_converges_alike(scenario_file, tmp_path):
    res = tmp_path / "cpu.json"
    done = launch(2, [str(scenario_file), "--strategy", "two", "--json", str(res)])
    assert done.returncode == 0, done.stderr
    assert "6/6" in done.stdout.splitlines()[2]
    (e,) = json.loads(res.read_text())["results"]
    assert e["backend"] == "cpu"
    _, errors = reference(2, 6, 0.0)
    got = [r["reconstruction_error"] for r in e["pretraining"]["layers"]]
    for mine, ref in zip(got, errors):  # other kernels: a draw may flip, the curve may not
        np.testing.assert_allclose(mine, ref, rtol=2e-2)


@pytest.mark.parametrize("ranks, args, message", [
    (1, ["--strategy", "nope"], "no strategy named 'nope'"),
    (2, ["--strategy", "four"], "strategy four: needs 4 ranks, 2 launched"),
])
def test_bad_input_is_one_line_and_exit_2(scenario_file, ranks, args, message):
    done = launch(ranks, [str(scenario_file), *args])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr

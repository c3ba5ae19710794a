"""The GPU check in one script: calibrate the CUDA kernels, compare their GEMM with cuBLAS, and
price a small shipped scenario's kernels with the profile against a real run of them.

    python benchmarks/gpu_calibrate.py [--out DIR] [--ranks 2] [--quick]

Run it on a machine with an NVIDIA GPU, numba-cuda, mpi4py and (for the cuBLAS column) CuPy;
the GPU figures are recorded by running it there: none are quoted from it yet. Three parts:

1. ``mpiexec -n RANKS parasim calibrate --backend cuda --grid full`` writes ``DIR/profile.yaml``
   (kernel curves of the numba-cuda kernels, the device's memory bandwidth, host-device copies,
   and the host's links and cores as for the CPU backend).
2. GEMM: the CUDA backend's tiled SGEMM (``executor/kernels/cuda_gemm.py``) at n x n x n for
   n = 1024, 2048, 4096, against CuPy's ``cupy.matmul`` (cuBLAS) when CuPy imports: GFLOP/s
   of each (best of 5 calls after a warm-up) and their ratio. Without CuPy one line says so
   and the backend's column is printed alone.
3. Per-kernel prediction: ``scenarios/executor_mlp.yaml``'s one-rank strategy executed with
   ``mpiexec -n 1 parasim execute --backend cuda`` and simulated with ``--profile`` the profile
   of part 1; each op of the first measured iteration (``fc1.fwd``, ``relu1.bwd``, ...) with
   its predicted and measured milliseconds and the error, and the error of the iteration.
   This is ``benchmarks/fidelity.py``'s comparison at the level of single kernels: that
   script validates whole iterations of the CPU backend and takes no backend.

``--quick`` is a smoke test that runs here without a GPU under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``): the tiny grid (which the simulator shrinks to the smallest
shapes), n = 16 and 32, and a 64-8-10 MLP for one iteration; about a minute on 2 cores. Its
figures are the simulator's (CPU emulation) and the profile says so; they only show that the
three parts run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "executor_mlp.yaml"
STRATEGY = "one-rank"
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "NUMBA_NUM_THREADS": "1"}


def run(cmd: list[str], timeout: float) -> str:
    """``cmd`` in its own session, killed as a group past ``timeout``; exits on a failure."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        sys.exit(f"did not finish in {timeout:.0f} s: {' '.join(cmd)}")
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}\n{err[-3000:]}")
    return out


def calibrate(out: Path, ranks: int, quick: bool) -> Path:
    profile = out / "profile.yaml"
    grid = "tiny" if quick else "full"
    print(f"== calibrate: mpiexec -n {ranks} parasim calibrate --backend cuda --grid {grid}",
          flush=True)
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "parasim", "calibrate",
           "--backend", "cuda", "--grid", grid, "-o", str(profile), "--force"]
    if quick:  # a smoke test on a shared machine: record the load, do not refuse on it
        cmd.append("--accept-noisy")
    print(run(cmd, 600 if quick else 3600), flush=True)
    return profile


def best_seconds(fn, sync, calls: int = 5) -> float:  # noqa: ANN001
    fn()
    sync()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_table(sizes: list[int]) -> None:
    from executor.kernels import get_backend

    k = get_backend("cuda")
    try:
        import cupy
    except ImportError:
        cupy = None
        print("CuPy does not import (pip install cupy-cuda12x): no cuBLAS column")
    print(f"== GEMM n x n x n, float32: GFLOP/s (best of 5 calls)\n"
          f"{'n':>6}{'numba-cuda':>13}{'cuBLAS':>11}{'ratio':>8}")
    rng = np.random.default_rng(0)
    for n in sizes:
        a_host = rng.random((n, n), dtype=np.float32)
        b_host = rng.random((n, n), dtype=np.float32)
        a, b = k.to_device(a_host), k.to_device(b_host)
        flops = 2.0 * n**3
        ours = flops / best_seconds(lambda a=a, b=b: k.gemm(a, b), k.synchronize) / 1e9
        line = f"{n:>6}{ours:>13.4g}"
        if cupy is not None:
            ca, cb = cupy.asarray(a_host), cupy.asarray(b_host)
            sync = cupy.cuda.Device().synchronize
            theirs = flops / best_seconds(lambda ca=ca, cb=cb: cupy.matmul(ca, cb), sync) / 1e9
            line += f"{theirs:>11.4g}{ours / theirs:>8.1%}"
        print(line, flush=True)


def scenario_file(out: Path, quick: bool) -> Path:
    """The shipped scenario's one-rank strategy (``--quick``: a 64-8-10 MLP, batch 4, one
    iteration, which the simulator runs in seconds)."""
    doc = yaml.safe_load(SCENARIO.read_text())
    doc["strategies"] = [s for s in doc["strategies"] if s["name"] == STRATEGY]
    if quick:
        doc["model"] = {"zoo": "mlp", "params": {"sizes": [64, 8, 10]}}
        doc["training"].update(batch_size=4, iterations=1, warmup_iterations=1)
    path = out / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def spans(result_file: Path) -> tuple[dict[str, float], float]:
    """Seconds per op name of the first device's timeline, and the iteration time."""
    entry = json.loads(result_file.read_text())["results"][0]
    rows = entry["timeline"]["spans"]
    first = rows[0][0]
    out: dict[str, list[float]] = {}
    for device, stream, name, _, dur in rows:
        if device == first and stream == "compute":
            out.setdefault(name, []).append(dur)
    return {n: statistics.median(d) for n, d in out.items()}, entry["iteration_time_s"]


def kernel_errors(out: Path, profile: Path, quick: bool) -> None:
    path = scenario_file(out, quick)
    measured, predicted = out / "measured.json", out / "predicted.json"
    print(f"== per-kernel prediction: {SCENARIO.relative_to(ROOT)} ({STRATEGY}"
          f"{', shrunk for --quick' if quick else ''})", flush=True)
    run(["mpiexec", "-n", "1", sys.executable, "-m", "parasim", "execute", str(path),
         "--backend", "cuda", "--json", str(measured), "--force"], 900)
    run([sys.executable, "-m", "parasim", "simulate", str(path), "--profile", str(profile),
         "--json", str(predicted), "--timeline", "--force"], 300)
    (meas, meas_iter), (pred, pred_iter) = spans(measured), spans(predicted)
    print(f"{'op':<16}{'predicted ms':>14}{'measured ms':>13}{'error':>9}")
    errors = []
    for name in meas:
        if name not in pred:
            print(f"{name:<16}{'-':>14}{meas[name] * 1e3:>13.3f}   (not in the prediction)")
            continue
        m, p = meas[name], pred[name]
        error = (p - m) / m if m > 0 else float("nan")
        errors.append(abs(error))
        print(f"{name:<16}{p * 1e3:>14.3f}{m * 1e3:>13.3f}{error:>+9.1%}")
    print(f"{'iteration':<16}{pred_iter * 1e3:>14.3f}{meas_iter * 1e3:>13.3f}"
          f"{(pred_iter - meas_iter) / meas_iter:>+9.1%}")
    if errors:
        print(f"ops: {len(errors)}, mean absolute error {statistics.fmean(errors):.1%}, "
              f"worst {max(errors):.1%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="keep the profile, scenario and Results in this folder")
    ap.add_argument("--ranks", type=int, default=2, help="ranks of the calibration (default 2)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes: a smoke test, also under NUMBA_ENABLE_CUDASIM=1")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-calibrate-"))
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if simulated:
        print("NUMBA_ENABLE_CUDASIM=1: the CUDA kernels run on numba's simulator (CPU "
              "emulation); every figure below is the emulator's, not a GPU's")
    profile = calibrate(out, args.ranks, args.quick)
    gemm_table([16, 32] if args.quick else [1024, 2048, 4096])
    kernel_errors(out, profile, args.quick)
    print(f"profile, scenario and Results in {out}; {time.time() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

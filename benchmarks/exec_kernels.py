"""Achieved GFLOP/s of the executor's GEMM and convolution kernels, each backend side by side with
numpy's BLAS in the same run (timings interleaved; best of at least ``--repeat`` runs and 0.2 s).

    python benchmarks/exec_kernels.py [--threads 1] [--repeat 3]

Prints three tables:

* GEMM, n x n x n for n = 256 .. 2048: ``np.matmul`` (float32), ``CpuBackend.gemm``, their ratio
  with PASS/FAIL against the target (CpuBackend >= 90 % of numpy), and the reference backend.
* Convolutions of LeNet and AlexNet shapes: ``CpuBackend.conv_forward`` and ``conv_backward``
  (backward counts twice the forward FLOPs), the BLAS ceiling (``np.matmul`` on exactly the
  GEMMs of the forward pass, without the im2col) with the forward's ratio to it, and the reference
  forward.
* CUDA, only on a real GPU (not ``NUMBA_ENABLE_CUDASIM``): the CUDA backend's tiled GEMM at
  1024 .. 4096 against CuPy's cuBLAS SGEMM (``cupy.matmul``) when CuPy imports, with PASS/FAIL
  against >= 25 % of cuBLAS at 4096. A missing GPU, backend or CuPy is one printed line.

Threads: ``--threads N`` sets OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS before numpy is imported (default
1, the executor's one-rank-per-core setting); with N > 1 the Numba kernels run their ``prange``
variants. Runs in well under a minute on two cores (the first run also compiles and caches the
Numba kernels).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="BLAS and Numba threads (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per kernel; best is kept")
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else parse_args([])
# thread counts are read once, when numpy/numba load: set them before either is imported
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
# OpenMP threads that spin between prange loops starve BLAS's threads (OMP_WAIT_POLICY=ACTIVE
# made convolutions 3-6x slower with two threads on two cores); PASSIVE is never slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from executor.kernels import get_backend  # noqa: E402
from executor.kernels.cpu import CpuBackend  # noqa: E402
from executor.kernels.reference import ReferenceBackend  # noqa: E402

GEMM_SIZES = (256, 512, 1024, 2048)
GEMM_TARGET = 0.90
CUDA_SIZES = (1024, 2048, 4096)
CUDA_TARGET = 0.25  # of cuBLAS, at 4096
# name: (x shape NCHW, w shape (OC, C/groups, KH, KW), stride, pad, groups)
CONVS = {
    "lenet.conv1": ((64, 1, 28, 28), (20, 1, 5, 5), 1, 0, 1),
    "lenet.conv2": ((64, 20, 12, 12), (50, 20, 5, 5), 1, 0, 1),
    "alexnet.conv1": ((8, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
    "alexnet.conv2": ((8, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "alexnet.conv3": ((8, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
}


def best_times(fns: list[Callable[[], object]], repeat: int, min_seconds: float = 0.2
               ) -> list[float]:
    """Best wall time of each function: one untimed warm-up each, then rounds that run them
    interleaved (so all see the same machine state), at least ``repeat`` rounds and until each
    has run ``min_seconds`` in all (at most 50 rounds): the best of many resists noise."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    spent = [0.0] * len(fns)
    rounds = 0
    while rounds < repeat or (min(spent) < min_seconds and rounds < 50):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            best[i], spent[i] = min(best[i], dt), spent[i] + dt
        rounds += 1
    return best


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio >= target else "FAIL"


def bench_gemm(cpu: CpuBackend, ref: ReferenceBackend, repeat: int) -> None:
    rng = np.random.default_rng(0)
    print("GEMM n x n x n, float32 (GFLOP/s)")
    print(f"{'n':>6} {'numpy':>9} {'cpu':>9} {'cpu/numpy':>10} {'':>5} {'reference':>10}")
    for n in GEMM_SIZES:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        t_np, t_cpu, t_ref = best_times(
            [partial(np.matmul, a, b), partial(cpu.gemm, a, b), partial(ref.gemm, a, b)], repeat)
        flops = 2.0 * n**3
        ratio = t_np / t_cpu
        print(f"{n:>6} {gflops(flops, t_np):>9.1f} {gflops(flops, t_cpu):>9.1f} {ratio:>10.2f} "
              f"{verdict(ratio, GEMM_TARGET):>5} {gflops(flops, t_ref):>10.1f}")
    print(f"target: cpu >= {GEMM_TARGET:.0%} of numpy\n")


def blas_gemms(w: np.ndarray, cols: np.ndarray, times: int) -> None:
    for _ in range(times):
        np.matmul(w, cols)


def bench_conv(cpu: CpuBackend, ref: ReferenceBackend, repeat: int) -> None:
    rng = np.random.default_rng(1)
    print("Convolution, float32 (GFLOP/s; backward = dx + dw, twice the forward's FLOPs)")
    print(f"{'layer':<14} {'GFLOP':>6} {'cpu fwd':>8} {'cpu bwd':>8} {'BLAS':>8} {'fwd/BLAS':>9} "
          f"{'ref fwd':>8}")
    for name, (xs, ws, stride, pad, groups) in CONVS.items():
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32)
        b = rng.standard_normal(ws[0], dtype=np.float32)
        n, _, h, wd = xs
        oc, cg, kh, kw = ws
        oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
        k, cols_n, ocg = cg * kh * kw, n * oh * ow, oc // groups
        flops = 2.0 * oc * k * cols_n
        # the ceiling: the forward's GEMMs alone, on already-lowered operands
        wg = rng.standard_normal((ocg, k), dtype=np.float32)
        cols = rng.standard_normal((k, cols_n), dtype=np.float32)
        dy = rng.standard_normal((n, oc, oh, ow), dtype=np.float32)
        t_fwd, t_bwd, t_blas, t_ref = best_times([
            partial(cpu.conv_forward, x, w, b, stride, pad, groups),
            partial(cpu.conv_backward, x, w, dy, stride, pad, groups),
            partial(blas_gemms, wg, cols, groups),
            partial(ref.conv_forward, x, w, b, stride, pad, groups),
        ], repeat)
        print(f"{name:<14} {flops / 1e9:>6.2f} {gflops(flops, t_fwd):>8.1f} "
              f"{gflops(2 * flops, t_bwd):>8.1f} {gflops(flops, t_blas):>8.1f} "
              f"{t_blas / t_fwd:>9.2f} {gflops(flops, t_ref):>8.1f}")
    print()


def synced(gemm: Callable[..., object], sync: Callable[[], object], a: object, b: object
           ) -> None:
    """One GEMM on a GPU, waited for: kernel launches return before the work is done."""
    gemm(a, b)
    sync()


def bench_cuda(repeat: int) -> None:
    print("CUDA GEMM n x n x n, float32 (GFLOP/s)")
    try:
        import numba
        from numba import cuda
    except ImportError as exc:
        print(f"skipped: numba.cuda does not import ({exc})")
        return
    if numba.config.ENABLE_CUDASIM or not cuda.is_available():
        print("skipped: no CUDA GPU (or NUMBA_ENABLE_CUDASIM is set)")
        return
    try:
        be = get_backend("cuda")
    except ImportError as exc:
        print(f"skipped: the CUDA backend does not import ({exc})")
        return
    try:
        import cupy
    except ImportError:
        cupy = None
        print("(cupy does not import: no cuBLAS comparison)")
    print(f"{'n':>6} {'cuda':>9} {'cuBLAS':>9} {'cuda/cuBLAS':>12}")
    rng = np.random.default_rng(2)
    for n in CUDA_SIZES:
        a_host = rng.standard_normal((n, n), dtype=np.float32)
        b_host = rng.standard_normal((n, n), dtype=np.float32)
        fns = [partial(synced, be.gemm, be.synchronize, be.to_device(a_host),
                       be.to_device(b_host))]
        if cupy is not None:
            fns.append(partial(synced, cupy.matmul, cupy.cuda.Device().synchronize,
                               cupy.asarray(a_host), cupy.asarray(b_host)))
        times = best_times(fns, repeat)
        flops = 2.0 * n**3
        line = f"{n:>6} {gflops(flops, times[0]):>9.1f}"
        if cupy is not None:
            ratio = times[1] / times[0]
            line += f" {gflops(flops, times[1]):>9.1f} {ratio:>12.2f}"
            if n == CUDA_SIZES[-1]:
                line += f" {verdict(ratio, CUDA_TARGET)} (target >= {CUDA_TARGET:.0%})"
        print(line)


def blas_name() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown BLAS"
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return ", ".join(f"{p['internal_api']} ({p['num_threads']} threads)" for p in pools) or "?"


def main() -> int:
    import numba

    cpu, ref = CpuBackend(parallel=ARGS.threads > 1), ReferenceBackend()
    print(f"numpy {np.__version__}, {blas_name()}; numba {numba.__version__}, "
          f"{numba.get_num_threads()} threads, CpuBackend(parallel={cpu.parallel})\n")
    bench_gemm(cpu, ref, ARGS.repeat)
    bench_conv(cpu, ref, ARGS.repeat)
    bench_cuda(ARGS.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

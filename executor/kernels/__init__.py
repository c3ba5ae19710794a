"""Kernels of the executor: one interface (:class:`executor.kernels.base.Backend`), backends
``reference`` (NumPy, the yardstick of the tests), ``cpu`` (Numba ``njit``, numpy's BLAS for GEMM)
and ``cuda`` (numba-cuda; runs on the CPU under ``NUMBA_ENABLE_CUDASIM=1``).

Layouts: float32; images NCHW; dense weights (in, out); convolution weights
(out_channels, in_channels / groups, kh, kw); transformer activations as rows (batch x sequence,
hidden), attention's ``qkv (N, S, 3 heads d)`` in Megatron-LM's per-head layout. Each backend's
transformer methods live in their own modules (``cpu_transformer``, ``cuda_transformer`` and
``cuda_attention``).
"""

from __future__ import annotations

from executor.kernels.base import Backend


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (reference, cpu or cuda); imports it only when asked."""
    if name == "reference":
        from executor.kernels.reference import ReferenceBackend

        return ReferenceBackend()
    if name == "cpu":
        from executor.kernels.cpu import CpuBackend

        return CpuBackend()
    if name == "cuda":
        from executor.kernels.cuda import CudaBackend

        return CudaBackend()
    raise ValueError(f"unknown kernel backend {name!r} (known: reference, cpu, cuda)")

"""Shared-memory tiled SGEMM for the CUDA backend: ``c = op(a) @ op(b)``, float32 in, float32
accumulate, float32 out, ``op`` = transpose where asked.

The scheme (the classic 2-D register-blocked SGEMM, as in Volkov & Demmel 2008 and the CUTLASS
"threadblock / thread tile" hierarchy): a block of ``threads x threads`` threads owns a
``tile x tile`` patch of ``c`` (``tile = threads * reg``) and walks the shared dimension in slabs
of ``bk``. Per slab, the block stages ``op(a)[rows, slab]`` and ``op(b)[slab, cols]`` in shared
memory, both stored k-major (``[k][row]`` and ``[k][col]``) so the inner loop reads a row of each;
then every thread multiplies ``reg`` values of each into its ``reg x reg`` accumulators (registers),
so each shared-memory load feeds ``reg`` fused multiply-adds. Thread ``(ty, tx)`` owns rows
``ty + threads * i`` and columns ``tx + threads * j``: strided, so a warp reads consecutive shared
words (no bank conflicts) and writes consecutive words of ``c`` (coalesced).

Transposes are compile-time constants of four specialised kernels; each loads its tiles with the
stored array's contiguous axis along consecutive threads (coalesced). The shared tiles' rows are
padded by 4 words, which removes most bank conflicts when a k-fastest load writes them. Edges:
out-of-range loads read 0 and out-of-range stores are skipped, so any shape works.

Compiled with ``fastmath`` (multiply-adds fused, denormals flushed to zero). Left out, and what
separates it from cuBLAS: double-buffered slabs (prefetch of the next slab while computing this
one), 128-bit vector loads of shared memory and warp-level tiling.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from numba import cuda, float32


class GemmTiling(NamedTuple):
    """Launch shape: ``threads x threads`` threads per block, each computing ``reg x reg``
    outputs, the shared dimension walked ``bk`` at a time."""

    threads: int = 16
    reg: int = 8
    bk: int = 8

    @property
    def tile(self) -> int:
        return self.threads * self.reg


# 256 threads, 128 x 128 outputs per block, 64 accumulators per thread: enough reuse that the
# inner loop issues 4 FMAs per shared-memory load.
DEFAULT_TILING = GemmTiling()


@functools.cache
def sgemm_kernel(trans_a: bool, trans_b: bool, tiling: GemmTiling = DEFAULT_TILING):
    """The SGEMM kernel for one (trans_a, trans_b, tiling); cached, so each compiles once."""
    threads, reg, bk = tiling
    tile = tiling.tile
    nthreads = threads * threads
    loads = tile * bk // nthreads  # elements of each tile one thread stages per slab
    if loads * nthreads != tile * bk:
        raise ValueError(f"{tiling}: tile * bk must be a multiple of threads^2")
    ld = tile + 4  # padded row of a shared tile

    @cuda.jit(fastmath=True)
    def sgemm(a, b, c, m, n, kdim):
        a_s = cuda.shared.array((bk, ld), float32)
        b_s = cuda.shared.array((bk, ld), float32)
        acc = cuda.local.array((reg, reg), float32)
        a_r = cuda.local.array(reg, float32)
        b_r = cuda.local.array(reg, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * threads + tx
        row0 = cuda.blockIdx.y * tile
        col0 = cuda.blockIdx.x * tile
        for i in range(reg):
            for j in range(reg):
                acc[i, j] = float32(0.0)
        for k0 in range(0, kdim, bk):
            for s in range(loads):
                e = tid + s * nthreads
                if trans_a:  # a is (K, M): m runs along consecutive threads
                    mm = e % tile
                    kk = e // tile
                else:  # a is (M, K): k runs along consecutive threads
                    kk = e % bk
                    mm = e // bk
                gm = row0 + mm
                gk = k0 + kk
                v = float32(0.0)
                if gm < m and gk < kdim:
                    v = a[gk, gm] if trans_a else a[gm, gk]
                a_s[kk, mm] = v
                if trans_b:  # b is (N, K)
                    kk = e % bk
                    nn = e // bk
                else:  # b is (K, N)
                    nn = e % tile
                    kk = e // tile
                gn = col0 + nn
                gk = k0 + kk
                v = float32(0.0)
                if gn < n and gk < kdim:
                    v = b[gn, gk] if trans_b else b[gk, gn]
                b_s[kk, nn] = v
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(reg):
                    a_r[i] = a_s[kk, ty + threads * i]
                for j in range(reg):
                    b_r[j] = b_s[kk, tx + threads * j]
                for i in range(reg):
                    for j in range(reg):
                        acc[i, j] += a_r[i] * b_r[j]
            cuda.syncthreads()
        for i in range(reg):
            r = row0 + ty + threads * i
            if r < m:
                for j in range(reg):
                    col = col0 + tx + threads * j
                    if col < n:
                        c[r, col] = acc[i, j]

    return sgemm


def gemm_shape(a_shape: tuple[int, ...], b_shape: tuple[int, ...], trans_a: bool,
               trans_b: bool) -> tuple[int, int, int]:
    """``(m, n, k)`` of ``op(a) @ op(b)``; a clear error when the shapes do not chain."""
    m, ka = (a_shape[1], a_shape[0]) if trans_a else (a_shape[0], a_shape[1])
    kb, n = (b_shape[1], b_shape[0]) if trans_b else (b_shape[0], b_shape[1])
    if ka != kb:
        raise ValueError(f"gemm: op(a) is {m}x{ka} but op(b) is {kb}x{n}")
    return m, n, ka


def sgemm(a, b, c, trans_a: bool = False, trans_b: bool = False,  # noqa: ANN001
          tiling: GemmTiling = DEFAULT_TILING) -> None:
    """Launch ``c[:] = op(a) @ op(b)`` on device arrays (``c`` C-contiguous, ``m x n``)."""
    m, n, k = gemm_shape(a.shape, b.shape, trans_a, trans_b)
    if tuple(c.shape) != (m, n):
        raise ValueError(f"gemm: output is {tuple(c.shape)}, expected {(m, n)}")
    if m == 0 or n == 0:
        return
    tile = tiling.tile
    grid = ((n + tile - 1) // tile, (m + tile - 1) // tile)
    sgemm_kernel(bool(trans_a), bool(trans_b), tiling)[grid, (tiling.threads, tiling.threads)](
        a, b, c, m, n, k)

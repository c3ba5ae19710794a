"""The CUDA backend's attention kernels (multi-head self-attention without projections; the
formulas are in :meth:`executor.kernels.base.Backend.attention_forward`), and the block
reductions that every row-wise CUDA transformer kernel uses (softmax, layer norm, cross-entropy).

``qkv (N, S, 3 heads d)`` in the per-head layout: head h's query, key and value are columns
``h 3d + [0, d)``, ``+ [d, 2d)``, ``+ [2d, 3d)``. ``probs`` and ``ds`` are ``(N, heads, S, S)``.
float32 throughout. Launches:

* ``scores_softmax`` and ``softmax_backward``: a block of ``ROW_THREADS`` per row
  ``(n, h, query i)``; thread t handles keys ``t, t + ROW_THREADS, ...``, each a dot product over
  d, then the row's maximum and sum come from a shared-memory tree. A causal row stops at key i;
  the backward skips keys whose probability is 0 (their score gradient is 0).
* ``attention_out`` [1-D over ``out``] and ``attention_dqkv`` [1-D over ``dqkv``]: a thread per
  output element sums over the keys (or queries); every word written once, no atomics.

Left out: tiling of q, k, v through shared memory and the fusion of the whole attention into
one kernel that never stores ``probs`` (FlashAttention, Dao et al. 2022): these are the plain
kernels whose time the executor measures, not cuDNN's or FlashAttention's.
"""

from __future__ import annotations

import math

from numba import cuda, float32

ROW_THREADS = 64  # threads of a block that reduces one row (a power of two)


@cuda.jit(device=True)
def block_sum(sh, tid, v):
    """The sum of ``v`` over the block's ROW_THREADS threads, returned to all of them (``sh``
    a shared float32 array of ROW_THREADS; every thread of the block must call)."""
    cuda.syncthreads()  # the previous reduction's readers of sh[0] are done
    sh[tid] = v
    half = ROW_THREADS // 2
    while half > 0:
        cuda.syncthreads()
        if tid < half:
            sh[tid] += sh[tid + half]
        half //= 2
    cuda.syncthreads()
    return sh[0]


@cuda.jit(device=True)
def block_max(sh, tid, v):
    """The maximum of ``v`` over the block, as :func:`block_sum`."""
    cuda.syncthreads()
    sh[tid] = v
    half = ROW_THREADS // 2
    while half > 0:
        cuda.syncthreads()
        if tid < half:
            sh[tid] = max(sh[tid], sh[tid + half])
        half //= 2
    cuda.syncthreads()
    return sh[0]


@cuda.jit(device=True)
def _row(b, heads, seq):
    """Block ``b`` of a per-row launch as ``(n, h, i)``."""
    return b // (heads * seq), (b // seq) % heads, b % seq


@cuda.jit
def scores_softmax(qkv, heads, d, scale, causal, probs):
    """``probs[n, h, i] = softmax_j(q_i . k_j scale)``, keys after i at 0 when ``causal``."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    tid = cuda.threadIdx.x
    seq = qkv.shape[1]
    n, h, i = _row(cuda.blockIdx.x, heads, seq)
    qc = h * 3 * d
    valid = i + 1 if causal else seq
    top = float32(-math.inf)
    for j in range(tid, valid, ROW_THREADS):
        acc = float32(0.0)
        for e in range(d):
            acc += qkv[n, i, qc + e] * qkv[n, j, qc + d + e]
        probs[n, h, i, j] = acc * scale
        top = max(top, acc * scale)
    top = block_max(sh, tid, top)
    s = float32(0.0)
    for j in range(tid, valid, ROW_THREADS):
        ex = math.exp(probs[n, h, i, j] - top)
        probs[n, h, i, j] = ex
        s += ex
    inv = float32(1.0) / block_sum(sh, tid, s)
    for j in range(tid, seq, ROW_THREADS):
        probs[n, h, i, j] = probs[n, h, i, j] * inv if j < valid else float32(0.0)


@cuda.jit
def attention_out(qkv, probs, heads, d, causal, out):
    """``out[n, i, h d + e] = sum_j probs[n, h, i, j] v[n, j, h, e]``; a thread per element."""
    t = cuda.grid(1)
    seq = qkv.shape[1]
    width = heads * d
    if t < out.shape[0] * seq * width:
        n = t // (seq * width)
        i = (t // width) % seq
        col = t % width
        h = col // d
        vc = h * 3 * d + 2 * d + col % d
        acc = float32(0.0)
        for j in range(i + 1 if causal else seq):
            acc += probs[n, h, i, j] * qkv[n, j, vc]
        out[n, i, col] = acc


@cuda.jit
def softmax_backward(qkv, probs, dout, heads, d, scale, ds):
    """``ds[n, h, i, j] = scale p_ij (dP_ij - sum_j p_ij dP_ij)`` with ``dP_ij = dO_i . v_j``."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    tid = cuda.threadIdx.x
    seq = qkv.shape[1]
    n, h, i = _row(cuda.blockIdx.x, heads, seq)
    vc = h * 3 * d + 2 * d
    oc = h * d
    part = float32(0.0)
    for j in range(tid, seq, ROW_THREADS):
        acc = float32(0.0)
        if probs[n, h, i, j] != float32(0.0):  # masked keys: dS is 0 whatever dP is
            for e in range(d):
                acc += dout[n, i, oc + e] * qkv[n, j, vc + e]
        ds[n, h, i, j] = acc
        part += probs[n, h, i, j] * acc
    dot = block_sum(sh, tid, part)
    for j in range(tid, seq, ROW_THREADS):
        ds[n, h, i, j] = scale * probs[n, h, i, j] * (ds[n, h, i, j] - dot)


@cuda.jit
def attention_dqkv(qkv, probs, dout, ds, heads, d, dqkv):
    """A thread per element of ``dqkv``: ``dq_i = sum_j ds_ij k_j``, ``dk_j = sum_i ds_ij q_i``,
    ``dv_j = sum_i p_ij dO_i`` (over all positions: masked entries are 0)."""
    t = cuda.grid(1)
    seq = qkv.shape[1]
    width = 3 * heads * d
    if t < qkv.shape[0] * seq * width:
        n = t // (seq * width)
        i = (t // width) % seq  # this thread's position: a query for dq, a key for dk and dv
        col = t % width
        h = col // (3 * d)
        part = (col // d) % 3
        e = col % d
        hc = h * 3 * d + e
        acc = float32(0.0)
        if part == 0:
            for j in range(seq):
                acc += ds[n, h, i, j] * qkv[n, j, hc + d]
        elif part == 1:
            for a in range(seq):
                acc += ds[n, h, a, i] * qkv[n, a, hc]
        else:
            for a in range(seq):
                acc += probs[n, h, a, i] * dout[n, a, h * d + e]
        dqkv[n, i, col] = acc

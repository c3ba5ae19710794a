"""The transformer methods of :class:`executor.kernels.cuda.CudaBackend` (the mixin
:class:`CudaTransformer`) and their kernels, except attention's (``cuda_attention``). Formulas
and shapes are in :class:`executor.kernels.base.Backend`'s docstrings; float32 throughout.

Launches (``ROW_THREADS`` and the block reductions are ``cuda_attention``'s; "1-D" is
``cuda_ops.launch``, a thread per output element):

* Layer norm forward and ``dx``: a block per row (two-pass mean and variance; the backward's
  two row sums), ``dgamma``/``dbeta``: a thread per column walking the rows (consecutive threads
  read consecutive words).
* GELU forward and backward, ``add``, the embedding lookup and the cross-entropy gradient: 1-D.
* Embedding backward: a thread per element of ``dy``, added into ``dtable`` with
  ``cuda.atomic.add`` (rows repeat across positions): the order of the float32 additions, so the
  last bits of a row hit by several positions, varies from run to run.
* Partial cross-entropy statistics: a block per row (maximum, then sum of exponentials).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from executor.kernels import cuda_attention as att
from executor.kernels import cuda_ops as ops
from executor.kernels.cuda_attention import ROW_THREADS, block_max, block_sum

F32 = np.float32
GELU_C = float32(math.sqrt(2.0 / math.pi))  # GELU's tanh approximation (Hendrycks & Gimpel 2016)
GELU_A = float32(0.044715)


# ---- layer normalisation -------------------------------------------------------------------
@cuda.jit
def layer_norm_forward(x, gamma, beta, eps, y, mean, rstd):
    sh = cuda.shared.array(ROW_THREADS, float32)
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    h = x.shape[1]
    s = float32(0.0)
    for j in range(tid, h, ROW_THREADS):
        s += x[r, j]
    m = block_sum(sh, tid, s) / float32(h)
    s = float32(0.0)
    for j in range(tid, h, ROW_THREADS):
        dev = x[r, j] - m
        s += dev * dev
    rs = float32(1.0) / math.sqrt(block_sum(sh, tid, s) / float32(h) + eps)
    for j in range(tid, h, ROW_THREADS):
        y[r, j] = (x[r, j] - m) * rs * gamma[j] + beta[j]
    if tid == 0:
        mean[r] = m
        rstd[r] = rs


@cuda.jit
def layer_norm_backward_dx(x, gamma, dy, mean, rstd, dx):
    """``dx = rstd (g - mean(g) - xhat mean(g xhat))``, ``g = dy gamma``; a block per row."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    h = x.shape[1]
    m = mean[r]
    rs = rstd[r]
    sg = float32(0.0)
    sgx = float32(0.0)
    for j in range(tid, h, ROW_THREADS):
        g = dy[r, j] * gamma[j]
        sg += g
        sgx += g * (x[r, j] - m) * rs
    a = block_sum(sh, tid, sg) / float32(h)
    b = block_sum(sh, tid, sgx) / float32(h)
    for j in range(tid, h, ROW_THREADS):
        dx[r, j] = rs * (dy[r, j] * gamma[j] - a - (x[r, j] - m) * rs * b)


@cuda.jit
def layer_norm_param_grads(x, dy, mean, rstd, dgamma, dbeta):
    j = cuda.grid(1)
    if j < x.shape[1]:
        sg = float32(0.0)
        sb = float32(0.0)
        for r in range(x.shape[0]):
            sg += dy[r, j] * (x[r, j] - mean[r]) * rstd[r]
            sb += dy[r, j]
        dgamma[j] = sg
        dbeta[j] = sb


# ---- element-wise ----------------------------------------------------------------------------
@cuda.jit(device=True)
def _gelu_parts(v):
    """``(s, s (1 - s))`` with ``s = (1 + tanh(u)) / 2 = sigmoid(2u)``, from ``e = exp(-2|u|)``
    (no overflow, no cancellation for negative v; see ``cpu_transformer.gelu_parts``)."""
    u = GELU_C * (v + GELU_A * v * v * v)
    e = math.exp(float32(-2.0) * abs(u))
    p = float32(1.0) / (float32(1.0) + e)
    return (p if u >= float32(0.0) else e * p), e * p * p


@cuda.jit
def gelu_forward(x, y):
    i = cuda.grid(1)
    if i < x.size:
        s, _ = _gelu_parts(x[i])
        y[i] = x[i] * s


@cuda.jit
def gelu_backward(x, dy, dx):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        s, ss = _gelu_parts(v)
        dx[i] = dy[i] * (s + float32(2.0) * v * ss * GELU_C
                         * (float32(1.0) + float32(3.0) * GELU_A * v * v))


@cuda.jit
def add(a, b, out):
    i = cuda.grid(1)
    if i < a.size:
        out[i] = a[i] + b[i]


# ---- vocabulary-parallel embedding and cross-entropy ---------------------------------------
@cuda.jit
def embedding_forward(ids, table, lo, y):
    """``y (P, H)``: a thread per element."""
    t = cuda.grid(1)
    h = table.shape[1]
    if t < ids.size * h:
        q = t // h
        c = t - q * h
        r = ids[q] - lo
        y[q, c] = table[r, c] if r >= 0 and r < table.shape[0] else float32(0.0)


@cuda.jit
def embedding_backward(ids, dy, lo, dtable):
    """``dtable (zeroed)[ids[q] - lo, c] += dy[q, c]`` with atomic adds."""
    t = cuda.grid(1)
    h = dtable.shape[1]
    if t < ids.size * h:
        q = t // h
        c = t - q * h
        r = ids[q] - lo
        if r >= 0 and r < dtable.shape[0]:
            cuda.atomic.add(dtable, (r, c), dy[q, c])


@cuda.jit
def xent_partial(z, labels, lo, mx, sumexp, target):
    sh = cuda.shared.array(ROW_THREADS, float32)
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    v = z.shape[1]
    top = float32(-math.inf)
    for j in range(tid, v, ROW_THREADS):
        top = max(top, z[r, j])
    top = block_max(sh, tid, top)
    s = float32(0.0)
    for j in range(tid, v, ROW_THREADS):
        s += math.exp(z[r, j] - top)
    s = block_sum(sh, tid, s)
    if tid == 0:
        mx[r] = top
        sumexp[r] = s
        lab = labels[r] - lo
        target[r] = z[r, lab] if lab >= 0 and lab < v else float32(0.0)


@cuda.jit
def xent_partial_grad(z, labels, lo, gmax, gsum, scale, grad):
    t = cuda.grid(1)
    v = z.shape[1]
    if t < z.shape[0] * v:
        r = t // v
        j = t - r * v
        p = math.exp(z[r, j] - gmax[r]) / gsum[r]
        if j == labels[r] - lo:
            p -= float32(1.0)
        grad[r, j] = p * scale


# ---- the backend's methods -------------------------------------------------------------------
def _flat(a):  # noqa: ANN001, ANN202
    if not a.is_c_contiguous():
        raise ValueError(f"expected a C-contiguous device array, got strides {a.strides}")
    return a.reshape(a.size)


def _rows(kernel, rows: int, *args) -> None:  # noqa: ANN001
    """A block of ROW_THREADS per row (nothing for no rows)."""
    if rows > 0:
        kernel[rows, ROW_THREADS](*args)


class CudaTransformer:
    """The transformer methods of :class:`executor.kernels.cuda.CudaBackend` (a mixin; it uses
    the backend's ``_dev`` and ``_empty``). Integer ids and labels may be host arrays (copied
    over as int64) or device arrays."""

    def _ints(self, a):  # noqa: ANN001, ANN202
        return a if hasattr(a, "copy_to_host") else \
            cuda.to_device(np.ascontiguousarray(a, dtype=np.int64))

    def layer_norm_forward(self, x, gamma, beta, eps=1e-5):  # noqa: ANN001, ANN201
        x, gamma, beta = self._dev(x), self._dev(gamma), self._dev(beta)
        y, mean, rstd = self._empty(x.shape), self._empty(x.shape[0]), self._empty(x.shape[0])
        _rows(layer_norm_forward, x.shape[0], x, gamma, beta, F32(eps), y, mean, rstd)
        return y, mean, rstd

    def layer_norm_backward(self, x, gamma, dy, mean, rstd):  # noqa: ANN001, ANN201
        x, dy, mean, rstd = self._dev(x), self._dev(dy), self._dev(mean), self._dev(rstd)
        dx, dgamma, dbeta = self._empty(x.shape), self._empty(x.shape[1]), \
            self._empty(x.shape[1])
        _rows(layer_norm_backward_dx, x.shape[0], x, self._dev(gamma), dy, mean, rstd, dx)
        ops.launch(layer_norm_param_grads, x.shape[1], x, dy, mean, rstd, dgamma, dbeta)
        return dx, dgamma, dbeta

    def gelu_forward(self, x):  # noqa: ANN001, ANN201
        x = self._dev(x)
        y = self._empty(x.shape)
        ops.launch(gelu_forward, x.size, _flat(x), _flat(y))
        return y

    def gelu_backward(self, x, dy):  # noqa: ANN001, ANN201
        x = self._dev(x)
        dx = self._empty(x.shape)
        ops.launch(gelu_backward, x.size, _flat(x), _flat(self._dev(dy)), _flat(dx))
        return dx

    def _heads(self, qkv, heads):  # noqa: ANN001, ANN202
        """``(N, S, d)`` of ``qkv``, checked to split into ``heads`` heads of q, k, v."""
        n, s, width = qkv.shape
        if heads < 1 or width % (3 * heads):
            raise ValueError(f"attention: {width} columns do not split into {heads} heads of "
                             "q, k, v")
        return n, s, width // (3 * heads)

    def attention_forward(self, qkv, heads, causal=True):  # noqa: ANN001, ANN201
        qkv = self._dev(qkv)
        n, s, d = self._heads(qkv, heads)
        probs = self._empty((n, heads, s, s))
        out = self._empty((n, s, heads * d))
        scale = F32(1.0 / math.sqrt(d))
        _rows(att.scores_softmax, n * heads * s, qkv, heads, d, scale, bool(causal), probs)
        ops.launch(att.attention_out, out.size, qkv, probs, heads, d, bool(causal), out)
        return out, probs

    def attention_backward(self, qkv, probs, dout, heads):  # noqa: ANN001, ANN201
        qkv, probs, dout = self._dev(qkv), self._dev(probs), self._dev(dout)
        n, s, d = self._heads(qkv, heads)
        ds = self._empty(probs.shape)
        dqkv = self._empty(qkv.shape)
        _rows(att.softmax_backward, n * heads * s, qkv, probs, dout, heads, d,
              F32(1.0 / math.sqrt(d)), ds)
        ops.launch(att.attention_dqkv, dqkv.size, qkv, probs, dout, ds, heads, d, dqkv)
        return dqkv

    def embedding_forward(self, ids, table, lo):  # noqa: ANN001, ANN201
        ids, table = self._ints(ids), self._dev(table)
        y = self._empty((*ids.shape, table.shape[1]))
        ops.launch(embedding_forward, y.size, _flat(ids), table, int(lo),
                   y.reshape(ids.size, table.shape[1]))
        return y

    def embedding_backward(self, ids, dy, lo, rows):  # noqa: ANN001, ANN201
        """Atomic adds into a zeroed table: the float32 sum of a row that several positions hit
        is taken in an order that varies from run to run (its last bits with it)."""
        ids, dy = _flat(self._ints(ids)), self._dev(dy)
        h = dy.shape[len(dy.shape) - 1]  # the simulator's shapes take no negative index
        dtable = self.zeros((rows, h))
        ops.launch(embedding_backward, dy.size, ids, dy.reshape(ids.size, h), int(lo), dtable)
        return dtable

    def xent_partial(self, logits, labels, lo):  # noqa: ANN001, ANN201
        z = self._dev(logits)
        mx, sumexp, target = (self._empty(z.shape[0]) for _ in range(3))
        _rows(xent_partial, z.shape[0], z, self._ints(labels), int(lo), mx, sumexp, target)
        return mx, sumexp, target

    def xent_partial_grad(self, logits, labels, lo, gmax, gsum, scale):  # noqa: ANN001, ANN201
        z = self._dev(logits)
        grad = self._empty(z.shape)
        ops.launch(xent_partial_grad, z.size, z, self._ints(labels), int(lo), self._dev(gmax),
                   self._dev(gsum), F32(scale), grad)
        return grad

    def add(self, a, b):  # noqa: ANN001, ANN201
        a, b = self._dev(a), self._dev(b)
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"add: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        out = self._empty(a.shape)
        ops.launch(add, a.size, _flat(a), _flat(b), _flat(out))
        return out

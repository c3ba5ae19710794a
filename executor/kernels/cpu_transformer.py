"""The transformer methods of :class:`executor.kernels.cpu.CpuBackend` (the mixin
:class:`CpuTransformer`) and their Numba kernels: layer normalisation, GELU, the softmax and its
backward inside attention (attention's batched GEMMs are numpy's BLAS), the vocabulary-parallel
embedding and the partial cross-entropy. Formulas and shapes are in
:class:`executor.kernels.base.Backend`'s docstrings.

As in :mod:`executor.kernels.cpu_jit`: float32 arithmetic, float64 only for the scalar
accumulators of reductions (a row's mean, variance or sum of exponentials); every kernel compiled
serially and with ``prange`` (:data:`SERIAL`, :data:`PARALLEL`), cached on disk. Row kernels run
``prange`` over rows; the column reductions (layer norm's ``dgamma``/``dbeta``, the embedding's
scatter-add) over blocks of ``COL_BLOCK`` columns, so no two threads write one word and the order
of summation does not depend on the number of threads.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from executor.kernels.base import Array
from executor.kernels.cpu_jit import ONE, ZERO, compile_kernels

COL_BLOCK = 64  # columns per thread in the column reductions: a cache line or four of each row
F32 = np.float32
GELU_C = np.float32(np.sqrt(2.0 / np.pi))  # GELU's tanh approximation (Hendrycks & Gimpel 2016)
GELU_A = np.float32(0.044715)
GELU_3A = np.float32(3.0 * 0.044715)
TWO = np.float32(2.0)


# ---- layer normalisation -------------------------------------------------------------------
def layer_norm_forward(x, gamma, beta, eps, y, mean, rstd):  # noqa: ANN001, ANN201
    """Rows of ``x (R, H)``: two passes (mean, then the biased variance of ``x - mean``)."""
    r, h = x.shape
    for i in prange(r):
        s = 0.0
        for j in range(h):
            s += x[i, j]
        m = s / h
        var = 0.0
        for j in range(h):
            dev = x[i, j] - m
            var += dev * dev
        mf = np.float32(m)
        rf = np.float32(1.0 / np.sqrt(var / h + eps))
        mean[i] = mf
        rstd[i] = rf
        for j in range(h):
            y[i, j] = (x[i, j] - mf) * rf * gamma[j] + beta[j]


def layer_norm_backward_dx(x, gamma, dy, mean, rstd, dx):  # noqa: ANN001, ANN201
    """``dx = rstd (g - mean(g) - xhat mean(g xhat))`` per row, ``g = dy gamma``."""
    r, h = x.shape
    for i in prange(r):
        m, rs = mean[i], rstd[i]
        sg = 0.0
        sgx = 0.0
        for j in range(h):
            g = dy[i, j] * gamma[j]
            sg += g
            sgx += g * ((x[i, j] - m) * rs)
        a = np.float32(sg / h)
        b = np.float32(sgx / h)
        for j in range(h):
            dx[i, j] = rs * (dy[i, j] * gamma[j] - a - (x[i, j] - m) * rs * b)


def layer_norm_param_grads(x, dy, mean, rstd, dgamma, dbeta):  # noqa: ANN001, ANN201
    """``dgamma = sum_rows(dy xhat)``, ``dbeta = sum_rows(dy)``; a block of columns a thread."""
    r, h = x.shape
    for c in prange((h + COL_BLOCK - 1) // COL_BLOCK):
        j0 = c * COL_BLOCK
        j1 = min(h, j0 + COL_BLOCK)
        acc_g = np.zeros(j1 - j0)
        acc_b = np.zeros(j1 - j0)
        for i in range(r):
            m, rs = mean[i], rstd[i]
            for j in range(j0, j1):
                acc_g[j - j0] += dy[i, j] * ((x[i, j] - m) * rs)
                acc_b[j - j0] += dy[i, j]
        for j in range(j0, j1):
            dgamma[j] = np.float32(acc_g[j - j0])
            dbeta[j] = np.float32(acc_b[j - j0])


# ---- GELU ----------------------------------------------------------------------------------
@njit(cache=True, fastmath=False, nogil=True, inline="always")
def gelu_parts(v):  # noqa: ANN001, ANN201
    """``(s, e p^2)`` for the GELU at ``v``: ``s = (1 + tanh(u)) / 2 = sigmoid(2u)`` and
    ``(1 - tanh(u)^2) / 4 = s (1 - s) = e p^2`` with ``e = exp(-2|u|)``, ``p = 1 / (1 + e)``,
    ``s = p`` for u >= 0 and ``e p`` below. The same numbers as the tanh form, without its
    cancellation in ``1 + tanh(u)`` for negative v, and no overflow (e <= 1)."""
    u = GELU_C * (v + GELU_A * v * v * v)
    e = np.exp(-TWO * abs(u))
    p = ONE / (ONE + e)
    neg = np.float32(u < ZERO)  # a blend, not a branch: the loop stays vectorised
    s = (ONE - neg) * p + neg * (e * p)  # not p + neg (e p - p): that cancels
    return s, e * p * p


def gelu_forward(x, y):  # noqa: ANN001, ANN201
    """Flat ``y = 0.5 x (1 + tanh(u)) = x s``."""
    for i in prange(x.size):
        s, _ = gelu_parts(x[i])
        y[i] = x[i] * s


def gelu_backward(x, dy, dx):  # noqa: ANN001, ANN201
    """Flat ``dx = dy (s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 0.044715 x^2))`` from the input."""
    for i in prange(x.size):
        v = x[i]
        s, ss = gelu_parts(v)
        dx[i] = dy[i] * (s + TWO * v * ss * GELU_C * (ONE + GELU_3A * v * v))


# ---- attention's softmax -------------------------------------------------------------------
def softmax_rows(p, seq, scale, causal):  # noqa: ANN001, ANN201
    """In place over ``p (rows, S)`` of raw scores ``q k^T``: ``softmax(scale p)`` per row, row
    ``r`` being query ``r % seq``; with ``causal`` the keys after it get exactly 0."""
    rows, width = p.shape
    for r in prange(rows):
        valid = r % seq + 1 if causal else width
        top = p[r, 0] * scale
        for j in range(1, valid):
            top = max(top, p[r, j] * scale)
        s = 0.0
        for j in range(valid):
            e = np.exp(p[r, j] * scale - top)
            p[r, j] = e
            s += e
        inv = np.float32(1.0 / s)
        for j in range(valid):
            p[r, j] *= inv
        for j in range(valid, width):
            p[r, j] = ZERO


def softmax_backward_rows(p, dp, scale):  # noqa: ANN001, ANN201
    """In place ``dp = scale p (dp - sum_j p dp)`` per row: the gradient of the scores from the
    gradient of the probabilities (``scale = 1 / sqrt(d)``, the scores' own factor)."""
    rows, width = p.shape
    for r in prange(rows):
        dot = 0.0
        for j in range(width):
            dot += p[r, j] * dp[r, j]
        df = np.float32(dot)
        for j in range(width):
            dp[r, j] = scale * p[r, j] * (dp[r, j] - df)


# ---- vocabulary-parallel embedding and cross-entropy --------------------------------------
def embedding_forward(ids, table, lo, y):  # noqa: ANN001, ANN201
    """``y (P, H)``: row ``ids[p] - lo`` of ``table`` where it is one, else zeros."""
    v, h = table.shape
    for q in prange(ids.size):
        r = ids[q] - lo
        if 0 <= r < v:
            for j in range(h):
                y[q, j] = table[r, j]
        else:
            for j in range(h):
                y[q, j] = ZERO


def embedding_backward(ids, dy, lo, dtable):  # noqa: ANN001, ANN201
    """``dtable (zeroed)[ids[p] - lo] += dy[p]``; a block of columns a thread, positions in
    order (deterministic)."""
    rows, h = dtable.shape
    for c in prange((h + COL_BLOCK - 1) // COL_BLOCK):
        j0 = c * COL_BLOCK
        j1 = min(h, j0 + COL_BLOCK)
        for q in range(ids.size):
            r = ids[q] - lo
            if 0 <= r < rows:
                for j in range(j0, j1):
                    dtable[r, j] += dy[q, j]


def xent_partial(z, labels, lo, mx, sumexp, target):  # noqa: ANN001, ANN201
    """Per row of ``z (R, V_local)``: maximum, sum of ``exp(z - max)``, the label's logit."""
    r, v = z.shape
    for i in prange(r):
        top = z[i, 0]
        for j in range(1, v):
            top = max(top, z[i, j])
        s = 0.0
        for j in range(v):
            s += np.exp(z[i, j] - top)
        mx[i] = top
        sumexp[i] = np.float32(s)
        lab = labels[i] - lo
        target[i] = z[i, lab] if 0 <= lab < v else ZERO


def xent_partial_grad(z, labels, lo, gmax, gsum, scale, grad):  # noqa: ANN001, ANN201
    """``grad = (exp(z - gmax) / gsum - onehot(labels - lo)) scale`` per row."""
    r, v = z.shape
    for i in prange(r):
        m = gmax[i]
        inv = ONE / gsum[i]
        for j in range(v):
            grad[i, j] = np.exp(z[i, j] - m) * inv * scale
        lab = labels[i] - lo
        if 0 <= lab < v:
            grad[i, lab] = (np.exp(z[i, lab] - m) * inv - ONE) * scale


_KERNELS = (layer_norm_forward, layer_norm_backward_dx, layer_norm_param_grads, gelu_forward,
            gelu_backward, softmax_rows, softmax_backward_rows, embedding_forward,
            embedding_backward, xent_partial, xent_partial_grad)


SERIAL = compile_kernels(_KERNELS, parallel=False)  # as cpu_jit's: serial and prange builds
PARALLEL = compile_kernels(_KERNELS, parallel=True)


# ---- the backend's methods -------------------------------------------------------------------
def _f32(a: Array) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=F32)


def _ids(a: Array) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


def _split_heads(qkv: np.ndarray, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views q, k, v (N, heads, S, d) of ``qkv (N, S, 3 heads d)`` in the per-head layout."""
    n, s, width = qkv.shape
    if heads < 1 or width % (3 * heads):
        raise ValueError(f"attention: {width} columns do not split into {heads} heads of q, k, v")
    per = qkv.reshape(n, s, heads, 3, width // (3 * heads))
    return tuple(per[:, :, :, i].transpose(0, 2, 1, 3) for i in range(3))


class CpuTransformer:
    """The transformer methods of :class:`executor.kernels.cpu.CpuBackend` (a mixin: the
    backend's ``parallel`` picks the kernels). Attention's batched GEMMs are ``np.matmul`` on
    strided views of ``qkv`` (each head's (S, d) block reaches BLAS with a leading dimension of
    3 heads d, no copy), writing straight into views of the outputs."""

    parallel: bool

    @property
    def _kernels(self) -> types.SimpleNamespace:
        return PARALLEL if self.parallel else SERIAL

    def layer_norm_forward(self, x: Array, gamma: Array, beta: Array, eps: float = 1e-5
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = _f32(x)
        y, mean, rstd = np.empty_like(x), np.empty(x.shape[0], F32), np.empty(x.shape[0], F32)
        self._kernels.layer_norm_forward(x, _f32(gamma), _f32(beta), float(eps), y, mean, rstd)
        return y, mean, rstd

    def layer_norm_backward(self, x: Array, gamma: Array, dy: Array, mean: Array, rstd: Array
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, dy, mean, rstd = _f32(x), _f32(dy), _f32(mean), _f32(rstd)
        dx, dgamma, dbeta = np.empty_like(x), np.empty(x.shape[1], F32), np.empty(x.shape[1], F32)
        self._kernels.layer_norm_backward_dx(x, _f32(gamma), dy, mean, rstd, dx)
        self._kernels.layer_norm_param_grads(x, dy, mean, rstd, dgamma, dbeta)
        return dx, dgamma, dbeta

    def gelu_forward(self, x: Array) -> np.ndarray:
        x = _f32(x)
        y = np.empty_like(x)
        self._kernels.gelu_forward(x.reshape(-1), y.reshape(-1))
        return y

    def gelu_backward(self, x: Array, dy: Array) -> np.ndarray:
        x = _f32(x)
        dx = np.empty_like(x)
        self._kernels.gelu_backward(x.reshape(-1), _f32(dy).reshape(-1), dx.reshape(-1))
        return dx

    def attention_forward(self, qkv: Array, heads: int, causal: bool = True
                          ) -> tuple[np.ndarray, np.ndarray]:
        q, k, v = _split_heads(_f32(qkv), heads)
        n, _, s, d = q.shape
        probs = np.matmul(q, k.transpose(0, 1, 3, 2))  # strided views reach BLAS as lda
        self._kernels.softmax_rows(probs.reshape(-1, s), s, F32(1.0 / np.sqrt(d)), bool(causal))
        out = np.empty((n, s, heads, d), F32)
        np.matmul(probs, v, out=out.transpose(0, 2, 1, 3))
        return out.reshape(n, s, heads * d), probs

    def attention_backward(self, qkv: Array, probs: Array, dout: Array, heads: int
                           ) -> np.ndarray:
        q, k, v = _split_heads(_f32(qkv), heads)
        n, _, s, d = q.shape
        probs = _f32(probs)
        do = _f32(dout).reshape(n, s, heads, d).transpose(0, 2, 1, 3)
        dqkv = np.empty((n, s, heads, 3, d), F32)
        dq, dk, dv = (dqkv[:, :, :, i].transpose(0, 2, 1, 3) for i in range(3))
        np.matmul(probs.transpose(0, 1, 3, 2), do, out=dv)
        ds = np.matmul(do, v.transpose(0, 1, 3, 2))  # dP, turned into dS in place
        self._kernels.softmax_backward_rows(probs.reshape(-1, s), ds.reshape(-1, s),
                                            F32(1.0 / np.sqrt(d)))
        np.matmul(ds, k, out=dq)
        np.matmul(ds.transpose(0, 1, 3, 2), q, out=dk)
        return dqkv.reshape(n, s, 3 * heads * d)

    def embedding_forward(self, ids: Array, table: Array, lo: int) -> np.ndarray:
        ids = _ids(ids)
        table = _f32(table)
        y = np.empty((*ids.shape, table.shape[1]), F32)
        self._kernels.embedding_forward(ids.reshape(-1), table, int(lo), y.reshape(ids.size, -1))
        return y

    def embedding_backward(self, ids: Array, dy: Array, lo: int, rows: int) -> np.ndarray:
        ids = _ids(ids).reshape(-1)
        dy = _f32(dy)
        dtable = np.zeros((rows, dy.shape[-1]), F32)
        self._kernels.embedding_backward(ids, dy.reshape(ids.size, -1), int(lo), dtable)
        return dtable

    def xent_partial(self, logits: Array, labels: Array, lo: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = _f32(logits)
        mx, sumexp, target = (np.empty(z.shape[0], F32) for _ in range(3))
        self._kernels.xent_partial(z, _ids(labels), int(lo), mx, sumexp, target)
        return mx, sumexp, target

    def xent_partial_grad(self, logits: Array, labels: Array, lo: int, gmax: Array, gsum: Array,
                          scale: float) -> np.ndarray:
        z = _f32(logits)
        grad = np.empty_like(z)
        self._kernels.xent_partial_grad(z, _ids(labels), int(lo), _f32(gmax), _f32(gsum),
                                        F32(scale), grad)
        return grad

    def add(self, a: Array, b: Array) -> np.ndarray:
        a, b = _f32(a), _f32(b)
        if a.shape != b.shape:
            raise ValueError(f"add: shapes {a.shape} and {b.shape} differ")
        return np.add(a, b)

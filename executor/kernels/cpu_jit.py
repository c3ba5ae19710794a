"""The Numba kernels behind :class:`executor.kernels.cpu.CpuBackend`: convolution lowering
(im2col/col2im), pooling, activations, softmax cross-entropy and in-place updates. GEMM is not
here: numpy's BLAS beats any loop nest Numba can compile.

Every kernel is compiled twice, on first use and cached on disk: serially (``range``) and with
``parallel=True`` (``prange`` over the outer loop, as many threads as the caller gave Numba
through ``numba.set_num_threads``). :data:`SERIAL` and :data:`PARALLEL` hold the two sets.

All arithmetic is float32 (constants below are float32 so Numba does not widen); only scalar
accumulators of reductions (a loss, a bias gradient) are float64. Convolution uses Caffe's
per-image layout: ``cols`` is ``(C * KH * KW, images * OH * OW)``, so ``w (OC, C*KH*KW) @ cols``
lands directly in NCHW order.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

ZERO = np.float32(0.0)
ONE = np.float32(1.0)
NEG_INF = np.float32(-np.inf)
RELU, SIGMOID, TANH = 0, 1, 2
SIXTEENTH = np.float32(1.0 / 16.0)
THIRD_NEG = np.float32(-1.0 / 3.0)
TWO_15TH = np.float32(2.0 / 15.0)
SEVENTEEN_315TH_NEG = np.float32(-17.0 / 315.0)


def im2col_t(x, n0, n1, c0, cg, kh, kw, stride, pad, oh, ow, cols):  # noqa: ANN001, ANN201
    """Windows of images ``n0:n1``, channels ``c0:c0+cg`` into ``cols (cg*kh*kw, m*oh*ow)``;
    zeros where a window hangs over the padding. (Splitting each row into zero/copy/zero runs
    measured slower: rows are short, and the guarded loop is bound by memory anyway.)"""
    h, w = x.shape[2], x.shape[3]
    plane = oh * ow
    for q in prange(cg * kh * kw):
        c = c0 + q // (kh * kw)
        i = (q // kw) % kh
        j = q % kw
        for m in range(n1 - n0):
            for a in range(oh):
                ih = a * stride - pad + i
                base = m * plane + a * ow
                if ih < 0 or ih >= h:
                    for b in range(ow):
                        cols[q, base + b] = ZERO
                else:
                    for b in range(ow):
                        iw = b * stride - pad + j
                        cols[q, base + b] = x[n0 + m, c, ih, iw] if 0 <= iw < w else ZERO


def col2im_t(cols, n0, n1, c0, cg, kh, kw, stride, pad, oh, ow, dx):  # noqa: ANN001, ANN201
    """The adjoint of :func:`im2col_t`: adds each column back onto ``dx`` (zeroed by the caller).
    Parallel over channels, which never share a pixel."""
    h, w = dx.shape[2], dx.shape[3]
    plane = oh * ow
    for cc in prange(cg):
        c = c0 + cc
        for i in range(kh):
            for j in range(kw):
                q = (cc * kh + i) * kw + j
                for m in range(n1 - n0):
                    for a in range(oh):
                        ih = a * stride - pad + i
                        if ih < 0 or ih >= h:
                            continue
                        base = m * plane + a * ow
                        for b in range(ow):
                            iw = b * stride - pad + j
                            if 0 <= iw < w:
                                dx[n0 + m, c, ih, iw] += cols[q, base + b]


def pool_max_forward(x, k, stride, pad, y, argmax):  # noqa: ANN001, ANN201
    """Window maxima; ``argmax`` is the flat index in the unpadded plane (first maximum in
    row-major window order, as ``np.argmax``), -1 for a window that is all padding."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for p in prange(n * c):
        i0, ch = p // c, p % c
        for a in range(oh):
            for b in range(ow):
                best = NEG_INF
                idx = -1
                for i in range(k):
                    ih = a * stride - pad + i
                    if 0 <= ih < h:
                        for j in range(k):
                            iw = b * stride - pad + j
                            if 0 <= iw < w and x[i0, ch, ih, iw] > best:
                                best = x[i0, ch, ih, iw]
                                idx = ih * w + iw
                y[i0, ch, a, b] = best
                argmax[i0, ch, a, b] = idx


def pool_avg_forward(x, k, stride, pad, y):  # noqa: ANN001, ANN201
    """Window sums over the real pixels divided by k*k: padding counts as zeros (Caffe)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    area = np.float32(k * k)
    for p in prange(n * c):
        i0, ch = p // c, p % c
        for a in range(oh):
            for b in range(ow):
                s = ZERO
                for i in range(k):
                    ih = a * stride - pad + i
                    if 0 <= ih < h:
                        for j in range(k):
                            iw = b * stride - pad + j
                            if 0 <= iw < w:
                                s += x[i0, ch, ih, iw]
                y[i0, ch, a, b] = s / area


def pool_max_backward(dy, argmax, dx):  # noqa: ANN001, ANN201
    """``dx (N, C, H*W)`` (zeroed) gets each ``dy`` at its window's winner."""
    n, c = dy.shape[0], dy.shape[1]
    oh, ow = dy.shape[2], dy.shape[3]
    for p in prange(n * c):
        i0, ch = p // c, p % c
        for a in range(oh):
            for b in range(ow):
                idx = argmax[i0, ch, a, b]
                if idx >= 0:
                    dx[i0, ch, idx] += dy[i0, ch, a, b]


def pool_avg_backward(dy, k, stride, pad, dx):  # noqa: ANN001, ANN201
    """Each ``dy / (k*k)`` spread over its window's real pixels of ``dx`` (zeroed)."""
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    area = np.float32(k * k)
    for p in prange(n * c):
        i0, ch = p // c, p % c
        for a in range(oh):
            for b in range(ow):
                share = dy[i0, ch, a, b] / area
                for i in range(k):
                    ih = a * stride - pad + i
                    if 0 <= ih < h:
                        for j in range(k):
                            iw = b * stride - pad + j
                            if 0 <= iw < w:
                                dx[i0, ch, ih, iw] += share


def act_forward(x, y, fn):  # noqa: ANN001, ANN201
    """Flat ``y = f(x)``, ``fn`` one of RELU, SIGMOID, TANH."""
    if fn == RELU:
        for i in prange(x.size):
            y[i] = x[i] if x[i] > ZERO else ZERO
    elif fn == SIGMOID:
        for i in prange(x.size):
            y[i] = ONE / (ONE + np.exp(-x[i]))
    else:
        for i in prange(x.size):
            y[i] = tanh(x[i])


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def tanh(v):  # noqa: ANN001, ANN201
    """tanh in float32 through ``exp``, which vectorises: ``(1 - e) / (1 + e)`` with
    ``e = exp(-2|v|)`` (no cancellation: e <= 0.89 where it is used), signed; an odd Taylor
    polynomial below |v| = 1/16 (next term 62/2835 v^9 < 2e-12). ``np.tanh`` calls the C
    library's scalar ``tanhf``, whose time depends on the values: 12.4 ms for uniform [0, 1)
    and 16.7 ms for standard normal inputs over LeNet-5's first activation at batch 256 on this
    project's test machine, against 4.4 ms for this (``benchmarks/machine_effects.py``)."""
    a = abs(v)
    e = np.exp(np.float32(-2.0) * a)
    r = (ONE - e) / (ONE + e)
    c = min(a, SIXTEENTH)  # the polynomial only where it is used: no overflow elsewhere
    q = c * c
    poly = c * (ONE + q * (THIRD_NEG + q * (TWO_15TH + q * SEVENTEEN_315TH_NEG)))
    # blends, not branches: the loop stays vectorised whatever the values
    small = np.float32(a < SIXTEENTH)
    m = r + small * (poly - r)
    return m * (ONE - np.float32(2.0) * np.float32(v < ZERO))


def act_backward(y, dy, dx, fn):  # noqa: ANN001, ANN201
    """Flat ``dx`` from the forward output ``y``."""
    if fn == RELU:
        for i in prange(y.size):
            dx[i] = dy[i] if y[i] > ZERO else ZERO
    elif fn == SIGMOID:
        for i in prange(y.size):
            dx[i] = dy[i] * y[i] * (ONE - y[i])
    else:
        for i in prange(y.size):
            dx[i] = dy[i] * (ONE - y[i] * y[i])


def softmax_xent(z, labels, grad):  # noqa: ANN001, ANN201
    """Writes ``(softmax(z) - onehot) / N`` into ``grad``; returns the summed loss
    ``-log(p_label + 1e-30)`` over the rows (float64)."""
    n, k = z.shape
    rows = np.float32(n)
    total = 0.0
    for r in prange(n):
        top = z[r, 0]
        for j in range(1, k):
            top = max(top, z[r, j])
        s = 0.0
        for j in range(k):
            e = np.exp(z[r, j] - top)
            grad[r, j] = e
            s += e
        inv = np.float32(1.0 / s)
        lab = labels[r]
        total -= np.log(grad[r, lab] * inv + 1e-30)
        for j in range(k):
            grad[r, j] = grad[r, j] * inv / rows
        grad[r, lab] -= ONE / rows
    return total


def sgd_momentum(w, g, v, lr, momentum, weight_decay):  # noqa: ANN001, ANN201
    for i in prange(w.size):
        v[i] = momentum * v[i] + g[i] + weight_decay * w[i]
        w[i] -= lr * v[i]


def adagrad(w, g, v, lr, eps):  # noqa: ANN001, ANN201
    """Adagrad (Duchi et al. 2011) in place, in NumPy's order of operations:
    ``v += g * g``; ``w -= (lr * g) / (sqrt(v) + eps)``."""
    for i in prange(w.size):
        v[i] += g[i] * g[i]
        w[i] -= (lr * g[i]) / (np.sqrt(v[i]) + eps)


def axpy(alpha, x, y):  # noqa: ANN001, ANN201
    for i in prange(x.size):
        y[i] += alpha * x[i]


def scale(alpha, x):  # noqa: ANN001, ANN201
    for i in prange(x.size):
        x[i] *= alpha


def add_channel_bias(y, b):  # noqa: ANN001, ANN201
    """``y (N, C, P) += b[c]``."""
    n, c, plane = y.shape
    for p in prange(n * c):
        bias = b[p % c]
        for q in range(plane):
            y[p // c, p % c, q] += bias


def channel_sum(dy, out):  # noqa: ANN001, ANN201
    """``out[c] = sum of dy (N, C, P) over N and P``, accumulated in float64."""
    n, c, plane = dy.shape
    for ch in prange(c):
        acc = 0.0
        for i in range(n):
            for q in range(plane):
                acc += dy[i, ch, q]
        out[ch] = np.float32(acc)


def bias_sigmoid(a, b):  # noqa: ANN001, ANN201
    """In place ``a (N, K) = sigmoid(a + b)``."""
    n, k = a.shape
    for r in prange(n):
        for j in range(k):
            a[r, j] = ONE / (ONE + np.exp(-(a[r, j] + b[j])))


def bernoulli(uniform, p, out):  # noqa: ANN001, ANN201
    """``out = 1 where uniform < p else 0``: a sample every backend draws alike."""
    u, pf, o = uniform.reshape(-1), p.reshape(-1), out.reshape(-1)
    for i in prange(o.size):
        o[i] = ONE if u[i] < pf[i] else ZERO


def sub_div(a, b, n):  # noqa: ANN001, ANN201
    """In place ``a = (a - b) / n``."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    den = np.float32(n)
    for i in prange(fa.size):
        fa[i] = (fa[i] - fb[i]) / den


def mean_diff(a, b, out):  # noqa: ANN001, ANN201
    """``out = mean(a - b, axis=0)``; returns ``mean((a - b)^2)`` (float64)."""
    n, k = a.shape
    rows = np.float32(n)
    sq = 0.0
    for j in prange(k):
        acc = ZERO
        for r in range(n):
            d = a[r, j] - b[r, j]
            acc += d
            sq += d * d
        out[j] = acc / rows
    return sq / (n * k)


_KERNELS = (im2col_t, col2im_t, pool_max_forward, pool_avg_forward, pool_max_backward,
            pool_avg_backward, act_forward, act_backward, softmax_xent, sgd_momentum, adagrad, axpy,
            scale, add_channel_bias, channel_sum, bias_sigmoid, bernoulli, sub_div, mean_diff)


def compile_kernels(kernels: tuple, parallel: bool) -> types.SimpleNamespace:
    """One dispatcher per kernel. The parallel copies get their own ``__qualname__`` because
    Numba's on-disk cache is keyed by qualified name and bytecode, not by compile flags."""
    out = {}
    for fn in kernels:
        if parallel:
            fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                                    fn.__closure__)
            fn.__qualname__ = f"{fn.__name__}__parallel"
        # nogil: a kernel lets the communication thread run (overlap of gradients and backward)
        out[fn.__name__] = njit(cache=True, fastmath=False, parallel=parallel, nogil=True)(fn)
    return types.SimpleNamespace(**out)


SERIAL = compile_kernels(_KERNELS, parallel=False)
PARALLEL = compile_kernels(_KERNELS, parallel=True)

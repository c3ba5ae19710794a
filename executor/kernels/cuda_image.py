"""The CUDA backend's kernels over NCHW images: convolution lowering (im2col, col2im and the
moves between NCHW and GEMM rows) and pooling. float32 (argmax int64); arrays C-contiguous.

One thread per output element, launched 1-D by ``cuda_ops.launch``. The backward kernels
(``col2im``, ``pool_backward``) gather: one thread per input pixel walks the windows that cover it
(rows ``yo`` with ``yo * stride + i - pad = h`` for a tap ``i``), so no two threads write one
word and no atomics are needed. Channel offsets (``c0``) let grouped convolution run one kernel
per group on a slice of the channels without copying it out.
"""

from __future__ import annotations

import math

from numba import cuda, float32


# ---- convolution lowering ------------------------------------------------------------------
@cuda.jit
def im2col(x, cols, c0, kh, kw, stride, pad, oh, ow):
    """``cols[(n, y, x), (c, i, j)] = x[n, c0 + c, y stride - pad + i, x stride - pad + j]``
    (0 in the padding); one thread per element of ``cols``."""
    e = cuda.grid(1)
    ncol = cols.shape[1]
    if e < cols.shape[0] * ncol:
        r = e // ncol
        q = e - r * ncol
        c = q // (kh * kw)
        t = q - c * kh * kw
        i = t // kw
        j = t - i * kw
        n = r // (oh * ow)
        p = r - n * oh * ow
        yo = p // ow
        xo = p - yo * ow
        h = yo * stride - pad + i
        w = xo * stride - pad + j
        v = float32(0.0)
        if h >= 0 and h < x.shape[2] and w >= 0 and w < x.shape[3]:
            v = x[n, c0 + c, h, w]
        cols[r, q] = v


@cuda.jit
def col2im(cols, dx, c0, cg, kh, kw, stride, pad, oh, ow):
    """The adjoint of ``im2col`` for channels ``c0 .. c0 + cg`` of ``dx``: one thread per pixel
    of ``dx`` sums the entries of every window that covers it."""
    e = cuda.grid(1)
    hgt = dx.shape[2]
    wid = dx.shape[3]
    if e < dx.shape[0] * cg * hgt * wid:
        w = e % wid
        h = (e // wid) % hgt
        c = (e // (wid * hgt)) % cg
        n = e // (wid * hgt * cg)
        s = float32(0.0)
        for i in range(kh):
            hh = h + pad - i  # = yo * stride for the window row yo that puts tap i on h
            if hh >= 0 and hh % stride == 0 and hh // stride < oh:
                yo = hh // stride
                for j in range(kw):
                    ww = w + pad - j
                    if ww >= 0 and ww % stride == 0 and ww // stride < ow:
                        s += cols[(n * oh + yo) * ow + ww // stride, (c * kh + i) * kw + j]
        dx[n, c0 + c, h, w] = s


@cuda.jit
def rows_to_nchw(rows, bias, y, c0):
    """``y[n, c0 + o, yo, xo] = rows[(n, yo, xo), o] + bias[c0 + o]`` (a GEMM's output back to
    NCHW, bias added)."""
    e = cuda.grid(1)
    cg = rows.shape[1]
    oh = y.shape[2]
    ow = y.shape[3]
    if e < y.shape[0] * cg * oh * ow:
        xo = e % ow
        yo = (e // ow) % oh
        o = (e // (ow * oh)) % cg
        n = e // (ow * oh * cg)
        y[n, c0 + o, yo, xo] = rows[(n * oh + yo) * ow + xo, o] + bias[c0 + o]


@cuda.jit
def nchw_to_rows(y, rows, c0):
    """``rows[(n, yo, xo), o] = y[n, c0 + o, yo, xo]``: channels ``c0 ..`` of NCHW as a
    GEMM operand."""
    e = cuda.grid(1)
    cg = rows.shape[1]
    if e < rows.shape[0] * cg:
        r = e // cg
        o = e - r * cg
        ow = y.shape[3]
        hw = y.shape[2] * ow
        n = r // hw
        p = r - n * hw
        rows[r, o] = y[n, c0 + o, p // ow, p % ow]


# ---- pooling -------------------------------------------------------------------------------
@cuda.jit
def max_pool_forward(x, y, argmax, k, stride, pad):
    """One thread per output: the window's maximum (padding is -inf, the first of equals wins)
    and its flat index in the (h, w) plane, -1 for a window of padding only."""
    e = cuda.grid(1)
    oh = y.shape[2]
    ow = y.shape[3]
    nc = y.shape[1]
    if e < y.shape[0] * nc * oh * ow:
        xo = e % ow
        yo = (e // ow) % oh
        c = (e // (ow * oh)) % nc
        n = e // (ow * oh * nc)
        best = float32(-math.inf)
        at = -1
        for i in range(k):
            h = yo * stride - pad + i
            if h >= 0 and h < x.shape[2]:
                for j in range(k):
                    w = xo * stride - pad + j
                    if w >= 0 and w < x.shape[3] and x[n, c, h, w] > best:
                        best = x[n, c, h, w]
                        at = h * x.shape[3] + w
        y[n, c, yo, xo] = best
        argmax[n, c, yo, xo] = at


@cuda.jit
def avg_pool_forward(x, y, k, stride, pad):
    """One thread per output: the window's sum over k*k (padding counts as zeros)."""
    e = cuda.grid(1)
    oh = y.shape[2]
    ow = y.shape[3]
    nc = y.shape[1]
    if e < y.shape[0] * nc * oh * ow:
        xo = e % ow
        yo = (e // ow) % oh
        c = (e // (ow * oh)) % nc
        n = e // (ow * oh * nc)
        s = float32(0.0)
        for i in range(k):
            h = yo * stride - pad + i
            if h >= 0 and h < x.shape[2]:
                for j in range(k):
                    w = xo * stride - pad + j
                    if w >= 0 and w < x.shape[3]:
                        s += x[n, c, h, w]
        y[n, c, yo, xo] = s / float32(k * k)


@cuda.jit
def pool_backward(dy, argmax, dx, k, stride, pad, is_max):
    """One thread per input pixel gathers from every window that covers it: the window's
    gradient where this pixel was its argmax (max) or a k*k-th of it (avg)."""
    e = cuda.grid(1)
    hgt = dx.shape[2]
    wid = dx.shape[3]
    nc = dx.shape[1]
    oh = dy.shape[2]
    ow = dy.shape[3]
    if e < dx.shape[0] * nc * hgt * wid:
        w = e % wid
        h = (e // wid) % hgt
        c = (e // (wid * hgt)) % nc
        n = e // (wid * hgt * nc)
        me = h * wid + w
        s = float32(0.0)
        for i in range(k):
            hh = h + pad - i
            if hh >= 0 and hh % stride == 0 and hh // stride < oh:
                yo = hh // stride
                for j in range(k):
                    ww = w + pad - j
                    if ww >= 0 and ww % stride == 0 and ww // stride < ow:
                        xo = ww // stride
                        if not is_max:
                            s += dy[n, c, yo, xo]
                        elif argmax[n, c, yo, xo] == me:
                            s += dy[n, c, yo, xo]
        if not is_max:
            s = s / float32(k * k)
        dx[n, c, h, w] = s

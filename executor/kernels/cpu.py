"""The CPU backend: numpy's BLAS for every GEMM (``np.matmul`` on float32, writing into
preallocated outputs with ``out=``), Numba kernels (:mod:`executor.kernels.cpu_jit`) for the rest.

Convolution is im2col + GEMM per group, as Caffe does it: the windows of a chunk of images are
laid out ``(C/groups * KH * KW, images * OH * OW)`` so that ``w_g @ cols`` is already NCHW; with
one image per chunk the GEMM writes straight into the output. A chunk batches several images
into one GEMM while their columns and output fit in about a core's L2 (LeNet-sized layers, where
one image's GEMM is too small and per-call overheads show); larger layers go image by image.

Threads: BLAS uses what ``OMP/OPENBLAS/MKL_NUM_THREADS`` said when numpy was imported; the Numba
kernels run serially unless ``CpuBackend(parallel=True)``, in which case they use
``numba.get_num_threads()`` threads (the caller sets it). Next to a multi-threaded BLAS, do not
let Numba's OpenMP threads spin (``OMP_WAIT_POLICY=ACTIVE``): they starve BLAS's, and a
convolution measured 3-6x slower on two cores; the default and ``PASSIVE`` are fine.
Everything stays float32.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from executor.kernels import cpu_jit
from executor.kernels.base import Array, Backend
from executor.kernels.cpu_transformer import CpuTransformer

F32 = np.float32
ACTIVATIONS = {"relu": cpu_jit.RELU, "sigmoid": cpu_jit.SIGMOID, "tanh": cpu_jit.TANH}
POOL_MODES = ("max", "avg")
# Floats of im2col columns plus GEMM output per chunk (1 MiB, about a core's L2): images are
# batched into one GEMM only while they fit. Larger chunks measured slower on LeNet shapes (the
# output no longer stays in cache for the scatter); AlexNet layers run one image at a time.
CHUNK_FLOATS = 1 << 18


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _f32(a: Array) -> np.ndarray:
    """``a`` as a C-contiguous float32 array; no copy when it already is one."""
    return np.ascontiguousarray(a, dtype=F32)


def _flat(a: np.ndarray) -> np.ndarray:
    """A 1-d view of ``a`` for in-place kernels; refuses arrays a view cannot cover."""
    if a.dtype != F32 or not a.flags.c_contiguous:
        raise ValueError("in-place kernels need C-contiguous float32 arrays, got "
                         f"{a.dtype} with strides {a.strides}")
    return a.reshape(-1)


class _ConvGeometry:
    """Sizes of one convolution, and how many images go into one im2col + GEMM."""

    def __init__(self, x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int, pad: int,
                 groups: int) -> None:
        self.n, self.c, self.h, self.w = x_shape
        self.oc, self.cg, self.kh, self.kw = w_shape
        if self.c != self.cg * groups or self.oc % groups:
            raise ValueError(f"groups={groups} does not split input {x_shape} / weights {w_shape}")
        self.stride, self.pad, self.groups = stride, pad, groups
        self.oh = out_size(self.h, self.kh, stride, pad)
        self.ow = out_size(self.w, self.kw, stride, pad)
        self.plane = self.oh * self.ow
        self.k = self.cg * self.kh * self.kw
        self.ocg = self.oc // groups
        self.chunk = max(1, min(self.n, CHUNK_FLOATS // ((self.k + self.ocg) * self.plane)))

    def chunks(self) -> list[tuple[int, int]]:
        return [(n0, min(self.n, n0 + self.chunk)) for n0 in range(0, self.n, self.chunk)]

    def im2col(self, kern: SimpleNamespace, x: np.ndarray, n0: int, n1: int, c0: int,
               buf: np.ndarray) -> np.ndarray:
        cols = buf[:self.k * (n1 - n0) * self.plane].reshape(self.k, (n1 - n0) * self.plane)
        kern.im2col_t(x, n0, n1, c0, self.cg, self.kh, self.kw, self.stride, self.pad,
                      self.oh, self.ow, cols)
        return cols

    def col2im(self, kern: SimpleNamespace, cols: np.ndarray, n0: int, n1: int, c0: int,
               dx: np.ndarray) -> None:
        kern.col2im_t(cols, n0, n1, c0, self.cg, self.kh, self.kw, self.stride, self.pad,
                      self.oh, self.ow, dx)


class CpuBackend(CpuTransformer, Backend):
    """Kernels on NumPy arrays; ``parallel`` picks the ``prange`` builds of the Numba kernels."""

    name = "cpu"

    def __init__(self, parallel: bool = False) -> None:
        self.parallel = parallel
        self._k = cpu_jit.PARALLEL if parallel else cpu_jit.SERIAL

    # ---- memory ---------------------------------------------------------------------------
    def to_device(self, a: Array) -> np.ndarray:
        a = np.asarray(a)
        return _f32(a) if a.dtype.kind == "f" else np.ascontiguousarray(a)

    def to_host(self, a: Array) -> np.ndarray:
        return np.asarray(a)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=F32)

    # ---- linear algebra -------------------------------------------------------------------
    def gemm(self, a: Array, b: Array, trans_a: bool = False, trans_b: bool = False
             ) -> np.ndarray:
        # A transposed view of a contiguous array reaches BLAS as a transpose flag, not a copy.
        a, b = np.asarray(a, dtype=F32), np.asarray(b, dtype=F32)
        return np.matmul(a.T if trans_a else a, b.T if trans_b else b)

    def dense_forward(self, x: Array, w: Array, b: Array) -> np.ndarray:
        y = self.gemm(x, w)
        y += np.asarray(b, dtype=F32)
        return y

    def dense_backward(self, x: Array, w: Array, dy: Array
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dy = np.asarray(dy, dtype=F32)
        return self.gemm(dy, w, trans_b=True), self.gemm(x, dy, trans_a=True), dy.sum(axis=0)

    # ---- convolution ----------------------------------------------------------------------
    def im2col(self, x: Array, kh: int, kw: int, stride: int, pad: int) -> np.ndarray:
        x = _f32(x)
        n, c, h, w = x.shape
        oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
        cols = np.empty((c * kh * kw, n * oh * ow), dtype=F32)
        self._k.im2col_t(x, 0, n, 0, c, kh, kw, stride, pad, oh, ow, cols)
        return np.ascontiguousarray(cols.T)

    def col2im(self, cols: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int,
               stride: int, pad: int) -> np.ndarray:
        n, c, h, w = x_shape
        oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
        dx = np.zeros(x_shape, dtype=F32)
        self._k.col2im_t(_f32(np.asarray(cols).T), 0, n, 0, c, kh, kw, stride, pad, oh, ow, dx)
        return dx

    def conv_forward(self, x: Array, w: Array, b: Array, stride: int, pad: int,
                     groups: int = 1) -> np.ndarray:
        x, w = _f32(x), _f32(w)
        g = _ConvGeometry(x.shape, w.shape, stride, pad, groups)
        y = np.empty((g.n, g.oc, g.plane), dtype=F32)
        colbuf = np.empty(g.k * g.chunk * g.plane, dtype=F32)
        outbuf = np.empty(g.ocg * g.chunk * g.plane, dtype=F32) if g.chunk > 1 else None
        for gi in range(groups):
            wg = w[gi * g.ocg:(gi + 1) * g.ocg].reshape(g.ocg, g.k)
            oc = slice(gi * g.ocg, (gi + 1) * g.ocg)
            for n0, n1 in g.chunks():
                cols = g.im2col(self._k, x, n0, n1, gi * g.cg, colbuf)
                if n1 - n0 == 1:
                    np.matmul(wg, cols, out=y[n0, oc])
                else:
                    out = outbuf[:g.ocg * cols.shape[1]].reshape(g.ocg, n1 - n0, g.plane)
                    np.matmul(wg, cols, out=out.reshape(g.ocg, -1))
                    y[n0:n1, oc] = out.transpose(1, 0, 2)
        self._k.add_channel_bias(y, _f32(b))
        return y.reshape(g.n, g.oc, g.oh, g.ow)

    def conv_backward(self, x: Array, w: Array, dy: Array, stride: int, pad: int,
                      groups: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, w = _f32(x), _f32(w)
        g = _ConvGeometry(x.shape, w.shape, stride, pad, groups)
        dy3 = _f32(dy).reshape(g.n, g.oc, g.plane)
        dx = np.zeros(x.shape, dtype=F32)
        dw = np.empty(w.shape, dtype=F32)
        db = np.empty(g.oc, dtype=F32)
        colbuf = np.empty(g.k * g.chunk * g.plane, dtype=F32)
        dcolbuf = np.empty_like(colbuf)
        dybuf = np.empty(g.ocg * g.chunk * g.plane, dtype=F32) if g.chunk > 1 else None
        dw_part = np.empty((g.ocg, g.k), dtype=F32)
        for gi in range(groups):
            oc = slice(gi * g.ocg, (gi + 1) * g.ocg)
            wg = w[oc].reshape(g.ocg, g.k)
            dwg = dw[oc].reshape(g.ocg, g.k)
            for n0, n1 in g.chunks():
                cols = g.im2col(self._k, x, n0, n1, gi * g.cg, colbuf)
                if n1 - n0 == 1:
                    dyg = dy3[n0, oc]
                else:
                    dyg = dybuf[:g.ocg * cols.shape[1]].reshape(g.ocg, -1)
                    dyg.reshape(g.ocg, n1 - n0, g.plane)[...] = dy3[n0:n1, oc].transpose(1, 0, 2)
                if n0 == 0:
                    np.matmul(dyg, cols.T, out=dwg)
                else:
                    np.matmul(dyg, cols.T, out=dw_part)
                    dwg += dw_part
                dcols = dcolbuf[:cols.size].reshape(cols.shape)
                np.matmul(wg.T, dyg, out=dcols)
                g.col2im(self._k, dcols, n0, n1, gi * g.cg, dx)
        self._k.channel_sum(dy3, db)
        return dx, dw, db

    # ---- pooling, activations, loss -------------------------------------------------------
    def pool_forward(self, x: Array, k: int, stride: int, pad: int, mode: str
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        if mode not in POOL_MODES:
            raise ValueError(f"unknown pooling mode {mode!r} (known: max, avg)")
        x = _f32(x)
        n, c, h, w = x.shape
        y = np.empty((n, c, out_size(h, k, stride, pad), out_size(w, k, stride, pad)), F32)
        if mode == "avg":
            self._k.pool_avg_forward(x, k, stride, pad, y)
            return y, None
        argmax = np.empty(y.shape, dtype=np.int64)
        self._k.pool_max_forward(x, k, stride, pad, y, argmax)
        return y, argmax

    def pool_backward(self, dy: Array, x_shape: tuple[int, int, int, int], k: int, stride: int,
                      pad: int, mode: str, argmax: Array | None) -> np.ndarray:
        if mode not in POOL_MODES:
            raise ValueError(f"unknown pooling mode {mode!r} (known: max, avg)")
        dy = _f32(dy)
        dx = np.zeros(x_shape, dtype=F32)
        if mode == "avg":
            self._k.pool_avg_backward(dy, k, stride, pad, dx)
        elif argmax is None:
            raise ValueError("max pooling backward needs the argmax of pool_forward")
        else:
            n, c, h, w = x_shape
            self._k.pool_max_backward(dy, np.ascontiguousarray(argmax, dtype=np.int64),
                                      dx.reshape(n, c, h * w))
        return dx

    def act_forward(self, x: Array, fn: str) -> np.ndarray:
        x = _f32(x)
        y = np.empty_like(x)
        self._k.act_forward(x.reshape(-1), y.reshape(-1), _activation(fn))
        return y

    def act_backward(self, y: Array, dy: Array, fn: str) -> np.ndarray:
        y, dy = _f32(y), _f32(dy)
        dx = np.empty_like(y)
        self._k.act_backward(y.reshape(-1), dy.reshape(-1), dx.reshape(-1), _activation(fn))
        return dx

    def softmax_xent(self, logits: Array, labels: Array) -> tuple[float, np.ndarray]:
        z = _f32(logits)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        n, k = z.shape
        if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= k)):
            raise ValueError(f"labels must be {n} integers in [0, {k}), got {labels!r}")
        grad = np.empty_like(z)
        total = self._k.softmax_xent(z, labels, grad)
        return float(total / n), grad

    # ---- updates --------------------------------------------------------------------------
    def sgd_momentum(self, w: Array, g: Array, v: Array, lr: float, momentum: float,
                     weight_decay: float = 0.0) -> None:
        self._k.sgd_momentum(_flat(w), _f32(g).reshape(-1), _flat(v), F32(lr), F32(momentum),
                             F32(weight_decay))

    def adagrad(self, w: Array, g: Array, v: Array, lr: float, eps: float = 1e-8) -> None:
        """In place: ``v += g g``; ``w -= lr g / (sqrt(v) + eps)`` (the parameter server's
        Adagrad, a host-side update: CPU backend only)."""
        self._k.adagrad(_flat(w), _f32(g).reshape(-1), _flat(v), F32(lr), F32(eps))

    def axpy(self, alpha: float, x: Array, y: Array) -> None:
        self._k.axpy(F32(alpha), _f32(x).reshape(-1), _flat(y))

    def scale(self, alpha: float, x: Array) -> None:
        self._k.scale(F32(alpha), _flat(x))

    def rbm_cd1(self, v0: Array, w: Array, b_vis: Array, b_hid: Array, uniform: Array
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        v0, w, b_vis, b_hid = _f32(v0), _f32(w), _f32(b_vis), _f32(b_hid)
        k = self._k
        h0 = np.matmul(v0, w)
        k.bias_sigmoid(h0, b_hid)
        sample = np.empty_like(h0)
        k.bernoulli(_f32(uniform), h0, sample)
        v1 = np.matmul(sample, w.T)
        k.bias_sigmoid(v1, b_vis)
        h1 = np.matmul(v1, w)
        k.bias_sigmoid(h1, b_hid)
        dw = np.matmul(v0.T, h0)
        k.sub_div(dw, np.matmul(v1.T, h1), v0.shape[0])
        db_vis = np.empty(v0.shape[1], dtype=F32)
        db_hid = np.empty(h0.shape[1], dtype=F32)
        err = k.mean_diff(v0, v1, db_vis)
        k.mean_diff(h0, h1, db_hid)
        return dw, db_vis, db_hid, float(err)


def _activation(fn: str) -> int:
    if fn not in ACTIVATIONS:
        raise ValueError(f"unknown activation {fn!r} (known: relu, sigmoid, tanh)")
    return ACTIVATIONS[fn]

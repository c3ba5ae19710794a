"""CUDA backend (numba-cuda): every kernel of :class:`executor.kernels.base.Backend` as a GPU
kernel, buffers resident on the device between calls.

Kernels (launch configuration in brackets; "1-D" is 256 threads a block, a thread per output):

* ``gemm``, and the GEMMs inside dense, conv and CD-1: shared-memory tiled SGEMM with 2-D
  register blocking (``cuda_gemm``) [16 x 16 threads a block, 128 x 128 outputs a block, 8 x 8
  a thread, k in slabs of 8; grid = ceil(n / 128) x ceil(m / 128)]. float32 accumulate.
* ``im2col`` [1-D over the columns matrix] and ``col2im`` [1-D over input pixels, each
  gathering the window entries that cover it: no atomics] (``cuda_image``). Convolution =
  im2col + GEMM + a kernel that turns the GEMM rows back into NCHW and adds the bias; groups run
  one after another on channel slices. Backward: ``dw`` = GEMM of the gradient rows with the
  columns, ``dx`` = col2im of GEMM(gradient rows, w), ``db`` [a block per channel, tree
  reduction in shared memory].
* Element-wise [1-D] (``cuda_ops``): bias + activation (fused), activations forward and
  backward (from the output), ``axpy``, ``scale``, ``sgd_momentum``, CD-1's Bernoulli sample.
* Reductions (``cuda_ops``): dense ``db`` and CD-1's bias directions [a thread per column],
  softmax cross-entropy [a thread per row: maximum subtracted, gradient and the row's loss], the
  mean loss and the reconstruction error [one block striding over the data, then a tree].
* Pooling (``cuda_image``): max forward stores the argmax, avg forward [1-D over outputs];
  backward [1-D over input pixels, each gathering from the windows that cover it: no atomics].
* Transformer methods (the mixin ``cuda_transformer.CudaTransformer``; attention's kernels in
  ``cuda_attention``): layer norm, GELU, attention, vocabulary-parallel embedding and partial
  cross-entropy, ``add``. Row-wise work [a block of 64 threads per row, tree reductions];
  element-wise work [1-D]. The embedding's backward is the one kernel with atomics.

The only device-to-host copies inside a method are the scalar losses (``softmax_xent``,
``rbm_cd1``). Launches queue on the default stream; ``synchronize`` waits for them. Host arrays
given to a method are copied over first; the in-place methods refuse them (the update would land
in a copy).

Left out: streams and overlap of copies with compute, fused im2col-GEMM (implicit GEMM), tensor
cores (TF32): this backend measures what plain FP32 CUDA kernels achieve, not cuDNN.

Without a GPU, ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is first imported) runs the same
kernels on the CPU under numba's CUDA simulator, a Python thread per GPU thread: that checks the
kernels' correctness, not their speed (about 0.1 ms per simulated thread; a 17 x 23 x 9 GEMM
takes half a second).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from executor.kernels import cuda_image as img
from executor.kernels import cuda_ops as ops
from executor.kernels.base import Backend
from executor.kernels.cuda_gemm import gemm_shape, sgemm
from executor.kernels.cuda_transformer import CudaTransformer

F32 = np.float32


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _flat(a):  # noqa: ANN001, ANN202
    """The 1-D view the element-wise kernels take (the simulator would silently copy a
    non-contiguous array, so refuse one here)."""
    if not a.is_c_contiguous():
        raise ValueError(f"expected a C-contiguous device array, got strides {a.strides}")
    return a.reshape(a.size)


def _updatable(*arrays) -> None:  # noqa: ANN002
    """The in-place methods write device memory: refuse what they could not update."""
    for a in arrays:
        if not hasattr(a, "copy_to_host") or a.dtype != F32 or not a.is_c_contiguous():
            raise ValueError("in-place kernels take C-contiguous float32 device arrays "
                             f"(from to_device or zeros), got {type(a).__name__} "
                             f"{getattr(a, 'dtype', '')}")
    if len({a.size for a in arrays}) > 1:
        raise ValueError(f"in-place kernels take arrays of one size, got "
                         f"{[tuple(a.shape) for a in arrays]}")


def _activation(fn: str) -> int:
    if fn not in ops.ACTIVATIONS:
        raise ValueError(f"unknown activation {fn!r}")
    return ops.ACTIVATIONS[fn]


class CudaBackend(CudaTransformer, Backend):
    name = "cuda"

    def __init__(self) -> None:
        if not cuda.is_available():
            raise RuntimeError("no CUDA GPU found (set NUMBA_ENABLE_CUDASIM=1 to run the CUDA "
                               "kernels on the CPU simulator)")

    # ---- memory ---------------------------------------------------------------------------
    def to_device(self, a):  # noqa: ANN001, ANN201
        if hasattr(a, "copy_to_host"):  # already there
            return a
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = a.astype(F32, copy=False)
        return cuda.to_device(np.ascontiguousarray(a))

    def to_host(self, a):  # noqa: ANN001, ANN201
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)

    def _dev(self, a):  # noqa: ANN001, ANN202
        """``a`` on the device: device arrays pass through, host arrays are copied over."""
        return a if hasattr(a, "copy_to_host") else self.to_device(a)

    def _empty(self, shape, dtype=F32):  # noqa: ANN001, ANN202
        shape = (shape,) if np.isscalar(shape) else shape
        return cuda.device_array(tuple(int(s) for s in shape), dtype=dtype)

    def zeros(self, shape):  # noqa: ANN001, ANN201
        out = self._empty(shape)
        ops.launch(ops.fill, out.size, _flat(out), F32(0.0))
        return out

    def synchronize(self) -> None:
        cuda.synchronize()

    # ---- linear algebra -------------------------------------------------------------------
    def gemm(self, a, b, trans_a=False, trans_b=False):  # noqa: ANN001, ANN201
        a, b = self._dev(a), self._dev(b)
        m, n, _ = gemm_shape(a.shape, b.shape, trans_a, trans_b)
        c = self._empty((m, n))
        sgemm(a, b, c, trans_a, trans_b)
        return c

    def _bias_act(self, y, b, fn: int):  # noqa: ANN001, ANN202
        """In place ``y = act(y + b)`` on a (rows, cols) array; returns ``y``."""
        ops.launch(ops.bias_act_rows, y.size, y, self._dev(b), fn)
        return y

    def dense_forward(self, x, w, b):  # noqa: ANN001, ANN201
        return self._bias_act(self.gemm(x, w), b, ops.IDENTITY)

    def dense_backward(self, x, w, dy):  # noqa: ANN001, ANN201
        dy = self._dev(dy)
        db = self._empty((dy.shape[1],))
        ops.launch(ops.col_sums, dy.shape[1], dy, db)
        return self.gemm(dy, w, trans_b=True), self.gemm(x, dy, trans_a=True), db

    # ---- convolution ----------------------------------------------------------------------
    def _im2col_into(self, x, cols, c0, kh, kw, stride, pad, oh, ow):  # noqa: ANN001, ANN202
        ops.launch(img.im2col, cols.size, x, cols, c0, kh, kw, stride, pad, oh, ow)

    def im2col(self, x, kh, kw, stride, pad):  # noqa: ANN001, ANN201
        x = self._dev(x)
        n, c, h, w = x.shape
        oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
        cols = self._empty((n * oh * ow, c * kh * kw))
        self._im2col_into(x, cols, 0, kh, kw, stride, pad, oh, ow)
        return cols

    def _col2im_into(self, cols, dx, c0, cg, kh, kw, stride, pad):  # noqa: ANN001, ANN202
        n, _, h, w = dx.shape
        oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
        ops.launch(img.col2im, n * cg * h * w, cols, dx, c0, cg, kh, kw, stride, pad, oh, ow)

    def col2im(self, cols, x_shape, kh, kw, stride, pad):  # noqa: ANN001, ANN201
        dx = self._empty(x_shape)
        self._col2im_into(self._dev(cols), dx, 0, x_shape[1], kh, kw, stride, pad)
        return dx

    def _conv_dims(self, x, w, stride, pad, groups):  # noqa: ANN001, ANN202
        n, c, h, wd = x.shape
        oc, cg, kh, kw = w.shape
        if groups < 1 or c != cg * groups or oc % groups:
            raise ValueError(f"conv: x has {c} channels and w is {tuple(w.shape)}: "
                             f"groups={groups} does not divide them")
        return n, oc, oc // groups, cg, kh, kw, out_size(h, kh, stride, pad), \
            out_size(wd, kw, stride, pad)

    def conv_forward(self, x, w, b, stride, pad, groups=1):  # noqa: ANN001, ANN201
        x, w, b = self._dev(x), self._dev(w), self._dev(b)
        n, oc, ocg, cg, kh, kw, oh, ow = self._conv_dims(x, w, stride, pad, groups)
        w2 = w.reshape(oc, cg * kh * kw)
        y = self._empty((n, oc, oh, ow))
        cols = self._empty((n * oh * ow, cg * kh * kw))
        rows = self._empty((n * oh * ow, ocg))
        for g in range(groups):
            self._im2col_into(x, cols, g * cg, kh, kw, stride, pad, oh, ow)
            sgemm(cols, w2[g * ocg:(g + 1) * ocg], rows, trans_b=True)
            ops.launch(img.rows_to_nchw, n * ocg * oh * ow, rows, b, y, g * ocg)
        return y

    def conv_backward(self, x, w, dy, stride, pad, groups=1):  # noqa: ANN001, ANN201
        x, w, dy = self._dev(x), self._dev(w), self._dev(dy)
        n, oc, ocg, cg, kh, kw, oh, ow = self._conv_dims(x, w, stride, pad, groups)
        w2 = w.reshape(oc, cg * kh * kw)
        dx = self._empty(x.shape)
        dw = self._empty(w.shape)
        dw2 = dw.reshape(oc, cg * kh * kw)
        cols = self._empty((n * oh * ow, cg * kh * kw))
        dcols = self._empty((n * oh * ow, cg * kh * kw))
        rows = self._empty((n * oh * ow, ocg))
        for g in range(groups):
            out = slice(g * ocg, (g + 1) * ocg)
            self._im2col_into(x, cols, g * cg, kh, kw, stride, pad, oh, ow)
            ops.launch(img.nchw_to_rows, rows.size, dy, rows, g * ocg)
            sgemm(rows, cols, dw2[out], trans_a=True)
            sgemm(rows, w2[out], dcols)
            self._col2im_into(dcols, dx, g * cg, cg, kh, kw, stride, pad)
        db = self._empty((oc,))
        if oc:
            ops.channel_sums[oc, ops.THREADS](dy, db)
        return dx, dw, db

    # ---- pooling, activations, loss ------------------------------------------------------
    def pool_forward(self, x, k, stride, pad, mode):  # noqa: ANN001, ANN201
        x = self._dev(x)
        n, c, h, w = x.shape
        shape = (n, c, out_size(h, k, stride, pad), out_size(w, k, stride, pad))
        y = self._empty(shape)
        if mode == "max":
            argmax = self._empty(shape, np.int64)
            ops.launch(img.max_pool_forward, y.size, x, y, argmax, k, stride, pad)
            return y, argmax
        if mode == "avg":
            ops.launch(img.avg_pool_forward, y.size, x, y, k, stride, pad)
            return y, None
        raise ValueError(f"unknown pooling mode {mode!r}")

    def pool_backward(self, dy, x_shape, k, stride, pad, mode, argmax):  # noqa: ANN001, ANN201
        if mode not in ("max", "avg"):
            raise ValueError(f"unknown pooling mode {mode!r}")
        is_max = mode == "max"
        if is_max:
            argmax = self._dev(argmax)
        else:  # unread; the kernel takes one argmax type
            argmax = self._empty((1, 1, 1, 1), np.int64)
        dx = self._empty(x_shape)
        ops.launch(img.pool_backward, dx.size, self._dev(dy), argmax, dx, k, stride, pad, is_max)
        return dx

    def act_forward(self, x, fn):  # noqa: ANN001, ANN201
        code = _activation(fn)
        x = self._dev(x)
        y = self._empty(x.shape)
        ops.launch(ops.act_forward, x.size, _flat(x), _flat(y), code)
        return y

    def act_backward(self, y, dy, fn):  # noqa: ANN001, ANN201
        code = _activation(fn)
        y, dy = self._dev(y), self._dev(dy)
        dx = self._empty(y.shape)
        ops.launch(ops.act_backward, y.size, _flat(y), _flat(dy), _flat(dx), code)
        return dx

    def _scalar_sum(self, kernel, *args) -> float:  # noqa: ANN001
        """Run a single-block reduction into a one-element device array; the value on the host."""
        out = self._empty((1,))
        kernel[1, ops.THREADS](*args, out)
        return float(out.copy_to_host()[0])

    def softmax_xent(self, logits, labels):  # noqa: ANN001, ANN201
        logits = self._dev(logits)
        labels = labels if hasattr(labels, "copy_to_host") else \
            cuda.to_device(np.ascontiguousarray(labels, dtype=np.int64))
        n = logits.shape[0]
        grad = self._empty(logits.shape)
        losses = self._empty((n,))
        ops.launch(ops.softmax_xent_rows, n, logits, labels, grad, losses)
        loss = self._scalar_sum(ops.sum_all, losses) / n
        if np.isnan(loss):  # the kernel marks a label out of range with NaN: tell which
            bad = self.to_host(labels)
            bad = bad[(bad < 0) | (bad >= logits.shape[1])]
            if bad.size:
                raise ValueError(f"softmax_xent: labels {bad[:5].tolist()} outside "
                                 f"[0, {logits.shape[1]})")
        return loss, grad

    # ---- updates ------------------------------------------------------------------------
    def sgd_momentum(self, w, g, v, lr, momentum, weight_decay=0.0):  # noqa: ANN001, ANN201
        g = self._dev(g)
        _updatable(w, g, v)
        ops.launch(ops.sgd_momentum, w.size, _flat(w), _flat(g), _flat(v), F32(lr),
                   F32(momentum), F32(weight_decay))

    def axpy(self, alpha, x, y):  # noqa: ANN001, ANN201
        x = self._dev(x)
        _updatable(x, y)
        ops.launch(ops.axpy, y.size, F32(alpha), _flat(x), _flat(y))

    def scale(self, alpha, x):  # noqa: ANN001, ANN201
        _updatable(x)
        ops.launch(ops.scale, x.size, F32(alpha), _flat(x))

    def rbm_cd1(self, v0, w, b_vis, b_hid, uniform):  # noqa: ANN001, ANN201
        v0, w, uniform = self._dev(v0), self._dev(w), self._dev(uniform)
        n = v0.shape[0]
        nf = F32(n)
        h0 = self._bias_act(self.gemm(v0, w), b_hid, ops.SIGMOID)
        s = self._empty(h0.shape)
        ops.launch(ops.bernoulli, h0.size, _flat(uniform), _flat(h0), _flat(s))
        v1 = self._bias_act(self.gemm(s, w, trans_b=True), b_vis, ops.SIGMOID)
        h1 = self._bias_act(self.gemm(v1, w), b_hid, ops.SIGMOID)
        dw = self.gemm(v0, h0, trans_a=True)
        neg = self.gemm(v1, h1, trans_a=True)
        ops.launch(ops.diff_div, dw.size, _flat(dw), _flat(neg), nf, _flat(dw))
        db_vis = self._empty((v0.shape[1],))
        db_hid = self._empty((h0.shape[1],))
        ops.launch(ops.col_mean_diff, v0.shape[1], v0, v1, nf, db_vis)
        ops.launch(ops.col_mean_diff, h0.shape[1], h0, h1, nf, db_hid)
        err = self._scalar_sum(ops.sum_sq_diff, _flat(v0), _flat(v1)) / max(v0.size, 1)
        return dw, db_vis, db_hid, err

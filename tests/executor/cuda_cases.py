"""Cases: every :class:`CudaBackend` method equals the NumPy reference on random inputs, to
float32 accuracy (``rtol 1e-4``, ``atol 1e-5`` times the largest reference magnitude).

``test_kernels_cuda.py`` runs this module in a child pytest with ``NUMBA_ENABLE_CUDASIM=1`` (numba
reads the variable once, at its first import, which other test modules make first). On a machine
with a GPU, ``pytest tests/executor/cuda_cases.py`` runs the same cases on it. Sizes stay at 32
and below: the simulator spends about 0.1 ms on each simulated thread.
"""

from __future__ import annotations

import numpy as np
import pytest

from executor.kernels import get_backend
from executor.kernels.cuda import CudaBackend
from executor.kernels.cuda_gemm import DEFAULT_TILING, GemmTiling, sgemm
from executor.kernels.reference import ReferenceBackend

REF = ReferenceBackend()
# 4 x 4 threads of 2 x 2 outputs, k in slabs of 4: a 17 x 9 output spans 3 x 2 blocks, so the
# cases exercise block and slab edges that the default 128 x 128 tile would hide at these sizes
SMALL_TILING = GemmTiling(threads=4, reg=2, bk=4)

# (x shape, w shape, stride, pad, groups)
CONV_CASES = [
    ((2, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1),
    ((2, 4, 8, 8), (4, 2, 3, 3), 2, 1, 2),
    ((1, 2, 7, 6), (3, 2, 2, 3), 3, 2, 1),  # non-square kernel, pad >= stride
]
# (x shape, k, stride, pad): overlapping windows with padding; windows of padding only
POOL_CASES = [
    ((1, 1, 4, 4), 2, 2, 0),
    ((2, 3, 7, 9), 3, 2, 1),
    ((1, 2, 5, 5), 2, 2, 2),
]


@pytest.fixture(scope="module")
def cu() -> CudaBackend:
    return CudaBackend()


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def close(got: object, want: np.ndarray) -> None:
    """``got`` a device array: copied back, then compared like the CPU backend's tests."""
    got = got.copy_to_host()
    want = np.asarray(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    finite = want[np.isfinite(want)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


# ---- memory, linear algebra -----------------------------------------------------------------

def test_memory(cu: CudaBackend) -> None:
    assert isinstance(get_backend("cuda"), CudaBackend) and cu.name == "cuda"
    a = cu.to_device(np.arange(6, dtype=np.float64).reshape(2, 3).T)
    assert a.dtype == np.float32 and a.is_c_contiguous()
    np.testing.assert_array_equal(cu.to_host(a), [[0, 3], [1, 4], [2, 5]])
    assert cu.to_device(np.array([1, 2])).dtype == np.array([1, 2]).dtype
    z = cu.zeros((3, 5, 7))  # device memory starts as garbage (so does the simulator's)
    assert z.dtype == np.float32 and not cu.to_host(z).any()
    cu.synchronize()


@pytest.mark.parametrize("m,k,n", [(17, 23, 9), (1, 1, 1), (3, 0, 2)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm(cu: CudaBackend, m: int, k: int, n: int, trans_a: bool, trans_b: bool) -> None:
    rng = np.random.default_rng(m + k + n)
    a = rand(rng, k, m) if trans_a else rand(rng, m, k)
    b = rand(rng, n, k) if trans_b else rand(rng, k, n)
    want = REF.gemm(a, b, trans_a, trans_b)
    close(cu.gemm(cu.to_device(a), cu.to_device(b), trans_a, trans_b), want)
    c = cu.zeros((m, n))
    sgemm(cu.to_device(a), cu.to_device(b), c, trans_a, trans_b, SMALL_TILING)
    close(c, want)


def test_gemm_rejects_shapes_and_tilings() -> None:
    be = CudaBackend()
    with pytest.raises(ValueError, match="op\\(a\\) is 2x3 but op\\(b\\) is 2x2"):
        be.gemm(be.zeros((2, 3)), be.zeros((2, 2)))
    with pytest.raises(ValueError, match="multiple of threads"):
        sgemm(be.zeros((2, 3)), be.zeros((3, 2)), be.zeros((2, 2)),
              tiling=DEFAULT_TILING._replace(bk=3))


@pytest.mark.parametrize("n,fin,fout", [(1, 5, 3), (16, 32, 10)])
def test_dense(cu: CudaBackend, n: int, fin: int, fout: int) -> None:
    rng = np.random.default_rng(n)
    x, w, b, dy = rand(rng, n, fin), rand(rng, fin, fout), rand(rng, fout), rand(rng, n, fout)
    d = [cu.to_device(a) for a in (x, w, b, dy)]
    close(cu.dense_forward(d[0], d[1], d[2]), REF.dense_forward(x, w, b))
    for got, want in zip(cu.dense_backward(d[0], d[1], d[3]), REF.dense_backward(x, w, dy)):
        close(got, want)


# ---- convolution ----------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape,w_shape,stride,pad,groups", CONV_CASES)
def test_im2col_col2im(cu: CudaBackend, x_shape: tuple, w_shape: tuple, stride: int, pad: int,
                       groups: int) -> None:
    rng = np.random.default_rng(10)
    x = rand(rng, *x_shape)
    kh, kw = w_shape[2:]
    cols = REF.im2col(x, kh, kw, stride, pad)
    np.testing.assert_array_equal(cu.to_host(cu.im2col(cu.to_device(x), kh, kw, stride, pad)),
                                  cols)
    c = rand(rng, *cols.shape)
    close(cu.col2im(cu.to_device(c), x_shape, kh, kw, stride, pad),
          REF.col2im(c, x_shape, kh, kw, stride, pad))


@pytest.mark.parametrize("x_shape,w_shape,stride,pad,groups", CONV_CASES)
def test_conv(cu: CudaBackend, x_shape: tuple, w_shape: tuple, stride: int, pad: int,
              groups: int) -> None:
    rng = np.random.default_rng(11)
    x, w, b = rand(rng, *x_shape), rand(rng, *w_shape), rand(rng, w_shape[0])
    y = REF.conv_forward(x, w, b, stride, pad, groups)
    dx, dw, db = (cu.to_device(a) for a in (x, w, b))
    close(cu.conv_forward(dx, dw, db, stride, pad, groups), y)
    dy = rand(rng, *y.shape)
    for got, want in zip(cu.conv_backward(dx, dw, cu.to_device(dy), stride, pad, groups),
                         REF.conv_backward(x, w, dy, stride, pad, groups)):
        close(got, want)


def test_conv_rejects_groups_that_do_not_divide(cu: CudaBackend) -> None:
    with pytest.raises(ValueError, match="groups=2"):
        cu.conv_forward(cu.zeros((1, 3, 4, 4)), cu.zeros((4, 1, 3, 3)), cu.zeros((4,)), 1, 0, 2)


# ---- pooling, activations, loss -------------------------------------------------------------

@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("x_shape,k,stride,pad", POOL_CASES)
def test_pool(cu: CudaBackend, mode: str, x_shape: tuple, k: int, stride: int, pad: int) -> None:
    rng = np.random.default_rng(12)
    x = rand(rng, *x_shape)  # continuous values: no ties
    y, argmax = cu.pool_forward(cu.to_device(x), k, stride, pad, mode)
    want_y, want_argmax = REF.pool_forward(x, k, stride, pad, mode)
    close(y, want_y)
    if mode == "max":
        np.testing.assert_array_equal(argmax.copy_to_host(), want_argmax)
        assert argmax.dtype == want_argmax.dtype
    else:
        assert argmax is None
    dy = rand(rng, *want_y.shape)
    close(cu.pool_backward(cu.to_device(dy), x_shape, k, stride, pad, mode, argmax),
          REF.pool_backward(dy, x_shape, k, stride, pad, mode, want_argmax))


def test_pool_rejects_unknown_mode(cu: CudaBackend) -> None:
    with pytest.raises(ValueError, match="median"):
        cu.pool_forward(cu.zeros((1, 1, 2, 2)), 2, 2, 0, "median")


@pytest.mark.parametrize("fn", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (2, 3, 5, 5)])
def test_activations(cu: CudaBackend, fn: str, shape: tuple) -> None:
    rng = np.random.default_rng(13)
    x, dy = rand(rng, *shape) * 4, rand(rng, *shape)
    y = cu.act_forward(cu.to_device(x), fn)
    close(y, REF.act_forward(x, fn))
    close(cu.act_backward(y, cu.to_device(dy), fn), REF.act_backward(y.copy_to_host(), dy, fn))


def test_activation_rejects_unknown_function(cu: CudaBackend) -> None:
    with pytest.raises(ValueError, match="gelu"):
        cu.act_forward(cu.zeros((3,)), "gelu")


@pytest.mark.parametrize("n,k,spread", [(1, 1, 1.0), (5, 7, 1.0), (32, 30, 5.0),
                                        (4, 10, 1000.0)])
def test_softmax_xent(cu: CudaBackend, n: int, k: int, spread: float) -> None:
    rng = np.random.default_rng(14)
    logits, labels = rand(rng, n, k) * spread, rng.integers(0, k, n)
    loss, grad = cu.softmax_xent(cu.to_device(logits), cu.to_device(labels))
    want_loss, want_grad = REF.softmax_xent(logits, labels)
    assert isinstance(loss, float)
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    close(grad, want_grad)


def test_softmax_xent_rejects_labels_out_of_range(cu: CudaBackend) -> None:
    with pytest.raises(ValueError, match=r"labels \[3\] outside \[0, 3\)"):
        cu.softmax_xent(cu.zeros((2, 3)), np.array([0, 3]))


# ---- updates --------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_sgd_momentum_three_steps(cu: CudaBackend, weight_decay: float) -> None:
    rng = np.random.default_rng(15)
    w_ref, v_ref = rand(rng, 31, 7), np.zeros((31, 7), np.float32)
    w, v = cu.to_device(w_ref), cu.zeros(v_ref.shape)
    for _ in range(3):
        g = rand(rng, 31, 7)
        cu.sgd_momentum(w, cu.to_device(g), v, 0.1, 0.9, weight_decay)
        REF.sgd_momentum(w_ref, g, v_ref, 0.1, 0.9, weight_decay)
        close(w, w_ref)
        close(v, v_ref)


def test_axpy_and_scale_in_place(cu: CudaBackend) -> None:
    rng = np.random.default_rng(16)
    x, y_ref = rand(rng, 5, 3, 4), rand(rng, 5, 3, 4)
    y = cu.to_device(y_ref)
    cu.axpy(-0.25, cu.to_device(x), y)
    REF.axpy(-0.25, x, y_ref)
    close(y, y_ref)
    cu.scale(1.5, y)
    REF.scale(1.5, y_ref)
    close(y, y_ref)


def test_in_place_refuses_arrays_it_cannot_update(cu: CudaBackend) -> None:
    with pytest.raises(ValueError, match="C-contiguous float32 device arrays"):
        cu.scale(2.0, np.zeros(4, np.float32))  # a host array: the update would be lost
    with pytest.raises(ValueError, match="C-contiguous float32 device arrays"):
        cu.scale(2.0, cu.zeros((4, 4))[:, ::2])
    with pytest.raises(ValueError, match="one size"):
        cu.axpy(2.0, cu.zeros((3,)), cu.zeros((4,)))


@pytest.mark.parametrize("n,nv,nh", [(1, 3, 2), (10, 32, 16)])
def test_rbm_cd1(cu: CudaBackend, n: int, nv: int, nh: int) -> None:
    rng = np.random.default_rng(17)
    v0 = (rng.random((n, nv)) < 0.5).astype(np.float32)
    w, b_vis, b_hid = rand(rng, nv, nh) * 0.1, rand(rng, nv) * 0.1, rand(rng, nh) * 0.1
    uniform = rng.random((n, nh)).astype(np.float32)
    got = cu.rbm_cd1(*(cu.to_device(a) for a in (v0, w, b_vis, b_hid, uniform)))
    want = REF.rbm_cd1(v0, w, b_vis, b_hid, uniform)
    for g, ww in zip(got[:3], want[:3]):
        close(g, ww)
    assert isinstance(got[3], float)
    assert got[3] == pytest.approx(want[3], rel=1e-5)

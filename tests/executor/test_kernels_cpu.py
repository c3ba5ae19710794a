"""Every :class:`CpuBackend` method equals the NumPy reference on random inputs, serial and
parallel (``prange``) kernels alike, to float32 accuracy: ``rtol 1e-4`` and an ``atol`` of
``1e-5`` times the largest reference magnitude (sums of many terms lose absolute, not relative,
digits near zero)."""

from __future__ import annotations

import numpy as np
import pytest

from executor.kernels import cpu, get_backend
from executor.kernels.cpu import CpuBackend
from executor.kernels.reference import ReferenceBackend

REF = ReferenceBackend()

# (x shape, w shape, stride, pad, groups): odd sizes, batch 1, stride 2, pad 1/2, groups 2,
# 1x1 and non-square kernels
CONV_CASES = [
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1),
    ((2, 3, 7, 9), (4, 3, 3, 3), 1, 1, 1),
    ((3, 4, 9, 8), (6, 2, 3, 3), 2, 1, 2),
    ((2, 4, 11, 11), (8, 2, 5, 5), 2, 2, 2),
    ((1, 6, 8, 7), (5, 6, 1, 1), 1, 0, 1),
    ((4, 3, 13, 12), (6, 3, 3, 2), 3, 2, 1),
    ((5, 2, 6, 6), (4, 1, 4, 4), 2, 0, 2),
]
# (x shape, k, stride, pad): k=3 stride 2 with padding (AlexNet's overlapping pooling), windows
# that are all padding (pad >= k)
POOL_CASES = [
    ((1, 1, 4, 4), 2, 2, 0),
    ((2, 3, 7, 9), 3, 2, 1),
    ((2, 2, 13, 13), 3, 2, 0),
    ((3, 2, 6, 5), 3, 1, 1),
    ((1, 2, 5, 5), 2, 2, 2),
]


@pytest.fixture(params=[False, True], ids=["serial", "parallel"])
def be(request: pytest.FixtureRequest) -> CpuBackend:
    return CpuBackend(parallel=request.param)


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def close(got: np.ndarray, want: np.ndarray) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    finite = want[np.isfinite(want)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


# ---- memory, linear algebra -----------------------------------------------------------------

def test_get_backend_and_memory() -> None:
    be = get_backend("cpu")
    assert isinstance(be, CpuBackend) and be.name == "cpu"
    a = be.to_device(np.arange(6, dtype=np.float64).reshape(2, 3).T)
    assert a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(be.to_host(a), [[0, 3], [1, 4], [2, 5]])
    assert be.to_device(np.array([1, 2])).dtype == np.array([1, 2]).dtype
    z = be.zeros((2, 3))
    assert z.dtype == np.float32 and not z.any()
    be.synchronize()


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 5, 3), (64, 33, 17), (128, 257, 65)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm(m: int, k: int, n: int, trans_a: bool, trans_b: bool) -> None:
    rng = np.random.default_rng(m + k + n)
    a = rand(rng, k, m) if trans_a else rand(rng, m, k)
    b = rand(rng, n, k) if trans_b else rand(rng, k, n)
    close(CpuBackend().gemm(a, b, trans_a, trans_b), REF.gemm(a, b, trans_a, trans_b))


@pytest.mark.parametrize("n,fin,fout", [(1, 5, 3), (16, 33, 7), (64, 100, 10)])
def test_dense(n: int, fin: int, fout: int) -> None:
    rng = np.random.default_rng(n)
    x, w, b, dy = rand(rng, n, fin), rand(rng, fin, fout), rand(rng, fout), rand(rng, n, fout)
    be = CpuBackend()
    close(be.dense_forward(x, w, b), REF.dense_forward(x, w, b))
    for got, want in zip(be.dense_backward(x, w, dy), REF.dense_backward(x, w, dy)):
        close(got, want)


# ---- convolution ----------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape,w_shape,stride,pad,groups", CONV_CASES)
def test_im2col_col2im(be: CpuBackend, x_shape: tuple, w_shape: tuple, stride: int, pad: int,
                       groups: int) -> None:
    rng = np.random.default_rng(10)
    x = rand(rng, *x_shape)
    kh, kw = w_shape[2:]
    cols = REF.im2col(x, kh, kw, stride, pad)
    np.testing.assert_array_equal(be.im2col(x, kh, kw, stride, pad), cols)
    c = rand(rng, *cols.shape)
    close(be.col2im(c, x_shape, kh, kw, stride, pad), REF.col2im(c, x_shape, kh, kw, stride, pad))


# chunk_floats: the default (several images per GEMM for these small layers), 1 (one image per
# GEMM, written straight into the output) and 200 (chunks that do not divide the batch)
@pytest.mark.parametrize("chunk_floats", [cpu.CHUNK_FLOATS, 1, 200])
@pytest.mark.parametrize("x_shape,w_shape,stride,pad,groups", CONV_CASES)
def test_conv(be: CpuBackend, monkeypatch: pytest.MonkeyPatch, chunk_floats: int,
              x_shape: tuple, w_shape: tuple, stride: int, pad: int, groups: int) -> None:
    monkeypatch.setattr(cpu, "CHUNK_FLOATS", chunk_floats)
    rng = np.random.default_rng(11)
    x, w, b = rand(rng, *x_shape), rand(rng, *w_shape), rand(rng, w_shape[0])
    y = REF.conv_forward(x, w, b, stride, pad, groups)
    close(be.conv_forward(x, w, b, stride, pad, groups), y)
    dy = rand(rng, *y.shape)
    for got, want in zip(be.conv_backward(x, w, dy, stride, pad, groups),
                         REF.conv_backward(x, w, dy, stride, pad, groups)):
        close(got, want)


def test_conv_rejects_groups_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        CpuBackend().conv_forward(np.zeros((1, 3, 4, 4), np.float32),
                                  np.zeros((4, 1, 3, 3), np.float32), np.zeros(4, np.float32),
                                  1, 0, 2)


# ---- pooling, activations, loss -------------------------------------------------------------

@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("x_shape,k,stride,pad", POOL_CASES)
def test_pool(be: CpuBackend, mode: str, x_shape: tuple, k: int, stride: int, pad: int) -> None:
    rng = np.random.default_rng(12)
    x = rand(rng, *x_shape)  # continuous values: no ties
    y, argmax = be.pool_forward(x, k, stride, pad, mode)
    want_y, want_argmax = REF.pool_forward(x, k, stride, pad, mode)
    close(y, want_y)
    if mode == "max":
        assert argmax.dtype == want_argmax.dtype
        np.testing.assert_array_equal(argmax, want_argmax)
    else:
        assert argmax is None
    dy = rand(rng, *y.shape)
    close(be.pool_backward(dy, x_shape, k, stride, pad, mode, argmax),
          REF.pool_backward(dy, x_shape, k, stride, pad, mode, want_argmax))


def test_pool_rejects_unknown_mode_and_missing_argmax() -> None:
    with pytest.raises(ValueError, match="median"):
        CpuBackend().pool_forward(np.zeros((1, 1, 2, 2), np.float32), 2, 2, 0, "median")
    with pytest.raises(ValueError, match="argmax"):
        CpuBackend().pool_backward(np.zeros((1, 1, 1, 1), np.float32), (1, 1, 2, 2), 2, 2, 0,
                                   "max", None)


@pytest.mark.parametrize("fn", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (7, 13), (2, 3, 5, 5)])
def test_activations(be: CpuBackend, fn: str, shape: tuple) -> None:
    rng = np.random.default_rng(13)
    x, dy = rand(rng, *shape) * 4, rand(rng, *shape)
    y = be.act_forward(x, fn)
    close(y, REF.act_forward(x, fn))
    close(be.act_backward(y, dy, fn), REF.act_backward(y, dy, fn))


def test_tanh_is_float32_accurate_over_every_range(be: CpuBackend) -> None:
    """The kernel's tanh (exp-based, a polynomial below 1/16) against float64 tanh: relative
    error within 4 float32 ulps from 1e-6 to 50 in size, both sides of the 1/16 switch, and the
    limits (0, +-inf, NaN) right."""
    rng = np.random.default_rng(19)
    x = np.concatenate([rng.standard_normal(20000) * s for s in (1e-6, 1e-3, 0.05, 0.5, 3, 50)]
                       + [np.float32([1 / 16, -1 / 16, np.nextafter(np.float32(1 / 16), 0)])])
    x = x.astype(np.float32)
    want = np.tanh(x.astype(np.float64))
    got = be.act_forward(x, "tanh").astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps, atol=0)
    edges = be.act_forward(np.float32([0.0, np.inf, -np.inf, np.nan]), "tanh")
    assert edges[0] == 0.0 and edges[1] == 1.0 and edges[2] == -1.0 and np.isnan(edges[3])


def test_activation_rejects_unknown_function() -> None:
    with pytest.raises(ValueError, match="gelu"):
        CpuBackend().act_forward(np.zeros(3, np.float32), "gelu")


@pytest.mark.parametrize("n,k,spread", [(1, 1, 1.0), (7, 3, 1.0), (64, 1000, 5.0),
                                        (4, 10, 1000.0)])
def test_softmax_xent(be: CpuBackend, n: int, k: int, spread: float) -> None:
    rng = np.random.default_rng(14)
    logits, labels = rand(rng, n, k) * spread, rng.integers(0, k, n)
    loss, grad = be.softmax_xent(logits, labels)
    want_loss, want_grad = REF.softmax_xent(logits, labels)
    assert isinstance(loss, float)
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    close(grad, want_grad)


def test_softmax_xent_rejects_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match="labels"):
        CpuBackend().softmax_xent(np.zeros((2, 3), np.float32), np.array([0, 3]))


# ---- updates --------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_sgd_momentum_three_steps(be: CpuBackend, weight_decay: float) -> None:
    rng = np.random.default_rng(15)
    w, v = rand(rng, 33, 7), np.zeros((33, 7), np.float32)
    w_ref, v_ref = w.copy(), v.copy()
    for _ in range(3):
        g = rand(rng, 33, 7)
        be.sgd_momentum(w, g, v, 0.1, 0.9, weight_decay)
        REF.sgd_momentum(w_ref, g, v_ref, 0.1, 0.9, weight_decay)
        close(w, w_ref)
        close(v, v_ref)


def test_adagrad_three_steps_match_numpy_bit_for_bit(be: CpuBackend) -> None:
    """The parameter server's Adagrad kernel against the NumPy formula it replaced."""
    rng = np.random.default_rng(18)
    w, v = rand(rng, 1001), np.zeros(1001, np.float32)
    w_ref, v_ref = w.copy(), v.copy()
    lr, eps = np.float32(0.05), np.float32(1e-8)
    for _ in range(3):
        g = rand(rng, 1001)
        be.adagrad(w, g, v, 0.05)
        v_ref += g * g
        w_ref -= lr * g / (np.sqrt(v_ref) + eps)
        assert np.array_equal(v, v_ref) and np.array_equal(w, w_ref)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        be.adagrad(np.zeros(4), g[:4], np.zeros(4, np.float32), 0.1)


def test_axpy_and_scale_in_place(be: CpuBackend) -> None:
    rng = np.random.default_rng(16)
    x, y = rand(rng, 5, 3, 4), rand(rng, 5, 3, 4)
    y_ref = y.copy()
    be.axpy(-0.25, x, y)
    REF.axpy(-0.25, x, y_ref)
    close(y, y_ref)
    be.scale(1.5, y)
    REF.scale(1.5, y_ref)
    close(y, y_ref)


def test_in_place_refuses_arrays_it_cannot_update() -> None:
    with pytest.raises(ValueError, match="C-contiguous float32"):
        CpuBackend().scale(2.0, np.zeros((4, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous float32"):
        CpuBackend().axpy(2.0, np.zeros(3, np.float32), np.zeros(3))


@pytest.mark.parametrize("n,nv,nh", [(1, 3, 2), (10, 64, 16), (32, 100, 50)])
def test_rbm_cd1(be: CpuBackend, n: int, nv: int, nh: int) -> None:
    rng = np.random.default_rng(17)
    v0 = (rng.random((n, nv)) < 0.5).astype(np.float32)
    w, b_vis, b_hid = rand(rng, nv, nh) * 0.1, rand(rng, nv) * 0.1, rand(rng, nh) * 0.1
    uniform = rng.random((n, nh)).astype(np.float32)
    got = be.rbm_cd1(v0, w, b_vis, b_hid, uniform)
    want = REF.rbm_cd1(v0, w, b_vis, b_hid, uniform)
    for g, ww in zip(got[:3], want[:3]):
        close(g, ww)
    assert isinstance(got[3], float)
    assert got[3] == pytest.approx(want[3], rel=1e-5)

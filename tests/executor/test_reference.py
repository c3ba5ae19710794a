"""The NumPy reference backend against things that are right by construction: central finite
differences of ``loss = sum(y * r)`` (r random) for every backward pass, im2col/col2im
adjointness, a direct seven-loop convolution, and a CD-1 step written out by hand.

Finite differences run in float64 around float32-representable inputs. Linear kernels (dense,
convolution, pooling, relu away from 0) have no truncation error, so they use a wide step that
drowns float32 rounding; smooth ones (sigmoid, tanh, softmax) use a small step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from executor.kernels.reference import ReferenceBackend

REF = ReferenceBackend()
LINEAR_EPS = 0.1
SMOOTH_EPS = 1e-2


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def numeric_grad(f, a: np.ndarray, eps: float) -> np.ndarray:  # noqa: ANN001
    """Central differences of the scalar ``f(a)`` in every coordinate of ``a`` (float64)."""
    a = a.astype(np.float64)
    grad = np.zeros_like(a)
    for i in range(a.size):
        old = a.flat[i]
        a.flat[i] = old + eps
        up = f(a)
        a.flat[i] = old - eps
        down = f(a)
        a.flat[i] = old
        grad.flat[i] = (up - down) / (2 * eps)
    return grad


def dot(y: np.ndarray, r: np.ndarray) -> float:
    return float(np.sum(np.asarray(y, dtype=np.float64) * r))


def check(analytic: np.ndarray, numeric: np.ndarray) -> None:
    assert analytic.shape == numeric.shape
    scale = max(1.0, float(np.abs(numeric).max()))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-4 * scale)


# ---- gradients ------------------------------------------------------------------------------

def test_dense_gradients() -> None:
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 3, 4), rand(rng, 4, 5), rand(rng, 5)
    r = rng.standard_normal((3, 5))
    dx, dw, db = REF.dense_backward(x, w, r.astype(np.float32))
    check(dx, numeric_grad(lambda a: dot(REF.dense_forward(a, w, b), r), x, LINEAR_EPS))
    check(dw, numeric_grad(lambda a: dot(REF.dense_forward(x, a, b), r), w, LINEAR_EPS))
    check(db, numeric_grad(lambda a: dot(REF.dense_forward(x, w, a), r), b, LINEAR_EPS))


@pytest.mark.parametrize("stride,pad,groups", [(1, 0, 1), (2, 1, 2), (1, 2, 2)])
def test_conv_gradients(stride: int, pad: int, groups: int) -> None:
    rng = np.random.default_rng(2)
    x, w, b = rand(rng, 2, 4, 5, 6), rand(rng, 4, 4 // groups, 3, 2), rand(rng, 4)
    r = rng.standard_normal(REF.conv_forward(x, w, b, stride, pad, groups).shape)
    dx, dw, db = REF.conv_backward(x, w, r.astype(np.float32), stride, pad, groups)

    def loss(xx: np.ndarray, ww: np.ndarray, bb: np.ndarray) -> float:
        return dot(REF.conv_forward(xx, ww, bb, stride, pad, groups), r)

    check(dx, numeric_grad(lambda a: loss(a, w, b), x, LINEAR_EPS))
    check(dw, numeric_grad(lambda a: loss(x, a, b), w, LINEAR_EPS))
    check(db, numeric_grad(lambda a: loss(x, w, a), b, LINEAR_EPS))


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("k,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_pool_gradients(mode: str, k: int, stride: int, pad: int) -> None:
    rng = np.random.default_rng(3)
    # distinct values 0.25 apart: no ties, and a +-0.1 step never changes a window's winner
    x = (rng.permutation(2 * 3 * 7 * 6) * 0.25 - 30.0).astype(np.float32).reshape(2, 3, 7, 6)
    y, argmax = REF.pool_forward(x, k, stride, pad, mode)
    r = rng.standard_normal(y.shape)
    dx = REF.pool_backward(r.astype(np.float32), x.shape, k, stride, pad, mode, argmax)
    check(dx, numeric_grad(lambda a: dot(REF.pool_forward(a, k, stride, pad, mode)[0], r), x,
                           LINEAR_EPS))


@pytest.mark.parametrize("fn", ["relu", "sigmoid", "tanh"])
def test_activation_gradients(fn: str) -> None:
    rng = np.random.default_rng(4)
    # |x| >= 0.2: relu's kink is never inside a step
    x = (rng.choice([-1.0, 1.0], (3, 7)) * rng.uniform(0.2, 2.0, (3, 7))).astype(np.float32)
    r = rng.standard_normal(x.shape)
    dx = REF.act_backward(REF.act_forward(x, fn), r.astype(np.float32), fn)
    eps = LINEAR_EPS if fn == "relu" else SMOOTH_EPS
    check(dx, numeric_grad(lambda a: dot(REF.act_forward(a, fn), r), x, eps))


def test_softmax_xent_gradient() -> None:
    rng = np.random.default_rng(5)
    logits, labels = rand(rng, 4, 6) * 3, np.array([0, 5, 2, 2])
    loss, grad = REF.softmax_xent(logits, labels)
    check(grad, numeric_grad(lambda a: REF.softmax_xent(a, labels)[0], logits, SMOOTH_EPS))
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(4), labels]).mean(), rel=1e-6)


def test_softmax_xent_is_stable_for_huge_logits() -> None:
    loss, grad = REF.softmax_xent(np.array([[1000.0, 0.0], [0.0, 1000.0]], np.float32),
                                  np.array([0, 0]))
    # row 0 is certain (loss 0); row 1's p_label underflows to 0, clamped at -log(1e-30)
    assert loss == pytest.approx(-math.log(1e-30) / 2)
    np.testing.assert_allclose(grad, [[0.0, 0.0], [-0.5, 0.5]], atol=1e-7)


# ---- im2col, convolution --------------------------------------------------------------------

@pytest.mark.parametrize("kh,kw,stride,pad", [(3, 3, 1, 1), (3, 2, 2, 1), (2, 2, 2, 0),
                                              (5, 5, 2, 2), (1, 1, 1, 0)])
def test_col2im_is_the_adjoint_of_im2col(kh: int, kw: int, stride: int, pad: int) -> None:
    rng = np.random.default_rng(6)
    x = rand(rng, 2, 3, 7, 6)
    cols = REF.im2col(x, kh, kw, stride, pad)
    c = rand(rng, *cols.shape)
    lhs = np.sum(cols.astype(np.float64) * c)
    rhs = np.sum(x.astype(np.float64) * REF.col2im(c, x.shape, kh, kw, stride, pad))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def direct_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int,
                groups: int) -> np.ndarray:
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    ocg = oc // groups
    y = np.zeros((n, oc, oh, ow))
    for i in range(n):
        for o in range(oc):
            for a in range(oh):
                for bb in range(ow):
                    acc = float(b[o])
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                ih, iw = a * stride - pad + p, bb * stride - pad + q
                                if 0 <= ih < h and 0 <= iw < wd:
                                    acc += x[i, (o // ocg) * cg + ci, ih, iw] * w[o, ci, p, q]
                    y[i, o, a, bb] = acc
    return y


@pytest.mark.parametrize("stride,pad,groups", [(1, 0, 1), (2, 1, 2), (1, 2, 1), (3, 1, 2)])
def test_conv_forward_matches_a_direct_convolution(stride: int, pad: int, groups: int) -> None:
    rng = np.random.default_rng(7)
    x, w, b = rand(rng, 2, 4, 6, 5), rand(rng, 6, 4 // groups, 3, 2), rand(rng, 6)
    y = REF.conv_forward(x, w, b, stride, pad, groups)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, direct_conv(x, w, b, stride, pad, groups), rtol=1e-5,
                               atol=1e-5)


# ---- RBM ------------------------------------------------------------------------------------

def test_rbm_cd1_matches_a_hand_written_step_on_a_3x2_rbm() -> None:
    v0 = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    w = np.array([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0]], np.float32)
    b_vis = np.array([0.0, -0.5, 0.25], np.float32)
    b_hid = np.array([-1.0, 0.5], np.float32)
    u = np.array([[0.2, 0.9], [0.7, 0.3]], np.float32)
    sig = lambda a: 1.0 / (1.0 + math.exp(-a))  # noqa: E731
    nv, nh, n = 3, 2, 2

    def hidden(v: list[float]) -> list[float]:
        return [sig(sum(v[i] * w[i, j] for i in range(nv)) + b_hid[j]) for j in range(nh)]

    h0 = [hidden(list(v0[r])) for r in range(n)]
    s = [[1.0 if u[r, j] < h0[r][j] else 0.0 for j in range(nh)] for r in range(n)]
    v1 = [[sig(sum(s[r][j] * w[i, j] for j in range(nh)) + b_vis[i]) for i in range(nv)]
          for r in range(n)]
    h1 = [hidden(v1[r]) for r in range(n)]
    want_dw = [[sum(v0[r, i] * h0[r][j] - v1[r][i] * h1[r][j] for r in range(n)) / n
                for j in range(nh)] for i in range(nv)]
    want_dv = [sum(v0[r, i] - v1[r][i] for r in range(n)) / n for i in range(nv)]
    want_dh = [sum(h0[r][j] - h1[r][j] for r in range(n)) / n for j in range(nh)]
    want_err = sum((v0[r, i] - v1[r][i]) ** 2 for r in range(n) for i in range(nv)) / (n * nv)

    dw, db_vis, db_hid, err = REF.rbm_cd1(v0, w, b_vis, b_hid, u)
    assert s == [[1.0, 0.0], [0.0, 1.0]]  # h0 = [[.50, .82], [.38, .62]] against u
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db_vis, want_dv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db_hid, want_dh, rtol=1e-5, atol=1e-6)
    assert err == pytest.approx(want_err, rel=1e-5)

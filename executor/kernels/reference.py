"""NumPy reference kernels: straightforward, slow, obviously right. Every other backend is
tested against these, and these against finite differences."""

from __future__ import annotations

import numpy as np

from executor.kernels.base import Backend

F32 = np.float32
GELU_C = np.sqrt(2.0 / np.pi)  # GELU's tanh approximation (Hendrycks & Gimpel 2016)
GELU_A = 0.044715


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _split_heads(qkv: np.ndarray, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, k, v of ``qkv (N, S, 3 heads d)`` (per-head layout), each (N, heads, S, d) float64."""
    n, s, width = qkv.shape
    if heads < 1 or width % (3 * heads):
        raise ValueError(f"attention: {width} columns do not split into {heads} heads of q, k, v")
    per = np.asarray(qkv, dtype=np.float64).reshape(n, s, heads, 3, width // (3 * heads))
    return tuple(per[:, :, :, i].transpose(0, 2, 1, 3) for i in range(3))


def _local_labels(labels: np.ndarray, lo: int, v_local: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels as indices into a slice ``[lo, lo + v_local)`` (0 outside) and which are inside."""
    local = np.asarray(labels, dtype=np.int64) - lo
    inside = (local >= 0) & (local < v_local)
    return np.where(inside, local, 0), inside


class ReferenceBackend(Backend):
    name = "reference"

    def to_device(self, a):  # noqa: ANN001, ANN201
        return np.ascontiguousarray(a, dtype=F32) if np.asarray(a).dtype.kind == "f" \
            else np.ascontiguousarray(a)

    def to_host(self, a):  # noqa: ANN001, ANN201
        return np.asarray(a)

    def zeros(self, shape):  # noqa: ANN001, ANN201
        return np.zeros(shape, dtype=F32)

    def gemm(self, a, b, trans_a=False, trans_b=False):  # noqa: ANN001, ANN201
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(F32)

    def dense_forward(self, x, w, b):  # noqa: ANN001, ANN201
        return self.gemm(x, w) + b

    def dense_backward(self, x, w, dy):  # noqa: ANN001, ANN201
        return self.gemm(dy, w, trans_b=True), self.gemm(x, dy, trans_a=True), \
            dy.sum(axis=0, dtype=np.float64).astype(F32)

    def im2col(self, x, kh, kw, stride, pad):  # noqa: ANN001, ANN201
        n, c, h, w = x.shape
        oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        cols = np.empty((n, oh, ow, c, kh, kw), dtype=F32)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, :, :, i, j] = xp[:, :, i:i + stride * oh:stride,
                                            j:j + stride * ow:stride].transpose(0, 2, 3, 1)
        return cols.reshape(n * oh * ow, c * kh * kw)

    def col2im(self, cols, x_shape, kh, kw, stride, pad):  # noqa: ANN001, ANN201
        n, c, h, w = x_shape
        oh, ow = out_size(h, kh, stride, pad), out_size(w, kw, stride, pad)
        cols = cols.reshape(n, oh, ow, c, kh, kw)
        xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=np.float64)
        for i in range(kh):
            for j in range(kw):
                xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += \
                    cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        return xp[:, :, pad:pad + h, pad:pad + w].astype(F32)

    def conv_forward(self, x, w, b, stride, pad, groups=1):  # noqa: ANN001, ANN201
        n, c, h, wd = x.shape
        oc, cg, kh, kw = w.shape
        oh, ow = out_size(h, kh, stride, pad), out_size(wd, kw, stride, pad)
        ocg = oc // groups
        y = np.empty((n, oc, oh, ow), dtype=F32)
        for g in range(groups):
            cols = self.im2col(x[:, g * cg:(g + 1) * cg], kh, kw, stride, pad)
            wg = w[g * ocg:(g + 1) * ocg].reshape(ocg, -1)
            yg = self.gemm(cols, wg, trans_b=True)  # (n*oh*ow, ocg)
            y[:, g * ocg:(g + 1) * ocg] = yg.reshape(n, oh, ow, ocg).transpose(0, 3, 1, 2)
        return y + b.reshape(1, -1, 1, 1)

    def conv_backward(self, x, w, dy, stride, pad, groups=1):  # noqa: ANN001, ANN201
        n, c, h, wd = x.shape
        oc, cg, kh, kw = w.shape
        ocg = oc // groups
        dx = np.empty_like(x, dtype=F32)
        dw = np.empty_like(w, dtype=F32)
        for g in range(groups):
            xg = x[:, g * cg:(g + 1) * cg]
            cols = self.im2col(xg, kh, kw, stride, pad)
            dyg = dy[:, g * ocg:(g + 1) * ocg].transpose(0, 2, 3, 1).reshape(-1, ocg)
            wg = w[g * ocg:(g + 1) * ocg].reshape(ocg, -1)
            dw[g * ocg:(g + 1) * ocg] = self.gemm(dyg, cols, trans_a=True).reshape(ocg, cg,
                                                                                  kh, kw)
            dcols = self.gemm(dyg, wg)
            dx[:, g * cg:(g + 1) * cg] = self.col2im(dcols, xg.shape, kh, kw, stride, pad)
        db = dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(F32)
        return dx, dw, db

    def pool_forward(self, x, k, stride, pad, mode):  # noqa: ANN001, ANN201
        n, c, h, w = x.shape
        oh, ow = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
        fill = -np.inf if mode == "max" else 0.0
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
        windows = np.empty((n, c, oh, ow, k * k), dtype=F32)
        for i in range(k):
            for j in range(k):
                windows[..., i * k + j] = xp[:, :, i:i + stride * oh:stride,
                                             j:j + stride * ow:stride]
        if mode == "avg":
            return windows.sum(-1, dtype=np.float64).astype(F32) / F32(k * k), None
        best = windows.argmax(-1)
        y = np.take_along_axis(windows, best[..., None], -1)[..., 0]
        # flat index of the winner in the unpadded (h, w) plane
        bi, bj = np.divmod(best, k)
        rows = np.arange(oh).reshape(1, 1, -1, 1) * stride + bi - pad
        cols = np.arange(ow).reshape(1, 1, 1, -1) * stride + bj - pad
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        argmax = np.where(inside, rows * w + cols, -1).astype(np.int64)
        return y, argmax

    def pool_backward(self, dy, x_shape, k, stride, pad, mode, argmax):  # noqa: ANN001, ANN201
        n, c, h, w = x_shape
        oh, ow = dy.shape[2], dy.shape[3]
        if mode == "max":
            dx = np.zeros((n, c, h * w), dtype=np.float64)
            flat = argmax.reshape(n, c, -1)
            vals = dy.reshape(n, c, -1)
            for i in range(n):
                for ch in range(c):
                    ok = flat[i, ch] >= 0
                    np.add.at(dx[i, ch], flat[i, ch][ok], vals[i, ch][ok])
            return dx.reshape(x_shape).astype(F32)
        dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=np.float64)
        share = dy / F32(k * k)
        for i in range(k):
            for j in range(k):
                dxp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += share
        return dxp[:, :, pad:pad + h, pad:pad + w].astype(F32)

    def act_forward(self, x, fn):  # noqa: ANN001, ANN201
        if fn == "relu":
            return np.maximum(x, 0).astype(F32)
        if fn == "sigmoid":
            return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(F32)
        if fn == "tanh":
            return np.tanh(x).astype(F32)
        raise ValueError(f"unknown activation {fn!r}")

    def act_backward(self, y, dy, fn):  # noqa: ANN001, ANN201
        if fn == "relu":
            return (dy * (y > 0)).astype(F32)
        if fn == "sigmoid":
            return (dy * y * (1 - y)).astype(F32)
        if fn == "tanh":
            return (dy * (1 - y * y)).astype(F32)
        raise ValueError(f"unknown activation {fn!r}")

    def softmax_xent(self, logits, labels):  # noqa: ANN001, ANN201
        z = logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        n = logits.shape[0]
        loss = -np.log(p[np.arange(n), labels] + 1e-30).mean()
        p[np.arange(n), labels] -= 1.0
        return float(loss), (p / n).astype(F32)

    # ---- transformer: float64 inside, float32 out --------------------------------------------
    def layer_norm_forward(self, x, gamma, beta, eps=1e-5):  # noqa: ANN001, ANN201
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=1)
        rstd = 1.0 / np.sqrt(((x - mean[:, None]) ** 2).mean(axis=1) + eps)
        y = (x - mean[:, None]) * rstd[:, None] * gamma + beta
        return y.astype(F32), mean.astype(F32), rstd.astype(F32)

    def layer_norm_backward(self, x, gamma, dy, mean, rstd):  # noqa: ANN001, ANN201
        dy = np.asarray(dy, dtype=np.float64)
        rstd = np.asarray(rstd, dtype=np.float64)[:, None]
        xhat = (np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64)[:, None]) \
            * rstd
        g = dy * gamma
        dx = rstd * (g - g.mean(axis=1, keepdims=True)
                     - xhat * (g * xhat).mean(axis=1, keepdims=True))
        return dx.astype(F32), (dy * xhat).sum(axis=0).astype(F32), dy.sum(axis=0).astype(F32)

    def gelu_forward(self, x):  # noqa: ANN001, ANN201
        x = np.asarray(x, dtype=np.float64)
        return (0.5 * x * (1.0 + np.tanh(GELU_C * (x + GELU_A * x ** 3)))).astype(F32)

    def gelu_backward(self, x, dy):  # noqa: ANN001, ANN201
        x = np.asarray(x, dtype=np.float64)
        t = np.tanh(GELU_C * (x + GELU_A * x ** 3))
        slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)
        return (dy * slope).astype(F32)

    def attention_forward(self, qkv, heads, causal=True):  # noqa: ANN001, ANN201
        q, k, v = _split_heads(qkv, heads)  # (N, heads, S, d) each, float64
        n, _, s, d = q.shape
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        if causal:  # key j > query i: -inf, so probability exactly 0
            scores = np.where(np.triu(np.ones((s, s), bool), 1), -np.inf, scores)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        out = (p @ v).transpose(0, 2, 1, 3).reshape(n, s, heads * d)
        return out.astype(F32), p.astype(F32)

    def attention_backward(self, qkv, probs, dout, heads):  # noqa: ANN001, ANN201
        q, k, v = _split_heads(qkv, heads)
        n, _, s, d = q.shape
        p = np.asarray(probs, dtype=np.float64)
        do = np.asarray(dout, dtype=np.float64).reshape(n, s, heads, d).transpose(0, 2, 1, 3)
        dp = do @ v.transpose(0, 1, 3, 2)
        ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True)) / np.sqrt(d)
        dqkv = np.stack([ds @ k, ds.transpose(0, 1, 3, 2) @ q, p.transpose(0, 1, 3, 2) @ do],
                        axis=3)  # (N, heads, S, 3, d)
        return dqkv.transpose(0, 2, 1, 3, 4).reshape(n, s, 3 * heads * d).astype(F32)

    def embedding_forward(self, ids, table, lo):  # noqa: ANN001, ANN201
        local = np.asarray(ids, dtype=np.int64) - lo
        inside = (local >= 0) & (local < table.shape[0])
        return np.where(inside[..., None], table[np.where(inside, local, 0)], 0).astype(F32)

    def embedding_backward(self, ids, dy, lo, rows):  # noqa: ANN001, ANN201
        local = np.asarray(ids, dtype=np.int64).reshape(-1) - lo
        inside = (local >= 0) & (local < rows)
        dy = np.asarray(dy, dtype=np.float64).reshape(local.size, -1)
        dtable = np.zeros((rows, dy.shape[1]))
        np.add.at(dtable, local[inside], dy[inside])
        return dtable.astype(F32)

    def xent_partial(self, logits, labels, lo):  # noqa: ANN001, ANN201
        z = np.asarray(logits, dtype=np.float64)
        mx = z.max(axis=1)
        local, inside = _local_labels(labels, lo, z.shape[1])
        target = np.where(inside, z[np.arange(z.shape[0]), local], 0.0)
        return mx.astype(F32), np.exp(z - mx[:, None]).sum(axis=1).astype(F32), \
            target.astype(F32)

    def xent_partial_grad(self, logits, labels, lo, gmax, gsum, scale):  # noqa: ANN001, ANN201
        z = np.asarray(logits, dtype=np.float64)
        g = np.exp(z - np.asarray(gmax, np.float64)[:, None]) / np.asarray(gsum,
                                                                          np.float64)[:, None]
        local, inside = _local_labels(labels, lo, z.shape[1])
        g[np.arange(z.shape[0])[inside], local[inside]] -= 1.0
        return (g * scale).astype(F32)

    def add(self, a, b):  # noqa: ANN001, ANN201
        if np.shape(a) != np.shape(b):
            raise ValueError(f"add: shapes {np.shape(a)} and {np.shape(b)} differ")
        return (np.asarray(a, np.float64) + b).astype(F32)

    # ---- updates ------------------------------------------------------------------------
    def sgd_momentum(self, w, g, v, lr, momentum, weight_decay=0.0):  # noqa: ANN001, ANN201
        v *= F32(momentum)
        v += g
        if weight_decay:
            v += F32(weight_decay) * w
        w -= F32(lr) * v

    def axpy(self, alpha, x, y):  # noqa: ANN001, ANN201
        y += F32(alpha) * x

    def scale(self, alpha, x):  # noqa: ANN001, ANN201
        x *= F32(alpha)

    def rbm_cd1(self, v0, w, b_vis, b_hid, uniform):  # noqa: ANN001, ANN201
        sig = lambda a: (1.0 / (1.0 + np.exp(-a))).astype(F32)  # noqa: E731
        h0 = sig(self.gemm(v0, w) + b_hid)
        s = (uniform < h0).astype(F32)
        v1 = sig(self.gemm(s, w, trans_b=True) + b_vis)
        h1 = sig(self.gemm(v1, w) + b_hid)
        n = v0.shape[0]
        dw = ((self.gemm(v0, h0, trans_a=True) - self.gemm(v1, h1, trans_a=True)) / n
              ).astype(F32)
        db_vis = (v0 - v1).mean(axis=0).astype(F32)
        db_hid = (h0 - h1).mean(axis=0).astype(F32)
        return dw, db_vis, db_hid, float(((v0 - v1) ** 2).mean())

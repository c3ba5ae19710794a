"""The CUDA backend's element-wise maps and reductions (GEMM is in ``cuda_gemm``, the image
kernels in ``cuda_image``), and the launch helper they all use. float32 throughout.

Launches are 1-D, ``THREADS`` threads per block and one thread per output element (grid =
ceil(elements / THREADS)), except the reductions, which give a block per output (``channel_sums``)
or a single block that strides over the input (``sum_all``, ``sum_sq_diff``) and then halve a
shared-memory array to one value. Every kernel writes its output exactly once, so there are no
atomics and the order of summation is deterministic.
"""

from __future__ import annotations

import math

from numba import cuda, float32

THREADS = 256

# activation codes (fused into the bias kernel and the element-wise maps)
IDENTITY, RELU, SIGMOID, TANH = 0, 1, 2, 3
ACTIVATIONS = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH}


def launch(kernel, n: int, *args) -> None:  # noqa: ANN001
    """Run ``kernel`` with one thread per element of ``n`` (nothing when ``n`` is 0)."""
    if n > 0:
        kernel[(n + THREADS - 1) // THREADS, THREADS](*args)


@cuda.jit(device=True)
def _act(v, fn):
    if fn == RELU:
        return v if v > float32(0.0) else float32(0.0)
    if fn == SIGMOID:
        return float32(1.0) / (float32(1.0) + math.exp(-v))
    if fn == TANH:
        return math.tanh(v)
    return v


@cuda.jit(device=True)
def _block_sum(sh, tid):
    """Sum ``sh[:THREADS]`` into ``sh[0]`` by halving (THREADS a power of two)."""
    half = THREADS // 2
    while half > 0:
        cuda.syncthreads()
        if tid < half:
            sh[tid] += sh[tid + half]
        half //= 2
    cuda.syncthreads()


# ---- memory and element-wise maps (flat views) ------------------------------------------------
@cuda.jit
def fill(x, value):
    i = cuda.grid(1)
    if i < x.size:
        x[i] = value


@cuda.jit
def act_forward(x, y, fn):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = _act(x[i], fn)


@cuda.jit
def act_backward(y, dy, dx, fn):
    i = cuda.grid(1)
    if i < y.size:
        v = y[i]
        g = dy[i]
        if fn == RELU:
            g = g if v > float32(0.0) else float32(0.0)
        elif fn == SIGMOID:
            g = g * v * (float32(1.0) - v)
        elif fn == TANH:
            g = g * (float32(1.0) - v * v)
        dx[i] = g


@cuda.jit
def axpy(alpha, x, y):
    i = cuda.grid(1)
    if i < x.size:
        y[i] += alpha * x[i]


@cuda.jit
def scale(alpha, x):
    i = cuda.grid(1)
    if i < x.size:
        x[i] *= alpha


@cuda.jit
def sgd_momentum(w, g, v, lr, momentum, weight_decay):
    i = cuda.grid(1)
    if i < w.size:
        vi = momentum * v[i] + g[i] + weight_decay * w[i]
        v[i] = vi
        w[i] -= lr * vi


@cuda.jit
def bernoulli(uniform, p, s):
    """``s = (uniform < p)``: a sample drawn with the caller's uniforms."""
    i = cuda.grid(1)
    if i < p.size:
        s[i] = float32(1.0) if uniform[i] < p[i] else float32(0.0)


@cuda.jit
def diff_div(a, b, d, out):
    """``out = (a - b) / d``."""
    i = cuda.grid(1)
    if i < a.size:
        out[i] = (a[i] - b[i]) / d


# ---- row-major (rows, cols) maps and reductions -------------------------------------------------
@cuda.jit
def bias_act_rows(y, bias, fn):
    """In place ``y[r, c] = act(y[r, c] + bias[c])``."""
    i = cuda.grid(1)
    cols = y.shape[1]
    if i < y.shape[0] * cols:
        r = i // cols
        c = i - r * cols
        y[r, c] = _act(y[r, c] + bias[c], fn)


@cuda.jit
def col_mean_diff(a, b, d, out):
    """``out[c] = sum_r (a[r, c] - b[r, c]) / d``; one thread per column (consecutive threads
    read consecutive words)."""
    c = cuda.grid(1)
    if c < a.shape[1]:
        s = float32(0.0)
        for r in range(a.shape[0]):
            s += a[r, c] - b[r, c]
        out[c] = s / d


@cuda.jit
def col_sums(a, out):
    c = cuda.grid(1)
    if c < a.shape[1]:
        s = float32(0.0)
        for r in range(a.shape[0]):
            s += a[r, c]
        out[c] = s


@cuda.jit
def softmax_xent_rows(logits, labels, grad, loss):
    """Per row: ``grad = (softmax - onehot) / N`` and ``loss = -log(p[label] + 1e-30)``, with
    the row's maximum subtracted before ``exp``; NaN loss for a label outside [0, k)."""
    r = cuda.grid(1)
    n = logits.shape[0]
    k = logits.shape[1]
    if r < n:
        m = logits[r, 0]
        for j in range(1, k):
            m = max(m, logits[r, j])
        s = float32(0.0)
        for j in range(k):
            s += math.exp(logits[r, j] - m)
        inv = float32(1.0) / s
        lab = labels[r]
        nf = float32(n)
        for j in range(k):
            p = math.exp(logits[r, j] - m) * inv
            if j == lab:
                p -= float32(1.0)
            grad[r, j] = p / nf
        if lab >= 0 and lab < k:  # the reference's -log(p + 1e-30): finite when p underflows
            loss[r] = -math.log(math.exp(logits[r, lab] - m) * inv + float32(1e-30))
        else:  # the host checks the labels when the mean loss comes back NaN
            loss[r] = float32(math.nan)


@cuda.jit
def sum_all(x, out):
    """``out[0] = sum(x)`` for flat ``x``; launch with one block of THREADS."""
    sh = cuda.shared.array(THREADS, float32)
    tid = cuda.threadIdx.x
    s = float32(0.0)
    for i in range(tid, x.size, THREADS):
        s += x[i]
    sh[tid] = s
    _block_sum(sh, tid)
    if tid == 0:
        out[0] = sh[0]


@cuda.jit
def sum_sq_diff(a, b, out):
    """``out[0] = sum((a - b)^2)`` for flat ``a``, ``b``; one block of THREADS."""
    sh = cuda.shared.array(THREADS, float32)
    tid = cuda.threadIdx.x
    s = float32(0.0)
    for i in range(tid, a.size, THREADS):
        d = a[i] - b[i]
        s += d * d
    sh[tid] = s
    _block_sum(sh, tid)
    if tid == 0:
        out[0] = sh[0]


@cuda.jit
def channel_sums(x, out):
    """``out[c] = sum over n, h, w of x[n, c, h, w]``; one block per channel."""
    sh = cuda.shared.array(THREADS, float32)
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    hw = x.shape[2] * x.shape[3]
    s = float32(0.0)
    for e in range(tid, x.shape[0] * hw, THREADS):
        n = e // hw
        p = e - n * hw
        s += x[n, c, p // x.shape[3], p % x.shape[3]]
    sh[tid] = s
    _block_sum(sh, tid)
    if tid == 0:
        out[c] = sh[0]

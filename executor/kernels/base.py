"""The kernel interface every backend implements. Arrays are the backend's own (NumPy arrays
on the CPU, device arrays on a GPU); ``to_device``/``to_host`` cross the boundary.

Conventions: float32 everywhere; ``N`` is the batch. Images NCHW. Dense: ``x (N, in)``,
``w (in, out)``, ``b (out,)``. Convolution: ``w (OC, C // groups, KH, KW)``, ``b (OC,)``,
square ``stride`` and ``pad``; output ``OH = (H + 2 pad - KH) // stride + 1``. Pooling: square
window ``k``, ``stride``, ``pad`` (max pooling pads with -inf, average pooling counts the padding
as zeros and divides by k*k, as Caffe does).

Transformer kernels: ``R`` rows (the caller flattens batch x sequence), ``H`` hidden features,
``S`` sequence positions, ``d`` features per attention head. Attention takes ``qkv (N, S,
3 heads d)`` in Megatron-LM's per-head layout (columns ``[h 3d, h 3d + d)`` are head h's query,
then its key, then its value), so a contiguous split of the columns over T devices gives each
whole heads. Embedding and cross-entropy take a slice of the vocabulary, ids ``[lo, lo + V_local)``
(vocabulary parallelism, Megatron-LM's ``VocabParallelEmbedding`` and vocab-parallel cross
entropy): ids and labels outside the slice contribute zeros, and the caller combines the
devices' results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

Array = Any


class Backend(ABC):
    name = "abstract"

    # ---- memory ---------------------------------------------------------------------------
    @abstractmethod
    def to_device(self, a: Any) -> Array: ...

    @abstractmethod
    def to_host(self, a: Array) -> Any: ...

    @abstractmethod
    def zeros(self, shape: tuple[int, ...]) -> Array: ...

    def synchronize(self) -> None:  # noqa: B027 - a no-op unless the backend queues work
        """Wait for queued work (a no-op on the CPU)."""

    # ---- linear algebra -------------------------------------------------------------------
    @abstractmethod
    def gemm(self, a: Array, b: Array, trans_a: bool = False, trans_b: bool = False) -> Array:
        """``op(a) @ op(b)`` with op = transpose where asked."""

    @abstractmethod
    def dense_forward(self, x: Array, w: Array, b: Array) -> Array:
        """``y = x @ w + b``."""

    @abstractmethod
    def dense_backward(self, x: Array, w: Array, dy: Array) -> tuple[Array, Array, Array]:
        """``(dx, dw, db) = (dy @ w.T, x.T @ dy, dy.sum(0))``."""

    # ---- convolution (im2col + GEMM, as Caffe does) ------------------------------------------
    @abstractmethod
    def im2col(self, x: Array, kh: int, kw: int, stride: int, pad: int) -> Array:
        """``(N * OH * OW, C * KH * KW)``: row (n, oh, ow) holds the window under output (oh, ow),
        ordered c, kh, kw (the layout of ``w.reshape(OC, -1)``)."""

    @abstractmethod
    def col2im(self, cols: Array, x_shape: tuple[int, int, int, int], kh: int, kw: int,
               stride: int, pad: int) -> Array:
        """The adjoint of ``im2col``: windows summed back into an ``x_shape`` array."""

    @abstractmethod
    def conv_forward(self, x: Array, w: Array, b: Array, stride: int, pad: int,
                     groups: int = 1) -> Array: ...

    @abstractmethod
    def conv_backward(self, x: Array, w: Array, dy: Array, stride: int, pad: int,
                      groups: int = 1) -> tuple[Array, Array, Array]:
        """``(dx, dw, db)``."""

    # ---- pooling, activations, loss ------------------------------------------------------
    @abstractmethod
    def pool_forward(self, x: Array, k: int, stride: int, pad: int, mode: str
                     ) -> tuple[Array, Array | None]:
        """``(y, argmax)``; ``argmax`` (flat index into each (n, c) plane of x, -1 for a window
        that is all padding) for ``mode="max"``, None for ``"avg"``."""

    @abstractmethod
    def pool_backward(self, dy: Array, x_shape: tuple[int, int, int, int], k: int, stride: int,
                      pad: int, mode: str, argmax: Array | None) -> Array: ...

    @abstractmethod
    def act_forward(self, x: Array, fn: str) -> Array:
        """relu, sigmoid or tanh."""

    @abstractmethod
    def act_backward(self, y: Array, dy: Array, fn: str) -> Array:
        """From the forward *output* ``y``: relu ``dy * (y > 0)``, sigmoid ``dy * y (1 - y)``,
        tanh ``dy * (1 - y^2)``."""

    @abstractmethod
    def softmax_xent(self, logits: Array, labels: Array) -> tuple[float, Array]:
        """Mean cross-entropy of ``softmax(logits)`` against integer ``labels`` (N,), and its
        gradient ``(softmax - onehot) / N``. Numerically stable (max subtracted)."""

    # ---- transformer ----------------------------------------------------------------------
    @abstractmethod
    def layer_norm_forward(self, x: Array, gamma: Array, beta: Array, eps: float = 1e-5
                           ) -> tuple[Array, Array, Array]:
        """Layer normalisation (Ba et al. 2016) of each row of ``x (R, H)`` over its H features,
        with PyTorch's biased variance: ``mean = sum_j x_j / H``,
        ``rstd = 1 / sqrt(sum_j (x_j - mean)^2 / H + eps)``,
        ``y = (x - mean) rstd gamma + beta`` (``gamma``, ``beta`` (H,)). Returns
        ``(y (R, H), mean (R,), rstd (R,))``; the last two are for the backward."""

    @abstractmethod
    def layer_norm_backward(self, x: Array, gamma: Array, dy: Array, mean: Array, rstd: Array
                            ) -> tuple[Array, Array, Array]:
        """Exact gradients of :meth:`layer_norm_forward`: with ``xhat = (x - mean) rstd`` and
        ``g = dy gamma``, ``dx = rstd (g - mean_j(g) - xhat mean_j(g xhat))`` (per row),
        ``dgamma = sum_rows(dy xhat)``, ``dbeta = sum_rows(dy)``. Returns
        ``(dx (R, H), dgamma (H,), dbeta (H,))``."""

    @abstractmethod
    def gelu_forward(self, x: Array) -> Array:
        """GELU, tanh approximation (Hendrycks & Gimpel 2016; GPT-2, Megatron-LM), element-wise
        on any shape: ``y = 0.5 x (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``."""

    @abstractmethod
    def gelu_backward(self, x: Array, dy: Array) -> Array:
        """From the forward *input* ``x``: ``dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2)
        sqrt(2/pi) (1 + 3 0.044715 x^2))`` with ``t = tanh(u)``."""

    @abstractmethod
    def attention_forward(self, qkv: Array, heads: int, causal: bool = True
                          ) -> tuple[Array, Array]:
        """Multi-head self-attention without projections (Vaswani et al. 2017). ``qkv`` is
        ``(N, S, 3 heads d)`` in the per-head layout above. Per head h:
        ``scores = q k^T / sqrt(d)``; when ``causal``, key j > query i gets probability 0;
        ``probs = softmax over keys`` (row maximum subtracted);
        ``out[n, i, h d:(h + 1) d] = probs[n, h, i] @ v``. Returns ``(out (N, S, heads d),
        probs (N, heads, S, S))``, the probabilities kept for the backward."""

    @abstractmethod
    def attention_backward(self, qkv: Array, probs: Array, dout: Array, heads: int) -> Array:
        """Exact gradient of :meth:`attention_forward`, ``dqkv (N, S, 3 heads d)`` in the same
        layout: ``dv = P^T dO``, ``dP = dO v^T``, ``dS = P (dP - rowsum(P dP)) / sqrt(d)``,
        ``dq = dS k``, ``dk = dS^T q``. The mask needs no argument: masked P are 0, so their
        dS are too."""

    @abstractmethod
    def embedding_forward(self, ids: Array, table: Array, lo: int) -> Array:
        """Vocabulary-parallel lookup: ``ids (N, S)`` integers, ``table (V_local, H)`` the rows of
        ids ``[lo, lo + V_local)``; ``y (N, S, H)`` with ``y[n, s] = table[ids[n, s] - lo]`` for
        ids in the slice and 0 otherwise (summed over the devices, the whole lookup)."""

    @abstractmethod
    def embedding_backward(self, ids: Array, dy: Array, lo: int, rows: int) -> Array:
        """``dtable (rows, H)``: ``dy (N, S, H)`` scatter-added into the rows of the ids in
        ``[lo, lo + rows)``; other ids contribute nothing."""

    @abstractmethod
    def xent_partial(self, logits: Array, labels: Array, lo: int
                     ) -> tuple[Array, Array, Array]:
        """Per-row statistics of a slice of the vocabulary, ``logits (R, V_local)`` for ids
        ``[lo, lo + V_local)``, ``labels (R,)`` integers: ``mx = max_j logits[r, j]``,
        ``sumexp = sum_j exp(logits[r, j] - mx)``, ``target = logits[r, labels[r] - lo]`` when
        the label is in the slice, else 0. Three float32 (R,) arrays. Across slices (Megatron-LM's
        vocab-parallel cross entropy): ``gmax = max mx``, ``gsum = sum sumexp exp(mx - gmax)``,
        ``target = sum target``, and the row's loss is ``log(gsum) + gmax - target``."""

    @abstractmethod
    def xent_partial_grad(self, logits: Array, labels: Array, lo: int, gmax: Array, gsum: Array,
                          scale: float) -> Array:
        """This slice's ``(R, V_local)`` part of the cross-entropy gradient from the whole
        vocabulary's row statistics ``gmax``, ``gsum`` (R,):
        ``(exp(logits - gmax[:, None]) / gsum[:, None] - onehot(labels - lo)) scale``
        (``scale = 1 / R`` for a mean over the rows)."""

    @abstractmethod
    def add(self, a: Array, b: Array) -> Array:
        """``a + b``, a new array (residual connections); both of one shape."""

    # ---- updates ------------------------------------------------------------------------
    @abstractmethod
    def sgd_momentum(self, w: Array, g: Array, v: Array, lr: float, momentum: float,
                     weight_decay: float = 0.0) -> None:
        """In place: ``v = momentum v + g + weight_decay w``; ``w -= lr v``."""

    @abstractmethod
    def axpy(self, alpha: float, x: Array, y: Array) -> None:
        """In place ``y += alpha x`` (gradient accumulation and averaging)."""

    @abstractmethod
    def scale(self, alpha: float, x: Array) -> None:
        """In place ``x *= alpha``."""

    @abstractmethod
    def rbm_cd1(self, v0: Array, w: Array, b_vis: Array, b_hid: Array, uniform: Array
                ) -> tuple[Array, Array, Array, float]:
        """One contrastive-divergence (CD-1) step on a batch (Hinton 2002):
        ``h0 = sigmoid(v0 w + b_hid)``; ``s = (uniform < h0)`` (a Bernoulli sample with the given
        uniforms, so every backend draws the same); ``v1 = sigmoid(s w.T + b_vis)``;
        ``h1 = sigmoid(v1 w + b_hid)``. Returns the update directions
        ``(dw, db_vis, db_hid) = ((v0.T h0 - v1.T h1) / N, mean(v0 - v1), mean(h0 - h1))`` and the
        reconstruction error ``mean((v0 - v1)^2)``."""

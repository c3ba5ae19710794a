"""The kernel interface every backend implements. Arrays are the backend's own (NumPy arrays
on the CPU, device arrays on a GPU); ``to_device``/``to_host`` cross the boundary.

Conventions: float32 everywhere; ``N`` is the batch. Images NCHW. Dense: ``x (N, in)``,
``w (in, out)``, ``b (out,)``. Convolution: ``w (OC, C // groups, KH, KW)``, ``b (OC,)``,
square ``stride`` and ``pad``; output ``OH = (H + 2 pad - KH) // stride + 1``. Pooling: square
window ``k``, ``stride``, ``pad`` (max pooling pads with -inf, average pooling counts the padding
as zeros and divides by k*k, as Caffe does).
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

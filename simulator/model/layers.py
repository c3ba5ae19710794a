"""Layer shapes and costs: one builder method per layer kind, each adding a node to a layer graph.

Modelled, per SAMPLE (one image, one vector, or one whole token sequence for GPT):

- shapes: ``(C, H, W)`` images, ``(features,)`` vectors, ``(seq, hidden)`` token sequences;
- ``params``: weights + biases; norm layers count gamma and beta (running statistics are buffers,
  not parameters); embeddings count their tables;
- ``fwd_flops``: a multiply-add is 2 FLOPs. GEMM-like layers (conv, dense, attention, rbm) are
  counted exactly from their multiply-adds; bias adds are left out, as in published MAC counts.
  Elementwise layers (act, norm, dropout, add, softmax, the embedding's position add) count
  1 FLOP per output element: a stand-in, since exp/erf/rsqrt cost more, but these layers are
  bandwidth-bound and the engines time them by bytes moved. Pool counts kernel_h * kernel_w per
  output element, LRN 2 * size per output element (its window sum of squares), flatten and
  concat 0 (they only move data);
- ``bwd_flops``: 2x forward for GEMM-like layers and layers with weights (one product for the
  input gradient, one for the weight gradient), 1x for weightless elementwise layers. Attention
  and a weight-tied ``lm_head`` have no parameters of their own but are GEMMs whose two operands
  both need gradients, so they count 2x too. The first compute layer of a network needs no input
  gradient; we keep 2x there anyway for simplicity (an overestimate of one layer's forward).

Ignored: memory traffic (engines derive it from element counts and dtypes), workspaces, the
optimiser step, kernel fusion. Units: element counts and FLOPs, as Python ints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

import networkx as nx

GEMM_KINDS = frozenset({"conv", "dense", "attention", "rbm"})
KINDS = frozenset({"conv", "dense", "pool", "act", "norm", "lrn", "dropout", "flatten", "add",
                   "concat", "softmax", "embedding", "attention", "rbm"})
ACT_FNS = ("relu", "sigmoid", "tanh", "gelu")
POOL_MODES = ("max", "avg")


class LayerError(ValueError):
    """A layer cannot take its input or has a bad hyper-parameter.

    ``field`` names the offending key (``kernel``, ``units``, ...; ``kind`` when the layer's kind
    does not fit the input shape) and ``value`` the offending value, so that a caller can turn it
    into a :class:`~simulator.errors.ScenarioError` with a field path.
    """

    def __init__(self, message: str, field: str = "kind", value: object = None):
        super().__init__(message)
        self.field = field
        self.value = value


def _positive(value: int, field: str) -> int:
    if value <= 0:
        raise LayerError(f"{field} must be positive", field, value)
    return value


def _pair(value: int | Sequence[int], field: str, *, zero_ok: bool = False) -> tuple[int, int]:
    """An ``(h, w)`` pair from one int (square) or a two-item sequence, as PyTorch's
    ``nn.Conv2d`` takes ``kernel_size``, ``stride`` and ``padding``."""
    items = (value, value) if isinstance(value, Integral) else value
    if (isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) != 2
            or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in items)):
        raise LayerError(f"{field} must be an int or an (h, w) pair of ints", field, value)
    if min(items) < (0 if zero_ok else 1):
        rule = "must not be negative" if zero_ok else "must be positive"
        raise LayerError(f"{field} {rule}", field, value)
    return int(items[0]), int(items[1])


def _window(size: int, kernel: int, stride: int, padding: int, axis: str = "",
            value: object = None) -> int:
    """Output length of a sliding window (floor mode, as PyTorch and cuDNN default) along
    ``axis`` (``height``, ``width``); ``value`` is the kernel as given, for the error."""
    if size + 2 * padding < kernel:
        where = f"{axis} {size}" if axis else f"{size}"
        raise LayerError(f"kernel {kernel} is larger than the input ({where}, padding {padding})",
                         "kernel", kernel if value is None else value)
    return (size + 2 * padding - kernel) // stride + 1


class GraphBuilder:
    """Builds a layer graph one node at a time; each method appends after the cursor ``last``.

    ``at(node)`` moves the cursor (``None`` is the network's input data), which is how branches
    (residual shortcuts, inception towers) are built. ``block`` and ``branch`` are stamped on every
    node added while they are set.
    """

    def __init__(self, name: str, input_shape: Sequence[int]):
        self.graph = nx.DiGraph(name=name, input_shape=tuple(int(d) for d in input_shape))
        self.last: str | None = None
        self.block: str | None = None
        self.branch: str | None = None

    def at(self, node: str | None) -> GraphBuilder:
        self.last = node
        return self

    def shape(self, node: str | None = None) -> tuple[int, ...]:
        if node is None:
            return self.graph.graph["input_shape"]
        return self.graph.nodes[node]["out_shape"]

    def _add(self, name: str, kind: str, out_shape: Sequence[int], params: int, fwd: int, *,
             inputs: Sequence[str] | None = None, in_shape: Sequence[int] | None = None,
             in_elems: int | None = None, split_dim: int = 0, groups: int = 1,
             cross_tower: bool = False, **extra: object) -> str:
        if name in self.graph:
            raise LayerError(f"duplicate layer name {name!r}", "name", name)
        sources = [self.last] if inputs is None else list(inputs)
        in_shape = self.shape(self.last) if in_shape is None else in_shape
        in_elems = math.prod(in_shape) if in_elems is None else in_elems
        bwd = 2 * fwd if (kind in GEMM_KINDS or params > 0) else fwd
        self.graph.add_node(
            name, kind=kind, in_shape=tuple(in_shape), out_shape=tuple(out_shape),
            in_elems=int(in_elems), out_elems=math.prod(out_shape), params=int(params),
            fwd_flops=int(fwd), bwd_flops=int(bwd), split_dim=int(split_dim), groups=int(groups),
            tower=None, cross_tower=bool(cross_tower), branch=self.branch, block=self.block,
            order=self.graph.number_of_nodes(), **extra)
        for src in sources:
            if src is not None:
                self.graph.add_edge(src, name)
        self.last = name
        return name

    def _image(self, kind: str) -> tuple[int, int, int]:
        shape = self.shape(self.last)
        if len(shape) != 3:
            raise LayerError(f"{kind} needs a (C, H, W) input; got shape {shape}", "kind", kind)
        return shape  # type: ignore[return-value]

    def _vector(self, kind: str, ranks: tuple[int, ...] = (1,)) -> tuple[int, ...]:
        shape = self.shape(self.last)
        if len(shape) not in ranks:
            want = "(features,)" if ranks == (1,) else "(features,) or (seq, features)"
            raise LayerError(f"{kind} needs a {want} input; got shape {shape}"
                             " (add a flatten layer before it)", "kind", kind)
        return shape

    # -- layers with weights -------------------------------------------------------------------

    def conv(self, name: str, out_channels: int, kernel: int | Sequence[int],
             stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
             groups: int = 1, *, bias: bool = True, cross_tower: bool = False) -> str:
        """2-D convolution. ``kernel``, ``stride`` and ``padding`` are one int (square) or an
        ``(h, w)`` pair (Inception V3's 1x7 and 7x1 convolutions); the node holds pairs."""
        c, h, w = self._image("conv")
        for field, value in (("out_channels", out_channels), ("groups", groups)):
            _positive(value, field)
        kh, kw = _pair(kernel, "kernel")
        sh, sw = _pair(stride, "stride")
        ph, pw = _pair(padding, "padding", zero_ok=True)
        if c % groups or out_channels % groups:
            raise LayerError(f"groups must divide the input ({c}) and output ({out_channels})"
                             " channels", "groups", groups)
        out = (out_channels, _window(h, kh, sh, ph, "height", kernel),
               _window(w, kw, sw, pw, "width", kernel))
        fan_in = c // groups * kh * kw
        # conv multiply-adds: every output element is a dot product over its fan-in
        macs = math.prod(out) * fan_in
        params = out_channels * fan_in + (out_channels if bias else 0)
        return self._add(name, "conv", out, params, 2 * macs, split_dim=out_channels,
                         groups=groups, cross_tower=cross_tower, kernel=(kh, kw),
                         stride=(sh, sw), padding=(ph, pw), bias=bool(bias))

    def dense(self, name: str, units: int, *, bias: bool = True, tied_to: str | None = None,
              cross_tower: bool = False) -> str:
        """Fully connected layer; on a (seq, features) input it applies to every position.

        ``tied_to`` names the layer whose weight this one reuses: it then owns no parameters
        but still does the full GEMM.
        """
        shape = self._vector("dense", ranks=(1, 2))
        _positive(units, "units")
        rows, fan_in = math.prod(shape[:-1]), shape[-1]
        params = 0 if tied_to else fan_in * units + (units if bias else 0)
        extra = {"tied_to": tied_to} if tied_to else {}
        # GEMM (rows x fan_in) @ (fan_in x units): rows * fan_in * units multiply-adds
        return self._add(name, "dense", shape[:-1] + (units,), params, 2 * rows * fan_in * units,
                         split_dim=units, cross_tower=cross_tower, bias=bool(bias and not tied_to),
                         **extra)

    def rbm(self, name: str, units: int) -> str:
        """Restricted Boltzmann machine, visible (v,) -> hidden (h,) probabilities.

        Forward is the up pass ``sigmoid(v W + c)`` (sigmoid ignored): 2vh FLOPs. ``cd1_flops`` is
        one contrastive-divergence step (Hinton 2006): up 2vh + down 2vh + up again 2vh + the two
        outer products v0 h0^T and v1 h1^T, 2vh each: 10vh.
        """
        (v,) = self._vector("rbm")
        h = _positive(units, "units")
        return self._add(name, "rbm", (h,), v * h + v + h, 2 * v * h, split_dim=h,
                         cd1_flops=10 * v * h)

    def norm(self, name: str, norm_type: str = "batch") -> str:
        """Batch norm over channels of a (C, H, W) input, layer norm over the last dimension."""
        shape = self.shape(self.last)
        channels = shape[0] if len(shape) == 3 else shape[-1]
        return self._add(name, "norm", shape, 2 * channels, math.prod(shape),
                         norm_type=norm_type)

    def embedding(self, name: str, vocab: int, hidden: int) -> str:
        """Token + learned position embedding: token ids (seq,) -> (seq, hidden).

        Split over a tensor group, the token table is split by vocabulary (Megatron-LM's
        vocabulary-parallel embedding: ``split_dim`` is the vocabulary) and the position table
        is not (``unsplit_params``).
        """
        (seq,) = self._vector("embedding")
        _positive(vocab, "vocab")
        _positive(hidden, "hidden")
        # the table look-ups are gathers (0 FLOPs); the position add is seq * hidden
        return self._add(name, "embedding", (seq, hidden), vocab * hidden + seq * hidden,
                         seq * hidden, vocab=vocab, split_dim=vocab, unsplit_params=seq * hidden)

    def attention(self, name: str, heads: int, dropout: float = 0.0) -> str:
        """Multi-head causal self-attention core: packed q, k, v (seq, 3*hidden) -> (seq, hidden).

        Counts QK^T and softmax(.)V in full, 2 * seq * seq * hidden multiply-adds each (no
        causal-mask saving, softmax and scaling ignored). ``dropout`` is the attention
        probabilities' dropout rate. ``scratch_elems``: the elements per sample a forward writes
        and reads between its kernels, as Megatron-LM runs it unfused (QK^T writes the scores,
        scale-mask-softmax reads them and writes the probabilities, dropout reads those and
        writes its output and mask, the product with V reads it: 4 passes over heads x seq^2,
        6 with dropout): the memory side of its roofline, which dominates at long sequences.
        """
        seq, packed = self._vector("attention", ranks=(2,))
        if packed % 3:
            raise LayerError(f"attention needs (seq, 3*hidden) q, k, v; got width {packed}",
                             "kind", "attention")
        hidden = packed // 3
        _positive(heads, "heads")
        if hidden % heads:
            raise LayerError(f"heads must divide hidden ({hidden})", "heads", heads)
        if not 0 <= dropout < 1:
            raise LayerError("dropout must be in [0, 1)", "dropout", dropout)
        passes = 6 if dropout > 0 else 4
        return self._add(name, "attention", (seq, hidden), 0, 2 * 2 * seq * seq * hidden,
                         split_dim=heads, heads=heads, dropout=float(dropout), causal=True,
                         scratch_elems=passes * heads * seq * seq)

    # -- weightless layers ---------------------------------------------------------------------

    def pool(self, name: str, kernel: int, stride: int | None = None, padding: int = 0,
             mode: str = "max") -> str:
        c, h, w = self._image("pool")
        stride = kernel if stride is None else stride
        _positive(kernel, "kernel")
        _positive(stride, "stride")
        if mode not in POOL_MODES:
            raise LayerError(f"mode must be one of {', '.join(POOL_MODES)}", "mode", mode)
        if not 0 <= padding <= kernel // 2:
            raise LayerError("padding must be between 0 and half the kernel", "padding", padding)
        out = (c, _window(h, kernel, stride, padding), _window(w, kernel, stride, padding))
        return self._add(name, "pool", out, 0, kernel * kernel * math.prod(out), mode=mode,
                         kernel=(kernel, kernel), stride=(stride, stride),
                         padding=(padding, padding))

    def global_pool(self, name: str, mode: str = "avg") -> str:
        """Pool each channel's whole H x W map to 1 x 1 (ResNet, GoogLeNet heads)."""
        c, h, w = self._image("pool")
        return self._add(name, "pool", (c, 1, 1), 0, c * h * w, mode=mode, kernel=(h, w),
                         stride=(h, w), padding=(0, 0))

    def lrn(self, name: str, size: int = 5) -> str:
        """Local response normalisation across ``size`` neighbouring channels (Krizhevsky 2012)."""
        shape = self._image("lrn")
        return self._add(name, "lrn", shape, 0, 2 * size * math.prod(shape), size=size)

    def act(self, name: str, fn: str) -> str:
        if fn not in ACT_FNS:
            raise LayerError(f"fn must be one of {', '.join(ACT_FNS)}", "fn", fn)
        shape = self.shape(self.last)
        return self._add(name, "act", shape, 0, math.prod(shape), fn=fn)

    def dropout(self, name: str, rate: float = 0.5) -> str:
        if not 0 <= rate < 1:
            raise LayerError("rate must be in [0, 1)", "rate", rate)
        shape = self.shape(self.last)
        return self._add(name, "dropout", shape, 0, math.prod(shape), rate=float(rate))

    def flatten(self, name: str) -> str:
        shape = self.shape(self.last)
        return self._add(name, "flatten", (math.prod(shape),), 0, 0)

    def softmax(self, name: str) -> str:
        shape = self.shape(self.last)
        return self._add(name, "softmax", shape, 0, math.prod(shape))

    def add(self, name: str, inputs: Sequence[str]) -> str:
        """Elementwise sum (residual connection): in_elems counts every input."""
        shapes = {self.shape(src) for src in inputs}
        if len(inputs) < 2 or len(shapes) != 1:
            raise LayerError(f"add needs two or more inputs of one shape; got {sorted(shapes)}")
        (shape,) = shapes
        n = math.prod(shape)
        return self._add(name, "add", shape, 0, (len(inputs) - 1) * n, inputs=inputs,
                         in_shape=shape, in_elems=len(inputs) * n)

    def concat(self, name: str, inputs: Sequence[str]) -> str:
        """Channel concatenation of (C_i, H, W) inputs; in_shape is the stacked (sum C_i, H, W)."""
        shapes = [self.shape(src) for src in inputs]
        if len(shapes) < 2 or any(len(s) != 3 or s[1:] != shapes[0][1:] for s in shapes):
            raise LayerError(f"concat needs (C, H, W) inputs of one H x W; got {shapes}")
        out = (sum(s[0] for s in shapes),) + shapes[0][1:]
        return self._add(name, "concat", out, 0, 0, inputs=inputs, in_shape=out)

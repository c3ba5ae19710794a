"""A GPU kernel's time from its shape: the GEMMs a layer runs, their tiles and waves over the
SMs, and the algorithm a vendor library would pick for a convolution.

A convolution or dense layer's op becomes the GEMMs its kernels compute (NVIDIA, *Matrix
Multiplication Background User's Guide* and *Convolutional Layers User's Guide*, Deep Learning
Performance documentation, 2020-2023: a convolution is an implicit GEMM of M = N x P x Q output
pixels, N = K filters, K = C x R x S; its data gradient and weight gradient are GEMMs of the
same three sizes in other roles; a dense layer's three products likewise):

* **Tiles and waves.** A GEMM's output is split into CTA tiles (128x128 down to 32x64 and
  64x32, the shapes CUTLASS's SGEMM kernels come in; the library's heuristic takes the tile
  that finishes first, here by this model). The
  tiles run in waves of ``SMs x blocks_per_sm``; a partial last wave leaves SMs idle (wave
  quantization) and a tile past the matrix edge computes padding (tile quantization), both as
  that guide describes. A GEMM with fewer tiles than SMs and a long reduction splits its K into
  slices summed by a second pass (split-K, as CUTLASS's ``GemmSplitKParallel`` does).
* **A roofline per wave** (Williams, Waterman & Patterson 2009): a wave takes the longer of
  its math (a tile's FLOPs at one SM's share of peak x ``compute_efficiency``) and its memory
  traffic at ``memory_bandwidth x memory_efficiency``. The tiles of one wave share operands
  through L2 (a wave covers a near-square block of tiles, as a swizzled rasterisation gives):
  its traffic is the A rows and B columns of that block and its output tiles. An implicit
  GEMM's im2col operand (A forward and for the data gradient, B for the weight gradient) is a
  view of the input; neighbouring output pixels read the same input through the caches, so
  its traffic is divided by the overlap ``R x S / (stride_h x stride_w)`` (at least 1). The
  whole GEMM moves at least its compulsory bytes.
* **The convolution algorithm.** Libraries autotune (cuDNN's ``cudnnFind...Algorithm``,
  TensorFlow's autotuning, PyTorch's ``cudnn.benchmark``): they time the algorithms a layer is
  eligible for and keep the fastest. Here the same rule, on this model's times. Eligibility
  as the cuDNN Developer Guide (``cudnnConvolutionFwdAlgo_t``) states it:

  - implicit GEMM: every convolution; a strided data gradient as one stride-1 product per
    phase of the input pixels;
  - for the data gradient, the output gradient times the filters as one GEMM whose columns
    are added into the input gradient where their taps fall (``CUDNN_CONVOLUTION_BWD_DATA_ALGO_0``,
    "a sum of matrix products ... using atomic adds"): any stride, any channel count;
  - Winograd (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"): 3x3
    filters, stride 1, one group; fused F(2x2, 3x3) (16 GEMMs on 4x4 transformed tiles, 2.25x
    fewer multiplications, the transforms inside the kernel) and non-fused F(4x4, 3x3) (36
    GEMMs on 6x6 tiles, 4x fewer, input and output transforms as memory-bound kernels of
    their own), forward and data gradient (a 180-degree-rotated filter is again 3x3, stride 1);
  - FFT (Mathieu, Henaff & LeCun 2014; Vasilache et al. 2015, "fbfft"): stride 1, filters of
    5x5 and larger, one group; the cuFFT + cuBLAS pipeline (``fft``): zero-padded copies of
    power-of-two planes, transforms, transposes to and from a complex GEMM per frequency bin
    (8 real FLOPs per complex multiply-add), the crop, every step but the GEMM memory-bound;
    forward, data and weight gradients.

  An algorithm that keeps intermediate tensors in a workspace (non-fused Winograd, FFT:
  ``Candidate.workspace``) is not tried where it needs more than the framework allows
  (``Model.workspace``, a device's ``workspace_MiB``), as cuDNN's autotuning within
  TensorFlow's and MXNet's caps does.

  The weight gradient runs as an implicit GEMM (its reduction over N x P x Q split-K), or as
  the non-fused Winograd or the FFT where they take the filter.
  A device whose convolutions were measured only under a library that computed every
  convolution as a GEMM (cuDNN R1 and R2) is timed with its GEMM algorithms alone
  (``GEMM_ALGORITHMS``, ``hardware.Device.kernel_time``): no table prices another there.

Element-wise, pooling and normalisation layers are memory-bound passes (``PASSES``); a layer
with a bias adds it in a pass of its own and reduces its gradient in another (cuDNN's
cudnnAddTensor and cudnnConvolutionBackwardBias, as frameworks of the published benchmarks
call them). Attention, RBM and embedding kernels keep the device roofline of
``hardware.Device``.

Ignored: tensor-core shape alignment (a dimension not a multiple of 8 in fp16), the L2's own
bandwidth (operands shared within a wave are free, between waves they are read again), the
transforms' arithmetic (Winograd's adds, FFT's butterflies: counted as bytes only), and
occupancy beyond ``blocks_per_sm``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

from simulator.specs import DeviceSpec

# memory-bound layers: the tensors a library call reads and writes, in passes over the layer's
# input and output (forward, backward), each pass once through DRAM. The cuDNN API (cuDNN
# Developer Guide, e.g. cudnnActivationBackward(y, dy, x) -> dx, cudnnPoolingBackward(y, dy,
# x) -> dx, cudnnLRNCrossChannelBackward(y, dy, x) -> dx) names them; batch norm in training
# reads x once for the batch statistics before it normalises (Ioffe & Szegedy 2015, alg. 1),
# and its backward reduces dy and dy x x_hat before it writes dx (their sec. 3); dropout
# writes a mask of one byte per element beside y (cudnnDropoutForward's reserve space, counted
# here as a quarter pass of fp32); a residual add reads two and writes one forward, and its
# gradient is accumulated where the branches fork (one add backward); concat copies; flatten is
# a view.
PASSES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    # kind: ((input passes, output passes) forward, (input, output) backward)
    "act": ((1, 1), (1, 2)),
    "pool": ((1, 1), (2, 2)),
    "norm": ((2, 1), (3, 2)),
    "lrn": ((1, 1), (2, 2)),
    "dropout": ((1, 1.25), (1, 1.25)),
    "add": ((2, 1), (2, 1)),
    "concat": ((1, 1), (1, 1)),
    "softmax": ((1, 1), (1, 2)),
    "flatten": ((0, 0), (0, 0)),
}
TILES = ((128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (32, 128), (64, 32), (32, 64))
SPLIT_K_MIN = 512  # the shortest reduction slice split-K makes (elements of K)
WINOGRAD_SMALL = (2, 3)  # F(2x2, 3x3): 2x2 outputs from a 4x4 tile, fused
WINOGRAD_LARGE = (4, 3)  # F(4x4, 3x3): 4x4 outputs from a 6x6 tile, transforms in DRAM
FFT_MIN_KERNEL = 5
# the convolution algorithms of a library that computed every convolution as a GEMM (cuDNN
# R1, R2): the implicit GEMM and, for a data gradient, the scatter GEMM
GEMM_ALGORITHMS = ("implicit_gemm", "gemm_scatter")
# the curve of a device's convolutions that run as GEMMs only (``runs_as_gemm``), pooled over
# their classes: ``PRECISION:conv.PHASE#gemm``, for such a shape whose class has no curve
GEMM_CLASS = "gemm"


@dataclass(frozen=True)
class Geometry:
    """A layer's per-sample geometry, parsed from its op's ``shape`` string."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    shards: int = 1


_SHAPE = re.compile(r"^(?P<inp>[\dx]+)>(?P<out>[\dx]+)(?:k(?P<k>\d+x\d+)s(?P<s>\d+x\d+)"
                    r"p(?P<p>\d+x\d+))?(?:g(?P<g>\d+))?(?:/(?P<sh>\d+))?$")


def parse_shape(shape: str) -> Geometry | None:
    """The geometry in a ``kernel_shape`` string (``3x224x224>64x55x55k11x11s4x4p2x2``,
    ``4096>1000/2``); None for a string of another form."""
    m = _SHAPE.match(shape or "")
    if m is None:
        return None

    def dims(v: str) -> tuple[int, ...]:
        return tuple(int(d) for d in v.split("x"))

    extra = {}
    if m["k"]:
        extra = {"kernel": dims(m["k"]), "stride": dims(m["s"]), "padding": dims(m["p"])}
    return Geometry(dims(m["inp"]), dims(m["out"]), groups=int(m["g"] or 1),
                    shards=int(m["sh"] or 1), **extra)


@dataclass(frozen=True)
class Gemm:
    """``batch`` independent products of an (m x k) by a (k x n) matrix; ``reuse`` and
    ``reuse_b``: how many times the im2col view repeats each input element when A (forward,
    data gradient) or B (weight gradient) is that view of an implicit GEMM."""

    m: int
    n: int
    k: int
    batch: int = 1
    reuse: float = 1.0
    reuse_b: float = 1.0


@dataclass(frozen=True)
class Kernel:
    """One kernel an algorithm launches: a GEMM, or a memory-bound pass of ``bytes``."""

    gemm: Gemm | None = None
    bytes: float = 0.0


class Candidate(NamedTuple):
    """An algorithm a convolution role is eligible for: the kernels it launches and the bytes
    of workspace it needs (the intermediate tensors it keeps in device memory between them)."""

    name: str
    kernels: list[Kernel]
    workspace: float = 0.0


@dataclass(frozen=True)
class Choice:
    algorithm: str  # implicit_gemm | winograd_fused | winograd_nonfused | fft | gemm
    seconds: float
    kernels: int


class Model:
    """Kernel times on one device at one precision (``bpe`` bytes per element)."""

    def __init__(self, spec: DeviceSpec, peak: float, bpe: int, sms: int | None = None,
                 efficiency: float | None = None, algorithms: tuple[str, ...] | None = None,
                 workspace: float | None = None):
        self.spec = spec
        # the convolution algorithms the autotuner may pick (None: every one a layer is
        # eligible for); implicit GEMM is always among them
        self.algorithms = algorithms
        # the most workspace (bytes) the framework lets the autotuner give an algorithm (0: no
        # limit; None: the device's ``workspace_MiB``, so a profile's fit and the prediction
        # choose among the same algorithms); implicit GEMM needs none
        self.workspace = spec.workspace if workspace is None else workspace
        self.peak = peak
        self.bpe = bpe
        self.sms = sms or spec.sms  # the SMs compute may use now (communication takes some)
        # the fraction of an SM's peak a kernel's math reaches: the device's, or its shape
        # class's curve (a catalogue's or profile's ``kind.phase#class``)
        self.efficiency = spec.compute_efficiency if efficiency is None else efficiency
        self.bandwidth = spec.memory_bandwidth * spec.memory_efficiency

    # -- one GEMM ---------------------------------------------------------------------------

    def gemm_time(self, g: Gemm) -> float:
        """The fastest tile's time for ``g`` (launch overhead not included)."""
        return min(self._tiled(g, tm, tn) for tm, tn in TILES)

    def _tiled(self, g: Gemm, tm: int, tn: int) -> float:
        s = self.spec
        rows, cols = -(-g.m // tm), -(-g.n // tn)
        tiles = rows * cols * g.batch
        slots = self.sms * s.blocks_per_sm
        k, extra = g.k, 0.0
        if tiles < self.sms and g.k >= 2 * SPLIT_K_MIN:  # split-K fills the idle SMs
            split = min(self.sms // tiles, g.k // SPLIT_K_MIN)
            if split > 1:
                k = -(-g.k // split)
                tiles *= split
                # the partial sums: written by every slice, read and reduced by a second pass
                extra = (2 * split + 1) * g.m * g.n * g.batch * 4 / self.bandwidth
        sm_rate = self.peak * self.efficiency / s.sms
        tile_flops = 2.0 * tm * tn * k

        def wave_time(wave: int) -> float:
            if wave <= 0:
                return 0.0
            # the SMs hold ceil(wave / SMs) tiles each, sharing the SM's math
            math_t = -(-wave // self.sms) * tile_flops / sm_rate
            # the wave's block of tiles: near-square, inside the output's tile grid
            side_r = min(rows, max(1, math.isqrt(wave)))
            side_c = min(cols * g.batch, -(-wave // side_r))
            traffic = (side_r * tm * k / g.reuse + side_c * tn * k / g.reuse_b
                       + wave * tm * tn) * self.bpe
            return max(math_t, traffic / self.bandwidth)

        full, last = divmod(tiles, slots)
        total = full * wave_time(slots) + wave_time(last)
        compulsory = (g.m * g.k / g.reuse + g.k * g.n / g.reuse_b + g.m * g.n) * g.batch \
            * self.bpe
        return max(total, compulsory / self.bandwidth) + extra

    def memory_time(self, nbytes: float) -> float:
        return nbytes / self.bandwidth

    def run(self, kernels: list[Kernel]) -> float:
        """Seconds of a sequence of kernels, each paying its launch overhead."""
        t = 0.0
        for kern in kernels:
            t += self.spec.launch_overhead
            t += self.gemm_time(kern.gemm) if kern.gemm else self.memory_time(kern.bytes)
        return t

    # -- one layer's op -------------------------------------------------------------------

    def choose(self, kind: str, phase: str, geo: Geometry, samples: int,
               input_grad: bool = True, bias: bool = False) -> Choice | None:
        """The algorithm and seconds of an op on ``samples`` samples: a conv or dense layer's
        GEMMs (forward, or backward: data gradient unless ``input_grad`` is False, and weight
        gradient) and its bias's pass, or a memory-bound layer's passes (``PASSES``); None for
        the kinds this model leaves to the device roofline."""
        out_elems = samples * math.prod(geo.out_shape) / geo.shards
        extra = []
        if bias:  # bias add after the forward GEMM; the bias gradient reduces dy
            extra = [Kernel(bytes=(2 if phase == "fwd" else 1) * out_elems * self.bpe)]
        if kind == "dense":
            passes = dense_gemms(geo, samples, phase)[0 if input_grad else 1:]
            kernels = [Kernel(g) for g in passes] + extra
            return Choice("gemm", self.run(kernels), len(kernels))
        if kind == "conv" and len(geo.in_shape) == 3:
            return self._conv(geo, samples, phase, input_grad, extra)
        passes = PASSES.get(kind.split("_", 1)[0])
        if passes is None:
            return None
        in_elems = samples * math.prod(geo.in_shape) / geo.shards
        ins, outs = passes[0 if phase == "fwd" else 1]
        nbytes = (ins * in_elems + outs * out_elems) * self.bpe
        if not nbytes:
            return Choice("view", 0.0, 0)
        return Choice("memory", self.run([Kernel(bytes=nbytes)]), 1)

    def _conv(self, geo: Geometry, samples: int, phase: str, input_grad: bool,
              extra: list[Kernel]) -> Choice:
        roles = ("fwd",) if phase == "fwd" else ("dgrad", "wgrad") if input_grad else ("wgrad",)
        allowed = None if self.algorithms is None else {"implicit_gemm", *self.algorithms}
        parts = [[(c.name, c.kernels) for c in conv_candidates(geo, samples, role, self.bpe)
                  if (allowed is None or c.name in allowed)
                  and (not self.workspace or c.workspace <= self.workspace)]
                 for role in roles]
        seconds, kernels, names = self.run(extra), len(extra), []
        for candidates in parts:
            timed = [(self.run(ks), name, len(ks)) for name, ks in candidates]
            t, name, n = min(timed, key=lambda x: x[0])
            seconds, kernels = seconds + t, kernels + n
            names.append(name)
        return Choice("+".join(names), seconds, kernels)


def dense_gemms(geo: Geometry, samples: int, phase: str) -> list[Gemm]:
    rows = samples * math.prod(geo.in_shape[:-1])
    fan_in, units = geo.in_shape[-1], max(1, geo.out_shape[-1] // geo.shards)
    if phase == "fwd":
        return [Gemm(rows, units, fan_in)]
    return [Gemm(rows, fan_in, units), Gemm(units, fan_in, rows)]  # data, weight gradients


def conv_candidates(geo: Geometry, samples: int, role: str, bpe: int) -> list[Candidate]:
    """The algorithms ``role`` (fwd, dgrad, wgrad) of a convolution is eligible for, each as
    the kernels it launches."""
    c, h, w = geo.in_shape
    k_out, p, q = geo.out_shape
    g = geo.groups
    k_out = max(1, k_out // geo.shards)
    (r, s), (sh, sw) = geo.kernel, geo.stride
    cg, kg = c // g, max(1, k_out // g)
    overlap = max(1.0, r * s / (sh * sw))
    npq = samples * p * q
    if role == "fwd":
        out = [Candidate("implicit_gemm", [Kernel(Gemm(npq, kg, cg * r * s, g, overlap))])]
    elif role == "dgrad":
        # a strided convolution's data gradient as sh x sw stride-1 ones, one per phase of
        # the input pixels (each phase's pixels take the taps congruent to it, about r / sh
        # by s / sw of them); the phases without a tap (a filter smaller than its stride)
        # receive nothing. A product over every input pixel and all r x s taps would
        # multiply the zeros the stride leaves in the upsampled output gradient
        tr, ts = -(-r // sh), -(-s // sw)
        phases = min(sh, r) * min(sw, s)
        pixels = samples * -(-h // sh) * -(-w // sw)
        out = [Candidate("implicit_gemm", [Kernel(Gemm(pixels, cg, kg * tr * ts, g * phases,
                                                       max(1.0, tr * ts)))]),
               # the product of the output gradient and the filters, a column per input tap,
               # added into the input gradient where the taps fall (cuDNN's
               # CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, atomic adds): a GEMM of any stride and
               # channel count; every column is written
               Candidate("gemm_scatter", [Kernel(Gemm(npq, cg * r * s, kg, g))])]
    else:
        out = [Candidate("implicit_gemm",
                         [Kernel(Gemm(kg, cg * r * s, npq, g, reuse_b=overlap))])]
    if g == 1 and (sh, sw) == (1, 1):
        # the forward maps C planes of H x W to K planes of P x Q; the data gradient the
        # reverse; the weight gradient correlates the input with the output gradient, the
        # same transformed planes reduced over the tiles instead of the channels
        cin, cout = (k_out, c) if role == "dgrad" else (c, k_out)
        hw_out = (h, w) if role == "dgrad" else (p, q)
        if (r, s) == (3, 3):
            out += winograd(samples, cin, cout, hw_out, bpe, role == "wgrad")
        if min(r, s) >= FFT_MIN_KERNEL:
            # every role's planes are transformed at the padded input's size (a full
            # correlation of the output with an r x s filter spans it too); the three real
            # tensors, by role: what is transformed, what it is multiplied by, the result
            x, y, wt = h * w, p * q, r * s
            pixels = {"fwd": (x, wt, y), "dgrad": (y, wt, x), "wgrad": (x, y, wt)}[role]
            side = max(h + 2 * geo.padding[0], w + 2 * geo.padding[1])
            out.append(fft(samples, cin, cout, side, pixels, bpe, role == "wgrad"))
    return out


def runs_as_gemm(geo: Geometry) -> bool:
    """Whether every algorithm a convolution is eligible for, in every role, is a GEMM one
    (``GEMM_ALGORITHMS``): a 1x1, strided, grouped or other non-square filter, which no
    Winograd or FFT algorithm takes."""
    return all(c.name in GEMM_ALGORITHMS for role in ("fwd", "dgrad", "wgrad")
               for c in conv_candidates(geo, 1, role, 4))


def winograd(n: int, cin: int, cout: int, hw: tuple[int, int], bpe: int, wgrad: bool = False
             ) -> list[Candidate]:
    """The Winograd algorithms: per element of the a x a transformed tile, a product of the
    tiles' transformed inputs and the transformed filters (forward, data gradient), or of the
    transformed inputs and output gradients reduced over the tiles (weight gradient, cuDNN's
    non-fused one only). The non-fused one's workspace: its three transformed tensors, all
    held at the product."""
    out = []
    for name, (m, r) in (("winograd_fused", WINOGRAD_SMALL),
                         ("winograd_nonfused", WINOGRAD_LARGE)):
        if wgrad and name == "winograd_fused":
            continue
        a = m + r - 1  # transformed tile side
        tiles = n * -(-hw[0] // m) * -(-hw[1] // m)
        product = Kernel(Gemm(cout, cin, tiles, a * a) if wgrad else
                         Gemm(tiles, cout, cin, a * a))
        if name == "winograd_fused":  # the transforms stay in the kernel's shared memory
            out.append(Candidate(name, [product]))
        else:
            # input transform: read the input, write a x a values per tile and channel; output
            # transform: read a x a per tile and filter, write the output; filter transform
            # read and written once per step (small)
            into = (n * cin * hw[0] * hw[1] + a * a * tiles * cin) * bpe
            back = (a * a * tiles * cout + n * cout * hw[0] * hw[1]) * bpe
            filt = (9 + a * a) * cin * cout * bpe
            held = a * a * (tiles * cin + cin * cout + tiles * cout) * bpe
            out.append(Candidate(name, [Kernel(bytes=into), Kernel(bytes=filt), product,
                                        Kernel(bytes=back)], held))
    return out


def fft(n: int, cin: int, cout: int, side_px: int, pixels: tuple[int, int, int], bpe: int,
        wgrad: bool = False) -> Candidate:
    """FFT convolution as the FFT and BLAS libraries compute it (Vasilache et al. 2015, the
    cuFFT + cuBLAS pipeline their fbfft is measured against): each of the two operands copied
    into zero-padded L x L planes (cuFFT transforms whole planes), transformed (real to
    complex, L x (L/2 + 1) bins), transposed to bin-major order for a batched complex GEMM
    per bin (the forward and data gradient reduce over the channels, the weight gradient over
    the samples), the product transposed back, transformed back (complex to real) and
    cropped to the result. ``pixels``: the real planes' sizes of the transformed operand,
    the other and the result; ``L`` the power of two at least ``side_px``.

    The workspace is the most the pipeline's buffers hold at once, each stage holding what
    it reads and writes and what a later stage still needs."""
    side = 1 << max(1, math.ceil(math.log2(side_px)))
    bins = side * (side // 2 + 1)  # a real plane's non-redundant half spectrum
    spec, padded = bins * 8, side * side * bpe  # complex64 bins; an L x L real plane
    a_planes, b_planes = n * cin, (n * cout if wgrad else cin * cout)
    c_planes = cin * cout if wgrad else n * cout
    a_px, b_px, c_px = pixels
    # per bin a complex product, 4 real GEMMs' FLOPs
    product = Gemm(cout, cin, n, 4 * bins) if wgrad else Gemm(n, cout, cin, 4 * bins)
    kernels = []
    for planes, px in ((a_planes, a_px), (b_planes, b_px)):
        kernels += [Kernel(bytes=planes * (px * bpe + padded)),  # zero-padded copy
                    Kernel(bytes=planes * (padded + spec)),  # real to complex
                    Kernel(bytes=planes * 2 * spec)]  # to bin-major
    kernels += [Kernel(product),
                Kernel(bytes=c_planes * 2 * spec),  # back to plane-major
                Kernel(bytes=c_planes * (spec + padded)),  # complex to real
                Kernel(bytes=c_planes * (padded + c_px * bpe))]  # cropped
    a, b, c = a_planes * spec, b_planes * spec, c_planes * spec  # one operand's spectra
    held = max(a_planes * padded + a, 2 * a, a + b_planes * padded + b, a + 2 * b,
               a + b + c, 2 * c, c + c_planes * padded)
    return Candidate("fft", kernels, held)


def shape_class(kind: str, geo: Geometry | None) -> str:
    """The shape class a kernel curve may be given for (``conv.fwd#3x3s1``): convolutions by
    the algorithms they are eligible for (``1x1``, ``3x3s1``, ``large_s1``, ``strided``,
    ``grouped``), dense layers ``gemm``; empty for other kinds."""
    if geo is None:
        return ""
    if kind == "dense":
        return "gemm"
    if kind != "conv":
        return ""
    if geo.groups > 1:
        return "grouped"
    if geo.stride != (1, 1):
        return "strided"
    if geo.kernel == (1, 1):
        return "1x1"
    if geo.kernel == (3, 3):
        return "3x3s1"
    if min(geo.kernel) >= FFT_MIN_KERNEL:
        return "large_s1"
    return "other_s1"

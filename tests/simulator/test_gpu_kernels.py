"""The per-kernel GPU model (simulator/engine/gpu.py) against closed forms of its mechanisms:
tile and wave quantization, split-K, the convolution algorithms' arithmetic, memory-bound
passes, and how a device picks its curves."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import simpy

from simulator.catalogue import catalogue_devices, devices, kernel_curves
from simulator.engine import gpu
from simulator.engine.hardware import Device
from simulator.model.layers import GraphBuilder
from simulator.plan import Compute
from simulator.specs import DeviceSpec
from simulator.strategies.common import kernel_shape

ROOT = Path(__file__).resolve().parents[2]
PEAK = 10e12


def spec(sms: int = 10, blocks: int = 1, bandwidth: float = 1e18, launch: float = 0.0,
         eff: float = 1.0) -> DeviceSpec:
    return DeviceSpec(name="t", kind="gpu", sms=sms, peak_flops={"fp32": PEAK}, memory=16e9,
                      memory_bandwidth=bandwidth, launch_overhead=launch,
                      compute_efficiency=eff, memory_efficiency=1.0, blocks_per_sm=blocks,
                      comm_sms=0, source="test")


def model(**kw) -> gpu.Model:
    return gpu.Model(spec(**kw), PEAK, 4)


# ---- shapes ------------------------------------------------------------------------------

def test_a_kernel_shape_string_parses_back_to_its_geometry():
    b = GraphBuilder("t", (48, 27, 27))
    b.conv("c", 128, (1, 7), (1, 2), (0, 3), groups=2)
    node = b.graph.nodes["c"]
    geo = gpu.parse_shape(kernel_shape(node, 4))
    assert geo == gpu.Geometry((48, 27, 27), node["out_shape"], (1, 7), (1, 2), (0, 3), 2, 4)
    assert gpu.parse_shape(kernel_shape({"in_shape": (4096,), "out_shape": (1000,)})) == \
        gpu.Geometry((4096,), (1000,))
    assert gpu.parse_shape("not a shape") is None


@pytest.mark.parametrize("kernel, stride, groups, cls", [
    ((1, 1), (1, 1), 1, "1x1"), ((3, 3), (1, 1), 1, "3x3s1"), ((5, 5), (1, 1), 1, "large_s1"),
    ((3, 3), (2, 2), 1, "strided"), ((3, 3), (1, 1), 2, "grouped"), ((1, 7), (1, 1), 1,
                                                                      "other_s1")])
def test_shape_classes(kernel, stride, groups, cls):
    geo = gpu.Geometry((64, 28, 28), (64, 28, 28), kernel, stride, (0, 0), groups)
    assert gpu.shape_class("conv", geo) == cls
    assert gpu.shape_class("dense", gpu.Geometry((10,), (10,))) == "gemm"
    assert gpu.shape_class("act_relu", geo) == ""


# ---- tiles and waves ---------------------------------------------------------------------

def one_tile(k: int) -> float:
    return 2 * 128 * 128 * k / (PEAK / 10)  # a 128x128 tile on one of 10 SMs


def test_a_full_wave_takes_one_tile_time():
    k = 1024
    assert model().gemm_time(gpu.Gemm(128 * 10, 128, k)) == pytest.approx(one_tile(k))


def test_one_tile_past_a_wave_costs_the_best_tiling_of_the_second_wave():
    # 11 tiles of 128x128 on 10 SMs: two waves (2x). Smaller tiles lose less: 32x64 tiles
    # make 88, nine waves of 1/8 of the time: 9/8, the least of the tile shapes
    k = 1024
    t = model().gemm_time(gpu.Gemm(128 * 11, 128, k))
    assert t == pytest.approx(one_tile(k) * 9 / 8)


def test_tile_quantization_pads_the_matrix_edge():
    # 129 x 128 on 1 SM: the best tiling is 160 x 128 rows' worth (five 32-row tiles)
    k = 512
    t = model(sms=1).gemm_time(gpu.Gemm(129, 128, k))
    assert t == pytest.approx(2 * 160 * 128 * k / PEAK)


def test_split_k_fills_idle_sms_and_pays_for_the_partial_sums():
    # a 32x32 output is one tile of any shape (the 32x64 one wastes least); K = 8192 on 8
    # SMs splits into 8 slices of 1024, one per SM, then the partial sums pass (each slice
    # writes its sum, a second pass reads them and writes the result)
    bw = 1e12
    t = model(sms=8, bandwidth=bw).gemm_time(gpu.Gemm(32, 32, 8192))
    slice_t = 2 * 32 * 64 * 1024 / (PEAK / 8)
    sums = (2 * 8 + 1) * 32 * 32 * 4 / bw
    compulsory = (32 * 8192 * 2 + 32 * 32) * 4 / bw
    assert slice_t > compulsory  # math-bound
    assert t == pytest.approx(slice_t + sums)
    unsplit = 2 * 32 * 64 * 8192 / (PEAK / 8)
    assert t < unsplit / 4


def test_a_memory_bound_gemm_takes_its_compulsory_bytes():
    bw = 1e9
    m = model(bandwidth=bw)
    g = gpu.Gemm(4096, 4096, 8)  # a thin reduction: the output dominates
    assert m.gemm_time(g) >= (4096 * 8 * 2 + 4096 * 4096) * 4 / bw


# ---- convolution algorithms ---------------------------------------------------------------

def conv(c, h, k_out, kernel, stride=1, padding=0, groups=1) -> gpu.Geometry:
    p = (h + 2 * padding - kernel) // stride + 1
    return gpu.Geometry((c, h, h), (k_out, p, p), (kernel, kernel), (stride, stride),
                        (padding, padding), groups)


def test_winograd_does_2_25x_and_4x_fewer_multiplications_than_direct():
    geo = conv(64, 56, 64, 3, padding=1)
    direct = 2 * 8 * 56 * 56 * 64 * 64 * 9
    algos = {c.name: c.kernels for c in gpu.conv_candidates(geo, 8, "fwd", 4)}
    fused = algos["winograd_fused"][0].gemm
    nonfused = next(kn.gemm for kn in algos["winograd_nonfused"] if kn.gemm)
    assert 2 * fused.m * fused.n * fused.k * fused.batch * 2.25 == pytest.approx(direct)
    # F(4x4, 3x3): 56 is a multiple of 4, so exactly 4x
    assert 2 * nonfused.m * nonfused.n * nonfused.k * nonfused.batch * 4 == \
        pytest.approx(direct)


@pytest.mark.parametrize("geo, eligible", [
    (conv(64, 56, 64, 3, padding=1), {"implicit_gemm", "winograd_fused", "winograd_nonfused"}),
    (conv(64, 27, 192, 5, padding=2), {"implicit_gemm", "fft"}),
    (conv(64, 56, 64, 1), {"implicit_gemm"}),
    (conv(64, 56, 64, 3, stride=2, padding=1), {"implicit_gemm"}),
    (conv(64, 56, 64, 3, padding=1, groups=2), {"implicit_gemm"}),
])
def test_the_algorithms_a_convolution_is_eligible_for(geo, eligible):
    assert {c.name for c in gpu.conv_candidates(geo, 8, "fwd", 4)} == eligible
    assert {c.name for c in gpu.conv_candidates(geo, 8, "wgrad", 4)} == \
        eligible - {"winograd_fused"}


def test_the_chosen_algorithm_is_the_fastest_candidate():
    m = model(sms=80, bandwidth=900e9, launch=5e-6, eff=0.8)
    geo = conv(128, 28, 128, 3, padding=1)
    choice = m.choose("conv", "fwd", geo, 32)
    times = {c.name: m.run(c.kernels) for c in gpu.conv_candidates(geo, 32, "fwd", 4)}
    assert choice.algorithm == min(times, key=times.get)
    assert choice.seconds == pytest.approx(min(times.values()))


def test_an_fft_convolution_moves_every_buffer_of_the_cufft_pipeline():
    # MXNet's AlexNet conv2 (96 -> 256, 26 x 26, 5 x 5, pad 2) at batch 512: planes of
    # 30 x 30 transformed at L = 32, 32 x 17 = 544 complex bins of 8 bytes each
    geo = conv(96, 26, 256, 5, padding=2)
    n, bpe, spec, padded = 512, 4, 544 * 8, 32 * 32 * 4
    fft = next(c for c in gpu.conv_candidates(geo, n, "fwd", bpe) if c.name == "fft")
    planes = {"x": n * 96, "w": 96 * 256, "y": n * 256}
    pixels = {"x": 26 * 26, "w": 25, "y": 26 * 26}

    def operand(t):  # zero-padded copy, real to complex, to bin-major
        return planes[t] * ((pixels[t] * bpe + padded) + (padded + spec) + 2 * spec)
    result = planes["y"] * (2 * spec + (spec + padded) + (padded + pixels["y"] * bpe))
    moved = sum(k.bytes for k in fft.kernels if k.gemm is None)
    assert moved == pytest.approx(operand("x") + operand("w") + result)
    (product,) = [k.gemm for k in fft.kernels if k.gemm]
    assert (product.m, product.n, product.k, product.batch) == (n, 256, 96, 4 * 544)
    # the most held at once: the result's spectra twice, as it is transposed back
    assert fft.workspace == pytest.approx(2 * planes["y"] * spec)
    assert fft.workspace == 1140850688  # over MXNet's default 1024 MB (1073741824 bytes)
    half = next(c for c in gpu.conv_candidates(geo, n // 2, "fwd", bpe) if c.name == "fft")
    assert half.workspace == pytest.approx(fft.workspace / 2)


def test_an_algorithm_over_the_workspace_limit_is_not_tried():
    base = spec(sms=80, bandwidth=900e9, launch=5e-6, eff=0.8)
    geo = conv(96, 26, 256, 5, padding=2)
    free = gpu.Model(base, PEAK, 4).choose("conv", "fwd", geo, 512)
    assert free.algorithm == "fft"
    limited = gpu.Model(base, PEAK, 4, workspace=1024 * 2**20)
    assert limited.choose("conv", "fwd", geo, 512).algorithm == "implicit_gemm"
    assert limited.choose("conv", "fwd", geo, 256).algorithm == "fft"  # half the buffers
    # a device's own cap is the default (a profile's fit chooses as its prediction does)
    capped = gpu.Model(replace(base, workspace=1024 * 2**20), PEAK, 4)
    assert capped.choose("conv", "fwd", geo, 512).algorithm == "implicit_gemm"
    assert gpu.Model(replace(base, workspace=1024 * 2**20), PEAK, 4, workspace=0).choose(
        "conv", "fwd", geo, 512).algorithm == "fft"
    # Winograd's non-fused algorithm holds its three transformed tensors; the fused one none
    three = conv(64, 56, 64, 3, padding=1)
    nonfused = next(c for c in gpu.conv_candidates(three, 8, "fwd", 4)
                    if c.name == "winograd_nonfused")
    tiles = 8 * 14 * 14
    assert nonfused.workspace == 36 * (tiles * 64 + 64 * 64 + tiles * 64) * 4
    tight = gpu.Model(base, PEAK, 4, workspace=nonfused.workspace - 1)
    assert tight.choose("conv", "fwd", three, 8).algorithm in ("winograd_fused",
                                                               "implicit_gemm")


def test_a_devices_workspace_limit_is_read_in_mib():
    from simulator.errors import ScenarioError
    from simulator.scenario import parse_scenario

    def scenario(dev):
        return parse_scenario({
            "name": "w", "model": {"zoo": "alexnet"},
            "cluster": {"nodes": 1, "devices_per_node": 1, "device": dev,
                        "intra_link": "pcie3", "inter_link": "ib_edr"},
            "training": {"batch_size": 8},
            "strategies": [{"name": "dp", "scheme": "data_parallel"}]}, file="w.yaml")
    sc = scenario({"base": "V100", "workspace_MiB": 1024})
    assert sc.cluster.device.workspace == 1024 * 2**20
    assert scenario({"base": "V100"}).cluster.device.workspace == 0.0
    with pytest.raises(ScenarioError, match="workspace_MiB"):
        scenario({"base": "V100", "workspace_MiB": -1})


def test_a_first_layer_backward_has_no_data_gradient():
    m = model(sms=80, bandwidth=900e9)
    geo = conv(3, 224, 64, 7, stride=2, padding=3)
    both = m.choose("conv", "bwd", geo, 16)
    wgrad = m.choose("conv", "bwd", geo, 16, input_grad=False)
    assert wgrad.algorithm == "implicit_gemm" and both.algorithm.count("+") == 1
    assert wgrad.seconds < both.seconds


def gemm_flops(kernels) -> float:
    return sum(2.0 * k.gemm.m * k.gemm.n * k.gemm.k * k.gemm.batch for k in kernels if k.gemm)


@pytest.mark.parametrize("c, k, r, stride, phases", [
    (64, 128, 3, 2, 4), (64, 128, 1, 2, 1), (3, 96, 11, 4, 16), (64, 64, 3, 1, 1)])
def test_a_strided_data_gradient_multiplies_no_zeros(c, k, r, stride, phases):
    # as stride x stride stride-1 products (one per phase of the input pixels), only the
    # phases a tap falls on: about the forward's FLOPs, not stride^2 times them
    geo = conv(c, 56, k, r, stride=stride, padding=r // 2)
    out = geo.out_shape[1]
    fwd = 2.0 * 8 * out * out * k * c * r * r
    algos = {c.name: c.kernels for c in gpu.conv_candidates(geo, 8, "dgrad", 4)}
    g = algos["implicit_gemm"][0].gemm
    assert g.batch == phases
    taps = -(-r // stride)
    assert g.m == 8 * (-(-56 // stride)) ** 2 and g.k == k * taps * taps
    assert fwd <= gemm_flops(algos["implicit_gemm"]) <= fwd * (taps * stride / r) ** 2 * 1.2
    # the scatter form: the forward's FLOPs exactly, whatever the stride
    assert gemm_flops(algos["gemm_scatter"]) == pytest.approx(fwd)


def test_a_three_channel_data_gradient_takes_the_scatter_gemm():
    # an input gradient of 3 channels is a 3-wide implicit GEMM (its tiles nearly empty); its
    # columns' GEMM, C x R x S wide, fills them
    m = model(sms=80, bandwidth=900e9, eff=0.8)
    geo = conv(3, 224, 64, 7, stride=2, padding=3)
    both = m.choose("conv", "bwd", geo, 16)
    assert both.algorithm == "gemm_scatter+implicit_gemm"


def test_dense_backward_is_two_gemms_and_a_bias_gradient_pass():
    bw = 100e9
    m = model(bandwidth=bw)
    geo = gpu.Geometry((1024,), (1024,))
    plain = m.choose("dense", "bwd", geo, 256)
    biased = m.choose("dense", "bwd", geo, 256, bias=True)
    assert plain.kernels == 2 and biased.kernels == 3
    assert biased.seconds - plain.seconds == pytest.approx(256 * 1024 * 4 / bw)


# ---- memory-bound layers -----------------------------------------------------------------

@pytest.mark.parametrize("kind, phase, passes", [
    ("act_relu", "fwd", 2), ("act_relu", "bwd", 3), ("norm", "fwd", 3), ("norm", "bwd", 5),
    ("add", "fwd", 3), ("flatten", "fwd", 0)])
def test_memory_bound_layers_take_their_passes(kind, phase, passes):
    bw, launch = 500e9, 4e-6
    m = model(bandwidth=bw, launch=launch)
    geo = gpu.Geometry((64, 28, 28), (64, 28, 28))
    choice = m.choose(kind, phase, geo, 32)
    elems = 32 * 64 * 28 * 28
    expected = passes * elems * 4 / bw + (launch if passes else 0.0)
    assert choice.seconds == pytest.approx(expected)


def test_a_pool_reads_its_input_and_writes_its_smaller_output():
    m = model(bandwidth=1e11)
    geo = gpu.Geometry((64, 56, 56), (64, 28, 28), (2, 2), (2, 2))
    assert m.choose("pool_max", "fwd", geo, 8).seconds == pytest.approx(
        8 * 64 * (56 * 56 + 28 * 28) * 4 / 1e11)


def test_attention_and_rbm_stay_on_the_device_roofline():
    assert model().choose("attention", "fwd", gpu.Geometry((128, 64), (128, 64)), 4) is None


# ---- the device: which curve, which model --------------------------------------------------

def op(shape: str, kind: str = "conv", phase: str = "fwd", flops: float = 1e9) -> Compute:
    return Compute(id=0, stream="compute", deps=(), layer="l", phase=phase, micro_batch=0,
                   samples=8, shard=0, shards=1, flops=flops, bytes=1e6, blocks=64,
                   layer_kind=kind, shape=shape)


def device(s: DeviceSpec, precision: str = "fp32") -> Device:
    return Device(simpy.Environment(), "d", s, precision)


SHAPE = "64x28x28>64x28x28k3x3s1x1p1x1"


def test_a_class_curve_sets_the_kernels_efficiency_in_the_model():
    base = spec(sms=80, bandwidth=900e9, eff=0.8)
    curved = replace(base, kernels={"fp32:conv.fwd#3x3s1": ((1.0, 0.4), (1e12, 0.4))})
    geo = gpu.parse_shape(SHAPE)
    want = gpu.Model(base, PEAK, 4, None, 0.4).choose("conv", "fwd", geo, 8).seconds
    dev = device(curved)
    assert dev.kernel_time(op(SHAPE)) == pytest.approx(want)
    assert not dev.on_roofline


def test_a_class_without_a_curve_stays_on_the_roofline_and_says_so():
    base = spec(sms=1, bandwidth=1e18, eff=0.8)
    bare = device(base)  # a device no table prices: its FLOPs at compute_efficiency
    assert bare.kernel_time(op(SHAPE, flops=1e9)) == pytest.approx(1e9 / (PEAK * 0.8))
    assert bare.on_roofline == {"fp32:conv.fwd#3x3s1"}
    # a device with curves, a class without one (the curve is fp32's): the per-kernel
    # roofline, the algorithm the autotuner would take at the device's compute_efficiency,
    # not the fp32 curve's 0.4
    curved = replace(base, kernels={"fp32:conv.fwd#3x3s1": ((1.0, 0.4), (1e12, 0.4))})
    dev = device(curved, "fp16")
    geo = gpu.parse_shape(SHAPE)
    want = gpu.Model(curved, dev.peak, dev.bpe, None, 0.8).choose("conv", "fwd", geo, 8)
    assert want.algorithm.startswith("winograd")
    assert dev.kernel_time(op(SHAPE, flops=1e9)) == pytest.approx(want.seconds)
    assert dev.on_roofline == {"fp16:conv.fwd#3x3s1"}
    # memory-bound layers take their passes, with or without curves
    act = op("64x28x28>64x28x28", kind="act_relu", flops=0.0)
    assert device(base).kernel_time(act) == pytest.approx(2 * 8 * 64 * 28 * 28 * 4 / 1e18)


def test_a_class_without_a_curve_takes_the_precisions_gemm_convolution_curve():
    # the precision's kind-wide curve (the K40's, from a library that computed every
    # convolution as a GEMM): the per-kernel model at that efficiency, GEMM algorithms only
    base = replace(spec(sms=4, bandwidth=900e9, eff=0.8), comm_sms=1)
    curved = replace(base, kernels={"fp32:conv.fwd": ((1.0, 0.25), (1e12, 0.25)),
                                    "fp32:conv.fwd#1x1": ((1.0, 0.5), (1e12, 0.5))})
    geo = gpu.parse_shape(SHAPE)  # 3x3, stride 1: Winograd-eligible
    gemm = gpu.Model(base, PEAK, 4, None, 0.25, gpu.GEMM_ALGORITHMS).choose("conv", "fwd", geo,
                                                                     8)
    anything = gpu.Model(base, PEAK, 4, None, 0.25).choose("conv", "fwd", geo, 8)
    assert gemm.algorithm == "implicit_gemm" and anything.seconds < gemm.seconds
    dev = device(curved)
    assert dev.kernel_time(op(SHAPE, flops=1e9)) == pytest.approx(gemm.seconds)
    assert not dev.on_roofline  # timed by the model, with a curve measured on the device
    assert dev.on_kind_curve == {"fp32:conv.fwd#3x3s1"}  # not its class's own: said so
    dev.comm_active = 1  # a collective holds comm_sms of the SMs
    fewer = gpu.Model(base, PEAK, 4, 3, 0.25, gpu.GEMM_ALGORITHMS).choose(
        "conv", "fwd", geo, 8)
    assert dev.kernel_time(op(SHAPE, flops=1e9)) == pytest.approx(fewer.seconds)
    assert fewer.seconds > gemm.seconds
    roof = device(curved, "fp16")  # another precision: the per-kernel roofline, and said so
    want = gpu.Model(base, roof.peak, roof.bpe, None, 0.8).choose("conv", "fwd", geo, 8)
    assert roof.kernel_time(op(SHAPE, flops=1e9)) == pytest.approx(want.seconds)
    assert roof.on_roofline == {"fp16:conv.fwd#3x3s1"}


def test_a_shape_curve_still_replaces_the_model():
    s = replace(spec(), kernels={f"conv.fwd@{SHAPE}": ((1.0, 0.5), (1e12, 0.5))})
    assert device(s).kernel_time(op(SHAPE, flops=2e9)) == pytest.approx(2e9 / (PEAK * 0.5))


def test_the_roofline_kernel_model_keeps_flops_over_one_efficiency():
    s = replace(spec(sms=1, eff=0.5), kernel_model="roofline")
    assert device(s).kernel_time(op(SHAPE, flops=1e9)) == pytest.approx(1e9 / (PEAK * 0.5))


def test_catalogue_devices_carry_the_fitted_curves():
    cat, plain = devices(), catalogue_devices()
    for name, curves in kernel_curves().items():
        assert set(curves) <= set(cat[name].kernels)
        assert not plain[name].kernels
        # a precision's class curves, or a precision's GEMM convolution curve (the K40's,
        # from a table whose library computed every convolution as a GEMM)
        assert all(":" in k and ("#" in k or k.split(":")[1] in ("conv.fwd", "conv.bwd"))
                   for k in curves)


def test_the_shipped_curves_are_what_the_fit_writes_from_the_shipped_tables():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_curves
    import yaml

    data = yaml.safe_load(gpu_curves.DATA.read_text())
    curves, _ = gpu_curves.build(data["entries"], data["sources"])
    assert gpu_curves.dump(curves) == gpu_curves.OUT.read_text()
    assert math.isfinite(sum(e for d in curves.values() for c in d["kernels"].values()
                             for e in c["efficiency"]))


def test_a_table_of_gemm_convolutions_is_fitted_through_the_gemm_algorithms_only():
    # cuDNN R2 computed every convolution as a GEMM: its rows are solved with the model's GEMM
    # algorithms alone (not Winograd, which the model would pick for this 3x3), at the
    # device's clock (a Titan Black's times at 980 MHz are the K40's at 745 scaled)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_curves

    row = {"kind": "conv2d", "library": "cuDNN R2 (Torch)", "N": 128, "C": 384, "H": 13,
           "W": 13, "K": 384, "R": 3, "S": 3, "stride_h": 1, "stride_w": 1, "pad_h": 0,
           "pad_w": 0, "time_ms": {"fwd": 17.10, "bwd_data": 20.97, "bwd_filter": 27.19}}
    k40 = catalogue_devices()["K40"]
    flops = 2.0 * 128 * 384 * 384 * 9 * 11 * 11
    fwd, bwd = gpu_curves.fit_row(row, k40, "fp32", 980 / 745)
    assert fwd[:2] == ("fp32:conv.fwd", flops) and bwd[:2] == ("fp32:conv.bwd", 2 * flops)
    geo = gpu_curves.conv_geometry(row)
    for (_, _, e, bound), phase, ms in ((fwd, "fwd", 17.10), (bwd, "bwd", 20.97 + 27.19)):
        assert not bound
        took = gpu.Model(k40, 4.29e12, 4, None, e, gpu.GEMM_ALGORITHMS).choose(
            "conv", phase, geo, 128)
        assert took.seconds == pytest.approx(ms * 1e-3 * 980 / 745, rel=1e-6)
        assert "winograd" not in took.algorithm


def test_a_gemm_only_curve_falls_off_with_size_as_the_devices_gemms_do():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_curves

    gemm = [(1e8, 0.2), (2e8, 0.2), (3e8, 0.2), (1e11, 0.6), (2e11, 0.6), (3e11, 0.6)]
    convs = [(1e11, 0.3), (2e11, 0.3), (3e11, 0.3)]
    pts = {("D", "", "fp32:dense.fwd#gemm"): gemm, ("D", "", "fp32:conv.fwd"): convs}
    flops, eff = gpu_curves.gemm_scaled(pts, "D", "", "fp32:conv.fwd")
    g_flops, g_eff = gpu_curves.curve(gemm)
    assert flops == g_flops and eff == [pytest.approx(e / 2) for e in g_eff]  # 0.3 of 0.6
    # without a GEMM curve: the rows' median
    assert gpu_curves.gemm_scaled({("D", "", "fp32:conv.fwd"): convs}, "D", "",
                                  "fp32:conv.fwd") == gpu_curves.curve(convs)
    shipped = kernel_curves()["K40"]
    assert [f for f, _ in shipped["fp32:conv.fwd"]] == \
        [f for f, _ in shipped["fp32:dense.fwd#gemm"]]


def test_a_restricted_algorithm_set_keeps_the_implicit_gemm():
    # every convolution is eligible for the implicit GEMM: a set that does not name it still
    # has it (a forward, whose only other candidates here are Winograd's)
    geo = conv(64, 56, 64, 3, padding=1)
    m = gpu.Model(spec(sms=80, bandwidth=900e9), PEAK, 4, None, 0.8, ("gemm_scatter",))
    assert m.choose("conv", "fwd", geo, 8).algorithm == "implicit_gemm"
    assert m.choose("conv", "bwd", geo, 8).algorithm in (
        "implicit_gemm+implicit_gemm", "gemm_scatter+implicit_gemm")


@pytest.mark.parametrize("geo, gemm_only", [
    (conv(64, 56, 64, 1), True), (conv(64, 56, 64, 3, stride=2, padding=1), True),
    (conv(64, 56, 64, 3, padding=1, groups=2), True),
    (gpu.Geometry((64, 17, 17), (64, 17, 17), (1, 7), (1, 1), (0, 3)), True),
    (conv(64, 56, 64, 3, padding=1), False), (conv(64, 27, 192, 5, padding=2), False)])
def test_which_convolutions_run_as_gemms_only(geo, gemm_only):
    assert gpu.runs_as_gemm(geo) is gemm_only


def test_a_gemm_only_class_without_a_curve_takes_the_devices_gemm_convolution_curve():
    # a 1x7 convolution (no Winograd, no FFT) of a class no table covers: the curve of the
    # device's convolutions that ran as GEMMs (its 1x1 and strided rows), in the model; a
    # 5x5 one, which could run an FFT no table prices, stays on the (per-kernel) roofline
    base = spec(sms=80, bandwidth=900e9, eff=0.8)
    curved = replace(base, kernels={"fp32:conv.fwd#gemm": ((1.0, 0.3), (1e12, 0.3))})
    seven = "64x17x17>64x17x17k1x7s1x1p0x3"
    dev = device(curved)
    want = gpu.Model(base, PEAK, 4, None, 0.3).choose("conv", "fwd", gpu.parse_shape(seven), 8)
    assert dev.kernel_time(op(seven)) == pytest.approx(want.seconds)
    assert dev.on_kind_curve == {"fp32:conv.fwd#other_s1"} and not dev.on_roofline
    five = "64x27x27>192x27x27k5x5s1x1p2x2"
    want = gpu.Model(base, PEAK, 4, None, 0.8).choose("conv", "fwd", gpu.parse_shape(five), 8)
    assert dev.kernel_time(op(five, flops=1e9)) == pytest.approx(want.seconds)
    assert dev.on_roofline == {"fp32:conv.fwd#large_s1"}


def test_a_gemm_only_shapes_row_is_a_point_of_its_class_and_of_the_gemm_convolutions():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_curves

    row = {"kind": "conv2d", "library": "cuDNN 7.6", "N": 16, "C": 256, "H": 14, "W": 14,
           "K": 256, "R": 1, "S": 1, "stride_h": 1, "stride_w": 1, "pad_h": 0, "pad_w": 0,
           "time_ms": {"fwd": 0.05, "bwd_data": 0.05, "bwd_filter": 0.06}}
    v100 = catalogue_devices()["V100"]
    pts = gpu_curves.fit_row(row, v100, "fp32", 1.0)
    by = {name: (flops, e) for name, flops, e, _ in pts}
    assert set(by) == {"fp32:conv.fwd#1x1", "fp32:conv.bwd#1x1", "fp32:conv.fwd#gemm",
                       "fp32:conv.bwd#gemm"}
    assert by["fp32:conv.fwd#gemm"] == by["fp32:conv.fwd#1x1"]
    three = dict(row, R=3, S=3, pad_h=1, pad_w=1)  # Winograd-eligible: its class only
    assert {name for name, *_ in gpu_curves.fit_row(three, v100, "fp32", 1.0)} == {
        "fp32:conv.fwd#3x3s1", "fp32:conv.bwd#3x3s1"}


def test_held_out_rows_tell_a_curve_over_flops_from_one_within_a_channel_count():
    # gpu_curves.py --held-out: each point predicted from the others; where the efficiency
    # follows the channels and not the FLOPs, the curves within a channel count predict it
    # better, and where it follows the FLOPs, the curve over FLOPs does no worse
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_curves

    flops = [2.0 ** i * 1e9 for i in range(12)]
    by_channels = [(f, 0.3 if i % 2 else 0.8, 64 if i % 2 else 256) for i, f in enumerate(flops)]
    by_flops = [(f, 0.2 + 0.05 * i, 64 if i % 2 else 256) for i, f in enumerate(flops)]

    def mean(pts: list, by: str) -> float:
        return sum(gpu_curves.held_out(pts, by)) / len(pts)

    assert mean(by_channels, "channels") < 0.5 * mean(by_channels, "flops")
    assert mean(by_flops, "flops") <= mean(by_flops, "channels")


def test_the_fft_model_against_fbffts_published_layer_times():
    # a prediction against a measurement: the model's FFT (the cuFFT + cuBLAS pipeline) on
    # the catalogue Titan X against fbfft's layer times (convnet-benchmarks); fbfft is the
    # faster implementation, so the model may run under it, not far over or under
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_curves
    import yaml

    checked = gpu_curves.fft_check(yaml.safe_load(gpu_curves.DATA.read_text())["entries"])
    assert {(layer, phase) for layer, phase, _, _ in checked} == {
        (f"L{i}", p) for i in (1, 2, 3, 4) for p in ("fwd", "bwd")}
    ratios = [model / published for _, _, model, published in checked]
    assert all(0.4 <= r <= 1.25 for r in ratios), ratios
    assert 0.6 <= math.exp(sum(math.log(r) for r in ratios) / len(ratios)) <= 1.0

"""The hardware catalogue against its datasheets: every entry loads and names its source, the
variants of one GPU differ where their datasheets say, and the tf32 precision picks the TF32
tensor-core peak where a device has one and the fp32 peak where it does not.

Expected figures are the datasheet numbers written out by hand (GB/s, TFLOP/s, GiB), not read back
from the catalogue.
"""

from __future__ import annotations

import re
import textwrap

import pytest
import simpy

from simulator import catalogue
from simulator.cluster import build_cluster
from simulator.engine.hardware import Device
from simulator.errors import ScenarioError
from simulator.scenario import build_graph, parse_scenario
from simulator.strategies.common import Context
from simulator.units import BYTES_PER_ELEMENT, GB, GIB, TFLOPS
from simulator.yaml_input import load_yaml

DEVICES = catalogue.devices()
LINKS = catalogue.links()

YEAR = re.compile(r"\b(19|20)\d\d\b")
DOCUMENT = re.compile(r"datasheet|whitepaper|white paper|specification|product brief|user guide"
                      r"|IEEE|blog", re.IGNORECASE)


# -- every entry loads and says where its figures come from ----------------------------------

@pytest.mark.parametrize("name", sorted(DEVICES))
def test_every_device_loads_with_positive_figures(name):
    d = DEVICES[name]
    assert d.name == name
    assert d.sms > d.comm_sms >= 0 and d.memory > 0 and d.memory_bandwidth > 0
    assert "fp32" in d.peak_flops and all(v > 0 for v in d.peak_flops.values())
    assert set(d.peak_flops) <= set(catalogue.PRECISIONS)


@pytest.mark.parametrize("name", sorted(LINKS))
def test_every_link_loads_with_positive_figures(name):
    link = LINKS[name]
    assert link.name == name and link.scope in ("intra", "inter")
    assert link.bandwidth > 0 and link.latency >= 0 and 0 < link.efficiency <= 1


@pytest.mark.parametrize("name", sorted(DEVICES) + sorted(LINKS))
def test_every_source_names_a_document_and_says_what_is_estimated(name):
    source = (DEVICES.get(name) or LINKS[name]).source
    assert source.strip()
    # every entry has estimated figures (launch overhead, efficiencies, latency): it says so
    assert "estimate" in source
    # a dated document (datasheet, whitepaper, standard, ...), or an entry that is an estimate
    # throughout and says so first (shared memory has no datasheet)
    assert (YEAR.search(source) and DOCUMENT.search(source)) or source.startswith("estimate")


# -- the A100, H100 and H200 variants --------------------------------------------------------

A100_PEAKS = {"fp64": 9.7, "fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312}


@pytest.mark.parametrize("name, memory_gib, bandwidth_gbps", [
    ("A100", 80, 2039),            # SXM4 80GB, HBM2e (datasheet 2021)
    ("A100_80GB", 80, 2039),       # the same part under its explicit name
    ("A100_40GB", 40, 1555),       # SXM4 40GB, HBM2 (whitepaper 2020)
    ("A100_PCIe_40GB", 40, 1555),  # PCIe 40GB, HBM2 (datasheet 2020)
    ("A100_PCIe_80GB", 80, 1935),  # PCIe 80GB, HBM2e (datasheet 2021)
])
def test_a100_variants_differ_in_memory_and_bandwidth_only_where_the_datasheets_do(
        name, memory_gib, bandwidth_gbps):
    d = DEVICES[name]
    assert d.memory == memory_gib * GIB
    assert d.memory_bandwidth == bandwidth_gbps * GB
    assert d.sms == 108
    # every A100 variant has the same datasheet peaks (the PCIe card's lower power shows in its
    # estimated compute efficiency, not in its peaks)
    assert {p: v / TFLOPS for p, v in d.peak_flops.items()} == pytest.approx(A100_PEAKS)


def test_a100_keeps_its_figures_so_existing_scenarios_do_not_change():
    a100, explicit = DEVICES["A100"], DEVICES["A100_80GB"]
    for field in ("sms", "peak_flops", "memory", "memory_bandwidth", "launch_overhead",
                  "compute_efficiency", "memory_efficiency", "blocks_per_sm", "comm_sms"):
        assert getattr(a100, field) == getattr(explicit, field), field
    assert (a100.compute_efficiency, a100.memory_efficiency, a100.comm_sms) == (0.80, 0.87, 16)


def test_the_pcie_a100s_are_estimated_slower_than_the_sxm4():
    assert DEVICES["A100_PCIe_40GB"].compute_efficiency < DEVICES["A100"].compute_efficiency
    assert DEVICES["A100_PCIe_80GB"].compute_efficiency < DEVICES["A100"].compute_efficiency


@pytest.mark.parametrize("name, sms, peaks, memory_gib, bandwidth_gbps", [
    ("H100", 132, {"fp64": 34, "fp32": 67, "tf32": 494.7, "fp16": 989, "bf16": 989,
                   "fp8": 1979}, 80, 3350),
    ("H100_PCIe", 114, {"fp64": 26, "fp32": 51, "tf32": 378, "fp16": 756, "bf16": 756,
                        "fp8": 1513}, 80, 2000),
    ("H200", 132, {"fp64": 34, "fp32": 67, "tf32": 494.7, "fp16": 989, "bf16": 989,
                   "fp8": 1979}, 141, 4800),
])
def test_hopper_variants(name, sms, peaks, memory_gib, bandwidth_gbps):
    d = DEVICES[name]
    assert d.sms == sms
    assert {p: v / TFLOPS for p, v in d.peak_flops.items()} == pytest.approx(peaks)
    assert d.memory == memory_gib * GIB and d.memory_bandwidth == bandwidth_gbps * GB


@pytest.mark.parametrize("name", ["A100", "A100_40GB", "A100_PCIe_40GB", "A100_PCIe_80GB",
                                  "H100", "H100_PCIe", "H200"])
def test_tensor_peaks_are_dense(name):
    """Dense, not with 2:4 sparsity: on Ampere and Hopper TF32 runs at half the FP16 tensor rate
    and (Hopper) FP8 at twice it; a sparse figure slipped in would break these ratios."""
    pf = DEVICES[name].peak_flops
    assert pf["tf32"] == pytest.approx(pf["fp16"] / 2, rel=1e-3)
    assert pf["bf16"] == pf["fp16"]
    if "fp8" in pf:
        assert pf["fp8"] == pytest.approx(2 * pf["fp16"], rel=1e-3)


def test_devices_before_ampere_have_no_tf32_peak():
    for name in ("GTX580", "K20", "K40", "TitanX", "P100", "V100", "cpu_core",
                 "cpu_core_modern"):
        assert "tf32" not in DEVICES[name].peak_flops, name


# -- links -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, scope, gbps", [
    ("nvlink3", "intra", 12 * 25),        # A100: 12 links x 25 GB/s per direction
    ("nvswitch_a100", "intra", 12 * 25),  # DGX A100: each GPU's full NVLink on the fabric
    ("nvlink4", "intra", 18 * 25),        # H100/H200: 18 links x 25 GB/s per direction
    ("nvswitch_h100", "intra", 18 * 25),  # DGX H100
    ("ib_hdr", "inter", 200 / 8),         # 4x HDR, 200 Gb/s
    ("ib_ndr", "inter", 400 / 8),         # 4x NDR, 400 Gb/s
    ("eth_25g", "inter", 25 / 8),
    ("eth_100g", "inter", 100 / 8),
    ("eth_100g_tcp", "inter", 100 / 8),
    ("eth_200g", "inter", 200 / 8),
    ("eth_400g", "inter", 400 / 8),
    ("roce_100g", "inter", 100 / 8),
    ("roce_200g", "inter", 200 / 8),
    ("roce_400g", "inter", 400 / 8),
])
def test_link_bandwidth_is_the_data_rate_per_direction(name, scope, gbps):
    link = LINKS[name]
    assert link.scope == scope and link.bandwidth == pytest.approx(gbps * GB)


@pytest.mark.parametrize("alias, base", [
    ("nvswitch_a100", "nvlink3"), ("nvswitch_h100", "nvlink4"), ("roce_100g", "eth_100g"),
])
def test_aliases_have_their_base_figures(alias, base):
    a, b = LINKS[alias], LINKS[base]
    assert (a.scope, a.bandwidth, a.latency, a.efficiency, a.eager_limit) == \
        (b.scope, b.bandwidth, b.latency, b.efficiency, b.eager_limit)


def test_roce_is_faster_to_start_than_kernel_tcp():
    for rate in ("100", "200", "400"):
        tcp = LINKS["eth_100g_tcp" if rate == "100" else f"eth_{rate}g"]
        assert LINKS[f"roce_{rate}g"].latency < tcp.latency
        assert LINKS[f"roce_{rate}g"].efficiency > tcp.efficiency


# -- the tf32 training precision -------------------------------------------------------------

def tf32_scenario(device: str, precision: str = "tf32"):
    text = textwrap.dedent(f"""\
        name: tf32
        model:
          zoo: mlp
          params:
            sizes: [8, 4, 2]
        cluster:
          nodes: 1
          devices_per_node: 2
          device: {device}
          intra_link: nvlink3
        training:
          batch_size: 8
          precision: {precision}
        strategies:
          - name: dp
            scheme: data_parallel
        """)
    return parse_scenario(load_yaml(text))


def test_tf32_stores_fp32():
    assert BYTES_PER_ELEMENT["tf32"] == BYTES_PER_ELEMENT["fp32"] == 4
    assert "tf32" in catalogue.PRECISIONS


@pytest.mark.parametrize("device, tflops", [
    ("A100", 156),     # the TF32 tensor-core peak
    ("H100", 494.7),
    ("V100", 15.7),    # no TF32 tensor cores: the fp32 peak
    ("P100", 10.6),
])
def test_tf32_picks_the_tf32_peak_or_falls_back_to_fp32(device, tflops):
    sc = tf32_scenario(device)
    assert sc.training.precision == "tf32"
    ctx = Context(build_graph(sc.model), build_cluster(sc.cluster), sc.training)
    assert ctx.peak() == pytest.approx(tflops * TFLOPS)
    assert ctx.bpe == 4
    engine_device = Device(simpy.Environment(), "node0.gpu0", sc.cluster.device, "tf32")
    assert engine_device.peak == pytest.approx(tflops * TFLOPS)


def test_fp32_on_an_a100_still_uses_the_non_tensor_peak():
    sc = tf32_scenario("A100", precision="fp32")
    ctx = Context(build_graph(sc.model), build_cluster(sc.cluster), sc.training)
    assert ctx.peak() == pytest.approx(19.5 * TFLOPS)


def _device(device: object) -> object:
    return parse_scenario({
        "name": "lib", "model": {"zoo": "lenet5"},
        "cluster": {"nodes": 1, "devices_per_node": 1, "device": device,
                    "intra_link": "pcie3", "inter_link": "ib_edr"},
        "training": {"batch_size": 8},
        "strategies": [{"name": "one", "scheme": "data_parallel"}],
    }, file="lib.yaml").cluster.device


def test_a_library_version_swaps_the_fitted_curves_for_its_table():
    libs = catalogue.library_curves()["V100"]
    assert "cudnn7.0" in libs
    dev = _device({"base": "V100", "library": "cudnn7.0"})
    assert dev.library == "cudnn7.0" and dev.kernels == libs["cudnn7.0"]
    assert dev.kernels != catalogue.devices()["V100"].kernels  # not the default (cuDNN 7.6)
    own = {"fp32:conv.fwd#1x1": {"flops": [1.0, 2.0], "efficiency": [0.5, 0.5]}}
    mine = _device({"base": "V100", "library": "cudnn7.0", "kernels": own})
    assert mine.kernels["fp32:conv.fwd#1x1"] == ((1.0, 0.5), (2.0, 0.5))  # the entry's win
    assert mine.kernels["fp32:conv.fwd#3x3s1"] == libs["cudnn7.0"]["fp32:conv.fwd#3x3s1"]


@pytest.mark.parametrize("device, says", [
    ({"base": "V100", "library": "cudnn9.9"}, "catalogue has: cudnn7.0"),
    ({"base": "K40", "library": "cudnn7.0"}, "a device without library tables"),
])
def test_an_unknown_library_names_the_field_and_value(device, says):
    with pytest.raises(ScenarioError) as err:
        _device(device)
    text = str(err.value)
    assert "cluster.device.library" in text and repr(device["library"]) in text
    assert says in text

"""The scenario loader: strict errors naming file, line, field path and value; SI units at load.

Every malformed case edits one line or two of ``BASE``, a valid scenario small enough to read by
hand (an MLP on two nodes of two V100s), so each case shows exactly what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simulator import catalogue
from simulator.errors import ScenarioError
from simulator.scenario import load_scenario, parse_scenario
from simulator.specs import DegradedLink, Straggler
from simulator.units import GIB, MIB
from simulator.yaml_input import load_yaml

# line numbers on the right are asserted by test_line_numbers
BASE = textwrap.dedent("""\
    name: tiny
    description: two nodes of two GPUs
    seed: 7
    model:
      zoo: mlp
      params:
        sizes: [8, 4, 2]
    cluster:
      nodes: 2
      devices_per_node: 2
      device: V100
      intra_link: nvlink2
      inter_link: ib_hdr
    training:
      batch_size: 8
    strategies:
      - name: dp
        scheme: data_parallel
    """)
# 1 name, 4 model, 5 zoo, 8 cluster, 9 nodes, 11 device, 12 intra_link, 13 inter_link,
# 14 training, 15 batch_size, 16 strategies, 17 - name, 18 scheme

MLP = "  zoo: mlp\n  params:\n    sizes: [8, 4, 2]\n"

INLINE_DEVICE = """\
  device:
    kind: gpu
    sms: 4
    peak_TFLOPS: {fp32: 1}
    memory_GiB: %s
    memory_bandwidth_GBps: 100
    launch_overhead_us: 5
    compute_efficiency: 0.5
    memory_efficiency: 0.5
    blocks_per_sm: 1
    comm_sms: 1
    source: a made-up test device
"""

INLINE_LINK = """\
  %s:
    scope: %s
    bandwidth_GBps: %s
    latency_us: 2
    efficiency: 0.5
    source: a made-up test link
"""

PS = "  parameter_servers: {hosts: 2, device: cpu_core, nic: eth_10g}\n"


def edit(old: str, new: str, text: str = BASE) -> str:
    """``text`` with the one occurrence of ``old`` replaced (fails loudly if it is not there)."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def after(anchor: str, extra: str, text: str = BASE) -> str:
    """``text`` with ``extra`` lines inserted after the line ``anchor``."""
    return edit(anchor + "\n", anchor + "\n" + extra, text)


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> tuple[Path, ScenarioError]:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return path, info.value


# (yaml text, substrings the message must contain: the field path, the bad value, the reason)
BAD = [
    pytest.param(BASE + "colour: blue\n",
                 ["colour: unknown key", "(got 'colour')"], id="unknown-top-level-key"),
    pytest.param(after("  inter_link: ib_hdr", "  gpus: 4\n"),
                 ["cluster.gpus: unknown key", "nodes", "(got 'gpus')"], id="unknown-cluster-key"),
    pytest.param(after("  batch_size: 8", "  epochs: 3\n"),
                 ["training.epochs: unknown key", "(got 'epochs')"], id="unknown-training-key"),
    pytest.param(after("    scheme: data_parallel", "    compression: fp16\n"),
                 ["strategies[0].compression: unknown key", "bucket_MiB", "(got 'compression')"],
                 id="unknown-strategy-key"),
    pytest.param(after("  device: V100", "  power_W: 300\n"),
                 ["cluster.power_W: unknown key", "(got 'power_W')"], id="unknown-key-with-unit"),
    pytest.param(edit("  nodes: 2", "  nodes: two"),
                 ["cluster.nodes: must be an integer, not a string", "(got 'two')"],
                 id="string-for-nodes"),
    pytest.param(after("  batch_size: 8", "  iterations: yes\n"),
                 ["training.iterations: must be an integer, not a boolean", "(got True)"],
                 id="bool-for-int"),
    pytest.param(edit("  nodes: 2", "  nodes: 2.0"),
                 ["cluster.nodes: must be an integer, not a number", "(got 2.0)"],
                 id="float-for-int"),
    pytest.param(edit("  batch_size: 8", "  batch_size: 0"),
                 ["training.batch_size: must be at least 1", "(got 0)"], id="batch-size-zero"),
    pytest.param(edit("  nodes: 2", "  nodes: 0"),
                 ["cluster.nodes: must be at least 1", "(got 0)"], id="nodes-zero"),
    pytest.param(edit("  device: V100\n", INLINE_DEVICE % "-1"),
                 ["cluster.device.memory_GiB: must be positive", "(got -1)"],
                 id="inline-device-negative-memory"),
    pytest.param(edit("  intra_link: nvlink2\n", INLINE_LINK % ("intra_link", "intra", 0)),
                 ["cluster.intra_link.bandwidth_GBps: must be positive", "(got 0)"],
                 id="inline-link-zero-bandwidth"),
    pytest.param(edit("  inter_link: ib_hdr", "  inter_link: {base: ib_hdr, bandwidth_GBps: 0}"),
                 ["cluster.inter_link.bandwidth_GBps: must be positive", "(got 0)"],
                 id="base-override-zero-bandwidth"),
    pytest.param(edit("  inter_link: ib_hdr", "  inter_link: {base: ib_hdr, latency_us: -1}"),
                 ["cluster.inter_link.latency_us: must be at least 0", "(got -1)"],
                 id="base-override-negative-latency"),
    pytest.param(edit("  inter_link: ib_hdr", "  inter_link: {base: ib_hdr, eager_limit_KiB: -4}"),
                 ["cluster.inter_link.eager_limit_KiB: must be at least 0", "(got -4)"],
                 id="base-override-negative-eager-limit"),
    pytest.param(edit("  inter_link: ib_hdr", "  inter_link: {base: ib_hdr, efficiency: 1.5}"),
                 ["cluster.inter_link.efficiency: must be at most 1.0", "(got 1.5)"],
                 id="efficiency-above-one"),
    pytest.param(edit("  inter_link: ib_hdr", "  inter_link: {base: ib_hdr, bandwidth_GBps: .nan}"),
                 ["cluster.inter_link.bandwidth_GBps: must be a finite number", "(got nan)"],
                 id="nan-bandwidth"),
    pytest.param(edit("  device: V100", "  device: {base: V100, memory_gb: 16}"),
                 ["cluster.device.memory_gb: unknown key", "memory_GiB", "(got 'memory_gb')"],
                 id="base-override-unknown-key"),
    pytest.param(edit("  device: V100", "  device: {base: V100, peak_TFLOPS: {fp31: 1}}"),
                 ["cluster.device.peak_TFLOPS.fp31: unknown key", "(got 'fp31')"],
                 id="unknown-precision"),
    pytest.param(edit("  device: V100", "  device: {base: V100, comm_sms: 80}"),
                 ["cluster.device.comm_sms: must be fewer than the device's 80 SMs", "(got 80)"],
                 id="comm-sms-not-fewer-than-sms"),
    pytest.param(edit("  device: V100", "  device: 3"),
                 ["cluster.device: must be a mapping, not an integer", "(got 3)"],
                 id="device-neither-name-nor-mapping"),
    pytest.param(edit(MLP, "  zoo: resnet51\n"),
                 ["model.zoo: unknown model 'resnet51'", "resnet50", "(got 'resnet51')"],
                 id="unknown-model"),
    pytest.param(after("    sizes: [8, 4, 2]", "    depth: 3\n"),
                 ["model.params.depth: unknown parameter 'depth' for model 'mlp'", "(got 3)"],
                 id="unknown-zoo-param"),
    pytest.param(edit(MLP, "  zoo: lenet5\n  params: {input_shape: [1, 4, 4]}\n"),
                 ["model.params.input_shape: input too small for lenet5", "(got [1, 4, 4])"],
                 id="zoo-input-too-small"),
    pytest.param(edit("  device: V100", "  device: V200"),
                 ["cluster.device: unknown device", "V100", "(got 'V200')"], id="unknown-device"),
    pytest.param(edit("  intra_link: nvlink2", "  intra_link: nvlink9"),
                 ["cluster.intra_link: unknown link", "nvlink4", "(got 'nvlink9')"],
                 id="unknown-link"),
    pytest.param(edit("  inter_link: ib_hdr", "  inter_link: {base: ib_xdr}"),
                 ["cluster.inter_link.base: unknown link", "(got 'ib_xdr')"],
                 id="unknown-base-link"),
    pytest.param(edit("  inter_link: ib_hdr", "  inter_link: nvlink2"),
                 ["cluster.inter_link: 'nvlink2' is an intra-node link; this field needs an "
                  "inter-node link", "(got 'nvlink2')"], id="intra-link-as-inter-link"),
    pytest.param(edit("  intra_link: nvlink2", "  intra_link: ib_hdr"),
                 ["cluster.intra_link:", "intra-node link", "(got 'ib_hdr')"],
                 id="inter-link-as-intra-link"),
    pytest.param(edit("  inter_link: ib_hdr\n", ""),
                 ["cluster.inter_link: is required"], id="two-nodes-without-inter-link"),
    pytest.param(after("  inter_link: ib_hdr", "  stragglers:\n    - {device: 4, slowdown: 2}\n"),
                 ["cluster.stragglers[0].device: no such device", "0..3", "(got 4)"],
                 id="straggler-device-does-not-exist"),
    pytest.param(after("  inter_link: ib_hdr", "  stragglers:\n    - {device: 1, slowdown: 0.5}\n"),
                 ["cluster.stragglers[0].slowdown: must be at least 1.0", "(got 0.5)"],
                 id="straggler-faster"),
    pytest.param(after("  inter_link: ib_hdr", "  stragglers: {device: 1, slowdown: 2}\n"),
                 ["cluster.stragglers: must be a list"], id="stragglers-not-a-list"),
    pytest.param(after("  inter_link: ib_hdr", "  degraded_links:\n"
                       "    - {element: node0.nic0, factor: 0.5}\n"
                       "    - {element: node2.gpu0, factor: 0.5}\n"),
                 ["cluster.degraded_links[1].element: no such element", "(got 'node2.gpu0')"],
                 id="degraded-element-does-not-exist"),
    pytest.param(after("  inter_link: ib_hdr",
                       "  degraded_links:\n    - {element: ps0, factor: 0.5}\n"),
                 ["cluster.degraded_links[0].element: no such element", "(got 'ps0')"],
                 id="degraded-ps-without-parameter-servers"),
    pytest.param(after("  inter_link: ib_hdr",
                       "  degraded_links:\n    - {element: node0.nic0, factor: 1.5}\n"),
                 ["cluster.degraded_links[0].factor: must be at most 1.0", "(got 1.5)"],
                 id="degraded-factor-above-one"),
    pytest.param(after("  inter_link: ib_hdr", "  parameter_servers: {hosts: 0, device: cpu_core, "
                       "nic: eth_10g}\n"),
                 ["cluster.parameter_servers.hosts: must be at least 1", "(got 0)"],
                 id="zero-parameter-servers"),
    pytest.param(after("  inter_link: ib_hdr", "  parameter_servers: {hosts: 1, device: cpu_core, "
                       "nic: shm}\n"),
                 ["cluster.parameter_servers.nic:", "inter-node link", "(got 'shm')"],
                 id="parameter-server-nic-intra"),
    pytest.param(edit("    scheme: data_parallel", "    scheme: zero3"),
                 ["strategies[0].scheme: must be one of data_parallel", "(got 'zero3')"],
                 id="unknown-scheme"),
    pytest.param(after("    scheme: data_parallel", "    local_steps: 0\n"),
                 ["strategies[0].local_steps: must be at least 1", "(got 0)"],
                 id="option-out-of-range"),
    pytest.param(after("    scheme: data_parallel", "    bucket_MiB: -1\n"),
                 ["strategies[0].bucket_MiB: must be at least 0", "(got -1)"],
                 id="negative-bucket"),
    pytest.param(after("    scheme: data_parallel", "    exchange: butterfly\n"),
                 ["strategies[0].exchange: must be one of ring, tree", "(got 'butterfly')"],
                 id="option-not-a-choice"),
    pytest.param(after("    scheme: data_parallel", "    devices: 5\n"),
                 ["strategies[0].devices: asks for 5 devices but the cluster has 4", "(got 5)"],
                 id="more-devices-than-the-cluster"),
    pytest.param(after("    scheme: data_parallel", "    exchange: ps\n"),
                 ["strategies[0].exchange: exchange 'ps' needs cluster.parameter_servers",
                  "(got 'ps')"], id="ps-without-parameter-servers"),
    pytest.param(after("    scheme: data_parallel", "    exchange: ps\n    overlap: true\n",
                       after("  inter_link: ib_hdr", PS)),
                 ["strategies[0].overlap: overlap is modelled for all-reduce", "(got True)"],
                 id="overlap-with-ps"),
    pytest.param(edit("  batch_size: 8", "  batch_size: 3"),
                 ["strategies[0].devices: the batch of 3 samples cannot be split over 4 devices"],
                 id="batch-smaller-than-devices"),
    pytest.param(BASE + "  - name: dp\n    scheme: data_parallel\n    exchange: tree\n",
                 ["strategies[1].name: two strategies have this name", "(got 'dp')"],
                 id="duplicate-strategy-name"),
    pytest.param(after("  nodes: 2", "  nodes: 3\n"),
                 [":10: cluster.nodes: duplicate key (first given on line 9)", "(got 3)"],
                 id="duplicate-yaml-key"),
    pytest.param(edit("  device: V100", "\tdevice: V100"),
                 [":11: not valid YAML", "'\\t'"], id="invalid-yaml-tab"),
    # PyYAML reports where it noticed the problem: the line after the unclosed bracket
    pytest.param(edit("  nodes: 2", "  nodes: [2"),
                 [":10: not valid YAML", "expected ',' or ']'"], id="invalid-yaml-unclosed"),
    pytest.param(after("  device: V100", "   oops: 1\n"),
                 [":12: not valid YAML: mapping values are not allowed here"],
                 id="invalid-yaml-indentation"),
    pytest.param(BASE.split("strategies:")[0] + "strategies: []\n",
                 ["strategies: must be a non-empty list of strategies", "(got [])"],
                 id="empty-strategies"),
    pytest.param(BASE.split("strategies:")[0],
                 ["strategies: must be a non-empty list of strategies", "(got None)"],
                 id="no-strategies"),
    pytest.param(BASE.split("strategies:")[0] + "strategies: [dp]\n",
                 ["strategies[0]: must be a mapping, not a string", "(got 'dp')"],
                 id="strategy-not-a-mapping"),
    pytest.param(edit("  batch_size: 8", "  precision: fp16"),
                 ["training.batch_size: is required"], id="missing-batch-size"),
    pytest.param(edit("name: tiny\n", ""), ["name: is required"], id="missing-name"),
    pytest.param(edit("training:\n  batch_size: 8\n", ""), ["training: is required"],
                 id="missing-training"),
    pytest.param(after("  batch_size: 8", "  precision: fp4\n"),
                 ["training.precision: must be one of fp32, fp16", "(got 'fp4')"],
                 id="unknown-precision-for-training"),
    pytest.param(edit("seed: 7", "seed: -1"), ["seed: must be at least 0", "(got -1)"],
                 id="negative-seed"),
    pytest.param(edit(MLP, "  zoo: mlp\n  input_shape: [8]\n  layers: [{kind: dense, units: 4}]\n"),
                 ["model: give exactly one of 'zoo'", "or 'layers'"], id="both-zoo-and-layers"),
    pytest.param(edit(MLP, "  input_shape: [8]\n"),
                 ["model: give exactly one of 'zoo'"], id="neither-zoo-nor-layers"),
    pytest.param(edit(MLP, "  input_shape: [8]\n  layers:\n    - {kind: dense, units: 4}\n"
                      "    - {kind: dense, units: -3}\n"),
                 ["model.layers[1].units: must be positive", "(got -3)"], id="bad-custom-layer"),
    pytest.param(edit(MLP, "  input_shape: [8]\n  layers:\n    - {kind: lstm, units: 3}\n"),
                 ["model.layers[0].kind: unknown layer kind", "(got 'lstm')"],
                 id="unknown-layer-kind"),
    pytest.param(edit(MLP, "  input_shape: [8]\n  layers:\n    - {kind: conv, out_channels: 4, "
                      "kernel: 3}\n"),
                 ["model.layers[0].kind: conv needs a (C, H, W) input", "(got 'conv')"],
                 id="layer-does-not-fit-its-input"),
    pytest.param(edit(MLP, "  layers:\n    - {kind: dense, units: 4}\n"),
                 ["model.input_shape: is required"], id="layers-without-input-shape"),
    pytest.param(edit("  params:\n    sizes: [8, 4, 2]\n", "  params: [8, 4, 2]\n"),
                 ["model.params: must be a mapping", "(got [8, 4, 2])"], id="params-not-a-mapping"),
    pytest.param(edit("cluster:\n  nodes: 2\n", "cluster: 2\nrest:\n"),
                 ["cluster: must be a mapping, not an integer", "(got 2)"],
                 id="cluster-not-a-mapping"),
    pytest.param("- a\n- b\n", ["<top level>: must be a mapping, not a list"], id="top-level-list"),
    pytest.param("", ["<top level>: must be a mapping, not null"], id="empty-file"),
]


@pytest.mark.parametrize("text, expected", BAD)
def test_malformed_scenario(tmp_path, text, expected):
    path, err = load_error(tmp_path, text)
    message = str(err)
    assert message.startswith(f"{path}:"), message
    for part in expected:
        assert part in message, message
    assert "\n" not in message


def test_there_are_many_malformed_cases():
    assert len(BAD) >= 20


@pytest.mark.parametrize("text, line", [
    pytest.param(BASE + "colour: blue\n", 19, id="top-level-key"),
    pytest.param(edit("  intra_link: nvlink2", "  intra_link: nvlink9"), 12, id="unknown-link"),
    pytest.param(edit("  batch_size: 8", "  batch_size: 0"), 15, id="batch-size"),
    pytest.param(after("    scheme: data_parallel", "    devices: 5\n"), 19, id="graph-check"),
    pytest.param(after("  inter_link: ib_hdr", "  stragglers:\n    - {device: 4, slowdown: 2}\n"),
                 15, id="list-item"),
    pytest.param(edit("  device: V100\n", INLINE_DEVICE % "-1"), 15, id="inline-device-key"),
    pytest.param(after("  nodes: 2", "  nodes: 3\n"), 10, id="duplicate-key"),
    pytest.param(edit("  device: V100", "\tdevice: V100"), 11, id="yaml-syntax"),
])
def test_line_numbers(tmp_path, text, line):
    path, err = load_error(tmp_path, text)
    assert err.line == line
    assert str(err).startswith(f"{path}:{line}: ")


# -- lines and paths of errors found away from the offending key ------------------------------

def test_duplicate_key_names_its_field_path(tmp_path):
    _, err = load_error(tmp_path, after("  nodes: 2", "  nodes: 3\n"))
    assert (err.path, err.value, err.line) == ("cluster.nodes", 3, 10)
    assert "first given on line 9" in err.message


@pytest.mark.parametrize("text, path, line", [
    pytest.param(BASE + "name: again\n", "name", 19, id="top-level"),
    pytest.param(after("    sizes: [8, 4, 2]", "    sizes: [8, 2]\n"), "model.params.sizes", 8,
                 id="zoo-params"),
    pytest.param(edit(MLP, "  input_shape: [8]\n  layers:\n    - {kind: dense, units: 4, "
                      "units: 5}\n"), "model.layers[0].units", 7, id="custom-layer"),
    pytest.param(after("    scheme: data_parallel", "  - name: b\n    scheme: data_parallel\n"
                       "    scheme: pipeline\n"), "strategies[1].scheme", 21, id="list-item"),
])
def test_duplicate_key_anywhere(tmp_path, text, path, line):
    _, err = load_error(tmp_path, text)
    assert (err.path, err.line) == (path, line)
    assert err.message.startswith("duplicate key")


def test_merge_key_may_be_overridden(tmp_path):
    text = edit("cluster:\n  nodes: 2\n", "cluster:\n  <<: {nodes: 1, devices_per_node: 2}\n"
                "  nodes: 2\n", edit("  devices_per_node: 2\n", ""))
    s = load_scenario(write(tmp_path, text))  # a key overriding a merged one is no duplicate
    assert (s.cluster.nodes, s.cluster.devices_per_node) == (2, 2)


@pytest.mark.parametrize("text, path, line", [
    pytest.param(edit("  batch_size: 8", "  precision: fp16"), "training.batch_size", 14,
                 id="key-of-a-block-mapping"),
    pytest.param(edit("  inter_link: ib_hdr\n", ""), "cluster.inter_link", 8, id="link"),
    pytest.param(edit("    scheme: data_parallel\n", ""), "strategies[0].scheme", 17,
                 id="key-of-a-list-item"),
    pytest.param(edit("training:\n  batch_size: 8\n", ""), "training", 1, id="mapping"),
    pytest.param(edit("  device: V100", "  device: {base: V100, peak_TFLOPS: {}}"),
                 "cluster.device.peak_TFLOPS", 11, id="empty-peak-flops"),
    pytest.param(edit(MLP, "  input_shape: [8]\n"), "model", 4, id="neither-zoo-nor-layers"),
])
def test_missing_key_points_at_its_mapping(tmp_path, text, path, line):
    _, err = load_error(tmp_path, text)
    assert (err.path, err.line) == (path, line)


@pytest.mark.parametrize("text, path, line", [
    pytest.param(edit(MLP, "  zoo: resnet51\n"), "model.zoo", 5, id="unknown-model"),
    pytest.param(after("    sizes: [8, 4, 2]", "    depth: 3\n"), "model.params.depth", 8,
                 id="unknown-zoo-param"),
    pytest.param(edit(MLP, "  zoo: lenet5\n  params: {input_shape: [1, 4, 4]}\n"),
                 "model.params.input_shape", 6, id="zoo-input-too-small"),
    pytest.param(edit(MLP, "  input_shape: [8]\n  layers:\n    - {kind: dense, units: 4}\n"
                      "    - {kind: dense, units: -3}\n"), "model.layers[1].units", 8,
                 id="bad-custom-layer"),
    pytest.param(edit(MLP, "  input_shape: [8]\n  layers:\n    - kind: dense\n      units: 4\n"
                      "    - kind: dense\n      units: -3\n"), "model.layers[1].units", 10,
                 id="bad-custom-layer-block"),
    pytest.param(edit(MLP, "  input_shape: [8]\n  layers:\n    - {kind: dense, units: 4}\n"
                      "    - {kind: dense}\n"), "model.layers[1].units", 8,
                 id="custom-layer-missing-key"),
    pytest.param(edit("    scheme: data_parallel\n", "    scheme: pipeline\n    stages: 2\n"
                      "    partition: [fc1, nope]\n"), "strategies[0].partition[1]", 20,
                 id="strategy-list-option"),
])
def test_model_and_graph_errors_have_a_line(tmp_path, text, path, line):
    _, err = load_error(tmp_path, text)
    assert (err.path, err.line) == (path, line)


def test_degraded_element_line_is_the_items(tmp_path):
    text = after("  inter_link: ib_hdr", "  degraded_links:\n"
                 "    - {element: node0.nic0, factor: 0.5}\n"
                 "    - {element: node2.gpu0, factor: 0.5}\n")
    _, err = load_error(tmp_path, text)
    assert (err.path, err.value, err.line) == ("cluster.degraded_links[1].element", "node2.gpu0",
                                               16)


@pytest.mark.parametrize("key, value", [("name", "''"), ("name", "'  '"),
                                        ("description", "3")])
def test_string_messages(tmp_path, key, value):
    old = "name: tiny" if key == "name" else "description: two nodes of two GPUs"
    _, err = load_error(tmp_path, edit(old, f"{key}: {value}"))
    assert err.path == key
    if value == "3":
        assert err.message == "must be a string, not an integer"
    else:
        assert err.message == "must not be empty"


def test_description_may_be_empty(tmp_path):
    text = edit("description: two nodes of two GPUs", "description: ''")
    assert load_scenario(write(tmp_path, text)).description == ""


def test_straggler_listed_twice(tmp_path):
    _, err = load_error(tmp_path, after("  inter_link: ib_hdr", "  stragglers:\n"
                                        "    - {device: 1, slowdown: 2}\n"
                                        "    - {device: 1, slowdown: 3}\n"))
    assert (err.path, err.value, err.line) == ("cluster.stragglers[1].device", 1, 16)
    assert "a second straggler" in err.message and "cluster.stragglers[0]" in err.message


def test_degraded_element_listed_twice(tmp_path):
    _, err = load_error(tmp_path, after("  inter_link: ib_hdr", "  degraded_links:\n"
                                        "    - {element: node0.nic0, factor: 0.5}\n"
                                        "    - {element: node1.gpu0, factor: 0.5}\n"
                                        "    - {element: node0.nic0, factor: 0.25}\n"))
    assert (err.path, err.value, err.line) == ("cluster.degraded_links[2].element", "node0.nic0",
                                               17)
    assert "cluster.degraded_links[0]" in err.message


# -- the other schemes ---------------------------------------------------------------------------

def scheme(lines: str, text: str = BASE) -> str:
    """``text`` with the first strategy's ``scheme: data_parallel`` line replaced by ``lines``."""
    return edit("    scheme: data_parallel\n", lines, text)


WITH_PS = after("  inter_link: ib_hdr", PS)
LENET = edit(MLP, "  zoo: lenet5\n")

# the other schemes' own checks (options that need the model graph or the cluster)
BAD_OTHER_SCHEMES = [
    pytest.param(scheme("    scheme: pipeline\n    stages: 2\n    partition: [fc1, nope]\n"),
                 ["strategies[0].partition[1]: no such layer", "(got 'nope')"],
                 id="pipeline-partition-unknown-layer"),
    pytest.param(scheme("    scheme: pipeline\n    stages: 2\n    partition: [fc2, fc1]\n"),
                 ["strategies[0].partition[0]: the first stage must start at the first layer",
                  "(got 'fc2')"], id="pipeline-partition-not-covering"),
    pytest.param(scheme("    scheme: pipeline\n    stages: 2\n    partition: [fc1]\n"),
                 ["strategies[0].partition: names 1 stage(s) but the plan has 2", "(got ['fc1'])"],
                 id="pipeline-partition-count"),
    pytest.param(scheme("    scheme: pipeline\n    stages: 9\n"),
                 ["strategies[0].stages: asks for 9 devices but the cluster has 4", "(got 9)"],
                 id="pipeline-more-stages-than-devices"),
    pytest.param(scheme("    scheme: pipeline\n    micro_batches: 16\n"),
                 ["strategies[0].micro_batches: the batch of 8 samples cannot be split over 16",
                  "(got 16)"], id="pipeline-more-micro-batches-than-samples"),
    pytest.param(scheme("    scheme: pipeline\n    schedule: interleaved\n"),
                 ["strategies[0].schedule: must be one of gpipe, 1f1b", "(got 'interleaved')"],
                 id="pipeline-unknown-schedule"),
    pytest.param(scheme("    scheme: downpour\n"),
                 ["strategies[0].scheme: Downpour needs cluster.parameter_servers",
                  "(got 'downpour')"], id="downpour-without-parameter-servers"),
    pytest.param(scheme("    scheme: downpour\n    workers: 5\n", WITH_PS),
                 ["strategies[0].workers: asks for 5 devices but the cluster has 4", "(got 5)"],
                 id="downpour-too-many-workers"),
    pytest.param(scheme("    scheme: downpour\n    n_push: 0\n", WITH_PS),
                 ["strategies[0].n_push: must be at least 1", "(got 0)"], id="downpour-n-push"),
    pytest.param(scheme("    scheme: sandblaster\n    portions: 9\n", WITH_PS),
                 ["strategies[0].portions: more portions than the batch's 8 samples", "(got 9)"],
                 id="sandblaster-more-portions-than-samples"),
    pytest.param(scheme("    scheme: tensor\n    layers: [fc9]\n"),
                 ["strategies[0].layers[0]: no such layer in the model", "(got 'fc9')"],
                 id="tensor-unknown-layer"),
    pytest.param(scheme("    scheme: tensor\n    devices: 4\n    layers: [fc2]\n"),
                 ["strategies[0].layers[0]: a dense layer of split size 2 cannot be split over 4",
                  "(got 'fc2')"], id="tensor-layer-too-narrow"),
    pytest.param(scheme("    scheme: branch\n"),
                 ["strategies[0].scheme: the model has no parallel branches", "(got 'branch')"],
                 id="branch-without-branches"),
    pytest.param(scheme("    scheme: hybrid\n"),
                 ["strategies[0].scheme: the hybrid scheme needs layers before", "(got 'hybrid')"],
                 id="hybrid-without-convolutions"),
    pytest.param(scheme("    scheme: parallel_3d\n    data: 2\n    pipeline: 2\n    tensor: 2\n"),
                 ["strategies[0].data: data x pipeline x tensor = 8 devices", "(got 2)"],
                 id="parallel-3d-too-many-devices"),
    pytest.param(scheme("    scheme: parallel_3d\n    pipeline: 4\n",
                        edit("sizes: [8, 4, 2]", "sizes: [8, 2]")),
                 ["strategies[0].pipeline: more pipeline stages than layers", "(got 4)"],
                 id="parallel-3d-more-stages-than-layers"),
]


@pytest.mark.parametrize("text, expected", BAD_OTHER_SCHEMES)
def test_malformed_other_schemes(tmp_path, text, expected):
    path, err = load_error(tmp_path, text)
    message = str(err)
    assert message.startswith(f"{path}:"), message
    for part in expected:
        assert part in message, message


def test_pipeline_more_replicas_than_devices(tmp_path):
    path, err = load_error(tmp_path, scheme("    scheme: pipeline\n    replicas: 8\n"))
    assert (err.path, err.value, err.line) == ("strategies[0].replicas", 8, 19)
    assert str(err) == (f"{path}:19: strategies[0].replicas: more replicas than the cluster's "
                        "4 devices (got 8)")


@pytest.mark.parametrize("name, text", [
    ("data_parallel", BASE),
    ("downpour", scheme("    scheme: downpour\n", WITH_PS)),
    ("sandblaster", scheme("    scheme: sandblaster\n    portions: 8\n", WITH_PS)),
    ("pipeline", scheme("    scheme: pipeline\n")),
    ("tensor", scheme("    scheme: tensor\n")),
    ("branch", scheme("    scheme: branch\n", edit(MLP, "  zoo: inception\n"))),
    ("hybrid", scheme("    scheme: hybrid\n", LENET)),
    ("parallel_3d", scheme("    scheme: parallel_3d\n    data: 2\n    pipeline: 2\n")),
    ("dbn_pretrain", scheme("    scheme: dbn_pretrain\n",
                            edit(MLP, "  zoo: dbn\n  params:\n    sizes: [8, 4, 2]\n"))),
])
def test_every_scheme_loads_with_its_defaults(tmp_path, name, text):
    from simulator.strategies import SCHEMES, scheme_module

    module = scheme_module(name)
    assert name in SCHEMES and callable(module.check) and callable(module.build)
    (spec,) = load_scenario(write(tmp_path, text)).strategies
    assert spec.scheme == name and set(spec.options) == set(module.OPTIONS)


def test_every_scheme_is_tested():
    from simulator.strategies import SCHEMES

    tested = {"data_parallel", "downpour", "sandblaster", "pipeline", "tensor", "branch",
              "hybrid", "parallel_3d", "dbn_pretrain"}
    assert set(SCHEMES) == tested

# -- other ways in ---------------------------------------------------------------------------

def test_parse_scenario_without_a_file():
    data = load_yaml(edit("  nodes: 2", "  nodes: 0"))
    with pytest.raises(ScenarioError, match=r"^<scenario>:9: cluster.nodes: must be at least 1"):
        parse_scenario(data)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ScenarioError, match="cannot read the scenario") as info:
        load_scenario(path)
    assert str(info.value).startswith(str(path))


# -- the command line: exit 2, one line on stderr, no traceback -------------------------------

CLI_BAD = [
    pytest.param(edit("  intra_link: nvlink2", "  intra_link: nvlink9"),
                 "cluster.intra_link: unknown link", id="unknown-link"),
    pytest.param(edit("  device: V100", "\tdevice: V100"), ":11: not valid YAML",
                 id="yaml-syntax"),
    pytest.param(after("    scheme: data_parallel", "    devices: 5\n"),
                 "strategies[0].devices: asks for 5 devices", id="graph-check"),
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parasim", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("command", [["plan", "--strategy", "dp"], ["simulate"]],
                         ids=["plan", "simulate"])
@pytest.mark.parametrize("text, expected", CLI_BAD)
def test_cli_rejects_malformed_file(tmp_path, command, text, expected):
    path = write(tmp_path, text)
    done = run_cli(command[0], str(path), *command[1:])
    assert done.returncode == 2, done.stderr
    assert str(path) in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_cli_rejects_unknown_strategy_name(tmp_path):
    path = write(tmp_path, BASE)
    done = run_cli("plan", str(path), "--strategy", "nope")
    assert done.returncode == 2
    assert "'nope'" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


# -- good input --------------------------------------------------------------------------------

GOOD = textwrap.dedent("""\
    name: units
    model:
      zoo: mlp
      params: {sizes: [8, 4, 2]}
    cluster:
      nodes: 2
      devices_per_node: 2
      device: {base: V100, memory_GiB: 16}
      intra_link: nvlink2
      inter_link:
        scope: inter
        bandwidth_GBps: 25
        latency_us: 2
        efficiency: 0.5
        source: a made-up test link
      nics_per_node: 2
      parameter_servers: {hosts: 1, device: cpu_core, nic: eth_10g}
      stragglers:
        - {device: 3, slowdown: 2}
      degraded_links:
        - {element: node1.nic1, factor: 0.5}
        - {element: ps0, factor: 0.25}
    training:
      batch_size: 8
      precision: fp16
      optimizer: adam
    strategies:
      - name: ring
        scheme: data_parallel
        bucket_MiB: 2
        overlap: true
      - name: ps
        scheme: data_parallel
        exchange: ps
        devices: 2
    """)


def test_good_scenario_is_si(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    link = s.cluster.inter_link
    assert (link.name, link.scope, link.bandwidth, link.efficiency) == ("inline", "inter", 25e9,
                                                                        0.5)
    assert link.latency == pytest.approx(2e-6)
    assert link.effective_bandwidth == 12.5e9
    device = s.cluster.device
    v100 = catalogue.devices()["V100"]
    assert device.name == "V100*"
    assert device.memory == 16 * GIB
    assert dataclasses.replace(device, name="V100", memory=v100.memory) == v100
    assert s.cluster.intra_link == catalogue.links()["nvlink2"]
    assert s.cluster.device_count == 4 and s.cluster.nics_per_node == 2
    ps = s.cluster.parameter_servers
    assert (ps.hosts, ps.device.name, ps.nic.name) == (1, "cpu_core", "eth_10g")
    assert s.cluster.stragglers == (Straggler(device=3, slowdown=2.0),)
    assert s.cluster.degraded_links == (DegradedLink("node1.nic1", 0.5), DegradedLink("ps0", 0.25))
    assert (s.training.precision, s.training.optimizer) == ("fp16", "adam")
    ring, by_ps = s.strategies
    assert ring.options == {"devices": None, "exchange": "ring", "bucket_MiB": 2 * MIB,
                            "overlap": True, "local_steps": 1,
                            "gradient_accumulation": 1, "recompute": "none", "zero": 0}
    assert (by_ps.options["exchange"], by_ps.options["devices"]) == ("ps", 2)
    assert s.file == str(tmp_path / "scenario.yaml")


def test_defaults(tmp_path):
    s = load_scenario(write(tmp_path, BASE))
    assert (s.name, s.description, s.seed) == ("tiny", "two nodes of two GPUs", 7)
    assert s.model.zoo == "mlp" and s.model.params == {"sizes": [8, 4, 2]}
    assert s.training.batch_size == 8
    assert (s.training.precision, s.training.optimizer) == ("fp32", "momentum")
    assert (s.training.iterations, s.training.warmup_iterations) == (3, 1)
    assert s.cluster.nics_per_node == 1 and s.cluster.parameter_servers is None
    assert s.cluster.stragglers == () and s.cluster.degraded_links == ()
    (dp,) = s.strategies
    assert dp.options == {"devices": None, "exchange": "ring", "bucket_MiB": 0.0,
                          "overlap": False, "local_steps": 1,
                          "gradient_accumulation": 1, "recompute": "none", "zero": 0}
    text = edit("seed: 7\n", "", edit("description: two nodes of two GPUs\n", ""))
    bare = load_scenario(write(tmp_path, text, "bare.yaml"))
    assert (bare.description, bare.seed) == ("", 0)


def test_frozen(tmp_path):
    s = load_scenario(write(tmp_path, GOOD))
    for obj, attr in [(s, "name"), (s.cluster, "nodes"), (s.cluster.device, "memory"),
                      (s.cluster.inter_link, "bandwidth"), (s.training, "batch_size"),
                      (s.strategies[0], "name"), (s.model, "zoo")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, None)


def test_inline_device(tmp_path):
    s = load_scenario(write(tmp_path, edit("  device: V100\n", INLINE_DEVICE % 2)))
    d = s.cluster.device
    assert (d.name, d.kind, d.sms, d.blocks_per_sm, d.comm_sms) == ("inline", "gpu", 4, 1, 1)
    assert d.peak_flops == {"fp32": 1e12}
    assert (d.memory, d.memory_bandwidth) == (2 * GIB, 100e9)
    assert d.launch_overhead == pytest.approx(5e-6)
    assert d.source == "a made-up test device"


def test_a_link_s_eager_limit_is_read_in_kib(tmp_path):
    s = load_scenario(write(tmp_path, edit("  inter_link: ib_hdr",
                                           "  inter_link: {base: ib_hdr, eager_limit_KiB: 64}")))
    assert s.cluster.inter_link.eager_limit == 64 * 1024
    assert s.cluster.intra_link.eager_limit == 16 * 1024  # the catalogue's default


def test_one_node_needs_no_inter_link(tmp_path):
    one = edit("  nodes: 2", "  nodes: 1", edit("  inter_link: ib_hdr\n", ""))
    s = load_scenario(write(tmp_path, edit("  batch_size: 8", "  batch_size: 2", one)))
    assert s.cluster.inter_link == catalogue.links()["eth_10g"]  # the host NIC, for PS traffic
    s = load_scenario(write(tmp_path, after("  intra_link: nvlink2", PS.replace("eth_10g",
                                                                                 "ib_fdr"), one)))
    assert s.cluster.inter_link.name == "ib_fdr"  # the parameter servers' NIC


def test_cpu_cluster_element_names(tmp_path):
    text = edit("  device: V100", "  device: cpu_core",
                edit("  intra_link: nvlink2", "  intra_link: shm"))
    good = after("  inter_link: ib_hdr", "  degraded_links:\n    - {element: node1.cpu1, "
                 "factor: 0.5}\n", text)
    assert load_scenario(write(tmp_path, good)).cluster.degraded_links[0].element == "node1.cpu1"
    bad = after("  inter_link: ib_hdr", "  degraded_links:\n    - {element: node1.gpu1, "
                "factor: 0.5}\n", text)
    with pytest.raises(ScenarioError, match=r"degraded_links\[0\].element"):
        load_scenario(write(tmp_path, bad))


def test_custom_layers(tmp_path):
    text = edit(MLP, "  input_shape: [8]\n  layers:\n    - {kind: dense, units: 4, name: hidden}\n"
                "    - {kind: act, fn: relu}\n    - {kind: dense, units: 2}\n")
    s = load_scenario(write(tmp_path, text))
    assert s.model.zoo is None and s.model.input_shape == (8,)
    assert [layer["kind"] for layer in s.model.layers] == ["dense", "act", "dense"]


# -- the catalogue -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(catalogue.devices()))
def test_every_catalogue_device_loads(tmp_path, name):
    d = catalogue.devices()[name]
    assert d.name == name and d.source.strip()
    assert d.sms > d.comm_sms >= 0 and d.memory > 0 and d.memory_bandwidth > 0
    assert "fp32" in d.peak_flops and all(v > 0 for v in d.peak_flops.values())
    assert 0 < d.compute_efficiency <= 1 and 0 < d.memory_efficiency <= 1
    s = load_scenario(write(tmp_path, edit("  device: V100", f"  device: {name}")))
    assert s.cluster.device == d


@pytest.mark.parametrize("name", sorted(catalogue.links()))
def test_every_catalogue_link_loads(tmp_path, name):
    link = catalogue.links()[name]
    assert link.name == name and link.source.strip()
    assert link.bandwidth > 0 and link.latency >= 0 and 0 < link.efficiency <= 1
    key = "intra_link: nvlink2" if link.scope == "intra" else "inter_link: ib_hdr"
    s = load_scenario(write(tmp_path, edit(f"  {key}", f"  {key.split(':')[0]}: {name}")))
    assert getattr(s.cluster, f"{link.scope}_link") == link


def test_catalogue_units():
    v100, nvlink2 = catalogue.devices()["V100"], catalogue.links()["nvlink2"]
    assert v100.memory == 32 * GIB and v100.memory_bandwidth == 900e9
    assert v100.peak_flops["fp32"] == pytest.approx(15.7e12)
    assert nvlink2.bandwidth == 150e9 and nvlink2.latency == pytest.approx(2e-6)


# -- light imports -----------------------------------------------------------------------------

def test_loader_plan_and_strategies_import_no_engine_or_executor():
    code = textwrap.dedent("""\
        import importlib, pkgutil, sys
        import simulator.scenario, simulator.plan, simulator.cluster, simulator.model
        import simulator.strategies
        for m in pkgutil.iter_modules(simulator.strategies.__path__):
            importlib.import_module("simulator.strategies." + m.name)
        heavy = [m for m in ("simpy", "mpi4py", "numba") if m in sys.modules]
        assert not heavy, heavy
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("old,new,path,line,fix", [
    # a required key misspelt: the error names the typo's line and the key it should be
    ("  devices_per_node: 2", "  device_per_node: 2", "cluster.devices_per_node", 10,
     "the unknown key 'device_per_node' looks like it: did you mean 'devices_per_node'?"),
    # an optional key misspelt: unknown, with the key it is close to
    ("  batch_size: 8", "  batch_size: 8\n  warmup_iteration: 1", "training.warmup_iteration",
     16, "did you mean 'warmup_iterations'?"),
    # names from a list: a scheme, a zoo model, a catalogue device and link
    ("scheme: data_parallel", "scheme: data_paralel", "strategies[0].scheme", 18,
     "did you mean 'data_parallel'?"),
    ("zoo: mlp", "zoo: mpl", "model.zoo", 5, "did you mean 'mlp'?"),
    ("device: V100", "device: V10O", "cluster.device", 11, "did you mean 'V100'?"),
    ("intra_link: nvlink2", "intra_link: nvlnik2", "cluster.intra_link", 12,
     "did you mean 'nvlink2'?"),
])
def test_a_typo_gets_the_name_it_was_meant_to_be(tmp_path, old, new, path, line, fix):
    where, e = load_error(tmp_path, edit(old, new))
    assert e.path == path and e.line == line and fix in e.message, (e.path, e.line, e.message)
    assert str(where) in str(e)


def test_a_name_close_to_nothing_gets_no_guess(tmp_path):
    _, e = load_error(tmp_path, edit("zoo: mlp", "zoo: transformer_xl"))
    assert "did you mean" not in e.message

"""The network as a graph (``simulator/topology.py``): routes inside described nodes and across
fat trees, rails, tori and graph files checked by hand, oversubscription and the PCIe box's
all-reduce against closed forms, the node catalogue, graph files and their errors, and the
shared (mirrored) path against the per-rank one on a described node.

Link figures in the closed forms are written out by hand from the standards (PCIe 3 x16 =
15.75 GB/s per direction, efficiency 0.75 as links.yaml estimates), not read back."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import simpy

from simulator import catalogue
from simulator.cluster import build_cluster
from simulator.engine.network import Network
from simulator.engine.runner import Engine
from simulator.engine.simulate import predict
from simulator.errors import ScenarioError
from simulator.predict import simulate_scenario
from simulator.scenario import load_scenario, parse_scenario
from simulator.yaml_input import load_yaml
from tests.simulator.test_strategies import plan_of


def scenario(cluster: str, strategies: str = "[{name: s, scheme: data_parallel}]",
             model: str = "{zoo: alexnet}", batch: int = 64, file: str = "<scenario>"):
    return parse_scenario(load_yaml(textwrap.dedent(f"""
        name: t
        model: {model}
        cluster: {cluster}
        training: {{batch_size: {batch}, iterations: 2, warmup_iterations: 1}}
        strategies: {strategies}
        """)), file)


def cluster_of(text: str, file: str = "<scenario>"):
    return build_cluster(scenario(text, file=file).cluster)


def hops(route) -> list[str]:
    return [route[0][0]] + [v for _, v in route]


# ---- the node catalogue ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(catalogue.nodes()))
def test_every_catalogue_node_builds_and_cites_its_source(name):
    node = catalogue.nodes()[name]
    assert "20" in node.source and len(node.source) > 80
    c = cluster_of(f"{{nodes: 2, node: {name}, device: V100, inter_link: ib_edr}}")
    # every device reaches every other device and its NIC
    for a in c.devices[:node.devices]:
        for b in c.devices:
            if a != b:
                assert c.route(a, b)[0][0] == a and c.route(a, b)[-1][1] == b


def test_dgx1_v100_has_six_nvlinks_per_gpu_and_four_nics():
    node = catalogue.nodes()["dgx1_v100"]
    per_gpu = {i: 0 for i in range(8)}
    for a, b, link, width in node.edges:
        if a.startswith("gpu") and b.startswith("gpu"):
            per_gpu[int(a[3:])] += width
            per_gpu[int(b[3:])] += width
            assert link.name == "nvlink2_link"
    assert per_gpu == {i: 6 for i in range(8)}  # V100 SXM2: 6 NVLink 2.0 links
    assert node.nics == 4


def test_new_links_load_with_their_sources():
    links = catalogue.links()
    for name in ("pcie3_uplink", "qpi_9_6_x2", "upi_16_x4", "nvlink2_link"):
        assert "estimate" in links[name].source
    assert links["pcie3_uplink"].per_hop and not links["pcie3"].per_hop
    assert links["qpi_9_6_x2"].bandwidth == 38.4e9  # 2 links x 9.6 GT/s x 2 B


# ---- routes inside a node ----------------------------------------------------------------------

PCIE_BOX = "{nodes: 2, node: pcie3_8gpu, device: TitanX, inter_link: ib_fdr}"


def test_routes_in_the_pcie_tree():
    c = cluster_of(PCIE_BOX)
    assert hops(c.route("node0.gpu0", "node0.gpu1")) == ["node0.gpu0", "node0.pcie0",
                                                          "node0.gpu1"]
    assert hops(c.route("node0.gpu1", "node0.gpu2")) == [
        "node0.gpu1", "node0.pcie0", "node0.socket0", "node0.pcie1", "node0.gpu2"]
    assert hops(c.route("node0.gpu3", "node0.gpu4")) == [
        "node0.gpu3", "node0.pcie1", "node0.socket0", "node0.socket1", "node0.pcie2",
        "node0.gpu4"]
    # between nodes: up to the one NIC (on pcie0), the switch, down in the other node
    assert hops(c.route("node0.gpu5", "node1.gpu0")) == [
        "node0.gpu5", "node0.pcie2", "node0.socket1", "node0.socket0", "node0.pcie0",
        "node0.nic0", "switch", "node1.nic0", "node1.pcie0", "node1.gpu0"]
    # latency: the GPU's PCIe 3 (8 us) once, two switch hops (0.15 us) and QPI (0.2 us)
    assert c.latency(c.route("node0.gpu3", "node0.gpu4")) == pytest.approx(8.5e-6)
    # leaving the node: the network's end-to-end latency (ib_fdr 1.1 us) and the switch and
    # socket hops on the way to the NIC (2 x 0.15 + 0.2 us), not the GPUs' PCIe 3 8 us
    assert c.latency(c.route("node0.gpu5", "node1.gpu0")) == pytest.approx(1.6e-6)


def test_dgx1_routes_over_nvlink_and_relays_through_a_gpu():
    c = cluster_of("{nodes: 2, node: dgx1_v100, inter_link: ib_edr}")
    assert hops(c.route("node0.gpu0", "node0.gpu3")) == ["node0.gpu0", "node0.gpu3"]
    assert c.bandwidth(("node0.gpu0", "node0.gpu3")) == pytest.approx(2 * 25e9 * 0.85)
    # 0 and 5 share no NVLink: through GPU 1 (1 link, then 2) or GPU 4 (2, then 1) are equal
    # in hops and bottleneck; the name decides
    assert hops(c.route("node0.gpu0", "node0.gpu5")) == ["node0.gpu0", "node0.gpu1",
                                                          "node0.gpu5"]
    # each GPU pair's NIC is under its PCIe switch
    assert [c.nic_of(d) for d in c.devices[:8]] == [f"node0.nic{i // 2}" for i in range(8)]
    assert hops(c.route("node0.gpu5", "node1.gpu5")) == [
        "node0.gpu5", "node0.pcie2", "node0.nic2", "switch", "node1.nic2", "node1.pcie2",
        "node1.gpu5"]


def test_nvswitch_boxes_route_gpus_over_nvswitch_and_use_their_own_nic():
    c = cluster_of("{nodes: 2, node: dgx_a100, inter_link: ib_hdr}")
    # GPUs 0 and 1 share a PCIe switch too: two hops either way, the NVSwitch is wider
    assert hops(c.route("node0.gpu0", "node0.gpu1")) == ["node0.gpu0", "node0.nvswitch",
                                                          "node0.gpu1"]
    assert [c.nic_of(d) for d in c.devices[:8]] == [f"node0.nic{i}" for i in range(8)]
    assert hops(c.route("node0.gpu3", "node1.gpu3")) == [
        "node0.gpu3", "node0.pcie1", "node0.nic3", "switch", "node1.nic3", "node1.pcie1",
        "node1.gpu3"]


# ---- between nodes -----------------------------------------------------------------------------

FAT = ("{{nodes: 8, devices_per_node: 1, device: V100, intra_link: pcie3, inter_link: ib_edr, "
       "fabric: {{kind: fat_tree, nodes_per_leaf: 2, spines: {spines}, oversubscription: {o}, "
       "hop_latency_us: 0.09}}}}")


def test_fat_tree_routes_and_ecmp_spreads_pairs_over_the_spines():
    c = cluster_of(FAT.format(spines=2, o=1))
    assert hops(c.route("node0.nic0", "node1.nic0")) == ["node0.nic0", "leaf0", "node1.nic0"]
    path = hops(c.route("node0.nic0", "node2.nic0"))
    assert path[:2] == ["node0.nic0", "leaf0"] and path[3:] == ["leaf1", "node2.nic0"]
    assert path[2] in ("spine0", "spine1")
    assert c.route("node0.nic0", "node2.nic0") == c.route("node0.nic0", "node2.nic0")
    spines = {hops(c.route(f"node{a}.nic0", f"node{b}.nic0"))[2]
              for a in range(8) for b in range(8) if a // 2 != b // 2}
    assert spines == {"spine0", "spine1"}  # different pairs take different spines
    # latency: ib_edr end to end (1 us) and two switch-to-switch hops of 0.09 us
    assert c.latency(c.route("node0.nic0", "node2.nic0")) == pytest.approx(1.18e-6)


@pytest.mark.parametrize("o", [1, 2, 4])
def test_oversubscription_divides_a_cross_leaf_transfer_by_closed_form(o):
    """Both nodes of leaf 0 send S bytes to the nodes of leaf 1 at once. The leaf's one uplink
    carries 2 NICs x B / o; each flow gets min(B, 2B / o / 2) = B / o: time o x S / B."""
    c = cluster_of(FAT.format(spines=1, o=o))
    b = 12.5e9 * 0.9  # ib_edr: 100 Gb/s = 12.5 GB/s per direction, efficiency 0.9
    env = simpy.Environment()
    net = Network(env, {e: c.bandwidth(e) for e in c.graph.edges})
    size = 1e9
    done = [net.transfer(c.route(f"node{a}.gpu0", f"node{a + 2}.gpu0"), size)
            for a in (0, 1)]
    env.run()
    assert all(d.triggered for d in done)
    # (the GPUs' PCIe 3 ports, 11.8 GB/s, are wider than the NIC)
    assert env.now == pytest.approx(max(1, o) * size / b, rel=1e-12)


def test_rails_keep_nic_k_on_rail_k_and_cross_rails_at_the_spine():
    c = cluster_of("{nodes: 2, node: dgx_h100, inter_link: ib_ndr, fabric: {kind: rails}}")
    assert hops(c.route("node0.gpu3", "node1.gpu3"))[2:5] == ["node0.nic3", "rail3",
                                                               "node1.nic3"]
    assert hops(c.route("node0.gpu3", "node1.gpu4"))[2:7] == [
        "node0.nic3", "rail3", "spine0", "rail4", "node1.nic4"]


@pytest.mark.parametrize("a, b, expected", [
    (0, 1, [0, 1]),
    (0, 3, [0, 3]),  # X = 4: 0 -> 3 is one hop the negative way round
    (0, 2, [0, 1, 2]),  # two hops either way: the positive way
    (0, 13, [0, 1, 5, 13]),  # X first (+1), then Y (+1), then Z (+1)
    (5, 8, [5, 4, 0, 8]),  # (1,1,0) -> (0,0,1): X -1, Y -1, Z +1
])
def test_torus_routes_dimension_by_dimension(a, b, expected):
    c = cluster_of("{nodes: 16, devices_per_node: 1, device: K20, intra_link: pcie3, "
                   "inter_link: ib_fdr, fabric: {kind: torus, dims: [4, 2, 2]}}")
    assert c.topology.torus_hops(a, b) == expected
    route = hops(c.route(f"node{a}.nic0", f"node{b}.nic0"))
    assert route[1:-1] == [f"node{n}.router" for n in expected]


def test_torus_hop_count_is_the_sum_of_ring_distances():
    c = cluster_of("{nodes: 27, devices_per_node: 1, device: K20, intra_link: pcie3, "
                   "inter_link: ib_fdr, fabric: {kind: torus, dims: [3, 3, 3]}}")
    for b in range(27):
        x, y, z = b % 3, b // 3 % 3, b // 9
        ring = sum(min(d, 3 - d) for d in (x, y, z))
        assert len(c.topology.torus_hops(0, b)) - 1 == ring


# ---- graph files -------------------------------------------------------------------------------

def write_json(tmp_path: Path, links: list, nodes: list | None = None) -> Path:
    names = nodes or sorted({x for e in links for x in (e["source"], e["target"])})
    path = tmp_path / "fabric.json"
    path.write_text(json.dumps({"nodes": [{"id": n} for n in names], "links": links}))
    return path


GRAPH = ("{{nodes: 2, devices_per_node: 1, device: V100, intra_link: pcie3, inter_link: ib_edr, "
         "fabric: {{kind: graph, file: {file}}}}}")


def test_a_node_link_json_file_routes_over_its_trunk(tmp_path):
    path = write_json(tmp_path, [
        {"source": "node0.nic0", "target": "a", "link": "ib_edr"},
        {"source": "node1.nic0", "target": "b", "link": "ib_edr"},
        {"source": "a", "target": "b", "bandwidth_GBps": 5, "latency_us": 0.2}])
    c = cluster_of(GRAPH.format(file=path))
    route = c.route("node0.gpu0", "node1.gpu0")
    assert hops(route)[2:6] == ["node0.nic0", "a", "b", "node1.nic0"]
    assert c.bandwidth(("a", "b")) == 5e9
    # ib_edr's end-to-end latency once, the trunk's hop on top, the GPUs' PCIe too (flat node)
    assert c.latency(route) == pytest.approx(8e-6 + 1e-6 + 0.2e-6 + 8e-6)


def test_the_shipped_graphml_file_loads():
    sc = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "graph_fabric.yaml")
    c = build_cluster(sc.cluster)
    assert hops(c.route("node0.nic0", "ps0")) == ["node0.nic0", "edge0", "edge1", "ps0"]


@pytest.mark.parametrize("links, message", [
    ([{"source": "node0.nic0", "target": "a", "link": "ib_edr"},
      {"source": "node7.nic0", "target": "a", "link": "ib_edr"}], "no such NIC"),
    ([{"source": "node0.nic0", "target": "a", "link": "ib_edr"}], "lacks 1 of the cluster"),
    ([{"source": "node0.nic0", "target": "a", "link": "ib_edr", "bandwidth_GBps": 1},
      {"source": "node1.nic0", "target": "a", "link": "ib_edr"}], "exactly one of link"),
    ([{"source": "node0.nic0", "target": "a", "link": "nvlink2"},
      {"source": "node1.nic0", "target": "a", "link": "ib_edr"}], "unknown inter-node link"),
    ([{"source": "node0.nic0", "target": "a", "link": "ib_edr"},
      {"source": "node1.nic0", "target": "b", "link": "ib_edr"}], "does not join every NIC"),
    ([{"source": "node0.nic0", "target": "a", "link": "ib_edr", "colour": "red"},
      {"source": "node1.nic0", "target": "a", "link": "ib_edr"}], "unknown key"),
])
def test_graph_file_errors_name_the_file_and_the_element(tmp_path, links, message):
    path = write_json(tmp_path, links)
    with pytest.raises(ScenarioError) as e:
        scenario(GRAPH.format(file=path))
    assert message in str(e.value) and "fabric.json" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_graph_file_of_another_kind_or_missing_is_refused(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ScenarioError, match="ends in .graphml or .json"):
        scenario(GRAPH.format(file=tmp_path / "f.txt"))
    with pytest.raises(ScenarioError, match="cluster.fabric.file: no such graph file"):
        scenario(GRAPH.format(file=tmp_path / "none.json"))


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cluster, message", [
    ("{nodes: 1, node: dgx9}", "cluster.node: unknown node"),
    ("{nodes: 1, node: dgx1_v100, devices_per_node: 4}",
     "cluster.devices_per_node: the node 'dgx1_v100' holds 8 devices"),
    ("{nodes: 1, node: dgx_a100, host_link: pcie4}", "cluster.host_link: comes with the flat"),
    ("{nodes: 1, node: dgx_a100, nics_per_node: 2}", "cluster.nics_per_node: the node"),
    ("{nodes: 4, node: dgx_a100, inter_link: ib_hdr, fabric: {kind: torus, dims: [2, 2, 2]}}",
     "cluster.fabric.dims: must be [X, Y, Z] with X x Y x Z = the cluster's 4 nodes"),
    ("{nodes: 2, node: dgx_a100, inter_link: ib_hdr, fabric: {kind: fat_tre}}",
     "did you mean 'fat_tree'"),
    ("{nodes: 2, node: dgx_a100, inter_link: ib_hdr, fabric: {kind: rails, spine: 2}}",
     "cluster.fabric.spine: unknown key"),
    ("{nodes: 2, node: dgx_a100, inter_link: ib_hdr, fabric: torus}",
     "cluster.fabric: a string here must be 'switch'"),
    ("{nodes: 1, device: V100, node: {devices: 2, nvlink: nvlink2_link, nvlinks: [[0, 2, 1]]}}",
     "cluster.node.nvlinks[0]: must be [device, other device, links >= 1]"),
    ("{nodes: 1, device: V100, node: {devices: 2, switches: {pcie0: socket3}, "
     "switch_link: pcie3_uplink, device_parents: [pcie0, pcie0], device_link: pcie3}}",
     "cluster.node.switches.pcie0: no such socket or switch 'socket3'"),
    ("{nodes: 1, device: V100, node: {devices: 2, device_parents: [socket0, socket0], "
     "device_link: ib_edr}}", "cluster.node.device_link: is an inter-node link"),
    ("{nodes: 1, device: V100, node: {devices: 3, nvlink: nvlink2_link, nvlinks: [[0, 1, 2]]}}",
     "the node is not connected: gpu2"),
])
def test_bad_topology_input_is_one_line_naming_the_field(tmp_path, cluster, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: t\nmodel: {{zoo: alexnet}}\ncluster: {cluster}\n"
                    "training: {batch_size: 64}\n"
                    "strategies: [{name: s, scheme: data_parallel}]\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    text = str(e.value)
    assert message in text and text.startswith(f"{path}:3: ") and "\n" not in text


def test_an_inline_node_with_a_socket_link_and_nvlinks():
    c = cluster_of("{nodes: 1, device: V100, node: {devices: 2, sockets: 2, "
                   "socket_link: qpi_9_6_x2, device_parents: [socket0, socket1], "
                   "device_link: pcie3, nvlink: nvlink2_link, nvlinks: [[0, 1, 2]]}}")
    assert hops(c.route("node0.gpu0", "node0.gpu1")) == ["node0.gpu0", "node0.gpu1"]


def test_degraded_elements_of_a_described_node_exist_and_slow_their_links():
    c = cluster_of("{nodes: 1, node: pcie3_8gpu, device: TitanX, degraded_links: "
                   "[{element: node0.pcie1, factor: 0.5}]}")
    assert c.bandwidth(("node0.pcie1", "node0.socket0")) == pytest.approx(15.75e9 * 0.75 / 2)
    with pytest.raises(ScenarioError, match="no such element"):
        scenario("{nodes: 1, node: pcie3_8gpu, device: TitanX, degraded_links: "
                 "[{element: node0.fabric, factor: 0.5}]}")


# ---- the PCIe box's all-reduce against the closed form -----------------------------------------

ALEXNET_BYTES = 244_403_360  # AlexNet's 61,100,840 parameters x 4 bytes (fp32)


def pcie_box(n: int):
    return scenario("{nodes: 1, node: pcie3_8gpu, device: TitanX}",
                    f"[{{name: dp, scheme: data_parallel, devices: {n}}}]", batch=32 * n)


def test_alexnet_data_parallel_in_the_pcie_box_follows_the_shared_links_closed_form():
    """Ring all-reduce over GPUs 0..n-1 in rank order, S bytes: 2(n-1) steps of the slowest
    pair's latency and 2(n-1)/n S over the bottleneck edge's share. By hand: the ring's flows
    i -> i+1 cross each directed edge at most once (n = 4: 1 -> 2 goes up pcie0's uplink and
    down pcie1's, 3 -> 0 the other way; n = 8: 3 -> 4 crosses QPI socket0 -> socket1, 7 -> 0
    socket1 -> socket0), so every flow has a PCIe 3 x16 port's full 15.75 GB/s x 0.75 (the
    uplinks are x16 too; QPI's 2 x 19.2 GB/s x 0.7 is wider). Latency: PCIe 3's 8 us once
    per route, plus 0.15 us per switch uplink crossed and 0.2 us for QPI. Compute per GPU is
    the same at every n (32 samples), so the step grows by the communication alone."""
    b = 15.75e9 * 0.75
    alpha = {2: 8e-6, 4: 8e-6 + 2 * 0.15e-6, 8: 8e-6 + 2 * 0.15e-6 + 0.2e-6}
    base = simulate_scenario(pcie_box(1))[0]["results"][0]["iteration_time_s"]
    steps = [base]
    for n in (2, 4, 8):
        sc = pcie_box(n)
        ctx, plan = plan_of(sc)
        assert sum(op.bytes for op in plan.ranks[0].ops
                   if type(op).__name__ == "Collective") == ALEXNET_BYTES
        it = simulate_scenario(sc)[0]["results"][0]["iteration_time_s"]
        closed = 2 * (n - 1) * alpha[n] + 2 * (n - 1) / n * ALEXNET_BYTES / b
        assert it - base == pytest.approx(closed, rel=1e-9), n
        steps.append(it)
    assert steps == sorted(steps) and steps[-1] > steps[1]


# ---- shared path and per-rank path -------------------------------------------------------------

@pytest.mark.parametrize("exchange", ["ring", "hierarchical"])
def test_mirrored_ranks_on_a_described_node_predict_what_every_rank_does(exchange):
    sc = scenario("{nodes: 3, node: dgx1_v100, inter_link: ib_edr}",
                  f"[{{name: s, scheme: data_parallel, exchange: {exchange}}}]", batch=96)
    ctx, plan = plan_of(sc)
    engine = Engine(plan, ctx.cluster, "fp32", "momentum", 1, 2)
    assert engine.sym is not None and len(engine.simulated) == 8  # one node's worth
    mirrored = predict(plan, ctx.cluster, sc.training).entry
    every = predict(replace(plan, mirrors=()), ctx.cluster, sc.training).entry
    assert mirrored["iteration_time_s"] == every["iteration_time_s"]
    # (the breakdown averages the ranks in another order: the last digit may move)
    assert mirrored["breakdown_s"] == pytest.approx(every["breakdown_s"], rel=1e-12)
    for link, u in every["utilisation_per_link"].items():
        assert mirrored["utilisation_per_link"][link] == pytest.approx(u, rel=1e-12)


def test_ecmp_and_torus_fabrics_simulate_every_rank():
    sc = scenario(FAT.format(spines=2, o=2), batch=64)
    ctx, plan = plan_of(sc)
    assert plan.mirrors and Engine(plan, ctx.cluster, "fp32", "momentum", 1, 2).sym is None


def test_folding_on_a_described_node_predicts_what_the_flows_do():
    sc = scenario("{nodes: 2, node: dgx_a100, inter_link: ib_hdr}",
                  "[{name: s, scheme: parallel_3d, tensor: 4, pipeline: 2, data: 2, "
                  "micro_batches: 2}]",
                  model="{zoo: gpt, params: {layers: 4, hidden: 256, heads: 8, seq_len: 128, "
                        "vocab: 1000}}", batch=8)
    ctx, plan = plan_of(sc)
    on = predict(plan, ctx.cluster, sc.training).entry
    off = predict(plan, ctx.cluster, sc.training, fold=False).entry
    assert on["iteration_time_s"] == pytest.approx(off["iteration_time_s"], rel=1e-12)

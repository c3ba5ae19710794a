"""The cluster as data: named devices, host NICs, switches, parameter-server hosts, and the links
between them as a networkx graph.

Topology (a two-level tree, as in a DGX-style or classic MPI cluster)::

    node{n}.gpu{i} ──intra── node{n}.fabric ──inter── node{n}.nic{k} ──inter── switch ── ps{j}

* ``node{n}.fabric`` stands for the node's interconnect (an NVSwitch, a PCIe root complex, the
  memory system for CPU cores). Every device has its own full-duplex port on it, so a transfer
  inside a node crosses the sender's up-port and the receiver's down-port.
* Devices use the node's NICs round-robin in blocks (GPUs 0-3 on nic0, 4-7 on nic1 for 2 NICs).
* With a ``host_link`` (PCIe), each device has its own link to its NIC instead, as a GPU and its
  NIC under one PCIe switch talk by GPUDirect RDMA (the DGX A100 System Architecture
  whitepaper, 2020: each A100 shares a PCIe 4 switch with its HDR NIC)::

      node{n}.gpu{i} ──intra── node{n}.fabric        (traffic inside the node)
      node{n}.gpu{i} ──host─── node{n}.nic{k} ──inter── switch   (traffic between nodes)

  so traffic between nodes does not cross the device's NVLink port.
* One non-blocking core ``switch`` joins the NICs and the parameter-server hosts (no
  oversubscription inside the network is modelled; the NIC ports are the shared resources).
* Every edge is directed (full duplex): ``(u, v)`` and ``(v, u)`` are separate capacities.

Latency of a route: each maximal run of edges of one link type pays that type's latency once
(the catalogue gives end-to-end small-message latency per link type, switch included); a host
link on the way to another node pays none (the inter link's end-to-end latency has the hosts'
PCIe in it).
Bandwidth: an edge's effective bandwidth (bandwidth x efficiency x any degradation factor).

A cluster that names a node topology (``cluster.node``) or a fabric (``cluster.fabric``) is
built and routed by ``simulator/topology.py`` instead (PCIe trees, NVLink meshes, NVSwitch;
fat trees, rails, tori, graph files). Its latency rule is this one, with two additions: a link
between two switches (``LinkSpec.per_hop``: a PCIe switch's uplink, a socket link, a fat
tree's leaf-to-spine link) pays its own latency at every hop and does not end the run of the
link around it, and in a described node a route that leaves the node does not pay its
devices' own intra-node links (the network's end-to-end figures have the hosts' PCIe in them,
as the host link's rule above says); its switch hops it does pay.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import networkx as nx

from simulator.specs import ClusterSpec, DeviceSpec, LinkSpec
from simulator.topology import Topology

SWITCH = "switch"


def device_name(spec: ClusterSpec, index: int) -> str:
    node, local = divmod(index, spec.devices_per_node)
    return f"node{node}.{spec.device.kind}{local}"


def topology_elements(spec: ClusterSpec) -> set[str]:
    if spec.node is not None or spec.fabric is not None:
        return set(build_cluster(replace(spec, degraded_links=())).graph.nodes)
    names = {device_name(spec, i) for i in range(spec.device_count)}
    names |= {f"node{n}.nic{k}" for n in range(spec.nodes) for k in range(spec.nics_per_node)}
    names |= {f"node{n}.fabric" for n in range(spec.nodes)}
    if spec.parameter_servers:
        names |= {f"ps{j}" for j in range(spec.parameter_servers.hosts)}
    return names


Edge = tuple[str, str]


@dataclass
class Cluster:
    """The built cluster: names, specs and the topology graph. Plain data, no SimPy."""

    spec: ClusterSpec
    devices: tuple[str, ...]
    graph: nx.DiGraph
    slowdown: dict[str, float]
    _routes: dict[tuple[str, str], tuple[Edge, ...]] = field(default_factory=dict, repr=False)
    _latencies: dict[tuple[Edge, ...], float] = field(default_factory=dict, repr=False)
    topology: Topology | None = None  # a described node or fabric (``simulator/topology.py``)

    @property
    def device_spec(self) -> DeviceSpec:
        return self.spec.device

    def node_of(self, device: str) -> int:
        return int(device.split(".", 1)[0][4:])

    def nic_of(self, device: str) -> str:
        attrs = self.graph.nodes[device]
        return f"node{attrs['node']}.nic{attrs['nic']}"

    def index_of(self, device: str) -> int:
        return self.graph.nodes[device]["index"]

    def ps_hosts(self) -> list[str]:
        ps = self.spec.parameter_servers
        return [f"ps{j}" for j in range(ps.hosts)] if ps else []

    def route(self, a: str, b: str) -> tuple[Edge, ...]:
        """The directed edges a transfer from ``a`` to ``b`` crosses (the one path in a tree)."""
        key = (a, b)
        hit = self._routes.get(key)
        if hit is not None:
            return hit
        if self.topology is not None:
            route = self._routes[key] = self.topology.route(a, b)
            return route
        up, down = self._host_chain(a, b), self._host_chain(b, a)
        lca = next(x for x in up if x in down)
        up, down = up[:up.index(lca) + 1], down[:down.index(lca) + 1]
        route = tuple(zip(up, up[1:])) + tuple(zip(down[::-1], down[-2::-1]))
        self._routes[key] = route
        return route

    def _chain(self, x: str) -> list[str]:
        """``x`` and the elements above it, up to the core switch."""
        if x.startswith("ps") or ".nic" in x:
            return [x, SWITCH]
        node = x.split(".", 1)[0]
        return [x, f"{node}.fabric", self.nic_of(x), SWITCH]

    def _host_chain(self, x: str, other: str) -> list[str]:
        """``x``'s elements up to the core switch on the way to ``other``: with a host link,
        a device reaches another node straight through its NIC."""
        if (self.spec.host_link is not None and ".nic" not in x and not x.startswith("ps")
                and not other.startswith(x.split(".", 1)[0] + ".")):
            return [x, self.nic_of(x), SWITCH]
        return self._chain(x)

    def latency(self, route: tuple[Edge, ...]) -> float:
        hit = self._latencies.get(route)
        if hit is None:
            hit = self._latencies[route] = self._latency(route)
        return hit

    def _latency(self, route: tuple[Edge, ...]) -> float:
        total, last = 0.0, None
        host = self.spec.host_link
        edges = self.graph.edges
        leaves = self.spec.node is not None and any(edges[e]["link"].scope == "inter"
                                                    for e in route)
        for e in route:
            link = edges[e]["link"]
            if link.per_hop:  # a switch-to-switch hop: its own latency, the run goes on
                total += link.latency
                continue
            if leaves and link.scope == "intra":  # (module docstring)
                continue
            if host is not None and link is host and len(route) > 2:
                # the inter link's latency is end to end (MPI level), the hosts' PCIe
                # included: a host link between a device and its NIC adds no latency of its own
                continue
            if link is not last:
                total += link.latency
                last = link
        return total

    def eager_limit(self, route: tuple[Edge, ...]) -> float:
        """The largest message a send over ``route`` completes without its receiver (MPI's
        eager protocol; the smallest limit of the links crossed)."""
        return min((self.graph.edges[e]["link"].eager_limit for e in route), default=0.0)

    def bandwidth(self, edge: Edge) -> float:
        return self.graph.edges[edge]["bandwidth"]

    def rated(self, edge: Edge) -> float:
        """The edge's bandwidth before any ``degraded_links`` factor."""
        attrs = self.graph.edges[edge]
        return attrs.get("rated", attrs["link"].effective_bandwidth)

    @property
    def mirrorable(self) -> bool:
        """Whether node shifts map routes onto routes (``simulator/engine/symmetry.py``)."""
        return self.topology is None or self.topology.mirrorable

    def nic_sharers(self, device: str) -> int:
        """How many of its node's devices use ``device``'s NIC."""
        if self.topology is None:
            return -(-self.spec.devices_per_node // self.spec.nics_per_node)
        return self.topology.nic_local.count(self.graph.nodes[device]["nic"])


def build_cluster(spec: ClusterSpec) -> Cluster:
    g = nx.DiGraph()
    degrade = {d.element: d.factor for d in spec.degraded_links}
    if spec.node is not None or spec.fabric is not None:
        topo = Topology(spec, g, degrade)
        devices = tuple(device_name(spec, i) for i in range(spec.device_count))
        slowdown = {devices[s.device]: s.slowdown for s in spec.stragglers}
        return Cluster(spec=spec, devices=devices, graph=g, slowdown=slowdown, topology=topo)

    def connect(child: str, parent: str, link: LinkSpec) -> None:
        bw = link.effective_bandwidth * degrade.get(child, 1.0)
        for e in ((child, parent), (parent, child)):
            g.add_edge(*e, link=link, bandwidth=bw)

    g.add_node(SWITCH, kind="switch")
    devices = tuple(device_name(spec, i) for i in range(spec.device_count))
    per_nic = -(-spec.devices_per_node // spec.nics_per_node)
    for n in range(spec.nodes):
        g.add_node(f"node{n}.fabric", kind="fabric", node=n)
        for k in range(spec.nics_per_node):
            nic = f"node{n}.nic{k}"
            g.add_node(nic, kind="nic", node=n)
            connect(nic, SWITCH, spec.inter_link)
            if spec.host_link is None:
                connect(f"node{n}.fabric", nic, spec.inter_link)
    for i, d in enumerate(devices):
        node, local = divmod(i, spec.devices_per_node)
        g.add_node(d, kind="device", node=node, index=i, nic=local // per_nic)
        connect(d, f"node{node}.fabric", spec.intra_link)
        if spec.host_link is not None:
            connect(d, f"node{node}.nic{local // per_nic}", spec.host_link)
    if spec.parameter_servers:
        for j in range(spec.parameter_servers.hosts):
            g.add_node(f"ps{j}", kind="ps")
            connect(f"ps{j}", SWITCH, spec.parameter_servers.nic)
    slowdown = {devices[s.device]: s.slowdown for s in spec.stragglers}
    return Cluster(spec=spec, devices=devices, graph=g, slowdown=slowdown)

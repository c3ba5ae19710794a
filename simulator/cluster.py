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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from simulator.specs import ClusterSpec, DeviceSpec, LinkSpec

SWITCH = "switch"


def device_name(spec: ClusterSpec, index: int) -> str:
    node, local = divmod(index, spec.devices_per_node)
    return f"node{node}.{spec.device.kind}{local}"


def topology_elements(spec: ClusterSpec) -> set[str]:
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
        for e in route:
            link = self.graph.edges[e]["link"]
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
        return self.graph.edges[edge]["link"].effective_bandwidth


def build_cluster(spec: ClusterSpec) -> Cluster:
    g = nx.DiGraph()
    degrade = {d.element: d.factor for d in spec.degraded_links}

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

"""The network as a graph beyond the flat default: a node's inside as a tree or mesh (GPUs under
PCIe switches under CPU sockets joined by their socket link, NVLink meshes, an NVSwitch, NICs on
given switches) and the fabric between the nodes' NICs (one switch, a fat tree with
oversubscription, rails, a 3-D torus, a graph file), and the routes over them.

Names: a node's elements are ``node{n}.`` and the local name of its description
(``node0.pcie1``, ``node0.socket0``, ``node0.nvswitch``; device i is ``node{n}.gpu{i}`` or
``node{n}.cpu{i}`` after its kind); the fabric's are ``switch``, ``leaf{i}``, ``spine{j}``,
``rail{k}``, ``node{n}.router`` (torus) or the names of a graph file; parameter-server hosts
are ``ps{j}``.

Routes (deterministic: the same pair always takes the same path):

* Inside a node: fewest hops; among those, the widest bottleneck (rated bandwidth); the rest of
  the ties by name. A device forwards only between two of its direct device-to-device links (a
  GPU pair without an NVLink goes through another GPU's NVLinks, as NCCL relays through an
  intermediate GPU; PCIe traffic never goes through a GPU).
* Between nodes: device -> the NIC it uses inside its node (the nearest by hops; among equally
  near ones the one the block rule gives, GPUs 0-3 on nic0 and 4-7 on nic1 for 2 NICs, else the
  lowest) -> the fabric -> the peer's NIC -> the peer.
* Across the fabric: fewest hops, then the widest bottleneck; paths still equal (a fat tree's
  spines) are spread by ECMP: walking back from the destination, each hop is chosen among the
  equal candidates by a CRC-32 hash of (source, destination), so one pair always takes one path
  and different pairs spread over the spines, colliding as hashed flows do. NICs and hosts never
  forward. A torus routes dimension by dimension (X, then Y, then Z), each the shorter way
  round the ring (the positive way when both are equal).

Bandwidths are per direction (every link full duplex); an edge's bandwidth is its link's
effective bandwidth times its width (links side by side) times any degradation factor.
Ignored: PCIe and NVLink protocol details beyond the link's efficiency, adaptive routing,
NCCL's choice of ring order and its NIC relay (PXN).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import replace

import networkx as nx

from simulator.specs import ClusterSpec, LinkSpec

Edge = tuple[str, str]
SWITCH = "switch"
RELAY = "~"  # a device's relay copy in a node's routing graph: it has only device links


class Topology:
    """A cluster's graph beyond the flat default, built into ``graph``, and its routes."""

    def __init__(self, spec: ClusterSpec, graph: nx.DiGraph, degrade: dict[str, float]):
        self.spec = spec
        self.graph = graph
        self.degrade = degrade
        self.kind = spec.device.kind
        # routes inside a node are the same in every node: worked out once on local names
        self._local: dict[tuple[str, str], tuple[Edge, ...]] = {}
        self._tables: dict[str, tuple[dict, dict]] = {}
        self._fabric_adj: dict[str, list[tuple[str, float]]] = {}
        self._node_adj: dict[str, list[tuple[str, float]]] = {}
        self._dims: tuple[int, ...] = ()
        self.nic_local: list[int] = []  # each local device's NIC
        self._build_nodes()
        self._build_fabric()

    @property
    def mirrorable(self) -> bool:
        """Whether a node shift maps routes onto routes (``symmetry``): with one core switch,
        yes; ECMP hashes and dimension-ordered routes tell nodes apart."""
        return self.spec.fabric is None or self.spec.fabric.kind == "switch"

    # ---- building ------------------------------------------------------------------------------
    def _connect(self, a: str, b: str, link: LinkSpec, width: int = 1, factor: float = 1.0,
                 **attrs: object) -> None:
        rated = link.effective_bandwidth * width
        for e in ((a, b), (b, a)):
            self.graph.add_edge(*e, link=link, bandwidth=rated * factor, rated=rated, **attrs)

    def _local_name(self, name: str) -> str:
        return f"{self.kind}{name[3:]}" if name.startswith("gpu") else name

    def _build_nodes(self) -> None:
        spec, g, deg = self.spec, self.graph, self.degrade
        per_nic = -(-spec.devices_per_node // spec.nics_per_node)
        node = spec.node
        if node is not None:
            for child, parent, link, width in node.edges:
                a, b = self._local_name(child), self._local_name(parent)
                self._node_adj.setdefault(a, []).append((b, link.effective_bandwidth * width))
                self._node_adj.setdefault(b, []).append((a, link.effective_bandwidth * width))
            self._split_relays()
            self.nic_local = [self._nearest_nic(i, per_nic) for i in range(spec.devices_per_node)]
        else:
            self.nic_local = [i // per_nic for i in range(spec.devices_per_node)]
        for n in range(spec.nodes):
            p = f"node{n}."
            for k in range(spec.nics_per_node):
                g.add_node(f"{p}nic{k}", kind="nic", node=n)
            for i in range(spec.devices_per_node):
                g.add_node(f"{p}{self.kind}{i}", kind="device", node=n,
                           index=n * spec.devices_per_node + i, nic=self.nic_local[i])
            if node is None:  # the flat node fabric, as ``simulator/cluster.py`` builds it
                g.add_node(f"{p}fabric", kind="fabric", node=n)
                for i in range(spec.devices_per_node):
                    d = f"{p}{self.kind}{i}"
                    self._connect(d, f"{p}fabric", spec.intra_link, factor=deg.get(d, 1.0))
                    if spec.host_link is not None:
                        self._connect(d, f"{p}nic{self.nic_local[i]}", spec.host_link,
                                      factor=deg.get(d, 1.0))
                if spec.host_link is None:
                    for k in range(spec.nics_per_node):
                        self._connect(f"{p}fabric", f"{p}nic{k}", spec.inter_link,
                                      factor=deg.get(f"{p}fabric", 1.0))
                continue
            for child, parent, link, width in node.edges:
                a, b = p + self._local_name(child), p + self._local_name(parent)
                for x in (a, b):
                    if x not in g:
                        g.add_node(x, kind=x.split(".", 1)[1].rstrip("0123456789"), node=n)
                both = (g.nodes[a]["kind"] == "device" and g.nodes[b]["kind"] == "device")
                # a NIC's factor is its network link's; a device's covers all of its links
                factor = 1.0 if g.nodes[a]["kind"] == "nic" else deg.get(a, 1.0)
                if both:
                    factor *= deg.get(b, 1.0)
                self._connect(a, b, link, width, factor)

    def _split_relays(self) -> None:
        """Give each device with device-to-device links a relay copy ``gpu{i}~`` that holds
        only those links, so that a route may pass through a GPU's NVLinks but never through
        its PCIe: for each such link {a, b}, the relay links {a, b~}, {a~, b}, {a~, b~}."""
        adj = self._node_adj
        devices = {f"{self.kind}{i}" for i in range(self.spec.devices_per_node)}
        self._devices_local = devices
        for a in sorted(devices):
            for b, bw in list(adj.get(a, ())):
                if b in devices and a < b:
                    for x, y in ((a, b + RELAY), (a + RELAY, b), (a + RELAY, b + RELAY)):
                        adj.setdefault(x, []).append((y, bw))
                        adj.setdefault(y, []).append((x, bw))

    def _forwards_local(self, x: str) -> bool:
        """Whether a route inside a node may pass through ``x``: not a device (but its relay
        copy) and not a NIC."""
        return x not in self._devices_local and not x.startswith("nic")

    def _forwards_fabric(self, x: str) -> bool:
        """Whether a route across the fabric may pass through ``x``: switches only."""
        return self.graph.nodes[x].get("kind") == "switch"

    def _nearest_nic(self, i: int, per_nic: int) -> int:
        dist, _ = bfs(self._node_adj, f"{self.kind}{i}", self._forwards_local)
        near = [(dist[f"nic{k}"], k) for k in range(self.spec.nics_per_node)
                if f"nic{k}" in dist]
        if not near:
            return 0
        best = min(d for d, _ in near)
        ties = [k for d, k in near if d == best]
        return i // per_nic if i // per_nic in ties else ties[0]

    def _build_fabric(self) -> None:
        spec, fab = self.spec, self.spec.fabric
        kind = fab.kind if fab is not None else "switch"
        nics = [f"node{n}.nic{k}" for n in range(spec.nodes) for k in range(spec.nics_per_node)]
        ps = spec.parameter_servers
        hosts = [f"ps{j}" for j in range(ps.hosts)] if ps else []
        g, deg, inter = self.graph, self.degrade, spec.inter_link
        for h in hosts:
            g.add_node(h, kind="ps")

        def attach(port: str, switch: str) -> None:
            if switch not in g:
                g.add_node(switch, kind="switch")
            self._connect(port, switch, ps.nic if port.startswith("ps") else inter,
                          factor=deg.get(port, 1.0))

        if kind == "switch":
            for x in nics + hosts:
                attach(x, SWITCH)
        elif kind in ("fat_tree", "rails"):
            if kind == "fat_tree":
                k = fab.nodes_per_leaf
                groups = [nics[i:i + k * spec.nics_per_node]
                          for i in range(0, len(nics), k * spec.nics_per_node)]
            else:
                groups = [[f"node{n}.nic{r}" for n in range(spec.nodes)]
                          for r in range(spec.nics_per_node)]
            name = "leaf" if kind == "fat_tree" else "rail"
            ports = len(groups[0])  # the ports a leaf (rail) switch is built for
            if hosts:
                groups.append(hosts)
            for i, group in enumerate(groups):
                sw = f"{name}{i}"
                for x in group:
                    attach(x, sw)
                link = ps.nic if group is hosts else inter
                count = len(hosts) if group is hosts else ports
                # the leaf's uplinks carry its downlinks' bandwidth over the oversubscription,
                # spread evenly over the spines
                up = LinkSpec(name=f"{link.name}/{name}-spine", scope="inter",
                              bandwidth=count * link.bandwidth / (fab.oversubscription
                                                                  * fab.spines),
                              latency=fab.hop_latency, efficiency=link.efficiency,
                              source=f"{count} x {link.name} over oversubscription "
                                     f"{fab.oversubscription:g} and {fab.spines} spines",
                              per_hop=True)
                if len(groups) > 1:
                    for j in range(fab.spines):
                        if f"spine{j}" not in g:
                            g.add_node(f"spine{j}", kind="switch")
                        self._connect(sw, f"spine{j}", up, factor=deg.get(sw, 1.0))
        elif kind == "torus":
            self._dims = fab.dims
            link = replace(fab.link or inter, name=f"{(fab.link or inter).name}/torus",
                           latency=fab.hop_latency, per_hop=True)
            for n in range(spec.nodes):
                r = f"node{n}.router"
                g.add_node(r, kind="router", node=n)
                for k in range(spec.nics_per_node):
                    self._connect(f"node{n}.nic{k}", r, inter,
                                  factor=deg.get(f"node{n}.nic{k}", 1.0))
                for dim in range(3):
                    m = self._step(n, dim, +1)
                    if m != n and not g.has_edge(r, f"node{m}.router"):
                        self._connect(r, f"node{m}.router", link, factor=deg.get(r, 1.0))
            for j, h in enumerate(hosts):
                self._connect(h, f"node{j % spec.nodes}.router", ps.nic,
                              factor=deg.get(h, 1.0))
        else:  # graph
            for a, b, link in fab.edges:
                for x in (a, b):
                    if x not in g:
                        g.add_node(x, kind="switch")
                # a NIC's or host's factor applies to its links; a switch's to the links
                # the file lists it first in
                ports = [x for x in (a, b) if _is_port(x)]
                factor = math.prod(deg.get(x, 1.0) for x in ports) if ports else deg.get(a, 1.0)
                self._connect(a, b, link, factor=factor)
        if kind not in ("switch", "torus"):
            for x, nbrs in g.adj.items():
                if g.nodes[x].get("kind") in ("switch", "nic", "ps"):
                    self._fabric_adj[x] = [(y, g.edges[x, y]["rated"]) for y in nbrs
                                           if g.nodes[y].get("kind") in ("switch", "nic", "ps")]

    # ---- routes --------------------------------------------------------------------------------
    def route(self, a: str, b: str) -> tuple[Edge, ...]:
        if a == b:
            return ()
        na, nb = _node(a), _node(b)
        if na is not None and na == nb:
            return self._in_node(na, a.split(".", 1)[1], b.split(".", 1)[1])
        pa, pb = self._port(a), self._port(b)
        up = () if pa == a else self._in_node(na, a.split(".", 1)[1], pa.split(".", 1)[1])
        down = () if pb == b else self._in_node(nb, pb.split(".", 1)[1], b.split(".", 1)[1])
        return up + self._fabric(pa, pb) + down

    def _port(self, x: str) -> str:
        """The NIC (or host) where ``x`` meets the fabric."""
        if _is_port(x):
            return x
        attrs = self.graph.nodes[x]
        return f"node{attrs['node']}.nic{attrs['nic']}"

    def _in_node(self, n: int, a: str, b: str) -> tuple[Edge, ...]:
        key = (a, b)
        local = self._local.get(key)
        if local is None:
            if self.spec.node is None:
                local = self._flat(a, b)
            else:
                path = shortest(self._node_adj, a, b, self._forwards_local, spread=False)
                path = [x[:-1] if x.endswith(RELAY) else x for x in path]
                local = tuple(zip(path, path[1:]))
            self._local[key] = local
        p = f"node{n}."
        return tuple((p + u, p + v) for u, v in local)

    def _flat(self, a: str, b: str) -> tuple[Edge, ...]:
        """The flat node: device -> fabric -> device; to a NIC through the fabric, or over the
        device's own host link."""
        if a.startswith("nic") or b.startswith("nic"):
            dev, nic = (b, a) if a.startswith("nic") else (a, b)
            if self.spec.host_link is not None:
                path = [dev, nic]
            else:
                path = [dev, "fabric", nic]
            if a.startswith("nic"):
                path = path[::-1]
            return tuple(zip(path, path[1:]))
        return ((a, "fabric"), ("fabric", b))

    def _fabric(self, x: str, y: str) -> tuple[Edge, ...]:
        kind = self.spec.fabric.kind if self.spec.fabric is not None else "switch"
        if kind == "switch":
            return ((x, SWITCH), (SWITCH, y))
        if kind == "torus":
            return self._torus(x, y)
        path = shortest(self._fabric_adj, x, y, self._forwards_fabric, spread=True,
                        tables=self._tables)
        return tuple(zip(path, path[1:]))

    # ---- torus ---------------------------------------------------------------------------------
    def _coords(self, n: int) -> list[int]:
        x, y, _z = self._dims
        return [n % x, n // x % y, n // (x * y)]

    def _step(self, n: int, dim: int, sign: int) -> int:
        c = self._coords(n)
        c[dim] = (c[dim] + sign) % self._dims[dim]
        x, y, _z = self._dims
        return c[0] + x * (c[1] + y * c[2])

    def torus_hops(self, n: int, m: int) -> list[int]:
        """Dimension-ordered route from node n to node m: the nodes it passes, n first."""
        out = [n]
        cur = n
        for dim in range(3):
            size = self._dims[dim]
            delta = (self._coords(m)[dim] - self._coords(cur)[dim]) % size
            sign, steps = (1, delta) if delta <= size - delta else (-1, size - delta)
            for _ in range(steps):
                cur = self._step(cur, dim, sign)
                out.append(cur)
        return out

    def _torus(self, x: str, y: str) -> tuple[Edge, ...]:
        n = self._router_node(x)
        m = self._router_node(y)
        routers = [f"node{k}.router" for k in self.torus_hops(n, m)]
        path = [x, *routers, y]
        return tuple(zip(path, path[1:]))

    def _router_node(self, port: str) -> int:
        if port.startswith("ps"):
            return int(port[2:]) % self.spec.nodes
        return _node(port)


def _node(x: str) -> int | None:
    head = x.split(".", 1)[0]
    return int(head[4:]) if head.startswith("node") and "." in x else None


def _is_port(x: str) -> bool:
    return x.startswith("ps") or ".nic" in x


def bfs(adj: dict[str, list[tuple[str, float]]], src: str, forwards
        ) -> tuple[dict[str, int], dict[str, float]]:  # noqa: ANN001
    """Hops from ``src`` to every element it reaches, and the widest bottleneck over the
    fewest-hop paths (only elements that ``forwards`` accepts pass traffic on)."""
    dist, width = {src: 0}, {src: math.inf}
    frontier = [src]
    while frontier:
        nxt = []
        for u in frontier:
            if u != src and not forwards(u):
                continue
            for v, bw in adj.get(u, ()):
                d = dist.get(v)
                w = min(width[u], bw)
                if d is None:
                    dist[v], width[v] = dist[u] + 1, w
                    nxt.append(v)
                elif d == dist[u] + 1 and w > width[v]:
                    width[v] = w
        frontier = nxt
    return dist, width


def shortest(adj: dict[str, list[tuple[str, float]]], src: str, dst: str, forwards,  # noqa: ANN001
             spread: bool, tables: dict | None = None) -> list[str]:
    """The fewest-hop, widest path from ``src`` to ``dst`` (module docstring): walking back
    from ``dst``, the next hop among equal candidates by name, or by a hash of the pair
    (``spread``: ECMP)."""
    hit = tables.get(src) if tables is not None else None
    if hit is None:
        hit = bfs(adj, src, forwards)
        if tables is not None:
            tables[src] = hit
    dist, width = hit
    if dst not in dist:
        raise ValueError(f"no route from {src} to {dst}")
    need = width[dst]
    h = zlib.crc32(f"{src}>{dst}".encode())
    path = [dst]
    v = dst
    while v != src:
        cands = sorted({u for u, bw in adj.get(v, ()) if dist.get(u) == dist[v] - 1
                        and (u == src or forwards(u)) and min(width[u], bw) >= need})
        v = cands[h % len(cands)] if spread else cands[0]
        path.append(v)
    return path[::-1]

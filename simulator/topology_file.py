"""``cluster.node`` and ``cluster.fabric`` read strictly: a node's inside (a catalogue name from
``simulator/catalogue/nodes.yaml`` or the same keys inline) and the network between the nodes
(``switch``, ``fat_tree``, ``rails``, ``torus``, or a ``graph`` file in GraphML or node-link
JSON). Units in key names become SI here; every error names the file, the field and the value.
``docs/scenarios.md`` lists the keys; ``simulator/topology.py`` builds and routes what they say.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import networkx as nx

from simulator.errors import ScenarioError
from simulator.schema import Fields, did_you_mean, integer, list_of, number, string
from simulator.specs import FabricSpec, LinkSpec, NodeTopology
from simulator.units import GB
from simulator.yaml_input import join

NODE_KEYS = ("devices", "device", "sockets", "socket_link", "switches", "switch_link",
             "device_parents", "device_link", "nics", "nic_link", "nvlinks", "nvlink",
             "nvswitch", "source")
FABRICS = ("switch", "fat_tree", "rails", "torus", "graph")
FABRIC_KEYS = {"switch": ("kind",),
               "fat_tree": ("kind", "nodes_per_leaf", "spines", "oversubscription",
                            "hop_latency_us"),
               "rails": ("kind", "spines", "oversubscription", "hop_latency_us"),
               "torus": ("kind", "dims", "link", "hop_latency_us"),
               "graph": ("kind", "file")}
EDGE_KEYS = ("link", "bandwidth_GBps", "latency_us", "efficiency")
SWITCH_NAME = re.compile(r"pcie\d+")
SOCKET_NAME = re.compile(r"socket\d+")

Links = dict[str, LinkSpec]


def link_ref(f: Fields, key: str, links: Links, scope: str, read_link) -> LinkSpec:  # noqa: ANN001
    """A link field: a catalogue name, ``{base: NAME, ...}`` or an inline link mapping."""
    value = f.raw(key)
    if isinstance(value, str):
        if value not in links:
            raise f.error(key, f"unknown link{did_you_mean(value, links)} (catalogue has: "
                               f"{', '.join(sorted(links))})")
        link = links[value]
    else:
        sub = f.sub(key)
        if sub.has("base"):
            base = sub.get("base", string)
            if base not in links:
                raise sub.error("base", f"unknown link{did_you_mean(base, links)}")
            link = read_link(f"{base}*", sub, links[base])
        else:
            link = read_link("inline", sub)
    if link.scope != scope:
        raise f.error(key, f"is an {link.scope}-node link; this field needs an {scope}-node "
                      "link", value=value if isinstance(value, str) else link.name)
    return link


# ---- a node's inside ---------------------------------------------------------------------------

def read_node(name: str, f: Fields, links: Links, read_link) -> NodeTopology:  # noqa: ANN001
    """A node description (a ``nodes.yaml`` entry or ``cluster.node`` inline): its elements and
    links as (child, parent, link, width) edges, checked to form one connected node."""
    devices = f.get("devices", integer(1))
    sockets = f.get("sockets", integer(1), 1)
    edges: list[tuple[str, str, LinkSpec, int]] = []
    elements = {f"socket{s}" for s in range(sockets)}
    if sockets > 1:
        link = link_ref(f, "socket_link", links, "intra", read_link)
        # sockets joined each to each (two-socket boxes have one socket link)
        edges += [(f"socket{t}", f"socket{s}", link, 1)
                  for s in range(sockets) for t in range(s + 1, sockets)]
    elif f.has("socket_link"):
        raise f.error("socket_link", "needs sockets: 2 or more")
    if f.has("switches"):
        sf = f.sub("switches")
        parents: dict[str, str] = {}
        for sw in sf.data:
            if not isinstance(sw, str) or not SWITCH_NAME.fullmatch(sw):
                raise sf.error(sw, "a PCIe switch is named pcie0, pcie1, ...", value=sw)
            parents[sw] = sf.get(sw, string)
        sf.done(tuple(parents))
        elements |= set(parents)
        link = link_ref(f, "switch_link", links, "intra", read_link)
        for sw, parent in parents.items():
            if parent not in elements:
                raise sf.error(sw, f"no such socket or switch {parent!r} (sockets: socket0.."
                               f"socket{sockets - 1}; switches: {', '.join(sorted(parents))})",
                               value=parent)
            seen, up = {sw}, parent
            while up in parents:
                if up in seen:
                    raise sf.error(sw, "the switches' parents go round in a circle",
                                   value=parent)
                seen.add(up)
                up = parents[up]
            edges.append((sw, parent, link, 1))
    elif f.has("switch_link"):
        raise f.error("switch_link", "needs switches")
    if f.has("device_parents"):
        dp = f.get("device_parents", list_of(string))
        if len(dp) != devices:
            raise f.error("device_parents", f"must name one parent per device ({devices})",
                          value=list(dp))
        link = link_ref(f, "device_link", links, "intra", read_link)
        for i, parent in enumerate(dp):
            if parent not in elements:
                raise f.error("device_parents", f"device {i}: no such socket or switch "
                              f"{parent!r}", value=parent)
            edges.append((f"gpu{i}", parent, link, 1))
    elif f.has("device_link"):
        raise f.error("device_link", "needs device_parents")
    nics = 0
    if f.has("nics"):
        np_ = f.get("nics", list_of(string, 0))
        nics = len(np_)
        link = (link_ref(f, "nic_link", links, "intra", read_link) if f.has("nic_link")
                else next((e[2] for e in edges if e[0] == "gpu0"), None))
        if link is None and nics:
            raise f.error("nic_link", "is required without device_parents", has_value=False)
        for k, parent in enumerate(np_):
            if parent not in elements:
                raise f.error("nics", f"NIC {k}: no such socket or switch {parent!r}",
                              value=parent)
            edges.append((f"nic{k}", parent, link, 1))
    if f.has("nvlinks"):
        link = link_ref(f, "nvlink", links, "intra", read_link)
        raw = f.raw("nvlinks")
        if not isinstance(raw, list) or not raw:
            raise f.error("nvlinks", "must be a non-empty list of [device, device, links]")
        pairs = set()
        for j, item in enumerate(raw):
            path = join(join(f.path, "nvlinks"), j)
            ok = (isinstance(item, list) and len(item) == 3
                  and all(isinstance(x, int) and not isinstance(x, bool) for x in item))
            if not ok or not (0 <= item[0] < devices and 0 <= item[1] < devices
                              and item[0] != item[1] and item[2] >= 1):
                raise ScenarioError(f"must be [device, other device, links >= 1] with devices "
                                    f"0..{devices - 1}", path=path, value=item,
                                    has_value=True, line=f.line("nvlinks"))
            pair = tuple(sorted(item[:2]))
            if pair in pairs:
                raise ScenarioError("a second entry for this pair of devices", path=path,
                                    value=item, has_value=True, line=f.line("nvlinks"))
            pairs.add(pair)
            edges.append((f"gpu{pair[0]}", f"gpu{pair[1]}", link, item[2]))
    elif f.has("nvlink"):
        raise f.error("nvlink", "needs nvlinks")
    if f.has("nvswitch"):
        link = link_ref(f, "nvswitch", links, "intra", read_link)
        edges += [(f"gpu{i}", "nvswitch", link, 1) for i in range(devices)]
    source = f.get("source", string, "scenario")
    device = f.get("device", string, "")
    f.done(NODE_KEYS)
    g = nx.Graph()
    g.add_nodes_from(f"gpu{i}" for i in range(devices))
    g.add_nodes_from(f"nic{k}" for k in range(nics))
    g.add_edges_from((a, b) for a, b, _l, _w in edges)
    if not nx.is_connected(g):
        apart = sorted(min(nx.connected_components(g), key=len))
        raise ScenarioError(f"the node is not connected: {', '.join(apart)} reach(es) none of "
                            "the rest (give device_parents, nvlinks or nvswitch)",
                            path=f.path or name, value=name, has_value=True,
                            line=f.start_line)
    return NodeTopology(name=name, devices=devices, nics=nics, edges=tuple(edges),
                        source=source, device=device)


def node_field(f: Fields, nodes: dict[str, NodeTopology], links: Links,
               read_link) -> NodeTopology | None:  # noqa: ANN001
    """``cluster.node``: a catalogue node name or an inline node mapping; None when absent."""
    if not f.has("node"):
        return None
    value = f.raw("node")
    if isinstance(value, str):
        if value not in nodes:
            raise f.error("node", f"unknown node{did_you_mean(value, nodes)} (catalogue has: "
                          f"{', '.join(sorted(nodes))})")
        return nodes[value]
    return read_node("inline", f.sub("node"), links, read_link)


# ---- the network between nodes -----------------------------------------------------------------

def fabric_field(f: Fields, file: str, nodes: int, nics: int, hosts: int, links: Links,
                 read_link) -> FabricSpec | None:  # noqa: ANN001
    """``cluster.fabric``: None (one switch) when absent or ``switch``."""
    if not f.has("fabric"):
        return None
    value = f.raw("fabric")
    if isinstance(value, str):
        if value != "switch":
            raise f.error("fabric", f"a string here must be 'switch'; the other kinds "
                          f"({', '.join(FABRICS[1:])}) are mappings with their keys")
        return None
    ff = f.sub("fabric")
    kind = ff.get("kind", string)
    if kind not in FABRICS:
        raise ff.error("kind", f"must be one of {', '.join(FABRICS)}{did_you_mean(kind, FABRICS)}")
    hop = ff.get("hop_latency_us", number(positive=False, minimum=0.0), 0.0) if (
        "hop_latency_us" in FABRIC_KEYS[kind]) else 0.0
    spec: FabricSpec | None = None
    if kind == "switch":
        spec = None
    elif kind in ("fat_tree", "rails"):
        per_leaf = ff.get("nodes_per_leaf", integer(1)) if kind == "fat_tree" else 0
        spec = FabricSpec(kind=kind, nodes_per_leaf=per_leaf,
                          spines=ff.get("spines", integer(1), 1),
                          oversubscription=ff.get("oversubscription", number(), 1.0),
                          hop_latency=hop)
    elif kind == "torus":
        dims = ff.get("dims", list_of(integer(1)))
        if len(dims) != 3 or math.prod(dims) != nodes:
            raise ff.error("dims", f"must be [X, Y, Z] with X x Y x Z = the cluster's {nodes} "
                           "nodes", value=list(dims))
        link = link_ref(ff, "link", links, "inter", read_link) if ff.has("link") else None
        spec = FabricSpec(kind=kind, dims=tuple(dims), link=link, hop_latency=hop)
    else:
        name = ff.get("file", string)
        path = Path(name)
        if not path.is_absolute() and file and not file.startswith("<"):
            path = Path(file).parent / path
        if not path.is_file():
            raise ff.error("file", f"no such graph file ({path})")
        spec = FabricSpec(kind=kind, edges=read_graph(path, nodes, nics, hosts, links),
                          file=str(path))
    ff.done(FABRIC_KEYS[kind])
    return spec


def read_graph(path: Path, nodes: int, nics: int, hosts: int, links: Links
               ) -> tuple[tuple[str, str, LinkSpec], ...]:
    """A fabric graph file: GraphML (``.graphml``) or node-link JSON (``.json``: ``nodes``
    with ``id``, ``links`` or ``edges`` with ``source``, ``target`` and the edge keys). Nodes are
    the cluster's NICs (``node{n}.nic{k}``), its parameter-server hosts (``ps{j}``) and
    switches (any other name not starting with ``node`` or ``ps``); each edge is a full-duplex
    link given by ``link`` (an inter-node catalogue link) or ``bandwidth_GBps`` (with
    ``latency_us`` and ``efficiency``, defaults 0 and 1). Between two switches an edge's
    latency is one hop's: its ``latency_us`` (default 0)."""
    file = str(path)

    def bad(msg: str, where: str = "", value: Any = None, has_value: bool = False) -> ScenarioError:
        return ScenarioError(msg, file=file, path=where or "<graph>", value=value,
                             has_value=has_value)

    try:
        if path.suffix.lower() == ".graphml":
            g = nx.read_graphml(path)
        elif path.suffix.lower() == ".json":
            g = _node_link(json.loads(path.read_text()), bad)
        else:
            raise bad("a graph file ends in .graphml or .json", value=path.suffix,
                      has_value=True)
    except ScenarioError:
        raise
    except Exception as e:  # the parser's own message, on one line
        raise bad(f"not a readable graph: {' '.join(str(e).split())}") from None
    if g.is_multigraph():
        raise bad("two edges join the same pair: give one edge with their summed bandwidth")
    ports = {f"node{n}.nic{k}" for n in range(nodes) for k in range(nics)}
    ports |= {f"ps{j}" for j in range(hosts)}
    for x in g.nodes:
        name = str(x)
        if name.startswith(("node", "ps")) and name not in ports:
            raise bad("no such NIC or parameter-server host in the cluster (NICs are "
                      f"node0.nic0 .. node{nodes - 1}.nic{nics - 1}"
                      + (f", hosts ps0 .. ps{hosts - 1})" if hosts else ")"),
                      where=f"nodes[{name}]", value=name, has_value=True)
    missing = sorted(ports - {str(x) for x in g.nodes})
    if missing:
        raise bad(f"the graph lacks {len(missing)} of the cluster's NICs and hosts, e.g. "
                  f"{missing[0]}", where="nodes", value=missing[0], has_value=True)
    shared: dict[tuple, LinkSpec] = {}
    out = []
    for a, b, attrs in g.edges(data=True):
        a, b = str(a), str(b)
        where = f"edges[{a}-{b}]"
        if a == b:
            raise bad("an edge from an element to itself", where=where, value=a,
                      has_value=True)
        ef = Fields(dict(attrs), where)
        trunk = not (a in ports or b in ports)
        if ef.has("link") == ef.has("bandwidth_GBps"):
            raise bad("give exactly one of link (a catalogue name) or bandwidth_GBps",
                      where=where, value=dict(attrs), has_value=True)
        try:
            latency = ef.get("latency_us", number(positive=False, minimum=0.0), None)
            if ef.has("link"):
                name = ef.get("link", string)
                if name not in links or links[name].scope != "inter":
                    inter = sorted(k for k, v in links.items() if v.scope == "inter")
                    raise ef.error("link", f"unknown inter-node link{did_you_mean(name, inter)}"
                                   f" (catalogue has: {', '.join(inter)})")
                base = links[name]
                if ef.has("efficiency"):
                    raise ef.error("efficiency", "comes with the named link")
                key = (name, latency, trunk)
                link = base if latency is None and not trunk else LinkSpec(
                    name=f"{name}/hop" if trunk else f"{name}*", scope="inter",
                    bandwidth=base.bandwidth,
                    latency=(latency or 0.0) if trunk else latency,
                    efficiency=base.efficiency, source=base.source, per_hop=trunk,
                    eager_limit=base.eager_limit)
            else:
                bw = ef.get("bandwidth_GBps", number())
                eff = ef.get("efficiency", number(maximum=1.0), 1.0)
                key = (bw, latency, eff, trunk)
                link = LinkSpec(name=f"{bw / GB:g}GBps", scope="inter", bandwidth=bw,
                                latency=latency or 0.0, efficiency=eff,
                                source=f"graph file {path.name}", per_hop=trunk)
            ef.done(EDGE_KEYS)
        except ScenarioError as e:
            raise e.with_file(file) from None
        out.append((a, b, shared.setdefault(key, link)))
    g2 = nx.Graph(list((a, b) for a, b, _ in out))
    g2.add_nodes_from(ports)
    first = min(ports)
    apart = sorted(ports - nx.node_connected_component(g2, first))
    if apart:
        raise bad(f"the graph does not join every NIC and host: {apart[0]} cannot reach "
                  f"{first}", where=f"nodes[{apart[0]}]", value=apart[0], has_value=True)
    return tuple(out)


def _node_link(data: Any, bad) -> nx.Graph:  # noqa: ANN001
    """A node-link JSON document (networkx's ``node_link_data``) as a graph."""
    if not isinstance(data, dict) or "nodes" not in data:
        raise bad("a node-link JSON document is a mapping with nodes and links (or edges)")
    key = "links" if "links" in data else "edges"
    g = nx.MultiGraph() if data.get("multigraph") else nx.Graph()
    for i, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or "id" not in node:
            raise bad("each node is a mapping with an id", where=f"nodes[{i}]", value=node,
                      has_value=True)
        g.add_node(node["id"])
    for i, edge in enumerate(data.get(key, ())):
        if not isinstance(edge, dict) or "source" not in edge or "target" not in edge:
            raise bad("each edge is a mapping with source and target", where=f"{key}[{i}]",
                      value=edge, has_value=True)
        a, b = edge["source"], edge["target"]
        if g.has_edge(a, b) and not g.is_multigraph():
            raise bad("two edges join the same pair: give one edge with their summed "
                      "bandwidth", where=f"{key}[{i}]", value=f"{a}-{b}", has_value=True)
        g.add_edge(a, b, **{k: v for k, v in edge.items() if k not in ("source", "target",
                                                                        "key")})
    return g


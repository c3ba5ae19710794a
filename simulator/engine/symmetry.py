"""Ranks whose timing cannot differ, simulated once: the plan's mirrors.

A plan may name rank permutations (``Plan.mirrors``) under which it is unchanged: every rank's
program is its image's with peers and group members mapped (a tensor group's ranks are images of
each other: the same ops on other shards; so are the data-parallel replicas of a stage, and the
nodes of a data-parallel ring). When nothing in the cluster tells the images apart (no
compute jitter, measured spread, shared CPU cores, parameter server or work loop), the engine
runs one process per orbit of ranks (its representative, the lowest rank) and lets each
simulated transfer stand for its images:

* a point-to-point message, and a flow of a collective, stand for their images, which start at
  the same instant by symmetry (the images of a flow in a ring over the tensor group are the
  ring's other flows; those of a flow over a data-parallel group are the same flow of the other
  tensor ranks' groups): on each edge of the simulated flow's route the flow counts as many
  times as the distinct image routes that cross that edge (a NIC shared by the images carries
  all of them; a GPU's own port carries one), and the bytes of every image route are counted
  on its own edges. A phase whose flows' images are not its own flows (a binomial tree over the
  rotated tensor group) is simulated flow by flow.

Stragglers and degraded links cost what they touch where every rank waits for every other at
each collective (no point-to-point messages, every group mapped onto itself: data parallel):
ranks then differ only until the next collective, so a straggler is simulated beside its
orbit's representative (the orbit's least rank that is not a straggler), and the breakdown
weighs each simulated rank by the ranks it stands for; a collective phase's image flows over a
degraded edge, and those sharing an edge with them, are simulated one by one on their own routes,
while one of each orbit's other images stands for the rest on edges of their own (``("~", edge)``
at the rated capacity), which nothing simulated apart touches. Elsewhere (pipelines, tensor
groups mapped onto each other) they turn the mirrors off.

The permutations are kept as the plan's generators, never multiplied out: orbits of ranks come
from a union-find over the generators (linear in ranks), the images of a pair of ranks and of a
topology edge from a search over the generators (linear in the orbit's size, each orbit once).
A generator that is not an automorphism of the topology (NICs shared unevenly by the ranks it
moves) is left out; the others still apply.
In a described node (``cluster.node``) only whole-node shifts are kept (the node's switches,
sockets and NICs move with it; routes inside a node are the same in every node); on a fabric
other than the one core switch (ECMP hashes, dimension-ordered routes) no mirror is used.

This is exact where the symmetry holds: the per-rank path gives the same times
(``tests/simulator/test_symmetry.py``). Not simulated: the images' own trace spans and timeline
rows (the representatives stand for them; per-device utilisation is copied from them).
"""

from __future__ import annotations

from collections.abc import Callable

from simulator.cluster import Cluster
from simulator.plan import KERNEL_OPS, Collective, ImageOps, Plan, WorkLoop

KERNEL_TYPES = frozenset(KERNEL_OPS)

Edge = tuple[str, str]


class Symmetry:
    def __init__(self, plan: Plan, gens: list[tuple[int, ...]],
                 maps: list[dict[str, str]], touched: frozenset[int] = frozenset(),
                 degraded: dict[Edge, float] | None = None):
        self.plan = plan
        self.gens = gens  # generators of the mirrors' group (permutations of the ranks)
        self.maps = maps  # each generator on the topology's nodes
        # ranks something tells apart (stragglers) stand for themselves; each orbit's
        # representative is its least rank that is not one of them
        self.rep = orbits(gens, len(plan.ranks))
        if touched:
            best: dict[int, int] = {}
            for r in sorted(self.rep):
                if r not in touched:
                    best.setdefault(self.rep[r], r)
            self.rep = {r: r if r in touched else best[s] for r, s in self.rep.items()}
        self.reps = {r for r, s in self.rep.items() if r == s}
        # degraded edges -> their rated capacity: flows over them (and flows sharing edges with
        # those) are simulated on their own, the rest stand for their images on edges of
        # their own (``orbit_pairs``)
        self.degraded = degraded or {}
        self._invariant: dict[str, bool] = {}
        self._canon: dict[Edge, tuple[Edge, int]] = {}

    @staticmethod
    def of(plan: Plan, cluster: Cluster, cpus: object | None) -> Symmetry | None:
        """The plan's symmetry, or None where it cannot be used (module docstring)."""
        if not plan.mirrors:
            return None
        spec = cluster.spec
        if (spec.compute_jitter or cpus is not None or spec.measured.spread
                or plan.mode != "sync" or any(r.role != "worker" for r in plan.ranks)):
            return None
        # a straggler or a degraded link: kept where every rank waits for every other at each
        # collective (no point-to-point messages, every group mapped onto itself), so ranks
        # differ only until the next collective: the stragglers are simulated on their own,
        # so are the flows over degraded links
        partial = bool(spec.stragglers or spec.degraded_links)
        touched = frozenset(r.rank for r in plan.ranks if r.device in cluster.slowdown)
        degraded = {e: cluster.rated(e) for e in cluster.graph.edges
                    if cluster.bandwidth(e) != cluster.rated(e)}
        if not cluster.mirrorable:  # ECMP and torus routes tell the nodes apart
            return None
        n = len(plan.ranks)
        gens = [tuple(m) for m in plan.mirrors]
        if any(len(g) != n or sorted(g) != list(range(n)) for g in gens):
            return None
        kept = [(g, m) for g in gens if (m := topology_map(plan, cluster, g)) is not None]
        if not kept:
            return None
        sym = Symmetry(plan, [g for g, _ in kept], [m for _, m in kept], touched, degraded)
        # every group is mapped onto itself or, in its order, onto another group: the images
        # of its collectives are collectives the plan has
        ordered = set(plan.groups.values())
        for name, g in plan.groups.items():
            if not all(tuple(p[r] for r in g) in ordered or {p[r] for r in g} == set(g)
                       for p in sym.gens):
                return None
            if partial and len(g) > 1 and not sym.invariant(name):
                return None
        # the representatives only talk to representatives, and a collective over a group the
        # mirrors map onto itself is a ring (its flows are each other's images; a binomial
        # tree's are not)
        seen_ops: set[int] = set()
        for r in sym.reps:
            ops = plan.ranks[r].ops
            names = None
            if isinstance(ops, ImageOps):
                names, ops = ops, ops.source
            elif id(ops) in seen_ops:
                continue
            else:
                seen_ops.add(id(ops))
            for op in ops:
                if type(op) in KERNEL_TYPES:
                    continue
                if names is not None:
                    op = names.image(op)
                if isinstance(op, WorkLoop):
                    return None
                peer = getattr(op, "peer", None)
                if peer is not None and (partial or peer not in sym.reps):
                    return None
                if isinstance(op, Collective) and len(plan.groups[op.group]) > 1 and (
                        op.collective == "broadcast" or op.algorithm not in RING_LIKE
                        and op.collective == "allreduce") and sym.invariant(op.group):
                    return None
        return sym

    def members(self, group: str) -> int:
        """How many of a group's ranks are simulated (its rendezvous size)."""
        return sum(1 for r in self.plan.groups[group] if r in self.reps)

    def invariant(self, group: str) -> bool:
        hit = self._invariant.get(group)
        if hit is None:
            members = set(self.plan.groups[group])
            hit = all({p[r] for r in members} == members for p in self.gens)
            self._invariant[group] = hit
        return hit

    def orbit_pairs(self, group: str, pairs: list[tuple[int, int]],
                    mirrored: Callable[[int, int], tuple],
                    route_of: Callable[[int, int], tuple[Edge, ...]] | None = None
                    ) -> list[tuple[tuple[int, int], tuple | None]]:
        """A collective phase's flows (rank pairs) to simulate: one per orbit, standing for its
        images, which are flows of this phase (a ring over a group the mirrors rotate) or of
        the image groups' phases (a group they map elsewhere)."""
        if self.degraded:
            return self._split_pairs(pairs, route_of)
        out: list[tuple[tuple[int, int], tuple | None]] = []
        covered: set[tuple[int, int]] = set()
        for pair in pairs:
            if pair in covered:
                continue
            covered.update(self.images(*pair))
            out.append((pair, mirrored(*pair)))
        return out

    def _split_pairs(self, pairs: list[tuple[int, int]],
                     route_of: Callable[[int, int], tuple[Edge, ...]]
                     ) -> list[tuple[tuple[int, int], tuple | None]]:
        """``orbit_pairs`` with degraded links: the phase's image flows over a degraded edge,
        and those sharing an edge with them (to a fixed point), are simulated one by one on
        their own routes; of each orbit's other images one stands for them on edges of their
        own (``weights`` with ``apart``), so it shares nothing with those simulated apart."""
        orbits_: list[list[tuple[int, int]]] = []
        covered: set[tuple[int, int]] = set()
        for pair in pairs:
            if pair not in covered:
                images = self.images(*pair)
                covered.update(images)
                orbits_.append(images)
        routes = {q: route_of(*q) for images in orbits_ for q in images}
        users: dict[Edge, list[tuple[int, int]]] = {}
        for q, route in routes.items():
            for e in route:
                users.setdefault(e, []).append(q)
        apart = {q for q, route in routes.items() if any(e in self.degraded for e in route)}
        stack = list(apart)
        while stack:
            for e in routes[stack.pop()]:
                for q in users[e]:
                    if q not in apart:
                        apart.add(q)
                        stack.append(q)
        out: list[tuple[tuple[int, int], tuple | None]] = []
        for images in orbits_:
            rest = [q for q in images if q not in apart]
            if rest:
                out.append((rest[0], self.weights(*rest[0], route_of, apart)))
            out += [(q, None) for q in images if q in apart]
        return out

    def images(self, a: int, b: int) -> list[tuple[int, int]]:
        """The distinct images of the rank pair (a, b) under the group, itself first."""
        return _orbit((a, b), [lambda x, g=g: (g[x[0]], g[x[1]]) for g in self.gens])

    def canonical(self, edge: Edge) -> tuple[Edge, int]:
        """The representative of an edge's orbit (the least of its images), and the orbit's
        size: every edge of an orbit carries the same load, one capacity stands for them."""
        hit = self._canon.get(edge)
        if hit is None:
            orbit = _orbit(edge, [lambda e, m=m: (m[e[0]], m[e[1]]) for m in self.maps])
            hit = (min(orbit), len(orbit))
            for e in orbit:  # the whole orbit at once: each is searched for once
                self._canon[e] = hit
        return hit

    def weights(self, a: int, b: int, route_of: Callable[[int, int], tuple[Edge, ...]],
                apart: set[tuple[int, int]] | None = None
                ) -> tuple[tuple[Edge, ...], dict[Edge, float], list[Edge]]:
        """A transfer from rank a to rank b standing for its images: its route over the
        orbits' representative edges, the load it puts on each (image routes crossing the
        orbit, over the orbit's size), and every image route's edges (for the bytes)."""
        if apart is None:
            routes = [route_of(x, y) for x, y in self.images(a, b)]
            load: dict[Edge, float] = {}
            for route in routes:
                for e in route:
                    c, size = self.canonical(e)
                    load[c] = load.get(c, 0.0) + 1.0 / size
        else:
            # the images not simulated apart, on edges of their own: each orbit of edges as
            # one ``("~", representative)`` at its rated capacity, loaded by these images'
            # crossings over the orbit's edges they cross
            routes = [route_of(x, y) for x, y in self.images(a, b) if (x, y) not in apart]
            crossings: dict[Edge, int] = {}
            edges: dict[Edge, set] = {}
            for route in routes:
                for e in route:
                    c = ("~", self.canonical(e)[0])
                    crossings[c] = crossings.get(c, 0) + 1
                    edges.setdefault(c, set()).add(e)
            load = {c: n / len(edges[c]) for c, n in crossings.items()}
        key = (lambda e: self.canonical(e)[0]) if apart is None else (
            lambda e: ("~", self.canonical(e)[0]))
        canon = tuple(dict.fromkeys(key(e) for e in routes[0]))
        for r in routes[1:]:  # images crossing orbits the flow itself does not
            canon += tuple(c for c in dict.fromkeys(key(e) for e in r) if c not in canon)
        return canon, load, [e for r in routes for e in r]


RING_LIKE = ("ring", "mpi", "hierarchical")  # all-reduces whose phases are rings


def orbits(gens: list[tuple[int, ...]], n: int) -> dict[int, int]:
    """Each of n ranks -> the least rank of its orbit under the generators (union-find)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in gens:
        for r in range(n):
            a, b = find(r), find(g[r])
            if a != b:
                parent[max(a, b)] = min(a, b)  # the root is always the orbit's least rank
    return {r: find(r) for r in range(n)}


def _orbit(x, moves: list[Callable]) -> list:  # noqa: ANN001
    """x and its distinct images under the group the moves generate, x first."""
    out, seen = [x], {x}
    i = 0
    while i < len(out):
        for move in moves:
            y = move(out[i])
            if y not in seen:
                seen.add(y)
                out.append(y)
        i += 1
    return out


def topology_map(plan: Plan, cluster: Cluster, perm: tuple[int, ...]) -> dict[str, str] | None:
    """A rank permutation as a map of the topology's nodes (devices as their ranks move, each
    node's fabric and NICs along with its devices, the rest fixed), when it is an automorphism
    of the topology: every edge onto an edge of the same bandwidth; else None."""
    g = cluster.graph
    m = {n: n for n in g.nodes}
    for r, prog in enumerate(plan.ranks):
        m[prog.device] = plan.ranks[perm[r]].device
    if cluster.spec.node is not None:
        return _node_shift(cluster, m)
    placed: dict[str, str] = {}
    for d in [n for n, a in g.nodes(data=True) if a.get("kind") == "device"]:
        for x, y in ((f"node{cluster.node_of(d)}.fabric", f"node{cluster.node_of(m[d])}.fabric"),
                     (cluster.nic_of(d), cluster.nic_of(m[d]))):
            if placed.setdefault(x, y) != y:
                return None
            m[x] = y
    if len(set(m.values())) != len(m):
        return None
    for u, v in g.edges:  # (rated capacities: degraded links are split off, orbit_pairs)
        if not g.has_edge(m[u], m[v]) or cluster.rated((m[u], m[v])) != cluster.rated((u, v)):
            return None
    return m


def _node_shift(cluster: Cluster, m: dict[str, str]) -> dict[str, str] | None:
    """In a described node (``simulator/topology.py``) only whole nodes move: a permutation
    that takes every device to the same device of another node takes the node's switches,
    sockets and NICs along (routes inside a node are the same in every node); one that moves
    devices inside a node is left out. Then it must be an automorphism, links and all."""
    g = cluster.graph
    shift: dict[int, int] = {}
    for d, a in g.nodes(data=True):
        if a.get("kind") != "device":
            continue
        src, dst = d.split(".", 1), m[d].split(".", 1)
        if src[1] != dst[1] or shift.setdefault(a["node"], g.nodes[m[d]]["node"]) != \
                g.nodes[m[d]]["node"]:
            return None
    for x, a in g.nodes(data=True):
        n = a.get("node")
        if n is not None and a.get("kind") != "device":
            m[x] = f"node{shift.get(n, n)}.{x.split('.', 1)[1]}"
    if len(set(m.values())) != len(m):
        return None
    for u, v in g.edges:
        e = (m[u], m[v])
        if (not g.has_edge(*e) or cluster.rated(e) != cluster.rated((u, v))
                or g.edges[e]["link"] != g.edges[u, v]["link"]):
            return None
    return m

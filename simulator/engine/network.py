"""Links and NICs as shared resources: a fluid (flow-level) network model in SimPy.

What is modelled: every transfer is a *flow* over a route of directed edges (full-duplex ports).
Concurrent flows share each edge's bandwidth max-min fairly (progressive filling, Bertsekas &
Gallager, *Data Networks*, 6.5.2): a flow's rate is its fair share at its most contended edge.
Rates are recomputed whenever a flow starts or ends. Each transfer first pays its latency, then
moves its bytes at its (changing) rate.

What is ignored: packetisation, congestion control dynamics, switch buffers, the per-message
protocol overheads beyond the latency term, and head-of-line blocking.

Units: bytes, bytes/s, seconds.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field

import simpy

Edge = tuple[str, str]
EPS = 1e-9  # relative: flows this close to done finish together (float noise)
RATE_LOG = 1_000_000  # link-rate samples a trace keeps at most (the first ones)


@dataclass(eq=False)
class Flow:
    route: tuple[Edge, ...]
    remaining: float
    done: simpy.Event
    rate: float = 0.0
    nbytes: float = 0.0
    weight: int = 1  # identical flows this one stands for (symmetry); all share the edges
    tag: str = ""
    # a flow standing for mirror images of itself (``symmetry``): how many of them cross each
    # edge of its route, and the edges of every image route (whose bytes it carries)
    weights: dict[Edge, float] | None = None
    stat_edges: list[Edge] | None = None

    def on(self, edge: Edge) -> float:
        """How many flows this one counts for on ``edge``."""
        return self.weights[edge] if self.weights is not None else self.weight


@dataclass
class EdgeStats:
    bytes: float = 0.0


@dataclass
class Network:
    env: simpy.Environment
    capacity: dict[Edge, float]
    record_rates: bool = False
    # in the order they started (a dict, not a set: a set of objects iterates by address, and
    # flows finishing at one instant would succeed in an order that changes from run to run)
    flows: dict[Flow, None] = field(default_factory=dict)
    rate_log: list[tuple[float, Edge, float]] = field(default_factory=list)
    _last: float = 0.0
    _generation: int = 0
    _pending: bool = False
    _bytes: dict[Edge, float] = field(default_factory=lambda: defaultdict(float))
    # mirrored flows' bytes by the image edges they stand for, spread over them when read
    # (a flow over a data-parallel ring of thousands of nodes stands for thousands of routes)
    _image_bytes: dict[int, list] = field(default_factory=dict)

    @property
    def stats(self) -> dict[Edge, EdgeStats]:
        """Bytes carried per edge so far."""
        out = defaultdict(float, self._bytes)
        for edges, nbytes in self._image_bytes.values():
            for e in edges:
                out[e] += nbytes
        return {e: EdgeStats(b) for e, b in out.items()}

    def transfer(self, route: tuple[Edge, ...], nbytes: float, latency: float = 0.0,
                 tag: str = "", weight: int = 1,
                 mirrored: tuple | None = None) -> simpy.Event:
        """An event that fires when ``nbytes`` have crossed ``route`` (after ``latency``);
        ``mirrored``: a flow standing for its mirror images (``symmetry.Symmetry.weights``):
        the route it takes instead (the edges' orbit representatives), its load on each, and
        the images' own edges."""
        done = self.env.event()
        if latency > 0:
            start = self.env.timeout(latency)
            start.callbacks.append(lambda _e: self._start(route, nbytes, done, tag, weight,
                                                          mirrored))
        else:
            self._start(route, nbytes, done, tag, weight, mirrored)
        return done

    def active(self, edge: Edge) -> int:
        """How many flows (weights counted) cross ``edge`` now."""
        return sum(f.on(edge) for f in self.flows if edge in f.route)

    def hold(self, edge: Edge, amount: float, seconds: float) -> None:
        """Take ``amount`` of ``edge``'s capacity away for ``seconds`` (never below ``amount``
        left: a hold that would leave less is not taken)."""
        if seconds <= 0 or self.capacity[edge] < 2 * amount:
            return
        self._advance()
        self.capacity[edge] -= amount
        self._reschedule()

        def give_back(_event: simpy.Event) -> None:
            self._advance()
            self.capacity[edge] += amount
            self._reschedule()

        self.env.timeout(seconds).callbacks.append(give_back)

    def _start(self, route: tuple[Edge, ...], nbytes: float, done: simpy.Event, tag: str,
               weight: int, mirrored: tuple | None = None) -> None:
        if nbytes <= 0 or not route:
            done.succeed()
            return
        self._advance()
        weights, images = None, None
        if mirrored is not None:
            route, weights, images = mirrored
        self.flows[Flow(route=route, remaining=nbytes, done=done, nbytes=nbytes, tag=tag,
                        weight=weight, weights=weights, stat_edges=images)] = None
        if not self._pending:  # flows starting at one instant share one fair-share pass
            self._pending = True
            self.env.timeout(0).callbacks.append(self._flush)

    def _flush(self, _event: simpy.Event) -> None:
        self._pending = False
        self._advance()
        self._reschedule()

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        self._last = now

    def _reschedule(self) -> None:
        self._fair_share()
        self._generation += 1
        if not self.flows:
            return
        gen = self._generation
        eta = {f: max(f.remaining, 0.0) / f.rate for f in self.flows}
        dt = min(eta.values())
        # flows due within float noise of the first one finish with it (no zero-length timers)
        due = [f for f, t in eta.items() if t <= dt * (1 + EPS) + 1e-15]
        ev = self.env.timeout(dt)
        ev.callbacks.append(lambda _e: self._on_timer(gen, due))

    def _on_timer(self, gen: int, due: list[Flow]) -> None:
        if gen != self._generation:
            return  # superseded by a later start/finish
        self._advance()
        for f in self.flows:
            if f.remaining <= EPS * f.nbytes:
                due.append(f)
        for f in dict.fromkeys(due):
            self.flows.pop(f, None)
            self._carried(f.route, f.nbytes, f.weight, f.stat_edges)
            f.done.succeed()
        self._reschedule()

    def _carried(self, route: tuple[Edge, ...], nbytes: float, weight: int,
                 images: list[Edge] | None) -> None:
        if images is not None:
            hit = self._image_bytes.get(id(images))
            if hit is None:
                hit = self._image_bytes[id(images)] = [images, 0.0]
            hit[1] += nbytes
        else:
            for e in route:
                self._bytes[e] += nbytes * weight

    def alone(self, route: tuple[Edge, ...], mirrored: tuple | None = None) -> float:
        """The rate of a flow over ``route`` with no other flow on its edges (what
        ``transfer`` gives it then, to the last digit: the tightest edge's share). For a flow
        known to meet nothing (``fold``), whose bytes its caller counts (``carried``)."""
        if mirrored is None:
            return min(self.capacity[e] for e in route)
        route, weights, _images = mirrored
        return min(self.capacity[e] / weights[e] for e in route if weights[e] > 1e-9)

    def carried(self, route: tuple[Edge, ...], nbytes: float,
                mirrored: tuple | None = None) -> None:
        """Count ``nbytes`` as carried over ``route`` (or the images ``mirrored`` stands for)."""
        if mirrored is None:
            self._carried(route, nbytes, 1, None)
        else:
            self._carried(mirrored[0], nbytes, 1, mirrored[2])

    def _fair_share(self) -> None:
        """Max-min fair rates by progressive filling, the tightest edge first (a heap)."""
        users: dict[Edge, list[Flow]] = defaultdict(list)
        for f in self.flows:
            for e in f.route:
                users[e].append(f)
        left = {e: self.capacity[e] for e in users}
        count = {e: sum(f.on(e) for f in fs) for e, fs in users.items()}
        heap = [(left[e] / count[e], e) for e in users]
        heapq.heapify(heap)
        frozen: set[int] = set()
        while heap:
            share, edge = heapq.heappop(heap)
            if count[edge] <= 1e-9:  # fractional mirror loads: float remainders are empty
                continue
            current = left[edge] / count[edge]
            if current > share * (1 + 1e-12):  # stale entry: the edge got looser
                heapq.heappush(heap, (current, edge))
                continue
            share = max(current, 0.0)
            touched = set()
            for f in users[edge]:
                if id(f) in frozen:
                    continue
                frozen.add(id(f))
                f.rate = share
                ws = f.weights
                for e in f.route:
                    w = f.weight if ws is None else ws[e]
                    left[e] -= share * w
                    count[e] -= w
                    touched.add(e)
            for e in touched:
                if count[e] > 1e-9 and e != edge:
                    heapq.heappush(heap, (left[e] / count[e], e))
        if self.record_rates and len(self.rate_log) < RATE_LOG:
            now = self.env.now
            for e, fs in users.items():
                self.rate_log.append((now, e, sum(f.rate * f.on(e) for f in fs)))
            for e in getattr(self, "_prev_edges", set()) - set(users):
                self.rate_log.append((now, e, 0.0))
            self._prev_edges = set(users)

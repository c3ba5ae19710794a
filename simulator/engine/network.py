"""Links and NICs as shared resources: a fluid (flow-level) network model in SimPy.

What is modelled: every transfer is a *flow* over a route of directed edges (full-duplex ports).
Concurrent flows share each edge's bandwidth max-min fairly (progressive filling, Bertsekas &
Gallager, *Data Networks*, 6.5.2): a flow's rate is its fair share at its most contended edge.
Rates are recomputed whenever a flow starts or ends, for the flows that share edges with it
directly or through other flows (its connected component: max-min shares of flows that share
no edge, even indirectly, do not depend on each other, so the others keep their rates and finish
times). Each transfer first pays its latency, then moves its bytes at its (changing) rate.

What is ignored: packetisation, congestion control dynamics, switch buffers, the per-message
protocol overheads beyond the latency term, and head-of-line blocking.

Units: bytes, bytes/s, seconds.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field

import simpy

Edge = tuple[str, str]
EPS = 1e-9  # relative: flows this close to done finish together (float noise)
RATE_LOG = 1_000_000  # link-rate samples a trace keeps at most (the first ones)


@dataclass(eq=False)
class Flow:
    route: tuple[Edge, ...]
    remaining: float  # bytes left at time t0
    done: simpy.Event
    rate: float = 0.0
    nbytes: float = 0.0
    weight: int = 1  # identical flows this one stands for (symmetry); all share the edges
    tag: str = ""
    # a flow standing for mirror images of itself (``symmetry``): how many of them cross each
    # edge of its route, and the edges of every image route (whose bytes it carries)
    weights: dict[Edge, float] | None = None
    stat_edges: list[Edge] | None = None
    t0: float = 0.0  # when ``remaining`` was last brought up to date
    finish: float = math.inf  # when it ends at its current rate
    seq: int = 0  # start order: flows ending at one instant end in it (deterministic)
    version: int = 0  # its finish-time entries older than this are stale

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
    # the flows on each edge now, in start order
    users: dict[Edge, dict[Flow, None]] = field(default_factory=dict)
    _heap: list = field(default_factory=list)  # (finish, seq, version, flow)
    _timer: int = 0  # the token of the one finish timer that counts
    _timer_at: float = math.inf
    _pending: bool = False
    # edges whose flows changed at this instant (a dict: iterated in a fixed order, so that
    # float sums run in the same order from run to run)
    _changed: dict = field(default_factory=dict)
    _seq: itertools.count = field(default_factory=itertools.count)
    _bytes: dict[Edge, float] = field(default_factory=lambda: defaultdict(float))
    # mirrored flows' bytes by the image edges they stand for, spread over them when read
    # (a flow over a data-parallel ring of thousands of nodes stands for thousands of routes)
    _image_bytes: dict[int, list] = field(default_factory=dict)
    # edges watched by folded runs (``fold``): a flow starting on one succeeds their events
    _watch: dict[Edge, dict[simpy.Event, None]] = field(default_factory=dict)

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
        return sum(f.on(edge) for f in self.users.get(edge, ()))

    def hold(self, edge: Edge, amount: float, seconds: float) -> None:
        """Take ``amount`` of ``edge``'s capacity away for ``seconds`` (never below ``amount``
        left: a hold that would leave less is not taken)."""
        if seconds <= 0 or self.capacity[edge] < 2 * amount:
            return
        self.capacity[edge] -= amount
        self._share({edge: None})

        def give_back(_event: simpy.Event) -> None:
            self.capacity[edge] += amount
            self._share({edge: None})

        self.env.timeout(seconds).callbacks.append(give_back)

    def _start(self, route: tuple[Edge, ...], nbytes: float, done: simpy.Event, tag: str,
               weight: int, mirrored: tuple | None = None) -> None:
        if nbytes <= 0 or not route:
            done.succeed()
            return
        weights, images = None, None
        if mirrored is not None:
            route, weights, images = mirrored
        f = Flow(route=route, remaining=nbytes, done=done, nbytes=nbytes, tag=tag,
                 weight=weight, weights=weights, stat_edges=images, t0=self.env.now,
                 seq=next(self._seq))
        self.flows[f] = None
        users = self.users
        for e in route:
            on = users.get(e)
            if on is None:
                on = users[e] = {}
            on[f] = None
        self._changed.update(dict.fromkeys(route))
        if not self._pending:  # flows starting at one instant share one fair-share pass
            self._pending = True
            self.env.timeout(0).callbacks.append(self._flush)
        if self._watch:
            for e in route:
                on = self._watch.get(e)
                if on:
                    for event in on:
                        if not event.triggered:
                            event.succeed(True)

    def spin(self, route: tuple[Edge, ...]) -> Flow:
        """A flow with no end over ``route`` (a process polling a core), until ``stop``."""
        done = self.env.event()
        self._start(route, math.inf, done, "spin", 1)
        return next(reversed(self.flows))

    def stop(self, f: Flow) -> None:
        """End a ``spin`` flow now: the others share what it held."""
        if f not in self.flows:
            return
        del self.flows[f]
        for e in f.route:
            on = self.users[e]
            del on[f]
            if not on:
                del self.users[e]
        self._changed.update(dict.fromkeys(f.route))
        if not self._pending:
            self._pending = True
            self.env.timeout(0).callbacks.append(self._flush)

    def watch(self, edges: tuple[Edge, ...], event: simpy.Event) -> None:
        """Succeed ``event`` (with True) when a flow starts on any of ``edges``, until
        ``unwatch``: a folded run's collectives assume nothing else crosses their links
        (``fold``)."""
        for e in edges:
            on = self._watch.get(e)
            if on is None:
                on = self._watch[e] = {}
            on[event] = None

    def unwatch(self, edges: tuple[Edge, ...], event: simpy.Event) -> None:
        for e in edges:
            on = self._watch[e]
            del on[event]
            if not on:
                del self._watch[e]

    def _flush(self, _event: simpy.Event) -> None:
        self._pending = False
        changed, self._changed = self._changed, {}
        self._share(changed)

    def _share(self, edges: dict[Edge, None]) -> None:
        """New max-min rates for the flows connected to ``edges``, and their finish times."""
        users = self.users
        comp: dict[Flow, None] = {}
        seen = dict(edges)
        stack = list(edges)
        while stack:
            e = stack.pop()
            for f in users.get(e, ()):
                if f not in comp:
                    comp[f] = None
                    for e2 in f.route:
                        if e2 not in seen:
                            seen[e2] = None
                            stack.append(e2)
        now = self.env.now
        for f in comp:
            if f.rate:
                f.remaining -= f.rate * (now - f.t0)
            f.t0 = now
        self._fair_share(comp, seen)
        heap = self._heap
        for f in comp:
            f.version += 1
            f.finish = now + max(f.remaining, 0.0) / f.rate
            heapq.heappush(heap, (f.finish, f.seq, f.version, f))
        self._arm()
        if self.record_rates and len(self.rate_log) < RATE_LOG:
            for e in seen:
                on = users.get(e)
                self.rate_log.append((now, e, sum(f.rate * f.on(e) for f in on) if on else 0.0))

    def _arm(self) -> None:
        """A finish timer at the earliest finish time, unless one is set for then already."""
        heap = self._heap
        while heap and (heap[0][3].version != heap[0][2] or heap[0][3] not in self.flows):
            heapq.heappop(heap)  # stale
        if not heap or heap[0][0] >= self._timer_at:
            return
        at = heap[0][0]
        self._timer += 1
        self._timer_at = at
        token = self._timer
        self.env.timeout(max(at - self.env.now, 0.0)).callbacks.append(
            lambda _e: self._on_timer(token))

    def _on_timer(self, token: int) -> None:
        if token != self._timer:
            return  # superseded by an earlier finish
        self._timer_at = math.inf
        now = self.env.now
        heap, flows = self._heap, self.flows
        due: list[Flow] = []
        # flows due within float noise of now finish now (no zero-length timers)
        while heap:
            finish, _seq, version, f = heap[0]
            if f.version != version or f not in flows:
                heapq.heappop(heap)
                continue
            left = f.remaining - f.rate * (now - f.t0)
            if finish <= now + EPS * (now - f.t0) + 4 * math.ulp(now) or \
                    left <= EPS * f.nbytes:
                heapq.heappop(heap)
                due.append(f)
            else:
                break
        changed: dict[Edge, None] = {}
        users = self.users
        for f in sorted(due, key=lambda f: f.seq):
            del flows[f]
            for e in f.route:
                on = users[e]
                del on[f]
                if not on:
                    del users[e]
            changed.update(dict.fromkeys(f.route))
            self._carried(f.route, f.nbytes, f.weight, f.stat_edges)
            f.done.succeed()
        if changed:
            self._share(changed)
        else:
            self._arm()

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

    def _fair_share(self, flows: dict[Flow, None], edges: dict[Edge, None]) -> None:
        """Max-min fair rates of ``flows`` (a connected component: every edge they cross is in
        ``edges``) by progressive filling, the tightest edge first (a heap)."""
        users = self.users
        left = {}
        count = {}
        for e in edges:
            on = users.get(e)
            if on:
                left[e] = self.capacity[e]
                count[e] = sum(f.on(e) for f in on)
        heap = [(left[e] / count[e], e) for e in left if count[e] > 1e-9]
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

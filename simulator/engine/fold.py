"""Collectives folded into a device's runs of kernels, mixed into ``Engine``
(``simulator/engine/runner.py``), whose state it uses (``plan``, ``cluster``, ``sym``,
``network``, ``devices``).

A tensor-parallel layer is kernels, a collective the next kernels wait for, kernels: three
SimPy processes handing over to each other, and a network flow, for every collective (a
GPT-3-sized stage runs thousands per step). Where a collective's time cannot depend on anything
else going on, it is known before it starts, and the rank plays it inside its run of kernels
like one more kernel: the layers between two pipeline messages become one timeout. A
collective folds when all of these hold:

* its group lies inside one node, so its flows cross only the members' ports on the node
  fabric. When every other transfer of the rank (pipeline messages, other groups' collectives)
  reaches its peers without those ports (peers on other nodes with a ``host_link``, or none),
  nothing else can share its links (the rank's images share their ports with nothing by
  symmetry). Otherwise the run that holds it is *watched*: it folds only from a moment when no
  flow is on its collectives' links (``Network.users``) and, if a flow starts on one of them
  mid-run (``Network.watch``: a pipeline message), it goes on from where it is as the unfolded
  engine would from that instant (the kernels in progress finish, the collective in progress
  continues as a flow with the bytes it has left, the parts after it play as flows until the
  links are free again). Until the first flow came the run was alone on its links, so this too
  is the unfolded engine's timing;
* its members cannot differ: one simulated member stands for the group (``symmetry``), or the
  group is the rank alone;
* each phase is one flow standing for its images (a ring), so its time is the latency plus the
  bytes at the tightest edge's share (``Network.alone``: what the flow takes, to the last digit);
* the rank's streams do not overlap it with anything that its time or the kernels' SM share
  would notice: it is among the leading collectives of the ``comm`` stream (those before it
  fold too), it waits only for compute ops, and the compute op after the last of them waits
  for it (the compute stream would have stopped for it anyway). The first op of the ``comm``
  stream that does not fold waits for the last that does, as the stream's order made it.
* and the engine's per-run effects are off: no trace being recorded (a trace keeps every flow's
  rates), no compute jitter or finish-time spread, no shared cores or wake-up latencies, no
  measured all-reduce fits, GPUs (CPU ranks add host-side sums).

Folding moves the end of a run by float rounding only (the run's time is one sum instead of a
chain of timeouts): ``tests/simulator/test_fold.py`` compares it with the unfolded engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.engine import collectives
from simulator.plan import (
    COMM,
    COMPUTE,
    Collective,
    Compute,
    Op,
    Recv,
    Send,
    Update,
)

P2P = frozenset((Send, Recv))
NO, PRIVATE, WATCHED = 0, 1, 2  # how a collective folds (``FoldModel._lone_and_private``)


@dataclass(frozen=True)
class Priced:
    """A run of kernels and folded collectives, priced: its parts as (offset, seconds, index
    of the folded collective in the run or -1 for a stretch of kernels, first op, end op, the
    collective's fold entry or None), what a run played whole logs, and the links a watched
    run's collectives cross (empty: nothing else can reach them)."""

    total: float
    times: list[float]
    parts: list[tuple]
    compute: list[tuple[float, float]]
    comm: list[tuple[float, float]]
    busy: float
    counts: list[list]
    watch: tuple


def fold_points(ops: tuple[Op, ...], can_fold) -> dict[int, int]:  # noqa: ANN001
    """The collectives of ``ops`` that fold, each with the compute op it follows (the last it
    waits for): the leading collectives of the ``comm`` stream that ``can_fold`` accepts and
    that the structure allows (module docstring)."""
    first = next((op for op in ops if op.stream == COMM and not isinstance(op, (Send, Recv))),
                 None)
    if not isinstance(first, Collective) or not can_fold(first):
        return {}
    kernel = {Compute, Update}
    compute = [op for op in ops if type(op) in kernel]
    comm = [op for op in ops if type(op) is Collective]
    if (len(compute) + len(comm) + sum(1 for op in ops if type(op) in P2P) != len(ops)
            or any(op.stream != COMPUTE for op in compute)
            or any(op.stream != COMM for op in comm)):
        return {}
    pos = {op.id: i for i, op in enumerate(compute)}
    out: dict[int, int] = {}
    last = -1
    for op in comm:
        deps = op.deps
        if len(deps) == 1:
            x = pos.get(deps[0])
            if x is None:
                break
        elif not deps or any(d not in pos for d in deps):
            break
        else:
            x = max(pos[d] for d in deps)
        if x <= last or x + 1 >= len(compute) or op.id not in compute[x + 1].deps:
            break
        if not can_fold(op):
            break
        out[op.id] = compute[x].id
        last = x
    return out


class FoldModel:
    def _fold_on(self) -> bool:
        """Whether the engine's per-run effects allow folding at all (module docstring)."""
        spec = self.cluster.spec
        m = spec.measured
        return (self.fold and not self.record_trace and self.cpus is None
                and spec.device.kind == "gpu" and not spec.compute_jitter
                and not (m.collectives or m.collectives_shared))

    def _fold_points(self, rank: int, ops: tuple[Op, ...]) -> dict[int, int]:
        dev = self.devices[self.device_of[rank]]
        if self.wake[dev.name] or dev.spread[0]:
            return {}
        seen: dict[tuple, bool] = {}

        def can_fold(op: Collective) -> bool:
            key = (op.group, op.collective, op.algorithm)
            hit = seen.get(key)
            if hit is None:
                hit = seen[key] = self._can_fold(rank, ops, op)
            return hit

        return fold_points(ops, can_fold)

    def _can_fold(self, rank: int, ops, op: Collective) -> bool:  # noqa: ANN001
        group = self._group(rank, op.group)
        key = (rank, group, op.collective, op.algorithm)
        hit = self._foldable.get(key)
        if hit is None:
            hit = self._foldable[key] = self._lone_and_private(rank, ops, group, op)
        return hit != NO

    def _lone_and_private(self, rank: int, ops, group: str, op: Collective) -> int:  # noqa: ANN001
        """How ``op`` folds: NO, PRIVATE (nothing else can reach its links) or WATCHED (the
        rank's own messages or other collectives may: a run holding it is watched)."""
        members = self.plan.groups[group]
        if len(members) == 1:
            return PRIVATE
        if self.sym is None or self.sym.members(group) != 1:
            return NO
        c, dev = self.cluster, self.device_of
        mine = dev[rank]
        node = c.node_of(mine)
        if any(c.node_of(dev[m]) != node for m in members):
            return NO
        devs = [dev[m] for m in members]
        if any(len(self._flows_of(group, ph.pairs)) != 1
               for ph in collectives.phases(op.collective, op.algorithm, devs, 1.0, c.node_of)):
            return NO
        if c.topology is not None:
            # a described node's links (PCIe switches, NVLink relays) may carry other ranks'
            # transfers: the run is watched, so it folds only while they are free
            return WATCHED
        fabric = f"node{node}.fabric"
        ports = {(mine, fabric), (fabric, mine)}
        peers, groups = self._contacts(rank, ops)
        others = set(peers)
        for g in groups:
            if g != group:
                others.update(self.plan.groups[g])
        others.discard(rank)
        shared = any(ports & set(c.route(mine, dev[x])) or ports & set(c.route(dev[x], mine))
                     for x in others)
        return WATCHED if shared else PRIVATE

    def _contacts(self, rank: int, ops) -> tuple[set[int], set[str]]:  # noqa: ANN001
        """The peers a rank sends to or receives from, and the groups it joins, by its names
        (``ops``: what it runs, its own program's ops or the source its images rename)."""
        source = ops
        hit = self._source_contacts.get(id(source))
        if hit is None:
            peers, groups = set(), set()
            for op in source:
                t = type(op)
                if t is Collective:
                    groups.add(op.group)
                elif t is Send or t is Recv:
                    peers.add(op.peer)
            hit = self._source_contacts[id(source)] = (peers, groups)
        peers, groups = hit
        return ({self._peer(rank, p) for p in peers}, {self._group(rank, g) for g in groups})

    # ---- playing a run ------------------------------------------------------------------------
    def _folded_run(self, rank: int, it: int, run: list[Op], folded: frozenset[int],
                    sig: tuple | None):
        """A run of kernels with collectives folded in: one timeout, the kernels and
        collectives logged at the times they take inside it. Priced once per sequence of
        replayed ops (a micro-batch's layers), device and SM share. A watched run (module
        docstring) plays its parts one by one while another flow is on its collectives'
        links, folds the rest once they are free, and when a flow reaches them mid-run goes
        on from where it is as the unfolded engine would: the kernels in progress finish, a
        collective in progress continues as flows with the bytes it has left."""
        dev = self.devices[self.device_of[rank]]
        key = (rank, dev.comm_active, sig) if sig is not None else None
        hit = self._runs.get(key) if key is not None else None
        if hit is None:
            hit = self._price(rank, dev, run, folded)
            if key is not None:
                self._runs[key] = hit
        env, net = self.env, self.network
        if not hit.watch:
            start = env.now
            yield env.timeout(hit.total)
            for entry, n in hit.counts:
                entry[2] += n
            if self._measured(it):
                log = self.logs[rank]
                dev.busy += hit.busy
                log.compute += [(start + a, start + b) for a, b in hit.compute]
                log.comm += [(start + a, start + b) for a, b in hit.comm]
            self._run_spans(rank, it, dev, run, hit.times, 0, len(run), start)
            return
        parts, watch, users = hit.parts, hit.watch, net.users
        k, n = 0, len(parts)
        while k < n:
            off, d, j, a, b, entry = parts[k]
            if any(e in users for e in watch):  # shared now: this part as flows
                if j < 0:
                    yield from self._kernels(rank, it, run[a:b])
                else:
                    yield from self._collective(rank, it, run[j])
                k += 1
                continue
            origin = env.now - off  # when the run would have begun, folded from the start
            wake = env.event()
            env.timeout(hit.total - off).callbacks.append(
                lambda _e, w=wake: None if w.triggered else w.succeed(False))
            net.watch(watch, wake)
            yield wake
            net.unwatch(watch, wake)
            if not wake.value:  # played to the end
                self._played(rank, it, dev, run, hit, k, n, origin)
                return
            self.fold_breaks += 1
            t = env.now - origin  # where the run is, in its own time
            done = k
            while done < n and parts[done][0] + parts[done][1] <= t:
                done += 1
            self._played(rank, it, dev, run, hit, k, done, origin)
            if done == n:
                return
            off, d, j, a, b, entry = parts[done]
            if j < 0:  # the kernels were priced when they began, as the engine prices a run
                yield env.timeout(off + d - t)
                self._played(rank, it, dev, run, hit, done, done + 1, origin)
            else:
                yield from self._rest_of_collective(rank, it, run[j], entry, t - off,
                                                    origin + off)
            k = done + 1

    def _price(self, rank: int, dev, run: list[Op], folded: frozenset[int]) -> Priced:  # noqa: ANN001
        times = [self._fold_entry(rank, o)[0] if o.id in folded else dev.kernel_time(o)
                 for o in run]
        parts: list[tuple] = []
        watch: dict = {}
        t = 0.0
        for k, (o, d) in enumerate(zip(run, times)):
            if o.id in folded:
                entry = self._fold_entry(rank, o)
                parts.append((t, d, k, k, k + 1, entry))
                if self._foldable[(rank, self._group(rank, o.group), o.collective,
                                   o.algorithm)] == WATCHED:
                    for _latency, per_flow, (route, mirrored) in entry[1]:
                        if per_flow > 0 and route:
                            watch.update(dict.fromkeys(mirrored[0] if mirrored else route))
            elif parts and parts[-1][2] < 0:
                p = parts[-1]
                parts[-1] = (p[0], p[1] + d, -1, p[3], k + 1, None)
            else:
                parts.append((t, d, -1, k, k + 1, None))
            t += d
        counts: dict[int, list] = {}
        for p in parts:
            if p[5] is not None:
                counts.setdefault(id(p[5]), [p[5], 0])[1] += 1
        return Priced(t, times, parts,
                      [(a, a + d) for a, d, k, *_ in parts if k < 0 and d > 0],
                      [(a, a + d) for a, d, k, *_ in parts if k >= 0 and d > 0],
                      sum(d for _a, d, k, *_ in parts if k < 0 and d > 0),
                      list(counts.values()), tuple(watch))

    def _played(self, rank: int, it: int, dev, run: list[Op], hit: Priced, k0: int, k1: int,  # noqa: ANN001
                origin: float) -> None:
        """Log parts k0..k1 of a watched run, played folded from ``origin``."""
        if k0 >= k1:
            return
        measured = self._measured(it)
        log = self.logs[rank]
        for off, d, j, _a, _b, entry in hit.parts[k0:k1]:
            if entry is not None:
                entry[2] += 1
            if measured and d > 0:
                if j < 0:
                    dev.busy += d
                    log.compute.append((origin + off, origin + off + d))
                else:
                    log.comm.append((origin + off, origin + off + d))
        parts = hit.parts
        self._run_spans(rank, it, dev, run, hit.times, parts[k0][3], parts[k1 - 1][4],
                        origin + parts[k0][0])

    def _run_spans(self, rank: int, it: int, dev, run: list[Op], times: list[float],  # noqa: ANN001
                   a: int, b: int, t: float) -> None:
        """Timeline spans of ops a..b of a folded run, the first beginning at ``t``."""
        if it != self.warmup or rank not in self.timeline_ranks:  # (no trace while folding)
            return
        if (self.timeline_cap is not None
                and self.timeline_kept[dev.name] >= self.timeline_cap):
            self.timeline_left_out += sum(1 for d in times[a:b] if d > 0)
            return
        for o, d in zip(run[a:b], times[a:b]):
            if d <= 0:
                pass
            elif type(o) is Collective:
                self._span(rank, it, (dev.name, COMM, f"{o.collective}:{o.key}", t, d))
            else:
                name = (f"{o.layer}.{'recompute' if o.recompute else o.phase}"
                        if isinstance(o, Compute) else "update")
                self._span(rank, it, (dev.name, COMPUTE, name, t, d))
            t += d

    def _rest_of_collective(self, rank: int, it: int, op: Collective, entry: list,
                            into: float, began: float):
        """A folded collective that a flow reached ``into`` seconds after it began: the
        phases it has played are counted, the one in progress goes on as a flow with the
        bytes it has left (or waits out its latency), the rest as the engine plays them."""
        group = self._group(rank, op.group)
        devs = [self.device_of[r] for r in self.plan.groups[group]]
        busy = [self.devices[d] for d in devs if d in self.devices]
        for d in busy:
            d.comm_active += 1
        net, env = self.network, self.env
        t, left = 0.0, into
        for latency, per_flow, (route, mirrored) in entry[1]:
            moves = per_flow > 0 and bool(route)
            rest = per_flow
            if left is not None:
                rate = net.alone(route, mirrored) if moves else 0.0
                d = latency + (per_flow / rate if moves else 0.0)
                if t + d <= left:  # played before the flow came
                    if moves:
                        net.carried(route, per_flow, mirrored)
                    t += d
                    continue
                passed, left = left - t, None
                if passed < latency:
                    yield env.timeout(latency - passed)
                elif moves:
                    moved = (passed - latency) * rate
                    net.carried(route, moved, mirrored)
                    rest = per_flow - moved
            elif latency:
                yield env.timeout(latency)
            yield net.transfer(route, rest, tag=op.key, mirrored=mirrored)
        for d in busy:
            d.comm_active -= 1
        self._log(rank, it, "comm", began, f"{op.collective}:{op.key}", COMM)

    def _fold_entry(self, rank: int, op: Collective) -> list:
        """[seconds, phases, times played] of a folded collective."""
        group = self._group(rank, op.group)
        key = (group, op.collective, op.algorithm, op.bytes)
        hit = self._fold_phases.get(key)
        if hit is None:
            devs = [self.device_of[r] for r in self.plan.groups[group]]
            phases = [(latency, per_flow, flows[0]) for latency, per_flow, flows
                      in self._phases(group, op, devs)]
            seconds = 0.0
            for latency, per_flow, (route, mirrored) in phases:
                if per_flow > 0 and route:
                    seconds += latency + per_flow / self.network.alone(route, mirrored)
                else:
                    seconds += latency
            hit = self._fold_phases[key] = [seconds, phases, 0]
        return hit

    def _fold_carried(self) -> None:
        """Count the folded collectives' bytes on their links (once, at the end of the run)."""
        for hit in self._fold_phases.values():
            _seconds, phases, count = hit
            for _latency, per_flow, (route, mirrored) in phases:
                if per_flow > 0 and route and count:
                    self.network.carried(route, per_flow * count, mirrored)
            hit[2] = 0

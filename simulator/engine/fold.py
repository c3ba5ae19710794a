"""Collectives folded into a device's runs of kernels, mixed into ``Engine``
(``simulator/engine/runner.py``), whose state it uses (``plan``, ``cluster``, ``sym``,
``network``, ``devices``).

A tensor-parallel layer is kernels, a collective the next kernels wait for, kernels: three
SimPy processes handing over to each other, and a network flow, for every collective (a
GPT-3-sized stage runs thousands per step). Where a collective's time cannot depend on anything
else going on, it is known before it starts, and the rank plays it inside its run of kernels
like one more kernel: the layers between two pipeline messages become one timeout. A
collective folds when all of these hold:

* nothing else can share its links: its group lies inside one node, so its flows cross only
  the members' ports on the node fabric, and every other transfer of the rank (pipeline
  messages, other groups' collectives) reaches peers without those ports (peers on other nodes
  with a ``host_link``, or none); the rank's images share their ports with nothing by symmetry;
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
        return hit

    def _lone_and_private(self, rank: int, ops, group: str, op: Collective) -> bool:  # noqa: ANN001
        members = self.plan.groups[group]
        if len(members) == 1:
            return True
        if self.sym is None or self.sym.members(group) != 1:
            return False
        c, dev = self.cluster, self.device_of
        mine = dev[rank]
        node = c.node_of(mine)
        if any(c.node_of(dev[m]) != node for m in members):
            return False
        devs = [dev[m] for m in members]
        if any(len(self._flows_of(group, ph.pairs)) != 1
               for ph in collectives.phases(op.collective, op.algorithm, devs, 1.0, c.node_of)):
            return False
        fabric = f"node{node}.fabric"
        ports = {(mine, fabric), (fabric, mine)}
        peers, groups = self._contacts(rank, ops)
        others = set(peers)
        for g in groups:
            if g != group:
                others.update(self.plan.groups[g])
        others.discard(rank)
        return not any(ports & set(c.route(mine, dev[x])) or ports & set(c.route(dev[x], mine))
                       for x in others)

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

    def _fold_time(self, rank: int, op: Collective) -> float:
        """A folded collective's seconds; its bytes are counted on its links
        (``_fold_carried``)."""
        entry = self._fold_entry(rank, op)
        entry[2] += 1
        return entry[0]

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

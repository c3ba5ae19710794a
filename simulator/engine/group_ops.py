"""Collectives and barriers, mixed into ``Engine`` (``simulator/engine/runner.py``), whose
state they use (``env``, ``cluster``, ``plan``, ``network``, ``sym``, ``devices``, ``device_of``,
``rank_of``, ``names``, ``rendezvous`` and the caches ``_members``, ``_phase_cache``,
``_orbits``, ``_mirrored``): the members of a group meet at a rendezvous, the last to arrive
starts the collective, which runs as the algorithm's phases of flows over the network
(``simulator/engine/collectives.py``) or, with a calibration profile that fitted it, as the
measured time; with symmetry, one flow per orbit stands for its mirrored images.
"""

from __future__ import annotations

import simpy

from simulator.engine import collectives
from simulator.engine.collectives import Rendezvous
from simulator.plan import COMM, Barrier, Collective


class CollectiveModel:
    def _flows_of(self, group: str, pairs: tuple) -> list[tuple[tuple[int, int], tuple | None]]:
        """The rank pairs of a collective phase's flows to simulate, each with what it stands
        for (``mirrored``): all of them without symmetry, one per orbit with it."""
        ranks = [(self.rank_of[a], self.rank_of[b]) for a, b in pairs]
        if self.sym is None:
            return [(p, None) for p in ranks]
        key = (group, tuple(ranks))
        hit = self._orbits.get(key)
        if hit is None:
            c, dev = self.cluster, self.device_of
            hit = self._orbits[key] = self.sym.orbit_pairs(
                group, ranks, self.mirrored, lambda x, y: c.route(dev[x], dev[y]))
            capacity = self.network.capacity
            for _pair, mirrored in hit:  # edges standing for an orbit's (``symmetry``)
                for e in mirrored[0] if mirrored is not None else ():
                    if e not in capacity:
                        capacity[e] = c.rated(e[1])
        return hit

    def mirrored(self, a: int, b: int) -> tuple | None:
        """A transfer from rank a to rank b standing for its images: its per-edge counts and
        the image routes' edges (``symmetry``); None without symmetry."""
        if self.sym is None:
            return None
        hit = self._mirrored.get((a, b))
        if hit is None:
            c, dev = self.cluster, self.device_of
            hit = self._mirrored[a, b] = self.sym.weights(
                a, b, lambda x, y: c.route(dev[x], dev[y]))
        return hit

    def _join(self, group: str, key: str, it: int) -> Rendezvous:
        k = (group, key, it)
        rv = self.rendezvous.get(k)
        if rv is None:
            size = (len(self.plan.groups[group]) if self.sym is None
                    else self.sym.members(group))
            rv = self.rendezvous[k] = Rendezvous(size, self.env.event())
        rv.arrived += 1
        return rv

    def _group(self, rank: int, group: str) -> str:
        """The rank's own name for a group its program names (``ImageOps``)."""
        names = self.names.get(rank)
        return group if names is None else names[1].get(group, group)

    def _peer(self, rank: int, peer: int) -> int:
        names = self.names.get(rank)
        return peer if names is None else names[0].get(peer, peer)

    def _collective(self, rank: int, it: int, op: Collective):
        arrive = self.env.now
        group = self._group(rank, op.group)
        rv = self._join(group, op.key, it)
        polling = self._polling(rank, op)
        if rv.size == 1:  # the only simulated member (the others mirror it): run it here
            yield from self._run_collective(rv, op, group)
        else:
            if rv.arrived == rv.size:
                self.env.process(self._run_collective(rv, op, group))
            yield rv.done
        if polling is not None:
            self.cpus.stop(polling)
        self._log(rank, it, "comm", rv.start, f"{op.collective}:{op.key}", COMM)
        if rv.start > arrive:
            self._span(rank, it, (self.device_of[rank], COMM, "wait", arrive, rv.start - arrive))

    def _run_collective(self, rv: Rendezvous, op: Collective, group: str):
        rv.start = self.env.now
        hit = self._members.get(group)
        if hit is None:
            devs = [self.device_of[r] for r in self.plan.groups[group]]
            # mirrors are not simulated
            hit = self._members[group] = (devs, [self.devices[d] for d in devs
                                                 if d in self.devices])
        devs, busy = hit
        for d in busy:
            d.comm_active += 1
        c = self.cluster
        fitted = self._fitted_collective(op, devs)
        if fitted is not None:
            yield self.env.timeout(fitted)
            for d in busy:
                d.comm_active -= 1
            if rv.size > 1:
                rv.done.succeed()
            return
        for latency, per_flow, flows in self._phases(group, op, devs):
            if latency:
                yield self.env.timeout(latency)
            # with mirrors, one flow per orbit of the phase's flows stands for its images
            if len(flows) == 1:
                route, mirrored = flows[0]
                yield self.network.transfer(route, per_flow, tag=op.key, mirrored=mirrored)
            else:
                yield simpy.AllOf(self.env, [
                    self.network.transfer(route, per_flow, tag=op.key, mirrored=mirrored)
                    for route, mirrored in flows])
        spec = c.spec.device
        if spec.kind == "cpu":  # host-side sums (collectives' docstring)
            added = collectives.reduced_bytes(op.collective, op.algorithm, len(devs), op.bytes)
            if added:
                yield self.env.timeout(3 * added / (spec.memory_bandwidth
                                                    * spec.memory_efficiency))
        for d in busy:
            d.comm_active -= 1
        if rv.size > 1:  # a lone member runs it in its own stream (``_collective``)
            rv.done.succeed()

    def _phases(self, group: str, op: Collective, devs: list[str]) -> list[tuple]:
        """A collective's phases as (latency, bytes per flow, [(route, mirrored)]): worked out
        once per group and size (a ring over thousands of ranks has thousands of routes)."""
        key = (group, op.collective, op.algorithm, op.bytes)
        hit = self._phase_cache.get(key)
        if hit is None:
            c, dev = self.cluster, self.device_of
            hit = []
            for ph in collectives.phases(op.collective, op.algorithm, devs, op.bytes,
                                         c.node_of):
                latency = ph.latency_steps * max(c.latency(c.route(a, b)) for a, b in ph.pairs)
                flows = [(c.route(dev[a], dev[b]), mirrored)
                         for (a, b), mirrored in self._flows_of(group, ph.pairs)]
                hit.append((latency, ph.bytes_per_flow, flows))
            self._phase_cache[key] = hit
        return hit

    def _fitted_collective(self, op: Collective, devs: list[str]) -> float | None:
        """An all-reduce's time from the profile's measured fit (steps x latency + volume /
        bandwidth), when the profile has one for this algorithm and this group's scope; a
        ring reduce-scatter's or all-gather's from the ring fit, as half of a ring all-reduce."""
        spec, m = self.cluster.spec, self.cluster.spec.measured
        halves = ("reduce_scatter", "allgather")
        if (op.collective != "allreduce" and not (op.collective in halves
                                                  and op.algorithm == "ring")) \
                or not (m.collectives or m.collectives_shared) or len(devs) < 2:
            return None
        nodes = {self.cluster.node_of(d) for d in devs}
        algorithm = "ring" if op.algorithm == "hierarchical" and len(nodes) == 1 else (
            op.algorithm)
        fit = self._fits_for(nodes).get(algorithm)
        if fit is None or (m.collectives_scope == "intra" and len(nodes) > 1):
            return None
        steps, volume = collectives.allreduce_terms(algorithm, len(devs), op.bytes)
        if op.collective in halves:
            # the executor's ring all-reduce is its ring reduce-scatter then its ring
            # all-gather (``executor/mpi/collectives.py``): each is half of the fitted ring's steps
            # and
            # volume, at the fit's per-step latency and bandwidth
            steps, volume = steps // 2, volume / 2
        seconds = steps * fit[0] + volume / fit[1]
        if op.tensor.startswith("wgrad:") and spec.device.kind == "cpu":
            # the executor packs a bucket's gradients into one buffer first (read + write)
            seconds += 2 * op.bytes / (spec.device.memory_bandwidth
                                       * spec.device.memory_efficiency)
        return seconds

    def _barrier(self, rank: int, it: int, op: Barrier):
        rv = self._join(self._group(rank, op.group), op.key, it)
        if rv.arrived == rv.size:
            self.env.process(self._batch_step(rv))
        yield rv.done
        self._log(rank, it, "ps", rv.start, "batch step", COMM)

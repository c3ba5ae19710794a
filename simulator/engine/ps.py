"""The parameter-server exchange as the executor runs it, mixed into ``Engine``
(``simulator/engine/runner.py``), whose state it uses (``env``, ``cluster``, ``plan``,
``servers``, ``coordinator``, ``applying``, ``seen_version``, ``message_wake``, ``device_of``):
pushes and pulls of shards that take one message at a time, messages past the eager limit that
hold their shard until they are across, Sandblaster's work loop and its batch step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import simpy

from simulator.plan import COMM, KERNEL_OPS, PSPull, PSPush, WorkLoop

if TYPE_CHECKING:
    from simulator.engine.collectives import Rendezvous


class ParameterServerModel:
    # ---- Sandblaster's batch step ---------------------------------------------------------------
    def _batch_step(self, rv: Rendezvous):
        """All workers are done with the batch: the coordinator has every shard take a step."""
        rv.start = self.env.now
        step_bytes = self.plan.options.get("step_bytes_per_shard", 0.0)
        if self.servers and step_bytes:
            host = self.coordinator.host if self.coordinator else self.servers[0].host
            procs = []
            for s in self.servers:
                lat = 2 * self.cluster.latency(self.cluster.route(host, s.host)) if (
                    host != s.host) else 0.0
                procs.append(self.env.process(self._after(lat, s.step(step_bytes))))
            yield simpy.AllOf(self.env, procs)
        rv.done.succeed()

    def _after(self, delay: float, proc):
        if delay:
            yield self.env.timeout(delay)
        yield self.env.process(proc)

    # ---- parameter server -----------------------------------------------------------------------
    def _push(self, rank: int, it: int, op: PSPush):
        start = self.env.now
        server = self.servers[op.shard]
        dev = self.device_of[rank]
        route = self.cluster.route(dev, server.host)
        # the gradients into the push message
        yield from self._on_cores(dev, self._host_copy(op.bytes))

        def receive():  # noqa: ANN202 - the message crossing to the shard
            return self._message(route, op.bytes, op.tag, server.host)

        seen = self.seen_version[(rank, op.shard)]
        if op.bytes <= self.cluster.eager_limit(route):  # sent without waiting for the shard
            yield receive()
            taken = None
        else:  # rendezvous: the send completes once the shard has taken the message
            taken = self.env.event()
        # one connection per (worker, shard): the shard serves it in order, so a later pull from
        # this worker sees this push applied
        self.applying[(rank, op.shard)] = self.env.process(
            server.apply(it, op.bytes, seen, receive if taken else None, taken))
        if taken is not None:
            yield taken
            if self.message_wake[dev]:
                yield self.env.timeout(self.message_wake[dev])
        self._log(rank, it, "ps", start, f"push{op.shard}", COMM)

    def _pull(self, rank: int, it: int, op: PSPull):
        start = self.env.now
        server = self.servers[op.shard]
        dev = self.device_of[rank]
        route = self.cluster.route(server.host, dev)
        yield self.env.timeout(self.cluster.latency(route))  # the request
        earlier = self.applying.get((rank, op.shard))
        if earlier is not None and not earlier.triggered:
            yield earlier
        if server.sync:
            yield server.ready[it]
        # the shard serves one message at a time (as the executor's service loop does): a fetch
        # waits behind the pushes being applied; reading the parameters out is a memory copy
        idle = server.idle()
        rendezvous = op.bytes > self.cluster.eager_limit(route)
        with server.lock.request() as req:
            yield req
            if idle and server.wake:  # an idle server waits for messages, and wakes up
                yield self.env.timeout(server.wake)
            self.seen_version[(rank, op.shard)] = server.version
            yield from server.work(server.copy_time(op.bytes))
            if rendezvous:  # the reply's send returns once the worker has received it
                yield self._message(route, op.bytes, op.tag, dev)
        if not rendezvous:
            yield self._message(route, op.bytes, op.tag, dev)
        if self.message_wake[dev]:  # the worker waited for the reply
            yield self.env.timeout(self.message_wake[dev])
        # the message into the worker's parameters
        yield from self._on_cores(dev, self._host_copy(op.bytes))
        self._log(rank, it, "ps", start, f"pull{op.shard}", COMM)

    # ---- Sandblaster work portions --------------------------------------------------------------
    def _work_loop(self, rank: int, it: int, op: WorkLoop):
        coord = self.coordinator
        dev = self.device_of[rank]
        rtt = 2 * self.cluster.latency(self.cluster.route(dev, coord.host))
        while True:
            start = self.env.now
            yield self.env.timeout(rtt)
            self._log(rank, it, "ps", start, "ask coordinator", COMM)
            if not coord.take(rank, self._measured(it)):
                break
            kernels = [o for o in op.body if isinstance(o, KERNEL_OPS)]
            yield from self._kernels(rank, it, kernels)
            # the portion's pushes: blocking sends, one after another (as the executor's loop);
            # an eager one returns at once, its shard applying it later
            for o in op.body:
                if isinstance(o, PSPush):
                    yield from self._push(rank, it, o)

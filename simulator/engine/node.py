"""What a node of shared cores does to the ranks on it, from a calibration profile: the
engine's node model, mixed into ``Engine`` (``simulator/engine/runner.py``), whose state it
uses (``env``, ``plan``, ``cluster``).

* processor sharing of the node's cores among the runs of kernels going on (``_cpus``), and the
  co-running slowdown of the ranks computing at once (``_core_sharing``);
* per ranks per core: a blocked thread's wake-up latency, a process's after a quiet wait for a
  message, the spread of ranks' finish times, and the all-reduce fit measured at that load
  (``_wakeup``, ``_message_wakeup``, ``_spread``, ``_fits_for``);
* which ranks' kernels run hot: their working set fits half their share of the node's cache
  (``_runs_hot``, ``hardware.runs_hot``);
* the host-side copies of CPU ranks (``_host_copy``), and the work a process does on the
  shared cores besides kernels: those copies, and the copy that moves a message between two
  processes of the node (``_on_cores``, ``_message``).
"""

from __future__ import annotations

import math
from collections import defaultdict

from simulator.cluster import Cluster
from simulator.engine.hardware import core_sharing, runs_hot
from simulator.engine.network import Network
from simulator.plan import Plan


class NodeModel:
    def _core_sharing(self) -> dict[str, float]:
        """Per device, the slowdown of its kernels from the ranks computing beside it on its
        node (``core_sharing`` without the time-sharing term: when ranks outnumber cores the
        cores are shared out as the ranks actually compute, by ``_cpus``). On a one-node
        cluster the parameter-server ranks are processes of that node too (that is how the
        executor runs them)."""
        spec = self.cluster.spec
        if not spec.cores_per_node:
            return {}
        per_node = self._processes_per_node()
        out = {}
        for r in self.plan.workers():
            ranks = per_node[self.cluster.node_of(r.device)]
            out[r.device] = (core_sharing(spec.cores_per_node, ranks, spec.measured.co_run)
                             / max(1.0, ranks / spec.cores_per_node))
        return out

    def _cpus(self, workers: list) -> Network | None:
        """Processor sharing of each node's cores, when the cluster says how many there are:
        a run of kernels is a flow of core-seconds through its rank's own core (capacity 1: a
        rank computes on one core) and its node's cores (capacity: cores per node), shared
        max-min fairly among the runs going on, as the OS time-shares the ranks that are
        computing. A rank that waits (for a message, a peer, the parameter server) leaves its
        share to the others: the executor waits quietly where ranks outnumber cores
        (``executor/mpi/collectives.py``; MPICH's own waits poll and took their share in some
        launches:
        ``calibration.measured.core_sharing``)."""
        spec = self.cluster.spec
        if not spec.cores_per_node:
            return None
        capacity = {("core", r.device): 1.0 for r in workers}
        if spec.nodes == 1:  # parameter-server ranks are processes of the node too
            capacity.update({("core", r.device): 1.0 for r in self.plan.ranks
                             if r.role == "server"})
        capacity.update({("cores", n): float(spec.cores_per_node)
                         for n in range(spec.nodes)})
        # the thread that runs a rank's MPI all-reduce, polling (``_polling``)
        capacity.update({("poll", r.device): 1.0 for r in workers})
        return Network(self.env, capacity)

    def _polling(self, rank: int, op) -> object | None:  # noqa: ANN001
        """MPI's own all-reduce (``algorithm: mpi``: MPICH's blocking ``MPI_Allreduce``) polls
        from the moment its rank enters it until it ends, on a core of its own, even where the
        executor's waits are quiet (``executor/mpi/collectives.py``): on shared cores that takes a
        share
        from the ranks still computing. Returns the polling flow on the node's cores (to
        ``stop``), or None where cores are not modelled or the collective waits quietly."""
        if self.cpus is None or op.algorithm != "mpi" or op.collective != "allreduce":
            return None
        dev = self.device_of[rank]
        return self.cpus.spin((("poll", dev), ("cores", self.cluster.node_of(dev))))

    def _spread(self, node: int) -> tuple[float, float]:
        """The profile's spread of finish times at the node's ranks per core, with the
        duration of the work it was measured on ((0, 0) without)."""
        spread = self.cluster.spec.measured.spread
        if not spread:
            return (0.0, 0.0)
        return spread[nearest(spread, self._load(node))]

    def _load(self, node: int | None) -> float:
        """Processes per core on ``node`` (None: a host of its own), at least 1."""
        spec = self.cluster.spec
        if node is None or not spec.cores_per_node:
            return 1.0
        return max(1.0, self._processes_per_node()[node] / spec.cores_per_node)

    def _wakeup(self, node: int | None) -> float:
        """The profile's wake-up latency at ``node``'s ranks per core (None: a host of its
        own, one process per core)."""
        wakeup = self.cluster.spec.measured.wakeup
        if not wakeup:
            return 0.0
        return wakeup[nearest(wakeup, self._load(node))]

    def _message_wakeup(self, node: int | None) -> float:
        """A process's wake-up latency after it slept in a quiet wait for a message, at
        ``node``'s ranks per core: the profile's measurement, or the thread wake-up when the
        profile predates it."""
        woken = self.cluster.spec.measured.message_wakeup
        if not woken:
            return self._wakeup(node)
        return woken[nearest(woken, self._load(node))]

    def _left_core(self, node: int) -> None:
        """A run of kernels on ``node`` has ended. If as many runs as cores are still going on,
        some rank was queued behind another: the OS's run queues are per core, and the core
        just left idles until the scheduler moves a queued rank to it, the profile's
        ``migration`` lag at the node's ranks per core (``bursts``)."""
        m, load = self.cluster.spec.measured, self._load(node)
        if self.cpus is not None and m.migration and load > 1:
            left_core(self.cpus, ("cores", node), self.cluster.spec.cores_per_node,
                      m.migration[nearest(m.migration, load)])

    def _processes_per_node(self) -> dict[int, int]:
        """Per node, the plan's processes on it: its workers, and on a one-node cluster the
        parameter-server ranks as well."""
        if getattr(self, "_per_node", None) is not None:
            return self._per_node
        self._per_node = processes_per_node(self.plan, self.cluster)
        return self._per_node

    def _runs_hot(self, device: str) -> bool:
        """Whether ``device``'s kernels find their data in the cache (``runs_hot``): the
        plan's memory need for it against half its share of the cache, which the processes of
        its node share."""
        spec = self.cluster.spec.device
        if spec.cache <= 0:
            return False
        need = next((m.total for m in self.plan.memory if m.device == device), None)
        if need is None:
            return False
        sharers = self._processes_per_node()[self.cluster.node_of(device)]
        return runs_hot(spec, need, sharers)

    def _fits_for(self, nodes: set[int]) -> dict[str, tuple[float, float]]:
        """The profile's all-reduce fits for a group on ``nodes``: those measured at the
        nearest ranks per core when the busiest node runs more processes than it has cores
        (a time-shared core makes every step wait for its peer to be scheduled)."""
        spec, m = self.cluster.spec, self.cluster.spec.measured
        if not spec.cores_per_node or not m.collectives_shared:
            return m.collectives
        per_node = self._processes_per_node()
        load = max(per_node[n] for n in nodes) / spec.cores_per_node
        if load <= 1.0 and m.collectives:
            return m.collectives
        return m.collectives_shared[nearest(m.collectives_shared, load)]

    def _core_route(self, host: str) -> tuple | None:
        """The cores a process runs on when they are shared: a worker's own core and its
        node's, or on a one-node cluster a parameter-server shard's (None: not modelled)."""
        if self.cpus is None:
            return None
        if host.startswith("ps"):
            return (("core", host), ("cores", 0)) if self.cluster.spec.nodes == 1 else None
        return (("core", host), ("cores", self.cluster.node_of(host)))

    def _on_cores(self, host: str, seconds: float):
        """Process steps: ``seconds`` of a process's own work (alone on a core), on its node's
        shared cores when they are modelled."""
        if seconds <= 0:
            return
        route = self._core_route(host)
        if route is None:
            yield self.env.timeout(seconds)
        else:
            yield self.cpus.transfer(route, seconds)

    def _message(self, route: tuple, nbytes: float, tag: str, dst: str,
                 mirrored: tuple | None = None):
        """Event: a message over ``route`` to ``dst``. Between two processes of one node whose
        cores are shared, shared memory carries it and a core copies it: after the route's
        latency, a flow of core-seconds (bytes over the route's bandwidth, the calibrated
        one-way rate) on the receiver's cores, which waits for a share of them as a run of
        kernels does. Elsewhere a flow on the network's links."""
        latency = self.cluster.latency(route)
        cores = self._core_route(dst)
        src_cores = self._core_route(route[0][0]) if route else None
        if cores is None or src_cores is None or cores[1] != src_cores[1]:  # not one node
            return self.network.transfer(route, nbytes, latency, tag=tag, mirrored=mirrored)
        seconds = nbytes / min(self.cluster.bandwidth(e) for e in route)
        return self.env.process(self._copy(cores, latency, seconds))

    def _copy(self, cores: tuple, latency: float, seconds: float):
        if latency:
            yield self.env.timeout(latency)
        yield self.cpus.transfer(cores, seconds)

    def _host_copy(self, nbytes: float) -> float:
        """A CPU worker's copy of ``nbytes`` between its tensors and a message (read and
        write at its memory bandwidth); a GPU's goes through its timed host copies."""
        spec = self.cluster.spec.device
        if spec.kind != "cpu":
            return 0.0
        return 2 * nbytes / (spec.memory_bandwidth * spec.memory_efficiency)


def left_core(cpus: Network, edge: tuple, cores: int, lag: float) -> None:
    """A run on the cores ``edge`` has ended: if as many runs as cores still go on there (some
    rank waits in a busy core's run queue), one core idles for ``lag``."""
    if lag and cpus.active(edge) >= cores:
        cpus.hold(edge, 1.0, lag)


def bursts(ranks: int, cores: int, work: float, pause: float, migration: float = 0.0,
           count: int = 200) -> float:
    """The engine's model of ``ranks`` ranks on ``cores`` shared cores, each running ``work``
    core-seconds of kernels, then pausing 0.5-1.5 x ``pause`` (seeded per rank), ``count``
    times: processor sharing, and a core that a rank leaves while the others still fill every
    core idles for ``migration`` (``NodeModel._left_core``). Returns the mean run over
    ``work``; calibrate fits ``migration`` by setting this against the same pattern run for
    real."""
    import numpy as np
    import simpy

    env = simpy.Environment()
    cpus = Network(env, {("cores", 0): float(cores), **{("core", i): 1.0 for i in range(ranks)}})
    runs: list[float] = []

    def rank(i: int):  # noqa: ANN202
        rng = np.random.default_rng(i)
        for _ in range(count):
            start = env.now
            yield cpus.transfer((("core", i), ("cores", 0)), work)
            runs.append(env.now - start)
            left_core(cpus, ("cores", 0), cores, migration)
            yield env.timeout(pause * float(rng.uniform(0.5, 1.5)))

    for i in range(ranks):
        env.process(rank(i))
    env.run()
    return sum(runs) / len(runs) / work


def nearest(table: dict[float, object], load: float) -> float:
    """The key of ``table`` (ranks per core) nearest to ``load``, on a log scale."""
    return min(table, key=lambda k: abs(math.log(k / load)))


def processes_per_node(plan: Plan, cluster: Cluster) -> dict[int, int]:
    """Per node, the plan's processes on it: its workers, and on a one-node cluster the
    parameter-server ranks as well (the executor runs them there)."""
    per_node: dict[int, int] = defaultdict(int)
    for r in plan.ranks:
        if r.role == "worker":
            per_node[cluster.node_of(r.device)] += 1
        elif cluster.spec.nodes == 1:
            per_node[0] += 1
    return per_node

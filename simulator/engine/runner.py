"""Interprets a Plan in SimPy: one process per rank stream, hardware actors wired once.

Each rank runs its program ``warmup + iterations`` times. Within one run of the program, each
stream (``compute``, ``comm``) is a SimPy process that executes its ops in order, waiting for
cross-stream dependencies; point-to-point sends and receives run as independent processes (as
non-blocking MPI calls do). Consecutive compute kernels with no dependant on another stream are
timed in one SimPy timeout (per-kernel times are still computed and traced): the events a rank
costs grow with its synchronisation points, not with its layer count. The SMs a kernel gets are
those free when its run of kernels starts: a collective that begins mid-run takes its SMs from
the next run on (an approximation; exact for runs that end at the collective's trigger). With
a calibration profile, what a node of shared cores does to its ranks (processor sharing of the
cores, thread wake-ups, the spread of finish times, all-reduce fits per load) is
``simulator/engine/node.py``; the parameter-server exchange and Sandblaster's work loop are
``simulator/engine/ps.py``; collectives and barriers (their rendezvous, phases over the
network or the profile's fits) are ``simulator/engine/group_ops.py``.

Recorded per rank (measured iterations only): intervals of compute, communication and
parameter-server work, and waits; the summary turns them into the breakdown.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import simpy

from simulator.cluster import Cluster
from simulator.engine.collectives import Rendezvous
from simulator.engine.fold import FoldModel
from simulator.engine.group_ops import CollectiveModel
from simulator.engine.hardware import Coordinator, Device, ParameterServer
from simulator.engine.network import Network
from simulator.engine.node import NodeModel
from simulator.engine.program import FOLDED, KERNELS, Program
from simulator.engine.ps import ParameterServerModel
from simulator.engine.symmetry import Symmetry
from simulator.plan import (
    COMPUTE,
    Barrier,
    Collective,
    Compute,
    ImageOps,
    Op,
    Plan,
    PSPull,
    PSPush,
    Send,
    WorkLoop,
)
from simulator.strategies.common import OPTIMIZER_COPIES

TIMELINE_DEVICES = 64
PROGRESS_EVERY = 20_000  # events between progress reports
TRACE_SPANS = 1_000_000  # a trace keeps at most this many spans per strategy (the first ones)
@dataclass
class RankLog:
    compute: list[tuple[float, float]] = field(default_factory=list)
    comm: list[tuple[float, float]] = field(default_factory=list)
    ps: list[tuple[float, float]] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)


class Engine(NodeModel, ParameterServerModel, FoldModel, CollectiveModel):
    def __init__(self, plan: Plan, cluster: Cluster, precision: str, optimizer: str,
                 warmup: int, iterations: int, record_trace: bool = False, seed: int = 0,
                 fold: bool = True, timeline_spans: int | None = None):
        self.env = env = simpy.Environment()
        self.fold = fold
        self.events = 0  # SimPy events processed
        self.plan, self.cluster = plan, cluster
        self.warmup, self.iterations = warmup, iterations
        self.record_trace = record_trace
        self.network = Network(env, {e: cluster.bandwidth(e) for e in cluster.graph.edges},
                               record_rates=record_trace)
        workers = plan.workers()
        sharing = self._core_sharing()
        self.cpus = self._cpus(workers)
        # ranks whose timing cannot differ run once (``symmetry``); the rest stand for them
        self.sym = Symmetry.of(plan, cluster, self.cpus)
        if self.sym is not None:
            workers = [r for r in workers if r.rank in self.sym.reps]
        self.simulated = workers
        self._mirrored: dict[tuple[int, int], tuple] = {}
        self._orbits: dict[tuple, list] = {}
        self._phase_cache: dict[tuple, list] = {}
        self._members: dict[str, tuple[list, list]] = {}
        self._foldable: dict[tuple, bool] = {}
        self._fold_phases: dict[tuple, list] = {}
        self._source_contacts: dict[int, tuple] = {}
        self._runs: dict[tuple, object] = {}
        self.fold_breaks = 0  # watched folded runs a flow reached mid-run (``fold``)
        # one generator per device, seeded by (scenario seed, device index): deterministic
        self.devices = {r.device: Device(env, r.device, cluster.spec.device, precision,
                                         cluster.slowdown.get(r.device, 1.0)
                                         * sharing.get(r.device, 1.0),
                                         cluster.spec.compute_jitter,
                                         np.random.default_rng([seed, cluster.index_of(r.device)]),
                                         self._spread(cluster.node_of(r.device)),
                                         self._runs_hot(r.device))
                        for r in workers}
        servers = [r for r in plan.ranks if r.role == "server"]
        ps_spec = cluster.spec.parameter_servers
        updater = plan.options.get("updater", optimizer)
        copies = {"adagrad": 1}.get(updater, OPTIMIZER_COPIES.get(updater, 0))
        self.servers = [ParameterServer(env, r.device, j, ps_spec.device, len(workers), copies,
                                        plan.mode) for j, r in enumerate(servers)]
        # a blocked thread's wake-up latency, by the load of its node (profiles measure it)
        self.wake = {r.device: self._wakeup(cluster.node_of(r.device)) for r in workers}
        # a rank blocked in a message wait on a node with more ranks than cores sleeps between
        # tests of its request (the executor's quiet waits) and pays a process's wake-up; with
        # a core each it polls and sees the message at once
        self.message_wake = {r.device: self._message_wakeup(cluster.node_of(r.device))
                             if self._load(cluster.node_of(r.device)) > 1 else 0.0
                             for r in workers}
        for server in self.servers:
            if cluster.spec.nodes == 1:  # the executor runs them as processes of that node,
                server.wake = self._message_wakeup(0)  # polling for messages between sleeps
                if self.cpus is not None:
                    server.cpu = (self.cpus, (("core", server.host), ("cores", 0)))
            else:
                server.wake = self._wakeup(None)
        self.coordinator = (Coordinator(self.servers[0].host, plan.portions)
                            if plan.portions else None)
        self.device_of = {r.rank: r.device for r in plan.ranks}
        self.rank_of = {r.device: r.rank for r in plan.ranks}
        self.logs = {r.rank: RankLog() for r in workers}
        # trace spans (every iteration, when asked) and the timeline of the first measured
        # iteration on the first TIMELINE_DEVICES workers (always: the report's Gantt chart)
        self.spans: list[tuple[str, str, str, float, float]] = []
        self.spans_left_out = 0
        self.timeline: list[tuple[str, str, str, float, float]] = []
        self.timeline_ranks = {r.rank for r in workers[:TIMELINE_DEVICES]}
        # at most this many timeline spans per device (None: all), and how many were not kept
        self.timeline_cap = timeline_spans
        self.timeline_kept: dict[str, int] = defaultdict(int)
        self.timeline_left_out = 0
        self.rendezvous: dict[tuple, Rendezvous] = {}
        self.mail: dict[tuple, list] = {}
        self.seen_version: dict[tuple[int, int], int] = defaultdict(int)
        self.applying: dict[tuple[int, int], simpy.Process] = {}
        # one analysed Program per distinct op sequence: a rank running another's image
        # (``ImageOps``) runs its source's, with its own names for peers and groups
        self.programs: dict[tuple, Program] = {}
        self.program_of: dict[int, Program] = {}
        self.names: dict[int, tuple[dict[int, int], dict[str, str]]] = {}
        fold_on = self._fold_on()
        # the analysed programs are many small objects without reference cycles: the cycle
        # collector is paused while they are made and leaves them out of its later passes
        # (as the plan's ops, ``strategies.build_plan``)
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._analyse(workers, fold_on)
        finally:
            if enabled:
                gc.enable()
        gc.freeze()

    def _analyse(self, workers: list, fold_on: bool) -> None:
        for r in workers:
            ops = r.ops
            if isinstance(ops, ImageOps):
                self.names[r.rank] = (ops.peers, ops.groups)
                ops = ops.source
            fold = self._fold_points(r.rank, ops) if fold_on else {}
            key = (id(ops), tuple(fold.items()))
            prog = self.programs.get(key)
            if prog is None:
                prog = self.programs[key] = Program.of(ops, fold)
            self.program_of[r.rank] = prog

    # ---- driving ------------------------------------------------------------------------------
    def estimate(self) -> int:
        """About how many SimPy events the run takes: per simulated rank and program run, a
        few per transfer, collective and work portion, and two per op waited on (within a
        factor of three of the count on the shipped scenarios, ``tests/simulator/test_scale``)."""
        per: dict[int, int] = {}
        total = 0
        for r in self.simulated:
            prog = self.program_of[r.rank]
            n = per.get(id(prog))
            if n is None:
                comm = sum(len(v) for k, v in prog.streams.items() if k != COMPUTE)
                n = 4 * comm + 6 * len(prog.p2p) + 2 * len(prog.needed) + 4
                # a work loop runs its body once per portion it is handed
                n += sum((len(op.body) + 16) * self.plan.portions // max(1, len(self.simulated))
                         for v in prog.streams.values() for op in v if isinstance(op, WorkLoop))
                per[id(prog)] = n
            total += n
        return total * (self.warmup + self.iterations)

    def run(self, progress=None) -> None:  # noqa: ANN001
        """Run to the end; ``progress(events, now)`` is called every ``PROGRESS_EVERY``
        events when given."""
        for r in self.simulated:
            self.env.process(self._rank(r.rank, self.program_of[r.rank]))
        step, env, n = self.env.step, self.env, 0
        try:
            while True:
                step()
                n += 1
                if n == PROGRESS_EVERY:
                    self.events += n
                    n = 0
                    if progress is not None:
                        progress(self.events, env.now)
        except simpy.core.EmptySchedule:
            self.events += n
        self._fold_carried()

    def _measured(self, it: int) -> bool:
        return it >= self.warmup

    def _rank(self, rank: int, prog: Program):
        for it in range(self.warmup + self.iterations):
            if self.coordinator and rank == self.simulated[0].rank:
                self.coordinator.reset()
            ev: dict[int, simpy.Event] = {i: self.env.event() for i in prog.needed}
            procs = [self.env.process(self._stream(rank, it, ops, prog, ev, prog.runs[name]))
                     for name, ops in prog.streams.items()]
            procs += [self.env.process(self._p2p(rank, it, op, prog, ev)) for op in prog.p2p]
            yield simpy.AllOf(self.env, procs)
            self.logs[rank].ends.append(self.env.now)

    def _wait(self, op: Op, prog: Program, ev: dict[int, simpy.Event], wake: float = 0.0):
        """Until ``op``'s dependencies on other streams are done; a stream that had to block
        then pays ``wake``, its thread's wake-up latency."""
        pending = [ev[d] for d in prog.cross_deps.get(op.id, ()) if not ev[d].triggered]
        if pending:
            yield pending[0] if len(pending) == 1 else simpy.AllOf(self.env, pending)
            if wake:
                yield self.env.timeout(wake)

    def _log(self, rank: int, it: int, kind: str, start: float, name: str = "",
             tid: str = "") -> None:
        end = self.env.now
        if self._measured(it) and end > start:
            getattr(self.logs[rank], kind).append((start, end))
        if end > start:
            self._span(rank, it, (self.device_of[rank], tid or kind, name, start, end - start))

    def _span(self, rank: int, it: int, span: tuple[str, str, str, float, float]) -> None:
        if self.record_trace:
            if len(self.spans) < TRACE_SPANS:
                self.spans.append(span)
            else:
                self.spans_left_out += 1
        if it == self.warmup and rank in self.timeline_ranks:
            if self.timeline_cap is not None:
                if self.timeline_kept[span[0]] >= self.timeline_cap:
                    self.timeline_left_out += 1
                    return
                self.timeline_kept[span[0]] += 1
            self.timeline.append(span)

    # ---- streams ------------------------------------------------------------------------------
    def _stream(self, rank: int, it: int, ops: list[Op], prog: Program, ev, runs: list):
        wake = self.wake[self.device_of[rank]]
        for i, j, mode, sig, last in runs:
            yield from self._wait(ops[i], prog, ev, wake)  # (the rest of a run waits for none)
            if mode is KERNELS:
                yield from self._kernels(rank, it, ops[i:j])
            elif mode is FOLDED:
                yield from self._folded_run(rank, it, ops[i:j], prog.folded, sig)
            else:
                yield from self._comm_op(rank, it, ops[i])
            if last is not None:
                ev[last].succeed()

    def _kernels(self, rank: int, it: int, run: list[Op]):
        dev = self.devices[self.device_of[rank]]
        noise = dev.noise()
        times = [dev.kernel_time(o) * noise for o in run]
        start = self.env.now
        seconds = dev.skewed(sum(times))
        if self.cpus is None:
            yield self.env.timeout(seconds)
        else:
            node = self.cluster.node_of(dev.name)
            yield self.cpus.transfer((("core", dev.name), ("cores", node)), seconds)
            self._left_core(node)
        if self._measured(it):
            dev.busy += self.env.now - start
            self.logs[rank].compute.append((start, self.env.now))
        if self.record_trace or (it == self.warmup and rank in self.timeline_ranks):
            # the run's kernels in proportion to their own times, over what the run took
            # (shared cores and the spread stretch or shrink it)
            total = sum(times)
            scale = (self.env.now - start) / total if total else 0.0
            t = start
            for o, d in zip(run, times):
                name = (f"{o.layer}.{'recompute' if o.recompute else o.phase}"
                        if isinstance(o, Compute) else "update")
                self._span(rank, it, (dev.name, COMPUTE, name, t, d * scale))
                t += d * scale

    def _comm_op(self, rank: int, it: int, op: Op):
        if isinstance(op, Collective):
            yield from self._collective(rank, it, op)
        elif isinstance(op, Barrier):
            yield from self._barrier(rank, it, op)
        elif isinstance(op, WorkLoop):
            yield from self._work_loop(rank, it, op)
        else:
            raise ValueError(f"op {op.kind!r} cannot run on stream {op.stream!r}")

    # ---- point to point -------------------------------------------------------------------------
    def _box(self, key: tuple) -> list:
        box = self.mail.get(key)
        if box is None:
            box = self.mail[key] = [self.env.event(), None]
        return box

    def _p2p(self, rank: int, it: int, op: Op, prog: Program, ev):
        yield from self._wait(op, prog, ev)
        before = prog.ps_after.get(op.id)
        if before is not None and not ev[before].triggered:
            yield ev[before]
        if isinstance(op, PSPush):
            yield from self._push(rank, it, op)
        elif isinstance(op, PSPull):
            yield from self._pull(rank, it, op)
        elif isinstance(op, Send):
            peer = self._peer(rank, op.peer)
            box = self._box((rank, peer, op.tag, it))
            box[1] = start = self.env.now
            route = self.cluster.route(self.device_of[rank], self.device_of[peer])
            yield self._message(route, op.bytes, op.tag, self.device_of[peer],
                                self.mirrored(rank, peer))
            box[0].succeed()
            self._log(rank, it, "comm", start, f"send {op.tag}", "p2p")
        else:
            box = self._box((self._peer(rank, op.peer), rank, op.tag, it))
            posted = self.env.now
            yield box[0]
            self._log(rank, it, "comm", max(posted, box[1]), f"recv {op.tag}", "p2p")
        if op.id in ev:
            ev[op.id].succeed()

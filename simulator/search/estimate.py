"""The analytical estimate that ranks a plan search's candidates before the simulator sees the
best of them: closed forms, no SimPy.

* Kernels: the device's roofline per op (``hardware.Device.kernel_time``: launch overhead plus
  the larger of FLOPs over peak x efficiency and bytes over memory bandwidth x efficiency),
  or a calibration profile's curve for the kinds it measured, hot for a rank whose working set
  (its memory need) fits half its share of the cache, as the simulator chooses
  (``hardware.runs_hot``), summed in program order.
* Collectives: the closed forms the simulator's collectives are tested against without
  contention (docs/simulator.md, Collectives): with p members, S bytes, alpha the route's
  latency and B its bottleneck bandwidth,
  ring all-reduce 2(p-1) alpha + 2(p-1)/p S/B; MPI's 2 ceil(log2 p) alpha + 2(p-1)/p S/B; tree
  2 ceil(log2 p)(alpha + S/B); all-gather and reduce-scatter (p-1) alpha + (p-1)/p S/B;
  hierarchical: a reduce-scatter inside each node, a ring all-reduce of S/l over the nodes, an
  all-gather inside each node. A group that spans nodes shares each NIC with the node's other
  devices doing the same (B = the NIC's bandwidth over the devices that use it).
* Pipelines (Narayanan et al. 2021, the 1F1B schedule's time, (m + (p - 1)/v) s for p equal
  stages): with m micro-batches, stage times s_p per micro-batch (forward, backward, the
  messages to its neighbours) and v model chunks per stage, m max_p s_p + (sum_p s_p -
  max_p s_p) / v; then each stage's gradient all-reduce over its data replicas and its
  optimizer step, the slowest stage's.
* Point to point: S/B + alpha over the route between the two devices.
* Parameter servers: each worker pushes and pulls its gradient bytes once per step; a step
  takes the larger of the worker's own NIC time and its share of the servers' NICs.

* Overlap: a collective runs on its own stream from when its dependencies are done (a bucket's
  all-reduce beside the rest of backward), and a kernel starting while one runs gets the SMs
  it leaves (``comm_sms``); the step is the later of the two streams' ends.

What it leaves out (the simulator has it): contention between different transfers, messages
overlapping computation, the schedule's exact dependencies across ranks, asynchronous
staleness.
It ranks; the simulator decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from simulator.cluster import Cluster
from simulator.engine.hardware import Device, runs_hot
from simulator.engine.node import processes_per_node
from simulator.plan import (
    COMM,
    KERNEL_OPS,
    Collective,
    ImageOps,
    Plan,
    ProgramBuilder,
    PSPull,
    PSPush,
    Recv,
    Send,
    WorkLoop,
)
from simulator.strategies import schedules, sharding, stages
from simulator.strategies.common import Context, update_op
from simulator.strategies.memory import activations, layer_params, memory_need
from simulator.strategies.zero import emit_phase


@dataclass
class Estimate:
    seconds: float  # one iteration
    parts: dict[str, float]  # what it is made of, seconds
    memory: float  # the largest per-device need, bytes
    capacity: float
    detail: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.memory <= self.capacity


class Estimator:
    """Closed-form times on one cluster, cached by what they depend on."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.cluster: Cluster = ctx.cluster
        spec = ctx.cluster.spec
        # a device's kernels priced cold and hot (``hardware.runs_hot``)
        self.devices = {hot: Device(None, "estimate", spec.device, ctx.training.precision,
                                    hot=hot) for hot in (False, True)}
        self._shapes: dict[tuple, stages.Shape] = {}
        self._shape_memo: dict[tuple, object] = {}
        self._phases: dict[tuple, tuple[float, float]] = {}
        self._base: dict[tuple, tuple[float, float]] = {}
        self._layouts: dict[tuple, object] = {}
        self._acts: dict[tuple, float] = {}
        self._sigs: dict[tuple, tuple] = {}
        self._links: dict[tuple, tuple[float, float]] = {}
        self._flights: dict[tuple, dict] = {}
        self._weights: dict[tuple, dict] = {}

    # ---- links ---------------------------------------------------------------------------------
    def link(self, devs: list[str]) -> tuple[float, float]:
        """(alpha, B) between consecutive members of a group of devices, its NIC shared by the
        node's devices that use it when the group spans nodes."""
        if len(devs) < 2:
            return 0.0, math.inf
        key = tuple(devs)
        hit = self._links.get(key)
        if hit is None:
            hit = self._links[key] = self._link(devs)
        return hit

    def _link(self, devs: list[str]) -> tuple[float, float]:
        c = self.cluster
        route = c.route(devs[0], devs[1])
        nodes = {c.node_of(d) for d in devs}
        alpha = c.latency(route)
        if len(nodes) == 1:
            return alpha, min(c.bandwidth(e) for e in route)
        other = next(d for d in devs if c.node_of(d) != c.node_of(devs[0]))
        route = c.route(devs[0], other)
        alpha = c.latency(route)
        per_nic = c.nic_sharers(devs[0])
        bw = min(c.bandwidth(e) / (per_nic if ".nic" in e[0] or ".nic" in e[1] else 1)
                 for e in route)
        return alpha, bw

    def collective(self, kind: str, algorithm: str, devs: list[str], nbytes: float) -> float:
        p = len(devs)
        if p < 2 or nbytes <= 0:
            return 0.0
        alpha, bw = self.link(devs)
        log = math.ceil(math.log2(p))
        if kind in ("allgather", "reduce_scatter"):
            return (p - 1) * alpha + (p - 1) / p * nbytes / bw
        if kind == "broadcast":
            return log * (alpha + nbytes / bw)
        if algorithm == "tree":
            return 2 * log * (alpha + nbytes / bw)
        if algorithm == "mpi":
            return 2 * log * alpha + 2 * (p - 1) / p * nbytes / bw
        if algorithm == "hierarchical":
            c = self.cluster
            by_node: dict[int, list[str]] = {}
            for d in devs:
                by_node.setdefault(c.node_of(d), []).append(d)
            groups = list(by_node.values())
            local = len(groups[0])
            if len(groups) > 1 and local > 1 and all(len(g) == local for g in groups):
                inside = self.collective("reduce_scatter", "ring", groups[0], nbytes)
                across = self.collective("allreduce", "ring", [g[0] for g in groups],
                                         nbytes / local)
                return 2 * inside + across
        return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes / bw

    def p2p(self, a: str, b: str, nbytes: float) -> float:
        c = self.cluster
        route = c.route(a, b)
        if not route or nbytes <= 0:
            return 0.0
        return c.latency(route) + nbytes / min(c.bandwidth(e) for e in route)

    # ---- any plan ------------------------------------------------------------------------------
    def plan(self, plan: Plan) -> Estimate:
        """A built plan's iteration: per distinct program, its kernels and messages one after
        another and its collectives beside them (from when their dependencies are done); the
        slowest program's, over the plan's period."""
        dev_of = {r.rank: r.device for r in plan.ranks}
        groups: dict[str, list[str]] = {}
        seen: dict[tuple[int, bool], float] = {}
        worst, parts = 0.0, {"compute": 0.0, "communication": 0.0}
        ps = [r for r in plan.ranks if r.role == "server"]
        workers = plan.workers()
        ps_bw = (self.cluster.spec.parameter_servers.nic.effective_bandwidth
                 if self.cluster.spec.parameter_servers else math.inf)
        need = {m.device: m.total for m in plan.memory}
        per_node = processes_per_node(plan, self.cluster)
        for r in workers:
            ops = r.ops.source if isinstance(r.ops, ImageOps) else r.ops
            dev = self.devices[r.device in need and runs_hot(
                self.cluster.spec.device, need[r.device],
                per_node[self.cluster.node_of(r.device)])]
            if (id(ops), dev.hot) in seen:
                continue
            # collectives on their own stream, everything else one after another, twice: the
            # second pass gives a kernel that starts while a collective runs (the first pass's
            # windows) the SMs the collective leaves (``comm_sms``), as the simulator does
            done, compute, comm, pushed, windows = self._schedule(
                ops, dev, plan, r.device, dev_of, groups, len(workers), None)
            done, compute, comm, pushed, _ = self._schedule(
                ops, dev, plan, r.device, dev_of, groups, len(workers), windows)
            span = max(done.values(), default=0.0)
            if pushed:
                nic = self.cluster.spec.inter_link.effective_bandwidth
                push = max(pushed / nic, pushed * len(workers) / (len(ps) * ps_bw)
                           if ps else 0.0)
                comm += push
                span += push
            comm = span - compute  # what the streams do not hide
            seen[(id(ops), dev.hot)] = compute + comm
            if compute + comm > worst:
                worst, parts = compute + comm, {"compute": compute, "communication": comm}
        steps = max(1, plan.period_steps)
        memory = max((m.total for m in plan.memory), default=0.0)
        return Estimate(worst / steps, {k: v / steps for k, v in parts.items()}, memory,
                        self.cluster.spec.device.memory)

    def _schedule(self, ops, dev: Device, plan: Plan, device: str, dev_of: dict,  # noqa: ANN001
                  groups: dict, workers: int, windows: list[tuple[float, float]] | None
                  ) -> tuple[dict[int, float], float, float, float, list[tuple[float, float]]]:
        """One rank's ops on two streams (collectives on theirs, the rest in order): when each
        ends, the compute and communication seconds, the bytes pushed to parameter servers,
        and the collectives' windows. With ``windows``, a kernel starting inside one runs on
        the SMs a communication kernel leaves."""
        free: dict[str, float] = {}
        done: dict[int, float] = {}
        spans: list[tuple[float, float]] = []
        compute = comm = pushed = 0.0
        slow = False
        for op in ops:
            t = 0.0
            stream = op.stream if isinstance(op, Collective) else "main"
            start = max([free.get(stream, 0.0)] + [done.get(d, 0.0) for d in op.deps])
            if isinstance(op, WorkLoop):
                share = max(1, plan.portions // max(1, workers))
                for inner in op.body:
                    t += share * self._op_compute(inner, dev)
                compute += t
            elif isinstance(op, Collective):
                devs = groups.get(op.group)
                if devs is None:
                    devs = groups[op.group] = [dev_of[m] for m in plan.groups[op.group]]
                t = self.collective(op.collective, op.algorithm, devs, op.bytes)
                comm += t
                spans.append((start, start + t))
            elif isinstance(op, Send):
                t = self.p2p(device, dev_of[op.peer], op.bytes)
                comm += t
            elif isinstance(op, (PSPush, PSPull)):
                pushed += op.bytes
            elif not isinstance(op, Recv):
                # the engine times a run of kernels (one after another, no wait) with the
                # SMs free when the run starts: a run begun inside a window keeps fewer
                busy = bool(windows) and (any(a <= start < b for a, b in windows)
                                          or (slow and start == free.get("main", -1.0)))
                dev.comm_active += busy
                t = self._op_compute(op, dev)
                dev.comm_active -= busy
                compute += t
                slow = busy
            done[op.id] = free[stream] = start + t
        return done, compute, comm, pushed, spans

    def _op_compute(self, op, dev: Device) -> float:  # noqa: ANN001
        return dev.kernel_time(op) if isinstance(op, KERNEL_OPS) else 0.0

    # ---- a 3D grid, without its plan -----------------------------------------------------------
    def grid(self, g: stages.Grid, batch: int, room: float = math.inf) -> Estimate:
        """A data x pipeline x tensor grid from one micro-batch of each model chunk (module
        docstring), and its memory from the stages' needs (``stages.Shape``); a grid needing
        more than ``room`` bytes per device gets its memory only (its time is not needed)."""
        ctx, c = self.ctx, self.cluster
        mb = batch // g.data // g.micro_batches
        key = (g.pipeline, g.virtual, g.tensor, g.sequence_parallel, g.recompute)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = stages.Shape.of(ctx, g, self._shape_memo)
        needs = self._needs(shape, key, g, mb)
        memory = max(st.total for st in needs)
        if memory > room:
            return Estimate(math.inf, {}, memory, c.spec.device.memory)
        devices = c.devices
        tp = list(devices[:g.tensor])
        # each stage's devices hot or cold by its need against a node's share of the cache
        sharers = min(c.spec.devices_per_node, g.data * g.pipeline * g.tensor)
        hot = [runs_hot(c.spec.device, st.total, sharers) for st in needs]
        per_part = [self._part(shape, key, q, mb, tp, hot[q % g.pipeline])
                    for q in range(g.parts)]
        stage_s = []
        for p in range(g.pipeline):
            s = 0.0
            for chunk in range(g.virtual):
                q = chunk * g.pipeline + p
                fwd, bwd = per_part[q]
                s += fwd + bwd
                for nb in (q - 1, q + 1):
                    if 0 <= nb < g.parts:
                        edge = min(q, nb)
                        s += self.p2p(devices[g.rank(0, p, 0)],
                                      devices[g.rank(0, nb % g.pipeline, 0)],
                                      shape.boundary(ctx, edge, mb))
            stage_s.append(s)
        m = g.micro_batches
        # m passes of the slowest stage, and the fill and drain of the others, each a
        # 1/v chunk with the interleaved schedule
        pipe = m * max(stage_s) + (sum(stage_s) - max(stage_s)) / g.virtual
        compute = m * max(sum(per_part[c * g.pipeline + p][i] for c in range(g.virtual)
                              for i in (0, 1)) for p in range(g.pipeline))
        tail = 0.0
        grads = 0.0
        for p, st in enumerate(needs):
            replicas = [devices[g.rank(d, p, 0)] for d in range(g.data)]
            ar = self.collective("allreduce", "ring", replicas, st.params * ctx.bpe)
            b = ProgramBuilder()
            update_op(b, ctx, st.params / (g.data if g.zero else 1), ())
            upd = self.devices[hot[p]].kernel_time(b.ops[0])
            tail = max(tail, ar + upd)
            grads = max(grads, ar)
        total = pipe + tail
        return Estimate(total, {"compute": compute, "pipeline": pipe - compute,
                                "data_parallel": grads, "update": tail - grads},
                        memory, c.spec.device.memory,
                        {"stage_s": stage_s, "memory_stage": max(
                            range(len(needs)), key=lambda p: needs[p].total)})

    def _part(self, shape: stages.Shape, key: tuple, q: int, mb: int,
              tp: list[str], hot: bool = False) -> tuple[float, float]:
        """(forward, backward) seconds of one micro-batch of part q: its kernels (hot or
        cold) and its tensor group's collectives, one after the other."""
        sig = self._sig(shape, key, q)
        hit = self._phases.get((sig, mb, hot))
        if hit is None:
            ctx = self.ctx
            out = []
            for phase in ("fwd", "bwd"):
                b = ProgramBuilder()
                emit_phase(b, ctx, shape.parts[q], shape.lays[q], phase, mb, "tp", None,
                           recompute=shape.redo[q], last_bwd={} if phase == "bwd" else None)
                t = 0.0
                for op in b.ops:
                    if isinstance(op, Collective):
                        t += self.collective(op.collective, op.algorithm, tp, op.bytes)
                    elif op.stream != COMM and not isinstance(op, (Send, Recv)):
                        t += self.devices[hot].kernel_time(op)
                out.append(t)
            hit = self._phases[(sig, mb, hot)] = (out[0], out[1])
        return hit

    def _sig(self, shape: stages.Shape, key: tuple, q: int) -> tuple:
        """What part q's costs depend on: its layers but for their names (the middle stages
        of a transformer are the same), their split and recomputation."""
        sig = self._sigs.get((key, q))
        if sig is None:
            lay, redo, ctx = shape.lays[q], shape.redo[q], self.ctx
            # (key: pipeline, virtual, tensor, sequence parallel, recompute; a part of the
            # same layers under another cut costs the same)
            sig = self._sigs[(key, q)] = (key[2:], tuple(
                (d["kind"], d["fwd_flops"], d["bwd_flops"], d["params"], d["in_elems"],
                 d["out_elems"], d.get("tied_to") is not None, lay.states.get(n),
                 n in lay.seq, n in redo)
                for n in shape.parts[q] for d in (ctx.node(n),)))
        return sig

    def _needs(self, shape: stages.Shape, key: tuple, g: stages.Grid, mb: int) -> list:
        """Each stage's parameters and memory need (``stages._Stage``'s accounting: the model
        states with ZeRO over the replicas, the activations of the micro-batches in flight at
        the schedule's peak, the recomputation and ZeRO-3 buffers), with what does not change
        between candidates computed once: activations are linear in the samples in flight."""
        ctx = self.ctx
        out = []
        for p in range(g.pipeline):
            mine = [c * g.pipeline + p for c in range(g.virtual)]
            layers = [n for q in mine for n in shape.parts[q]]
            lay = self._stage_layout(shape, key, p, mine)
            sigs = tuple(self._sig(shape, key, q) for q in mine)
            tied = tuple(tuple(shape.tied.get(q, ())) for q in mine)
            bkey = (sigs, tied, any(o in layers for pairs in shape.tied.values()
                                    for _, o in pairs))
            base = self._base.get(bkey)
            if base is None:
                copies = [(n, owner) for q in mine for n, owner in shape.tied.get(q, [])]
                extra = sum(stages.tied_params(ctx, owner, g.tensor) for _, owner in copies)
                sh = lay.param_shards()
                params = sum(layer_params(ctx, n, sh.get(n, 1)) for n in layers) + extra

                def need(zero: int, dp: int, micro: float, layers=layers, lay=lay,  # noqa: ANN001
                         extra=extra):  # noqa: ANN202
                    return memory_need(ctx, "", layers, act_samples={n: 0.0 for n in layers},
                                       layout=lay, zero=zero, dp=dp, recompute=g.recompute,
                                       micro_batch=micro, extra_params=extra)

                one = need(0, 1, 1.0)
                base = self._base[bkey] = (params, one, need)
            params, one, need = base
            if g.zero >= 3:  # (its buffers are the units' parameters)
                total = need(g.zero, g.data, mb).total
            else:
                # the model states divided as ZeRO does, and the recomputation buffers (one
                # micro-batch's tensors: linear in its samples)
                total = (one.weights + one.gradients / (g.data if g.zero >= 2 else 1)
                         + one.optimizer / (g.data if g.zero >= 1 else 1) + one.buffers * mb)
            weight = self._weights.get((key, p))
            if weight is None:
                weight = self._weights[(key, p)] = {
                    c: sum(ctx.node(n)["out_elems"] for n in shape.parts[q])
                    for c, q in enumerate(mine)}
            fkey = (g.schedule, p, g.pipeline, g.micro_batches, g.virtual,
                    tuple(weight.values()))
            flight = self._flights.get(fkey)
            if flight is None and g.virtual == 1:
                # one chunk: GPipe holds every micro-batch, 1F1B the stages from here to the
                # last (its warm-up and one more), as ``schedules.order`` runs them
                flight = self._flights[fkey] = {0: g.micro_batches if g.schedule == "gpipe"
                                                else min(g.pipeline - p, g.micro_batches)}
            elif flight is None:
                steps = schedules.order(g.schedule, p, g.pipeline, g.micro_batches, g.virtual)
                flight = self._flights[fkey] = schedules.peak_in_flight(steps, weight)
            for c, q in enumerate(mine):
                total += flight.get(c, 0) * mb * self._act1(shape, key, q, lay, g.recompute)
            out.append(_StageNeed(params, total))
        return out

    def _stage_layout(self, shape: stages.Shape, key: tuple, p: int, mine: list[int]):  # noqa: ANN202
        hit = self._layouts.get((key, p))
        if hit is None:
            lays = [shape.lays[q] for q in mine]
            hit = self._layouts[(key, p)] = sharding.Layout(
                {k: st for lay in lays for k, st in lay.states.items()}, shape.grid.tensor,
                frozenset().union(*(lay.seq for lay in lays)))
        return hit

    def _act1(self, shape: stages.Shape, key: tuple, q: int, lay, recompute: str) -> float:  # noqa: ANN001
        """Bytes of activations one sample of part q keeps on its stage."""
        sig = self._sig(shape, key, q)
        hit = self._acts.get(sig)
        if hit is None:
            layers = shape.parts[q]
            acts, _ = activations(self.ctx, layers, lay, {n: 1.0 for n in layers}, 1.0,
                                  recompute)
            hit = self._acts[sig] = sum(acts.values())
        return hit


@dataclass
class _StageNeed:
    params: float
    total: float

"""One synchronous strategy run for real on this rank: its periods, measured (warm-up, then
``training.iterations`` measured periods between barriers), or run to ``training.target`` (the
warm-up, every rank back to its state from before it, then periods from the first batch until
the windowed metric reaches the target: ``target.py``); a parameter-server rank serves the same
periods. ``execute.py`` calls :func:`run_plan` per strategy and gathers the Result.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from itertools import repeat
from typing import Any

import numpy as np
from mpi4py import MPI

from executor.data import Dataset
from executor.interpreter.checkpoint import Checkpoints, load_state, state_of
from executor.interpreter.measure import peak_rss, phases_of
from executor.interpreter.runner import RankRunner, Timings
from executor.interpreter.target import Window, put, snapshot, target_block
from executor.mpi import collectives as xcomm
from executor.mpi.faults import maybe_fail
from executor.mpi.watchdog import Watchdog
from executor.ps.server import ServerRunner
from simulator.plan import Plan
from simulator.specs import Scenario


def _period_batch(data: Dataset, period: int, total: int, part: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """This rank's samples of period ``period``'s global batch (deterministic, wrapping)."""
    if part[1] == 0:
        return None, None
    return next(data.batches(total, start_step=period, steps=1, part=part))


def _batches(data: Dataset, total: int, first: int, prog: Any) -> Iterator[tuple[Any, Any]]:
    """This rank's inputs and labels of every period from ``first`` on (None where its program
    reads none): the data position of a resumed run is its period."""
    def part(p: tuple[int, int]) -> Iterator[tuple[Any, Any]]:
        return data.batches(total, start_step=first, part=p) if p[1] else repeat((None, None))

    xs = part(prog.inputs)
    if tuple(prog.labels) == tuple(prog.inputs):
        yield from xs
        return
    for (x, _), (_, y) in zip(xs, part(prog.labels)):
        yield x, y


def run_plan(comm: MPI.Comm, plan: Plan, graph, scenario: Scenario, data: Dataset,  # noqa: ANN001
             backend: Any, dog: Watchdog, weights: dict[str, Any] | None = None,
             checkpoints: Checkpoints | None = None) -> dict[str, Any]:
    t = scenario.training
    prog = plan.ranks[comm.Get_rank()]
    if prog.role == "server":
        return _serve(comm, plan, graph, scenario, dog, weights, checkpoints)
    runner = RankRunner(comm, plan, graph, backend, scenario.seed, t.learning_rate, t.momentum)
    first, block = 0, None
    if t.target is None:
        first = checkpoints.restore(plan, runner) if checkpoints is not None else 0
        times, phases, curve, timeline = _measure(comm, plan, runner, data, scenario, dog,
                                                  first, checkpoints)
    else:
        times, phases, curve, timeline, block = _to_target(comm, plan, runner, data, scenario,
                                                           dog)
    handed = None
    if plan.mode == "batch" and comm.Get_rank() == 0:  # the coordinator's portion counts
        handed = comm.recv(source=next(r.rank for r in plan.ranks if r.role == "server"),
                           tag=TAG_HANDED)
    whole = runner.whole_weights() if weights is not None else None
    if whole is not None:
        weights[plan.strategy] = whole
    entry = _entry(comm, plan, times, phases, curve, timeline, backend)
    if first and entry:
        entry["resumed_at_period"] = first
    if handed is not None:
        entry["portions_per_worker"] = {plan.ranks[w].device: n for w, n in sorted(handed.items())}
    if block is not None:
        put(entry, block)
    return entry


def _period(comm: MPI.Comm, runner: RankRunner, x: Any, y: Any
            ) -> tuple[float, float, Timings, np.ndarray]:
    """One period between two barriers: its start and end (``MPI.Wtime``), its op timings, and
    the loss sum, correct predictions and predictions counted, summed over every rank."""
    xcomm.barrier(comm)
    start = MPI.Wtime()
    timings, stats = runner.run_period(x, y)
    xcomm.barrier(comm)
    end = MPI.Wtime()
    summed = comm.allreduce(np.array([stats["loss_sum"], stats["correct"],
                                      stats["counted"]], dtype=np.float64))
    return start, end, timings, summed


def _measure(comm: MPI.Comm, plan: Plan, runner: RankRunner, data: Dataset, scenario: Scenario,
             dog: Watchdog, first: int, checkpoints: Checkpoints | None) -> tuple:
    """The warm-up periods, then ``training.iterations`` measured periods (from period
    ``first`` on, resumed)."""
    t, prog, rank = scenario.training, runner.prog, comm.Get_rank()
    total = plan.samples_per_period
    iterations, warm = t.iterations, t.warmup_iterations
    # resumed past the warm-up, the first period compiles and faults in the kernels afresh:
    # its loss counts, its time does not (unless it is the last)
    timed = warm if first < warm else min(first + 1, warm + iterations - 1)
    times, phases, curve, timeline = [], [], [], None
    wall0 = None
    for period, (x, y) in zip(range(first, warm + iterations),
                              _batches(data, total, first, prog)):
        dog.tick(f"{plan.strategy}, period {period}")
        maybe_fail(rank, period, warm)
        start, end, timings, summed = _period(comm, runner, x, y)
        wall0 = start if wall0 is None and period >= warm else wall0
        if checkpoints is not None:
            checkpoints.after_period(plan, period + 1, warm + iterations, runner)
        if period < warm:
            continue
        curve.append((end - wall0, (period - warm + 1) * total,
                      summed[0] / max(summed[2], 1), summed[1] / max(summed[2], 1)))
        if period < timed:
            continue
        times.append(end - start)
        phases.append(phases_of(timings, start, end))
        if timeline is None:
            timeline = [(prog.device, stream, name, s - start, e - s)
                        for stream, name, s, e in timings.spans]
    return times, phases, curve, timeline


def _to_target(comm: MPI.Comm, plan: Plan, runner: RankRunner, data: Dataset,
               scenario: Scenario, dog: Watchdog) -> tuple:
    """The warm-up periods (they compile the kernels), every rank back to its state from
    before them, then periods from the first batch until the window reaches the target, at
    most ``training.iterations``: every rank holds the same sums, so all stop together."""
    t, prog, rank = scenario.training, runner.prog, comm.Get_rank()
    total, warm = plan.samples_per_period, t.warmup_iterations
    initial = snapshot(state_of(runner))
    for period, (x, y) in zip(range(warm), _batches(data, total, 0, prog)):
        dog.tick(f"{plan.strategy}, period {period}")
        maybe_fail(rank, period, warm)
        _period(comm, runner, x, y)
    load_state(runner, initial, "the state before the warm-up")
    window = Window(t.target, total)
    times, phases, curve, timeline = [], [], [], None
    wall0, reached = None, False
    for i, (x, y) in zip(range(t.iterations), _batches(data, total, 0, prog)):
        dog.tick(f"{plan.strategy}, period {warm + i}")
        maybe_fail(rank, warm + i, warm)
        start, end, timings, summed = _period(comm, runner, x, y)
        wall0 = start if wall0 is None else wall0
        curve.append((end - wall0, (i + 1) * total,
                      summed[0] / max(summed[2], 1), summed[1] / max(summed[2], 1)))
        times.append(end - start)
        phases.append(phases_of(timings, start, end))
        if timeline is None:
            timeline = [(prog.device, stream, name, s - start, e - s)
                        for stream, name, s, e in timings.spans]
        if window.add(*summed):
            reached = True
            break
    periods = len(times)
    # the time to target is the periods' own (barrier to barrier, as an iteration time is);
    # the loss bookkeeping between them (an all-reduce of three sums, the window) is in the
    # wall time beside it
    block = target_block(
        t.target, unit="step", steps=periods * plan.period_steps if reached else None,
        time_s=sum(times) if times else None, samples=periods * total,
        cap=t.iterations * plan.period_steps,
        cap_source=f"training.iterations: {t.iterations} periods", best=window.best)
    if reached:
        block["wall_s"] = curve[-1][0]
    return times, phases, curve, timeline, block


TAG_HANDED = 7109


def group_communicators_of(server: ServerRunner) -> MPI.Comm | None:
    return server.groups.get("servers")


def _serve(comm: MPI.Comm, plan: Plan, graph, scenario: Scenario, dog: Watchdog,  # noqa: ANN001
           weights: dict[str, Any] | None, checkpoints: Checkpoints | None) -> dict[str, Any]:
    """A parameter-server rank: serve every period between the same barriers as the workers
    (to a target: back to the initial shard after the warm-up, and stop when they stop)."""
    t = scenario.training
    server = ServerRunner(comm, plan, graph, scenario.seed, t.learning_rate, t.momentum)
    servers = group_communicators_of(server)
    periods = t.warmup_iterations + t.iterations
    if t.target is None:
        first = checkpoints.restore(plan, server) if checkpoints is not None else 0
        for period in range(first, periods):
            dog.tick(f"{plan.strategy}, serving period {period}")
            if period == t.warmup_iterations:
                server.handed.clear()  # portions of measured batches only
            _serve_period(comm, plan, server, servers)
            if checkpoints is not None:
                checkpoints.after_period(plan, period + 1, periods, server)
    else:
        initial = snapshot(state_of(server))
        for period in range(t.warmup_iterations):
            dog.tick(f"{plan.strategy}, serving period {period}")
            _serve_period(comm, plan, server, servers)
        load_state(server, initial, "the shard before the warm-up")
        server.forget()
        window = Window(t.target, plan.samples_per_period)
        for period in range(t.warmup_iterations, periods):
            dog.tick(f"{plan.strategy}, serving period {period}")
            if window.add(*_serve_period(comm, plan, server, servers)):
                break  # as every worker does: the sums are the same everywhere
    if plan.mode == "batch" and server.shard == 0:
        comm.send(server.handed, dest=0, tag=TAG_HANDED)
    if weights is not None:
        comm.gather([], root=0)  # whole_weights: the workers hold the whole model
    comm.gather(None, root=0)
    return {}


def _serve_period(comm: MPI.Comm, plan: Plan, server: ServerRunner,
                  servers: MPI.Comm | None) -> np.ndarray:
    """One period served between the workers' barriers; the period's sums (from the workers:
    a server adds zeros)."""
    xcomm.barrier(comm)
    if plan.mode == "batch":
        server.serve_batch(plan.portions, server.shard == 0, servers,
                           plan.options.get("history", 10))
    else:
        server.serve_period()
    xcomm.barrier(comm)
    return comm.allreduce(np.zeros(3, dtype=np.float64))


def _entry(comm: MPI.Comm, plan: Plan, times: list[float], phases: list[dict],
           curve: list[tuple], timeline: list, backend: Any) -> dict[str, Any]:
    """Gather every rank's figures on rank 0 and shape them like the simulator's entry."""
    iteration = statistics.fmean(times)
    mine = {k: statistics.fmean(p[k] for p in phases) for k in phases[0]}
    per_rank = comm.gather((plan.ranks[comm.Get_rank()].device, mine, timeline, peak_rss()),
                           root=0)
    if comm.Get_rank() != 0:
        return {}
    per_rank = [p for p in per_rank if p is not None]  # parameter servers send None
    breakdown = {k: statistics.fmean(m[k] for _, m, *_ in per_rank) for k in mine}
    return {
        "strategy": plan.strategy,
        "scheme": plan.scheme,
        "mode": "measured",
        "backend": backend.name,
        "devices": len(plan.workers()),
        "samples_per_iteration": plan.samples_per_period,
        "iteration_time_s": iteration / plan.period_steps,
        "iteration_times_s": times,
        "throughput_samples_per_s": plan.samples_per_period / iteration,
        "breakdown_s": {k: v / plan.period_steps for k, v in breakdown.items()},
        "utilisation_per_device": {d: m["compute"] / iteration for d, m, *_ in per_rank},
        "fits": plan.fits,
        "memory_bytes_per_device": {m.device: m.total for m in plan.memory},
        "peak_rss_bytes_per_device": {d: rss for d, _, _, rss in per_rank},
        "training": {"wall_time_s": [c[0] for c in curve], "samples": [c[1] for c in curve],
                     "loss": [c[2] for c in curve], "accuracy": [c[3] for c in curve]},
        "timeline": {"iteration": 0, "devices_shown": len(per_rank),
                     "spans": [list(s) for _, _, spans, _ in per_rank for s in spans]},
    }

"""Run a scenario's strategies for real under MPI and measure them into a Result ("measured").

Every rank loads the scenario and builds the same Plan (plans are deterministic); rank r runs
rank r's program. Per strategy: warm-up periods (not measured), then measured periods, each
between a barrier and ``MPI.Wtime``. Per-op timestamps give the trace and the breakdown under the
simulator's phase names (compute, exposed_communication, idle; ps_wait is 0 without parameter
servers). Loss and accuracy per period go into the Result. Rank 0 alone prints and writes.

A watchdog (``executor/mpi/watchdog.py``) aborts the job when a rank is lost (its heartbeat
stops for ``lost_after`` seconds) or a run makes no progress for ``timeout`` seconds, naming the
rank and where it was; Downpour goes on without a lost worker. Rank 0 hands the Result on after
every strategy (the command rewrites its file), and checkpoints (``checkpoint.py``) let a
killed run resume. What happens on each failure: docs/reliability.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from executor.data import Dataset, synthetic
from executor.dbn.pretrain import run_dbn
from executor.interpreter.checkpoint import Checkpoints
from executor.interpreter.measure import peak_rss, phases_of
from executor.interpreter.model import ExecutorError, check_executable
from executor.interpreter.runner import RankRunner
from executor.loaders import open_dataset
from executor.mpi import collectives as xcomm
from executor.mpi.faults import check_environment, maybe_fail
from executor.mpi.watchdog import LOST_AFTER_S, Watchdog, name_ranks
from executor.ps.downpour import run_downpour
from executor.ps.server import ServerRunner
from simulator.plan import Plan
from simulator.predict import code_version, context
from simulator.progress import Steps
from simulator.specs import Scenario
from simulator.strategies import build_plan


def dataset_for(scenario: Scenario, graph) -> Dataset:  # noqa: ANN001
    """The scenario's ``data`` (a real loader), or learnable synthetic data of the model's
    input shape and classes."""
    if scenario.data:
        return open_dataset(scenario.data, Path(scenario.file).parent,
                            where=f"{scenario.file}: data")
    order = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
    shape = tuple(graph.graph["input_shape"])
    classes = int(np.prod(graph.nodes[order[-1]]["out_shape"]))
    return synthetic(max(4096, 8 * scenario.training.batch_size), shape, classes,
                     scenario.seed)


def runnable(plans: list[Plan], size: int) -> tuple[list[Plan], list[str]]:
    ok, skipped = [], []
    for p in plans:
        if len(p.ranks) != size:
            skipped.append(f"{p.strategy}: needs {len(p.ranks)} ranks, {size} launched")
        elif p.mode not in ("sync", "async", "batch"):
            skipped.append(f"{p.strategy}: {p.scheme} ({p.mode}) is not executed yet")
        else:
            ok.append(p)
    return ok, skipped


@dataclass
class Prepared:
    """What every rank checks before any rank starts: bad input fails here, alike everywhere."""

    scenario: Scenario
    ctx: Any
    plans: list[Plan]
    skipped: list[str]
    data: Dataset


def prepare(comm: MPI.Comm, scenario: Scenario, names: list[str] | None) -> Prepared:
    check_environment(comm.Get_size())  # a fault-injection variable that cannot be used
    ctx = context(scenario)
    check_executable(ctx.graph)
    if scenario.training.precision != "fp32":
        raise ExecutorError(f"{scenario.file}: training.precision is "
                            f"{scenario.training.precision!r}; the executor computes in fp32")
    specs = [s for s in scenario.strategies if not names or s.name in names]
    plans, skipped = runnable([build_plan(ctx, s) for s in specs], comm.Get_size())
    if names and skipped:
        raise ExecutorError(f"{scenario.file}: strategy {skipped[0]}")
    if not plans:
        raise ExecutorError(f"{scenario.file}: no strategy runs on {comm.Get_size()} rank(s): "
                            + "; ".join(skipped))
    data = dataset_for(scenario, ctx.graph)
    check_tokens(scenario, ctx.graph, data)
    check_samples(scenario, ctx.graph, data)
    return Prepared(scenario, ctx, plans, skipped, data)


def check_samples(scenario: Scenario, graph, data: Dataset) -> None:  # noqa: ANN001
    """A classifier's data must fit it: each sample as many values as the model's input (the
    executor reshapes, so a 1x8x8 image feeds a dense layer of 64), and every label one of its
    classes (a label past the last output would index outside the softmax)."""
    order = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
    if graph.nodes[order[0]]["kind"] == "embedding" or not len(data):
        return
    want = tuple(graph.graph["input_shape"])
    got = tuple(data.x.shape[1:])
    where = f"{scenario.file}: data"
    if int(np.prod(want)) != int(np.prod(got)):
        raise ExecutorError(f"{where}: the samples are {'x'.join(map(str, got))} "
                            f"({int(np.prod(got)):,} values) but the model takes "
                            f"{'x'.join(map(str, want))} ({int(np.prod(want)):,} values)")
    classes = int(np.prod(graph.nodes[order[-1]]["out_shape"]))
    top, low = int(data.y.max()), int(data.y.min())
    if top >= classes or low < 0:
        raise ExecutorError(f"{where}: labels run from {low} to {top} but the model has "
                            f"{classes} classes (0 to {classes - 1})")


def check_tokens(scenario: Scenario, graph, data: Dataset) -> None:  # noqa: ANN001
    """A language model reads the text's token ids: its sequence must be the samples' length
    and its vocabulary hold every id (an id past the table would be trained as nothing)."""
    first = graph.nodes[sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])[0]]
    if first["kind"] != "embedding":
        return
    seq, vocab = first["in_shape"][0], first["vocab"]
    where = f"{scenario.file}: model.params"
    if tuple(data.x.shape[1:]) != (seq,):
        raise ExecutorError(f"{where}.seq_len is {seq} but the data's samples are "
                            f"{tuple(data.x.shape[1:])} tokens (data.seq_len)")
    ids = int(max(data.x.max(), data.y.max())) + 1 if len(data) else 0
    if ids > vocab:
        raise ExecutorError(f"{where}.vocab is {vocab} but the data has token ids up to "
                            f"{ids - 1} ({ids} distinct symbols): give vocab >= {ids}")


def execute(comm: MPI.Comm, prep: Prepared, backend: Any, timeout: float = 600.0,
            weights: dict[str, Any] | None = None, lost_after: float = LOST_AFTER_S, *,
            checkpoints: Checkpoints | None = None,
            on_partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run and measure the prepared strategies; when ``weights`` is a dict, rank 0 fills it with
    each strategy's final whole weights (``{strategy: {layer: {w, b}}}``).

    After every strategy but the last, rank 0 hands ``on_partial`` the Result so far (marked
    ``partial``, with the strategies still to run); before the watchdog aborts the job it hands
    it that Result with the failure. ``checkpoints`` (``checkpoint.py``) are written as the
    strategies run, and a resumed run takes its finished strategies from them. A rank lost in a
    run that goes on without it (Downpour) ends the job after that strategy: the strategies
    left are listed as skipped, and the ranks under ``lost_ranks``."""
    scenario, ctx, plans, data = prep.scenario, prep.ctx, prep.plans, prep.data
    hosts = sorted(set(comm.allgather(MPI.Get_processor_name())))  # while every rank is alive
    waits = xcomm.choose_waits(comm)
    dog = Watchdog(comm, timeout, lost_after)
    rank0 = comm.Get_rank() == 0
    step = Steps(len(plans), enabled=rank0)
    result: dict[str, Any] = {
        "scenario": {"name": scenario.name, "description": scenario.description,
                     "file": scenario.file, "seed": scenario.seed,
                     "devices": comm.Get_size(), "device": f"{backend.name} rank",
                     "batch_size": scenario.training.batch_size,
                     "hosts": hosts, "waits": waits},
        "code_version": code_version(),
        "skipped": list(prep.skipped),
        "results": [],
    }
    if checkpoints is not None and checkpoints.source is not None:
        result["resumed_from"] = str(checkpoints.source)
    if on_partial is not None and rank0:
        dog.last_words = lambda line: on_partial(_partial(result, plans, line))
    # whole weights: asked for, or kept with the checkpoints of a finished strategy
    keep = weights if weights is not None or checkpoints is None else {}
    lost: list[int] = []
    try:
        for i, plan in enumerate(plans):
            if lost:
                result["skipped"].append(f"{plan.strategy}: not run: {name_ranks(lost)} lost")
                continue
            done = checkpoints.finished(plan.strategy) if checkpoints is not None else None
            if done is not None:
                step(f"{plan.strategy}: finished before the checkpoint resumed")
                if rank0:
                    result["results"].append(done)
                    if weights is not None:
                        weights[plan.strategy] = checkpoints.weights[plan.strategy]
                continue
            step(f"running {plan.strategy} on {len(plan.ranks)} rank(s)")
            entry = (
                run_downpour(comm, plan, ctx.graph, scenario, data, backend, dog, keep,
                             _period_batch)
                if plan.mode == "async" else
                run_dbn(comm, plan, ctx.graph, scenario, data, backend, dog, keep)
                if plan.scheme == "dbn_pretrain" else
                run_plan(comm, plan, ctx.graph, scenario, data, backend, dog, keep, checkpoints))
            lost = sorted(set(entry.pop("lost_ranks", ())) |
                          {f["rank"] for f in entry.get("failures", ())})
            if checkpoints is not None:
                checkpoints.finish(plan, entry, (keep or {}).get(plan.strategy))
            if rank0:
                result["results"].append(entry)
                if on_partial is not None and i < len(plans) - 1 and not lost:
                    on_partial(_partial(result, plans, None))
    finally:
        dog.stop()
    if lost:
        result["lost_ranks"] = lost
    result["partial"] = False
    return result


def _partial(result: dict[str, Any], plans: list[Plan], failure: str | None
             ) -> dict[str, Any]:
    """The Result so far: the finished strategies' entries, the names of those still to run,
    and the failure that ends the job, if any."""
    entries = list(result["results"])
    done = {e.get("strategy") for e in entries}
    out = {**result, "results": entries, "partial": True,
           "pending": [p.strategy for p in plans if p.strategy not in done]}
    if failure:
        out["failure"] = failure
    return out


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
    total = plan.samples_per_period
    iterations, warm = t.iterations, t.warmup_iterations
    first = checkpoints.restore(plan, runner) if checkpoints is not None else 0
    # resumed past the warm-up, the first period compiles and faults in the kernels afresh:
    # its loss counts, its time does not (unless it is the last)
    timed = warm if first < warm else min(first + 1, warm + iterations - 1)
    times, phases, curve, timeline = [], [], [], None
    wall0 = None
    for period, (x, y) in zip(range(first, warm + iterations),
                              _batches(data, total, first, prog)):
        dog.tick(f"{plan.strategy}, period {period}")
        maybe_fail(comm.Get_rank(), period, warm)
        xcomm.barrier(comm)
        start = MPI.Wtime()
        timings, stats = runner.run_period(x, y)
        xcomm.barrier(comm)
        end = MPI.Wtime()
        wall0 = start if wall0 is None and period >= warm else wall0
        summed = comm.allreduce(np.array([stats["loss_sum"], stats["correct"],
                                          stats["counted"]], dtype=np.float64))
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
    return entry


TAG_HANDED = 7109


def group_communicators_of(server: ServerRunner) -> MPI.Comm | None:
    return server.groups.get("servers")


def _serve(comm: MPI.Comm, plan: Plan, graph, scenario: Scenario, dog: Watchdog,  # noqa: ANN001
           weights: dict[str, Any] | None, checkpoints: Checkpoints | None) -> dict[str, Any]:
    """A parameter-server rank: serve every period between the same barriers as the workers."""
    t = scenario.training
    server = ServerRunner(comm, plan, graph, scenario.seed, t.learning_rate, t.momentum)
    servers = group_communicators_of(server)
    periods = t.warmup_iterations + t.iterations
    first = checkpoints.restore(plan, server) if checkpoints is not None else 0
    for period in range(first, periods):
        dog.tick(f"{plan.strategy}, serving period {period}")
        if period == t.warmup_iterations:
            server.handed.clear()  # portions of measured batches only
        xcomm.barrier(comm)
        if plan.mode == "batch":
            server.serve_batch(plan.portions, server.shard == 0, servers,
                               plan.options.get("history", 10))
        else:
            server.serve_period()
        xcomm.barrier(comm)
        comm.allreduce(np.zeros(3, dtype=np.float64))
        if checkpoints is not None:
            checkpoints.after_period(plan, period + 1, periods, server)
    if plan.mode == "batch" and server.shard == 0:
        comm.send(server.handed, dest=0, tag=TAG_HANDED)
    if weights is not None:
        comm.gather([], root=0)  # whole_weights: the workers hold the whole model
    comm.gather(None, root=0)
    return {}


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

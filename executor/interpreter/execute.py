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

With ``training.target`` (docs/executor.md, "Running to a target") the warm-up periods run as
ever, then every rank (parameter servers too) goes back to its state from before them and the
run trains from the first batch until the windowed training metric reaches the target
(``target.py``), at most ``training.iterations`` periods; the entry gets the target block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from executor.data import Dataset, synthetic
from executor.dbn.pretrain import run_dbn
from executor.interpreter.checkpoint import Checkpoints
from executor.interpreter.model import ExecutorError, check_executable
from executor.interpreter.run_plan import _period_batch, run_plan
from executor.loaders import open_dataset
from executor.mpi import collectives as xcomm
from executor.mpi.faults import check_environment
from executor.mpi.watchdog import LOST_AFTER_S, Watchdog, name_ranks
from executor.ps.downpour import run_downpour
from simulator.convergence import check_target
from simulator.errors import ScenarioError
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


def prepare(comm: MPI.Comm, scenario: Scenario, names: list[str] | None, *,
            checkpointing: bool = False) -> Prepared:
    """Every check before any rank works; ``checkpointing``: the run is asked to write or
    resume checkpoints."""
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
    check_target_run(scenario, plans, checkpointing)
    data = dataset_for(scenario, ctx.graph)
    check_tokens(scenario, ctx.graph, data)
    check_samples(scenario, ctx.graph, data)
    return Prepared(scenario, ctx, plans, skipped, data)


def check_target_run(scenario: Scenario, plans: list[Plan], checkpointing: bool) -> None:
    """A target's metric must be one every plan measures, and a run to a target is not
    checkpointed (its window and its clock would not survive a resume)."""
    target = scenario.training.target
    if target is None:
        return
    for plan in plans:
        try:
            check_target(target, plan, "training.target.metric")
        except ScenarioError as e:
            raise ExecutorError(str(e.with_file(scenario.file))) from None
    if checkpointing:
        raise ExecutorError(f"{scenario.file}: training.target: a run to a target is not "
                            "checkpointed (its window of recent periods and its clock are not "
                            "in a checkpoint); run it without --checkpoint and --resume")


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
    check_target_run(scenario, plans, checkpoints is not None)  # (alike on every rank)
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

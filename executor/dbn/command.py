"""``parasim pretrain``: DBN pre-training on its own under mpiexec, with the time to a target
error (``parasim execute`` runs the same ``run_dbn`` for every strategy of a scenario)."""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from executor.dbn.pretrain import run_dbn, time_to_error, training_inputs
from executor.interpreter.model import ExecutorError
from simulator.outputs import write_atomic, write_json
from simulator.plan import Plan


@dataclass
class Prepared:
    scenario: Any
    graph: Any
    plans: list[Plan]
    skipped: list[str]
    data: Any


def prepare_dbn(comm: Any, scenario: Any, names: list[str] | None) -> Prepared:
    """Plans and data every rank checks alike before any rank starts."""
    from executor.data import synthetic
    from executor.dbn.finetune import check_test_split, data_size_for
    from executor.loaders import open_dataset
    from simulator.predict import context
    from simulator.strategies import build_plan

    ctx = context(scenario)
    if scenario.training.precision != "fp32":
        raise ExecutorError(f"{scenario.file}: training.precision is "
                            f"{scenario.training.precision!r}; the executor computes in fp32")
    specs = [s for s in scenario.strategies if not names or s.name in names]
    known = {s.name for s in scenario.strategies}
    for name in names or []:
        if name not in known:
            raise ExecutorError(f"{scenario.file}: no strategy named {name!r}")
    for s in specs:
        if names and s.scheme != "dbn_pretrain":
            raise ExecutorError(f"{scenario.file}: strategy {s.name} is {s.scheme}, not "
                                "dbn_pretrain")
    plans, skipped = [], []
    for s in (s for s in specs if s.scheme == "dbn_pretrain"):
        plan = build_plan(ctx, s)
        if len(plan.ranks) != comm.Get_size():
            skipped.append(f"{s.name}: needs {len(plan.ranks)} ranks, {comm.Get_size()} "
                           "launched")
        else:
            plans.append(plan)
    if names and skipped:
        raise ExecutorError(f"{scenario.file}: strategy {skipped[0]}")
    if not plans:
        raise ExecutorError(f"{scenario.file}: no dbn_pretrain strategy runs on "
                            f"{comm.Get_size()} rank(s)" + "".join(f"; {s}" for s in skipped))
    visible = ctx.graph.graph["input_shape"]
    if scenario.data:
        data = open_dataset(scenario.data, Path(scenario.file).parent,
                            where=f"{scenario.file}: data")
    else:
        most = max(data_size_for(p.options) for p in plans)
        data = synthetic(most, tuple(visible), 10, scenario.seed)
    for p in plans:
        training_inputs(data, p.options["samples"], int(np.prod(visible)))
        check_test_split(data, p.options)
    return Prepared(scenario, ctx.graph, plans, skipped, data)


def execute_dbn(comm: Any, prep: Prepared, backend: Any, timeout: float,
            weights: dict[str, Any] | None) -> dict[str, Any]:
    from mpi4py import MPI

    from executor.mpi.collectives import choose_waits
    from executor.mpi.watchdog import Watchdog
    from simulator.predict import code_version

    sc = prep.scenario
    waits = choose_waits(comm)
    dog = Watchdog(comm, timeout)
    try:
        entries = [run_dbn(comm, plan, prep.graph, sc, prep.data, backend, dog, weights)
                   for plan in prep.plans]
    finally:
        dog.stop()
    return {"scenario": {"name": sc.name, "description": sc.description, "file": sc.file,
                         "seed": sc.seed, "devices": comm.Get_size(),
                         "device": f"{backend.name} rank", "batch_size": sc.training.batch_size,
                         "hosts": sorted(set(comm.allgather(MPI.Get_processor_name()))),
                         "waits": waits},
            "code_version": code_version(), "skipped": prep.skipped, "results": entries}


def format_result(result: dict[str, Any], target: float | None = None) -> str:
    """One row per strategy; with ``target``, the time to that first-layer error."""
    from executor.dbn.finetune import summary
    from simulator.console import target_line

    sc = result["scenario"]
    head = ["strategy", "ranks", "epochs", "final error per layer", "total s", "epoch ms",
            "samples/s"] + ([f"s to {target:g}"] if target is not None else [])
    rows = [head]
    for e in result["results"]:
        pt = e["pretraining"]
        row = [e["strategy"], str(e["devices"]),
               "/".join(str(r["epochs"]) for r in pt["layers"]),
               "/".join(f"{r['reconstruction_error'][-1]:.4f}" for r in pt["layers"]),
               f"{pt['total_time_s']:.3f}", f"{e['iteration_time_s'] * 1e3:.2f}",
               f"{e['throughput_samples_per_s']:.0f}"]
        if target is not None:
            reached = time_to_error(e, target)
            row.append("never" if reached is None else f"{reached:.3f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"{sc['name']}: measured on {sc['devices']} rank(s)"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines += [summary(e) for e in result["results"] if "fine_tuning" in e["pretraining"]]
    lines += [line for e in result["results"] if (line := target_line(e))]
    lines += [f"skipped {s}" for s in result.get("skipped", [])]
    return "\n".join(lines)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Under mpiexec: every rank checks the input alike, then runs the strategies (the
    command checked that MPI is there)."""
    from mpi4py import MPI

    from executor.kernels import get_backend
    from executor.mpi.collectives import abort_on_error
    from simulator.errors import UserError
    from simulator.outputs import check_outputs
    from simulator.scenario import load_scenario

    comm = MPI.COMM_WORLD
    rank0 = comm.Get_rank() == 0
    failure = None
    try:
        if rank0:
            check_outputs([args.json, args.weights], args.force)
        scenario = load_scenario(args.scenario)
        try:
            backend = get_backend(args.backend)
        except RuntimeError as e:
            raise ExecutorError(f"--backend {args.backend}: {e}") from None
        prepared = prepare_dbn(comm, scenario, args.strategy)
    except UserError as e:
        failure = str(e)
    failures = comm.allgather(failure)
    if any(failures):
        if rank0:
            print(f"parasim: error: {next(f for f in failures if f)}", file=sys.stderr)
        return 2
    weights: dict[str, Any] | None = {} if args.weights else None
    with abort_on_error(comm):
        result = execute_dbn(comm, prepared, backend, args.timeout, weights)
    if not rank0:
        return 0
    print(format_result(result, args.target))
    if args.weights:
        flat = {f"{s}/{layer}/{key}": v for s, layers in (weights or {}).items()
                for layer, params in layers.items() for key, v in params.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **flat)
        write_atomic(args.weights, buffer.getvalue())
    if args.json:
        write_json(args.json, result)
        print(f"result written to {args.json}")
    return 0

"""``parasim execute``: run the scenario's plans for real under ``mpiexec`` and write the
measured Result (``executor/interpreter/execute.py`` runs them), as each strategy finishes;
checkpoints and resuming (``executor/interpreter/checkpoint.py``); a rank killed by a signal is
named by its supervisor (``executor/mpi/supervisor.py``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from executor.launch import agree, backend_named, mpi
from simulator.console import columns
from simulator.errors import UserError
from simulator.outputs import (
    STDOUT,
    check_outputs,
    human,
    write_atomic,
    write_json,
    write_outputs,
    written,
)


def cmd_execute(args: argparse.Namespace) -> int:
    from executor.mpi.supervisor import ending, supervise

    # under mpiexec, this process stays a small parent and the rank runs in its child, so that a
    # rank killed by a signal is named and leaves the others running (executor/mpi/supervisor.py)
    supervise()
    try:
        return _execute(args)
    finally:
        ending()


def _execute(args: argparse.Namespace) -> int:
    from simulator.cli import _load

    comm = mpi().COMM_WORLD
    from executor.interpreter.checkpoint import open_checkpoints
    from executor.interpreter.execute import execute, prepare
    from executor.mpi.collectives import abort_on_error

    rank0 = comm.Get_rank() == 0
    # bad input every rank sees alike: rank 0 says it once, every rank exits 2
    failure = None
    try:
        scenario = _load(args.scenario, args.strategy)
        if rank0:
            check_outputs([args.json, args.trace, args.report, args.weights], args.force)
        backend = backend_named(args.backend)  # e.g. the CUDA backend on a machine without a GPU
        prepared = prepare(comm, scenario, args.strategy,
                           checkpointing=bool(args.checkpoint or args.resume))
    except UserError as e:
        failure = str(e)
    if not agree(comm, failure):
        return 2
    failure, checkpoints = None, None
    try:
        checkpoints = open_checkpoints(comm, prepared, backend.name, args.checkpoint,
                                       args.checkpoint_every, args.resume, args.force)
    except UserError as e:
        failure = str(e)
    if not agree(comm, failure):
        return 2
    weights: dict[str, Any] | None = {} if args.weights else None
    files = _Files(args, weights)
    # from here an error on one rank ends the whole job with the rank and the message
    with abort_on_error(comm):
        result = execute(comm, prepared, backend, args.timeout, weights, args.lost_after,
                         checkpoints=checkpoints, on_partial=files.partial if rank0 else None)
    lost = bool(result.get("lost_ranks"))
    if not rank0:
        return _exit_without_finalize() if lost else 0
    if args.weights:
        files.weights()
        print(f"weights written to {args.weights}", file=human(args))
    print(format_measured(result), file=human(args))
    write_outputs(result, args)
    if args.trace:
        write_json(args.trace, measured_trace(result))
        written("trace", args.trace, args)
    if lost:
        return _exit_without_finalize()
    return 0


class _Files:
    """Rank 0's output files as the run goes: after every strategy, and before the watchdog
    aborts the job, the Result so far (marked partial) and the weights so far, each written
    whole (a temporary file, then a rename), so that a job that dies keeps what was done."""

    def __init__(self, args: argparse.Namespace, weights: dict[str, Any] | None):
        import threading

        self.args, self.whole = args, weights
        self.lock = threading.Lock()  # the watchdog's thread may write too

    def partial(self, result: dict[str, Any]) -> None:
        with self.lock:
            if self.args.json and self.args.json != STDOUT:
                write_json(self.args.json, result)
            if self.args.weights:
                self.weights()

    def weights(self) -> None:
        import io

        import numpy as np

        flat = {f"{s}/{layer}/{k}": v for s, layers in dict(self.whole or {}).items()
                for layer, params in layers.items() for k, v in params.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **flat)
        write_atomic(self.args.weights, buffer.getvalue())


def _exit_without_finalize() -> int:
    """After a lost rank, MPI_Finalize would wait for it forever: leave without it (the
    outputs are written and flushed)."""
    import os

    from executor.mpi.supervisor import ending

    ending()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def format_measured(result: dict[str, Any]) -> str:
    sc = result["scenario"]
    waits = f"; {sc['waits']} waits" if "waits" in sc else ""
    lines = [f"{sc['name']}: measured on {sc['devices']} rank(s) "
             f"({', '.join(sc['hosts'])}{waits})",
             "(breakdown columns: ms per iteration, averaged over ranks)"]
    rows = [("strategy", "ranks", "samples/s", "iter ms", "compute", "comm", "ps wait", "copy",
             "idle", "loss", "accuracy")]
    for e in result["results"]:
        bd, tr = e["breakdown_s"], e["training"]
        rows.append((e["strategy"], str(e["devices"]), f"{e['throughput_samples_per_s']:.1f}",
                     f"{e['iteration_time_s'] * 1e3:.3f}",
                     *(f"{bd[k] * 1e3:.3f}" for k in ("compute", "exposed_communication",
                                                       "ps_wait", "host_device_copy", "idle")),
                     f"{tr['loss'][-1]:.4f}",
                     f"{tr['accuracy'][-1]:.1%}" if tr.get("accuracy") else "-"))
    lines += columns(rows)
    from executor.interpreter.target import describe

    lines += [line for line in map(describe, result["results"]) if line]
    for e in result["results"]:
        if "staleness" in e:
            st = e["staleness"]
            lines.append(f"{e['strategy']}: gradient staleness mean {st['mean']:.2f}, max "
                         f"{st['max']}; {e['samples_processed']} samples processed")
        for f in e.get("failures", []):
            lines.append(f"{e['strategy']}: rank {f['rank']} {f['what']}")
    lines += [f"skipped {s}" for s in result.get("skipped", [])]
    if "resumed_from" in result:
        lines.append(f"resumed from the checkpoint in {result['resumed_from']}")
    return "\n".join(lines)


def measured_trace(result: dict[str, Any]) -> dict[str, Any]:
    """Chrome trace of the first measured iteration of every rank, per strategy."""
    events: list[dict[str, Any]] = []
    pid = 0
    for e in result["results"]:
        if "timeline" not in e:
            continue
        devices = sorted({s[0] for s in e["timeline"]["spans"]})
        pids = {}
        for d in devices:
            pid += 1
            pids[d] = pid
            events.append({"ph": "M", "name": "process_name", "pid": pid,
                           "args": {"name": f"{e['strategy']}: {d}"}})
        for d, stream, name, start, dur in e["timeline"]["spans"]:
            events.append({"ph": "X", "name": name, "pid": pids[d],
                           "tid": 0 if stream == "compute" else 1, "ts": start * 1e6,
                           "dur": dur * 1e6})
    return {"traceEvents": events, "displayTimeUnit": "ms"}

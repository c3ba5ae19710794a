"""``parasim calibrate``, ``parasim validate`` and ``parasim pretrain``: commands that run under
``mpiexec``.

Bad input (too few ranks, an output that exists, a bad scenario or profile) is one line from
rank 0 and exit 2 on every rank, as for ``parasim execute``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from simulator.console import BACKEND_HELP, SCENARIO_HELP


def add_parsers(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser(
        "calibrate", help="measure this allocation (under mpiexec) and write a profile",
        description="Run under mpiexec with at least two ranks (placed across nodes when "
                    "there are several): mpiexec -n 2 parasim calibrate -o profile.yaml. "
                    "Measures kernel efficiency curves, launch overhead, memory and copy "
                    "bandwidth, core sharing, point-to-point latency and bandwidth, and "
                    "all-reduce times; writes them in the catalogue's format.")
    cal.add_argument("-o", "--output", required=True, metavar="FILE",
                     help="the profile to write (YAML)")
    cal.add_argument("--grid", choices=("tiny", "small", "full"), default="small",
                     help="how many shapes and repeats (tiny: seconds, for tests; full: "
                     "about a minute per rank count)")
    cal.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                     help="the kernels to time: cpu (Numba on the cores) or cuda (numba-cuda on "
                     "the GPUs; default cpu)")
    cal.add_argument("--name", default="calibrated",
                     help="the device's name in the profile (links get _intra / _inter)")
    cal.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    cal.set_defaults(func=cmd_calibrate)
    val = sub.add_parser(
        "validate", help="predict with a profile, run the same plans (under mpiexec), compare",
        description="Run under mpiexec: mpiexec -n N parasim validate SCENARIO --profile P. "
                    "Simulates and executes every strategy of the scenario that runs on N "
                    "ranks, prints predicted against measured with the relative error, and "
                    "writes both Results.")
    val.add_argument("scenario", help=SCENARIO_HELP)
    val.add_argument("--profile", required=True, metavar="FILE",
                     help="a profile written by parasim calibrate")
    val.add_argument("--strategy", action="append", help="only this strategy (repeatable)")
    val.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                     help="the executor's kernels: cpu (Numba on the cores) or cuda "
                     "(numba-cuda on the GPUs); default cpu")
    val.add_argument("--predicted", metavar="FILE", help="write the predicted Result JSON")
    val.add_argument("--measured", metavar="FILE", help="write the measured Result JSON")
    val.add_argument("--report", metavar="FILE", help="write an HTML report of both")
    val.add_argument("--timeout", type=float, default=600.0, metavar="S",
                     help="abort a run that makes no progress for S seconds (default 600)")
    val.add_argument("--force", action="store_true", help="overwrite output files")
    val.set_defaults(func=cmd_validate)
    pre = sub.add_parser(
        "pretrain", help="pre-train a deep belief net layer by layer (under mpiexec)",
        description="Run under mpiexec: mpiexec -n N parasim pretrain SCENARIO. Runs the "
                    "scenario's dbn_pretrain strategies that need N ranks, prints each "
                    "layer's epochs and reconstruction error, and with --target the seconds "
                    "until the first layer's error reached it (docs/dbn.md).")
    pretrain_arguments(pre)
    pre.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from executor.dbn.command import cmd_pretrain as run

    _mpi()  # (a missing mpi4py or numba: one line naming the extra)
    return run(args)


def pretrain_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``parasim pretrain``."""
    p.add_argument("scenario", help=SCENARIO_HELP)
    p.add_argument("--strategy", action="append", help="only this strategy (repeatable)")
    p.add_argument("--backend", choices=("cpu", "reference", "cuda"), default="cpu",
                   help=BACKEND_HELP)
    p.add_argument("--json", metavar="FILE", help="write the Result JSON (rank 0)")
    p.add_argument("--weights", metavar="FILE", help="write the trained weights (.npz)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="abort a run that makes no progress for S seconds (default 600)")
    p.add_argument("--force", action="store_true", help="overwrite output files")
    p.add_argument("--target", type=float, metavar="ERR",
                   help="also print the seconds until the first layer's error reached ERR")


def _warn_uncalibrated(predicted: dict[str, Any], measured: dict[str, Any]) -> None:
    """Say so on the console when the prediction compared did not use a calibration of the
    machine that measured (the report carries the same warning as a banner)."""
    from reports.compare import calibration_warning

    why = calibration_warning(predicted, measured)
    if why:
        print(f"parasim: warning: {why}", file=sys.stderr)


def _mpi():  # noqa: ANN202
    from simulator.cli import UsageError

    try:
        import numba  # noqa: F401
        from mpi4py import MPI
    except ImportError as e:
        raise UsageError(f"this command needs {e.name}: pip install -e '.[exec,mpi]' (or mpi4py "
                         "built against your cluster's MPI)") from None
    return MPI


def _agree(comm: Any, failure: str | None) -> bool:
    """Every rank's input check; rank 0 prints the first failure. True when all passed."""
    failures = comm.allgather(failure)
    if any(failures):
        if comm.Get_rank() == 0:
            print(f"parasim: error: {next(f for f in failures if f)}", file=sys.stderr)
        return False
    return True


def _backend(name: str) -> Any:
    from executor.interpreter.model import ExecutorError
    from executor.kernels import get_backend

    try:
        return get_backend(name)
    except RuntimeError as e:
        raise ExecutorError(f"--backend {name}: {e}") from None


def cmd_calibrate(args: argparse.Namespace) -> int:
    from simulator.cli import UsageError, _check_outputs, _user_errors

    MPI = _mpi()
    comm = MPI.COMM_WORLD
    failure = None
    try:
        if comm.Get_size() < 2:
            raise UsageError("parasim calibrate needs at least two ranks (to measure links and "
                             "all-reduce): mpiexec -n 2 parasim calibrate -o FILE")
        if comm.Get_rank() == 0:
            _check_outputs([args.output], args.force)
        backend = _backend(args.backend)
    except _user_errors() as e:
        failure = str(e)
    if not _agree(comm, failure):
        return 2
    from executor.calibration.calibrate import calibrate
    from executor.mpi.collectives import abort_on_error

    with abort_on_error(comm):
        text, lines = calibrate(comm, backend, args.grid, args.name)
    if comm.Get_rank() == 0:
        print("\n".join(lines))
        _write_text(args.output, text)
        print(f"profile written to {args.output}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from simulator.cli import _check_outputs, _user_errors, _write_json

    MPI = _mpi()
    comm = MPI.COMM_WORLD
    rank0 = comm.Get_rank() == 0
    failure = None
    try:
        from executor.interpreter.execute import prepare
        from simulator.scenario import with_profile

        scenario = with_profile(args.scenario, args.profile)
        if rank0:
            _check_outputs([args.predicted, args.measured, args.report], args.force)
        backend = _backend(args.backend)
        prepared = prepare(comm, scenario, args.strategy)
    except _user_errors() as e:
        failure = str(e)
    if not _agree(comm, failure):
        return 2
    from executor.interpreter.execute import execute
    from executor.mpi.collectives import abort_on_error
    from executor.validate import compare, format_comparison, predict_measured

    names = [p.strategy for p in prepared.plans]
    with abort_on_error(comm):
        measured = execute(comm, prepared, backend, args.timeout)
    if not rank0:
        return 0
    predicted = predict_measured(scenario, names)
    measured["profile"] = predicted["profile"] = str(Path(args.profile))
    rows = compare(predicted, measured)
    measured["validation"] = predicted["validation"] = rows
    title = (f"{scenario.name}: predicted with {args.profile} against measured on "
             f"{comm.Get_size()} rank(s) ({', '.join(measured['scenario']['hosts'])})")
    print(format_comparison(rows, title))
    _warn_uncalibrated(predicted, measured)
    for path, result in ((args.predicted, predicted), (args.measured, measured)):
        if path:
            _write_json(path, result)
            print(f"Result written to {path}")
    if args.report:
        from reports import build_report

        _write_text(args.report, build_report([predicted, measured],
                                              [args.predicted or "predicted",
                                               args.measured or "measured"]))
        print(f"report written to {args.report}")
    return 0


def _write_text(path: str, text: str) -> None:
    from reports.cli import write_atomic

    write_atomic(Path(path), text)

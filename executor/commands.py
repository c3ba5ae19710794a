"""The executor's commands of ``parasim``: execute, calibrate, validate, pretrain, and the
``--validate`` part of search; they run under ``mpiexec`` and load MPI and Numba only then.

Bad input (too few ranks, an output that exists, a bad scenario or profile) is one line from
rank 0 and exit 2 on every rank, as for ``parasim execute``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from executor.execute_command import cmd_execute
from executor.launch import agree, backend_named, mpi
from simulator.console import BACKEND_HELP, SCENARIO_HELP
from simulator.errors import UsageError, UserError
from simulator.outputs import (
    JSON_OUT,
    check_outputs,
    human,
    write_json,
    write_outputs,
    write_text,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("execute", help="run strategies for real under MPI and measure them",
                        description="Run under mpiexec: mpiexec -n N parasim execute SCENARIO. "
                        "Without --strategy, every strategy whose plan needs exactly N ranks "
                        "runs in turn.")
    ex.add_argument("scenario", help=SCENARIO_HELP)
    ex.add_argument("--strategy", action="append", help="only this strategy (repeatable)")
    ex.add_argument("--backend", choices=("cpu", "cuda", "reference"), default="cpu",
                    help=BACKEND_HELP)
    ex.add_argument("--timeout", type=float, default=600.0, metavar="S",
                    help="abort a run that makes no progress for S seconds (default 600)")
    ex.add_argument("--json", metavar="FILE", help="write the Result JSON (rank 0)" + JSON_OUT)
    ex.add_argument("--trace", metavar="FILE", help="write a Chrome trace of every rank")
    ex.add_argument("--report", metavar="FILE", help="write an HTML report")
    ex.add_argument("--lost-after", type=float, default=5.0, metavar="S",
                    help="count a rank whose heartbeat stops for S seconds as lost: synchronous "
                    "schemes abort naming it, Downpour goes on without a lost worker "
                    "(default 5; docs/reliability.md)")
    ex.add_argument("--weights", metavar="FILE", help="write every strategy's final weights "
                    "(whole, put together from the shards) to an .npz file")
    ex.add_argument("--checkpoint", metavar="DIR",
                    help="write checkpoints into DIR (created if missing; every rank must see "
                    "it), every --checkpoint-every periods")
    ex.add_argument("--checkpoint-every", type=int, metavar="N",
                    help="periods between checkpoints (warm-up periods count)")
    ex.add_argument("--resume", metavar="DIR",
                    help="continue the run whose checkpoints are in DIR, exactly as if it had "
                    "never stopped (same scenario, strategies, backend and ranks); it goes on "
                    "writing checkpoints there unless --checkpoint says where")
    ex.add_argument("--force", action="store_true",
                    help="overwrite output files (and start a --checkpoint folder afresh)")
    ex.set_defaults(func=cmd_execute)
    cal = sub.add_parser(
        "calibrate", help="measure this allocation (under mpiexec), or import a PyTorch "
                          "profiler trace, and write a profile",
        description="Run under mpiexec with at least two ranks (placed across nodes when "
                    "there are several): mpiexec -n 2 parasim calibrate -o profile.yaml. "
                    "Measures kernel efficiency curves, launch overhead, memory and copy "
                    "bandwidth, core sharing, point-to-point latency and bandwidth, and "
                    "all-reduce times; writes them in the catalogue's format. With "
                    "--from-profile TRACE --scenario S (no mpiexec, no GPU): fits the same "
                    "profile to the kernels of a torch.profiler trace of a real job, matched "
                    "to the layers of S's model (docs/validation.md, 'Calibrating from a "
                    "framework's profile').")
    cal.add_argument("-o", "--output", required=True, metavar="FILE",
                     help="the profile to write (YAML)")
    cal.add_argument("--grid", choices=("tiny", "small", "full"), default="small",
                     help="how many shapes and repeats (tiny: seconds, for tests; full: "
                     "about a minute per rank count)")
    cal.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                     help="the kernels to time: cpu (Numba on the cores) or cuda (numba-cuda on "
                     "the GPUs; default cpu)")
    cal.add_argument("--name", default=None,
                     help="the device's name in the profile (links get _intra / _inter; "
                     "default: calibrated, or DEVICE_traced from a trace)")
    cal.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    cal.add_argument("--from-profile", metavar="TRACE",
                     help="import this Chrome-trace JSON of torch.profiler "
                     "(prof.export_chrome_trace) instead of measuring; needs --scenario")
    cal.add_argument("--scenario", metavar="SCENARIO",
                     help="with --from-profile: the scenario whose model the trace ran (its "
                     "layers are matched to the trace's operators)")
    cal.add_argument("--device", metavar="NAME",
                     help="with --from-profile: the catalogue device for the peaks (default: "
                     "the one the trace's GPU name gives)")
    cal.add_argument("--intra-link", metavar="NAME",
                     help="with --from-profile: the catalogue link to write as the intra-node "
                     "link (default: from the trace's NCCL all-reduce fit)")
    cal.add_argument("--comm-scope", choices=("intra", "inter"), default="intra",
                     help="with --from-profile: the groups the traced all-reduces ran over, "
                     "one node (intra, default) or several (inter)")
    cal.add_argument("--accept-noisy", action="store_true",
                     help="write the profile even when the machine was too busy to measure or a "
                     "figure is outside its physical bounds (refused otherwise: exit 2, no "
                     "profile); the reasons are printed and recorded in the profile's "
                     "calibration.conditions")
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
    conv = sub.add_parser(
        "calibrate-convergence",
        help="run strategies to the scenario's training.target and fit the steps-to-target "
             "model (not under mpiexec: it launches each run)",
        description="Runs each strategy of SCENARIO for real to training.target (each its own "
                    "`mpiexec -n R parasim execute`, R the ranks its plan needs), reads the steps "
                    "every run took to each level of the metric, fits the statistical-"
                    "efficiency model (docs/time_to_accuracy.md) and writes a convergence "
                    "profile; prints the fit's residual. Nothing is written when a run fails, "
                    "does not reach the target, or the runs cannot determine the coefficients.")
    conv.add_argument("scenario", help=SCENARIO_HELP)
    conv.add_argument("-o", "--output", required=True, metavar="FILE",
                      help="the convergence profile to write (YAML)")
    conv.add_argument("--strategy", action="append",
                      help="only this strategy (repeatable; default: every strategy)")
    conv.add_argument("--learning-rate", action="append", type=float, metavar="LR",
                      help="also run every strategy at this rate (repeatable): two or more "
                      "rates let the fit find lr_max")
    conv.add_argument("--batch-size", action="append", type=int, metavar="B",
                      help="also run every strategy at this global batch (repeatable): the fit "
                      "needs two or more batch sizes")
    conv.add_argument("--repeats", type=int, default=1, metavar="N",
                      help="runs per strategy and rate, seeds seed .. seed + N - 1 (default 1)")
    conv.add_argument("--backend", choices=("cpu", "reference"), default="cpu",
                      help="the executor's kernels (default cpu)")
    conv.add_argument("--timeout", type=float, default=600.0, metavar="S",
                      help="give up on a run that takes longer than S seconds (default 600)")
    conv.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    conv.set_defaults(func=cmd_calibrate_convergence)


def cmd_calibrate_convergence(args: argparse.Namespace) -> int:
    from executor.calibration.convergence_runs import cmd_calibrate_convergence as run

    return run(args)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from executor.dbn.command import cmd_pretrain as run

    mpi()  # (a missing mpi4py or numba: one line naming the extra)
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.from_profile or args.scenario:
        return cmd_calibrate_from_trace(args)
    args.name = args.name or "calibrated"
    MPI = mpi()
    comm = MPI.COMM_WORLD
    failure = None
    try:
        for option in ("device", "intra_link"):
            if getattr(args, option):
                raise UsageError(f"--{option.replace('_', '-')} goes with --from-profile")
        if comm.Get_size() < 2:
            raise UsageError("parasim calibrate needs at least two ranks (to measure links and "
                             "all-reduce): mpiexec -n 2 parasim calibrate -o FILE")
        if comm.Get_rank() == 0:
            check_outputs([args.output], args.force)
        backend = backend_named(args.backend)
    except UserError as e:
        failure = str(e)
    if not agree(comm, failure):
        return 2
    from executor.calibration.calibrate import calibrate
    from executor.mpi.collectives import abort_on_error

    with abort_on_error(comm):
        outcome = calibrate(comm, backend, args.grid, args.name, args.accept_noisy)
    if not agree(comm, outcome.refusal and str(outcome.refusal)):
        return 2  # a machine too busy to measure, or a figure no machine has: no profile
    if comm.Get_rank() == 0:
        print("\n".join(outcome.lines))
        for line in outcome.warnings:
            print(f"parasim: warning: {line}", file=sys.stderr)
        write_text(args.output, outcome.text)
        print(f"profile written to {args.output}")
    return 0


def cmd_calibrate_from_trace(args: argparse.Namespace) -> int:
    """``parasim calibrate --from-profile TRACE --scenario S -o FILE``: no MPI, no Numba."""
    if not (args.from_profile and args.scenario):
        raise UsageError("--from-profile TRACE and --scenario SCENARIO go together: the "
                         "scenario's model is what the trace's kernels are matched to")
    check_outputs([args.output], args.force)
    from executor.calibration.trace_import import import_trace

    imported = import_trace(args.from_profile, args.scenario, device=args.device,
                            name=args.name, comm_scope=args.comm_scope,
                            intra_link=args.intra_link)
    print("\n".join(imported.lines))
    for line in imported.warnings:
        print(f"parasim: warning: {line}", file=sys.stderr)
    write_text(args.output, imported.text)
    print(f"profile written to {args.output}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:

    MPI = mpi()
    comm = MPI.COMM_WORLD
    rank0 = comm.Get_rank() == 0
    failure = None
    try:
        from executor.interpreter.execute import prepare
        from simulator.scenario import with_profile

        scenario = with_profile(args.scenario, args.profile)
        if rank0:
            check_outputs([args.predicted, args.measured, args.report], args.force)
        backend = backend_named(args.backend)
        prepared = prepare(comm, scenario, args.strategy)
    except UserError as e:
        failure = str(e)
    if not agree(comm, failure):
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
            write_json(path, result)
            print(f"Result written to {path}")
    if args.report:
        from reports import build_report

        write_text(args.report, build_report([predicted, measured],
                                              [args.predicted or "predicted",
                                               args.measured or "measured"]))
        print(f"report written to {args.report}")
    return 0


def cmd_search_validate(args: argparse.Namespace) -> int:
    """``parasim search --validate N`` under mpiexec (``executor/search_validate.py``)."""
    from simulator.cli import search_inputs

    scenario, constraints = search_inputs(args)

    comm = mpi().COMM_WORLD
    from executor.interpreter.execute import execute, prepare
    from executor.mpi.collectives import abort_on_error
    from executor.search_validate import (
        compare,
        format_validation,
        picks,
        quiet_barrier,
        scenario_of,
    )
    from simulator.search import format_search, run_search

    rank0 = comm.Get_rank() == 0
    failure, result, chosen = None, None, None
    if args.validate < 1:
        failure = f"--validate must be at least 1, not {args.validate}"
    elif rank0:
        try:
            result = run_search(scenario, constraints, local=True)
            chosen = picks(result, comm.Get_size(), args.validate)
            if not chosen:
                failure = (f"--validate: none of the {len(result['results'])} simulated plans "
                           f"runs on {comm.Get_size()} ranks (launch as many ranks as a plan "
                           "has devices, or search with --devices)")
        except UserError as e:
            failure = str(e)
    quiet_barrier(comm)  # (an Ibarrier on every rank: it does not match a blocking one)
    failure = comm.bcast(failure)
    if failure:
        if rank0:
            print(f"parasim: error: {failure}", file=sys.stderr)
        return 2
    chosen = comm.bcast(chosen)
    failure = None
    try:
        backend = backend_named(args.backend)
        prepared = prepare(comm, scenario_of(scenario, chosen), None)
    except UserError as e:
        failure = str(e)
    if not agree(comm, failure):
        return 2
    with abort_on_error(comm):
        measured = execute(comm, prepared, backend, args.timeout)
    if not rank0:
        return 0
    print(format_search(result), file=human(args))
    check = compare(chosen, measured)
    result["validation"] = {**check, "measured": measured}
    print(format_validation(check), file=human(args))
    _warn_uncalibrated(result, measured)
    write_outputs(result, args)
    return 0

"""``parasim``: the command line. Bad input exits 2 with one clear line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from simulator.console import BACKEND_HELP, SCENARIO_HELP, columns
from simulator.errors import PlanError, ScenarioError


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"parasim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's input, not a bug: one line and exit 2 (evaluated only when
    an exception is being handled, so the report and executor code load only then)."""
    from reports import ReportError

    errors: tuple[type[Exception], ...] = (ScenarioError, PlanError, UsageError, ReportError)
    if "executor.interpreter.model" in sys.modules:
        from executor.data import DataError
        from executor.interpreter.model import ExecutorError

        errors += (ExecutorError, DataError)
    return errors


class _Version(argparse.Action):
    """``--version``: worked out when asked (a checkout's commit takes a ``git`` call)."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001, ANN204
        from simulator.predict import code_version

        print(f"parasim {code_version()}")
        parser.exit()


STDOUT = "-"  # an output written to standard output instead of a file
JSON_OUT = " (- for standard output; gzipped when FILE ends in .gz)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parasim", description="Predict (and later measure) the "
                                "throughput of parallel training plans.")
    p.add_argument("--version", action=_Version, nargs=0,
                   help="print parasim's version (and the commit of a checkout) and exit")
    sub = p.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="print the plan of one strategy")
    plan.add_argument("scenario", help=SCENARIO_HELP)
    plan.add_argument("--strategy", required=True, help="a strategy name from the scenario")
    plan.add_argument("--json", metavar="FILE", help="also write the plan as JSON" + JSON_OUT)
    plan.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    plan.set_defaults(func=cmd_plan)
    sim = sub.add_parser("simulate", help="predict every strategy of a scenario")
    sim.add_argument("scenario", help=SCENARIO_HELP)
    sim.add_argument("--strategy", action="append", help="only this strategy (repeatable)")
    sim.add_argument("--json", metavar="FILE", help="write the Result JSON" + JSON_OUT)
    sim.add_argument("--trace", metavar="FILE", help="write a Chrome trace (Perfetto); "
                     "gzipped when FILE ends in .gz")
    sim.add_argument("--timeline", action="store_true",
                     help="keep every span of the timeline in the Result (by default a large "
                     "timeline is cut to its first devices' spans)")
    sim.add_argument("--report", metavar="FILE", help="write an HTML comparison report"
                     " (- for standard output)")
    sim.add_argument("--force", action="store_true", help="overwrite output files")
    sim.set_defaults(func=cmd_simulate)
    sw = sub.add_parser("sweep", help="simulate a grid of cluster sizes or field values",
                        description="Simulate every point of a grid: --devices and/or the "
                        "scenario's 'sweep' block. Runs on local processes, or over MPI when "
                        "launched as: mpiexec -n N python -m mpi4py.futures -m simulator.cli "
                        "sweep ...")
    sw.add_argument("scenario", help=SCENARIO_HELP)
    sw.add_argument("--devices", type=_int_list, metavar="N,N,...",
                    help="total device counts (whole nodes), e.g. 8,16,32")
    sw.add_argument("--strong", action="store_true",
                    help="keep the global batch (default: keep the batch per device)")
    sw.add_argument("--json", metavar="FILE", help="write the Result JSON" + JSON_OUT)
    sw.add_argument("--report", metavar="FILE", help="write an HTML report with scaling curves")
    sw.add_argument("--force", action="store_true", help="overwrite output files")
    sw.set_defaults(func=cmd_sweep)
    se = sub.add_parser("search", help="find the fastest plan that fits, and say why it wins",
                        description="Generate every plan the model and cluster allow, prune "
                        "by rule and by memory, rank by an analytical estimate, and simulate "
                        "the best --top. Constraints come from the scenario's 'search' block; "
                        "these options override them. Runs on local processes, or over MPI "
                        "when launched as: mpiexec -n N python -m mpi4py.futures -m "
                        "simulator.cli search ... (docs/search.md)")
    se.add_argument("scenario", help="a scenario YAML file (its strategies are not needed "
                    "by the search; its model, cluster and training are)")
    se.add_argument("--top", type=int, metavar="K", help="simulate the best K by estimate "
                    "(default 20)")
    se.add_argument("--devices", type=int, metavar="N", help="use at most N devices")
    se.add_argument("--batch", type=_int_list, metavar="B,B,...",
                    help="global batches to try (default: the scenario's)")
    se.add_argument("--headroom", type=float, metavar="F",
                    help="fraction of device memory to leave free (default 0)")
    se.add_argument("--exclude", metavar="SCHEME,...",
                    help="schemes to leave out: " + ", ".join(_families()))
    se.add_argument("--synchronous", action="store_true",
                    help="synchronous schemes only (no Downpour, no Sandblaster)")
    se.add_argument("--cross-node-tensor", action="store_true",
                    help="let tensor groups span nodes")
    se.add_argument("--json", metavar="FILE", help="write the Result JSON (each entry carries "
                    "the strategy entry that reproduces it)" + JSON_OUT)
    se.add_argument("--report", metavar="FILE", help="write an HTML report with the winner "
                    "marked")
    se.add_argument("--validate", type=int, metavar="N",
                    help="under mpiexec -n R: execute the top N simulated plans that run on R "
                    "ranks (and two lower-ranked ones) and print predicted against measured "
                    "order")
    se.add_argument("--backend", choices=("cpu", "cuda", "reference"), default="cpu",
                    help="the executor's kernels for --validate (default cpu)")
    se.add_argument("--timeout", type=float, default=600.0, metavar="S",
                    help="--validate: abort a run that makes no progress for S seconds")
    se.add_argument("--profile", metavar="FILE", help="a profile written by parasim "
                    "calibrate, in place of the cluster's device and links (search the "
                    "machine as measured; with --validate, the comparison means something)")
    se.add_argument("--force", action="store_true", help="overwrite output files")
    se.set_defaults(func=cmd_search)
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
    ex.add_argument("--lost-after", type=float, default=10.0, metavar="S",
                    help="Downpour: count a worker silent for S seconds, while the others are "
                    "done, as lost and finish without it (default 10)")
    ex.add_argument("--weights", metavar="FILE", help="write every strategy's final weights "
                    "(whole, put together from the shards) to an .npz file")
    ex.add_argument("--force", action="store_true", help="overwrite output files")
    ex.set_defaults(func=cmd_execute)
    from executor.commands import add_parsers
    from reports.cli import add_parser

    add_parsers(sub)
    add_parser(sub)
    return p


def _int_list(text: str) -> list[int]:
    """``8,16,32``; ``8,16,...,1024`` continues the progression the two numbers before ``...``
    start (doubling here; ``8,16,...,64`` is 8,16,32,64 and ``4,8,12,...,24`` adds 4)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if "..." in parts:
            i = parts.index("...")
            head, last = [int(p) for p in parts[:i]], int(parts[i + 1])
            if len(head) < 2 or i != len(parts) - 2:
                raise ValueError
            a, b = head[-2], head[-1]
            values = head[:]
            if b % a == 0 and b // a > 1 and (len(head) < 3 or head[-3] * (b // a) == a):
                while values[-1] * (b // a) <= last:
                    values.append(values[-1] * (b // a))
            elif b > a:
                while values[-1] + (b - a) <= last:
                    values.append(values[-1] + (b - a))
            else:
                raise ValueError
            if values[-1] != last:
                raise ValueError
        else:
            values = [int(p) for p in parts]
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"not a list of device counts: {text!r} (e.g. 8,16,32 or 8,16,...,1024)") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"device counts must be positive: {text!r}")
    return values


def _load(path: str, strategies: list[str] | None):  # noqa: ANN202
    from simulator.scenario import load_scenario
    from simulator.schema import did_you_mean

    scenario = load_scenario(path)
    known = [s.name for s in scenario.strategies]
    for name in strategies or []:
        if name not in known:
            raise UsageError(f"{path}: no strategy named {name!r}{did_you_mean(name, known)} "
                             f"(the scenario has: {', '.join(known)})")
    return scenario




def _human(args: argparse.Namespace):  # noqa: ANN202
    """Where the tables and messages go: standard error when an output is standard output
    (``--json -``), so that what is piped is that output alone."""
    outs = [getattr(args, k, None) for k in ("json", "trace", "report")]
    return sys.stderr if STDOUT in outs else sys.stdout


def _check_outputs(paths: list[str | None], force: bool) -> None:
    if sum(p == STDOUT for p in paths) > 1:
        raise UsageError("only one output can be standard output (-)")
    for p in paths:
        if p is None or p == STDOUT:
            continue
        path = Path(p)
        if path.exists() and not force:
            raise UsageError(f"{p} exists; pass --force to overwrite it")
        if not path.parent.exists():
            raise UsageError(f"{p}: the folder {path.parent} does not exist")


def _write_json(path: str, data: Any, compact: bool = False) -> None:
    """Write JSON through a temporary file (nothing half-written is left under ``path``):
    ``compact`` without indentation or spaces, gzipped when ``path`` ends in ``.gz``."""
    text = (json.dumps(data, separators=(",", ":"), default=float) if compact
            else json.dumps(data, indent=1, default=float)) + "\n"
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = Path(path + ".tmp")
    if path.endswith(".gz"):
        import gzip

        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        tmp.write_text(text)
    tmp.replace(path)


# ---- plan --------------------------------------------------------------------------------------

def cmd_plan(args: argparse.Namespace) -> int:
    from simulator.plan_report import describe_plan
    from simulator.predict import context
    from simulator.strategies import build_plan

    scenario = _load(args.scenario, [args.strategy])
    _check_outputs([args.json], args.force)
    ctx = context(scenario)
    spec = next(s for s in scenario.strategies if s.name == args.strategy)
    plan = build_plan(ctx, spec)
    print(describe_plan(plan, ctx.cluster), file=_human(args))
    if args.json:
        _write_json(args.json, plan.to_dict())
        _written("plan", args.json, args)
    return 0


# ---- simulate ----------------------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace) -> int:
    from simulator.predict import simulate_scenario

    scenario = _load(args.scenario, args.strategy)
    _check_outputs([args.json, args.trace, args.report], args.force)
    from simulator.progress import factory

    result, engines = simulate_scenario(scenario, args.strategy, trace=bool(args.trace),
                                        timeline=args.timeline, progress=factory())
    print(format_table(result), file=_human(args))
    _write_outputs(result, args)
    if args.trace:
        from simulator.engine.trace import chrome_trace

        _write_json(args.trace, chrome_trace(engines), compact=True)
        _written("trace", args.trace, args, " (open it in https://ui.perfetto.dev)")
    return 0


def _write_outputs(result: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        _write_json(args.json, result)
        _written("result", args.json, args)
    if args.report:
        from reports import build_report

        source = args.json if args.json not in (None, STDOUT) else "(in memory)"
        _write_text(args.report, build_report([result], [source]))
        _written("report", args.report, args)


def _written(what: str, path: str, args: argparse.Namespace, extra: str = "") -> None:
    if path != STDOUT:
        print(f"{what} written to {path}{extra}", file=_human(args))


def _write_text(path: str, text: str) -> None:
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def cmd_sweep(args: argparse.Namespace) -> int:
    from simulator.sweep import run_sweep

    scenario = _load(args.scenario, None)
    _check_outputs([args.json, args.report], args.force)
    result = run_sweep(scenario, args.devices, args.strong)
    print(format_sweep(result), file=_human(args))
    _write_outputs(result, args)
    return 0


def _families() -> tuple[str, ...]:
    from simulator.search.space import SCHEME_FAMILIES

    return SCHEME_FAMILIES


def cmd_search(args: argparse.Namespace) -> int:
    from simulator.schema import did_you_mean
    from simulator.search import format_search, run_search
    from simulator.search.space import Constraints

    if args.profile:
        from simulator.scenario import with_profile

        scenario = with_profile(args.scenario, args.profile)
    else:
        scenario = _load(args.scenario, None)
    _check_outputs([args.json, args.report], args.force)
    given = dict(scenario.search)
    exclude = [x.strip() for x in (args.exclude or "").split(",") if x.strip()]
    for x in exclude:
        if x not in _families():
            raise UsageError(f"--exclude: no scheme {x!r} to leave out"
                             f"{did_you_mean(x, _families())} (the search's schemes: "
                             f"{', '.join(_families())})")
    for name, value in (("top", args.top), ("devices", args.devices),
                        ("batch", args.batch), ("headroom", args.headroom)):
        if value is not None:
            given[name] = value
    if args.top is not None and args.top < 1:
        raise UsageError(f"--top must be at least 1, not {args.top}")
    if args.devices is not None and args.devices < 1:
        raise UsageError(f"--devices must be at least 1, not {args.devices}")
    if args.headroom is not None and not 0 <= args.headroom <= 0.9:
        raise UsageError(f"--headroom must be between 0 and 0.9, not {args.headroom}")
    if exclude:
        given["exclude"] = exclude
    if args.synchronous:
        given["synchronous_only"] = True
    if args.cross_node_tensor:
        given["cross_node_tensor"] = True
    constraints = Constraints(
        top=given.get("top", 20), devices=given.get("devices"),
        batch=tuple(given["batch"]) if given.get("batch") else None,
        headroom=given.get("headroom", 0.0), exclude=tuple(given.get("exclude", ())),
        synchronous_only=given.get("synchronous_only", False),
        cross_node_tensor=given.get("cross_node_tensor", False))
    if args.validate is not None:
        return _search_and_validate(scenario, constraints, args)
    result = run_search(scenario, constraints)
    print(format_search(result), file=_human(args))
    _write_outputs(result, args)
    return 0


def _search_and_validate(scenario, constraints, args: argparse.Namespace) -> int:  # noqa: ANN001
    """``search --validate N`` under mpiexec (``executor/search_validate.py``)."""
    from executor.commands import _agree, _backend, _mpi

    comm = _mpi().COMM_WORLD
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
        except _user_errors() as e:
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
        backend = _backend(args.backend)
        prepared = prepare(comm, scenario_of(scenario, chosen), None)
    except _user_errors() as e:
        failure = str(e)
    if not _agree(comm, failure):
        return 2
    with abort_on_error(comm):
        measured = execute(comm, prepared, backend, args.timeout)
    if not rank0:
        return 0
    print(format_search(result), file=_human(args))
    check = compare(chosen, measured)
    result["validation"] = {**check, "measured": measured}
    print(format_validation(check), file=_human(args))
    from executor.commands import _warn_uncalibrated

    _warn_uncalibrated(result, measured)
    _write_outputs(result, args)
    return 0


def cmd_execute(args: argparse.Namespace) -> int:
    from executor.commands import _agree, _backend, _mpi

    comm = _mpi().COMM_WORLD
    from executor.interpreter.execute import execute, prepare
    from executor.mpi.collectives import abort_on_error

    rank0 = comm.Get_rank() == 0
    # bad input every rank sees alike: rank 0 says it once, every rank exits 2
    failure = None
    try:
        scenario = _load(args.scenario, args.strategy)
        if rank0:
            _check_outputs([args.json, args.trace, args.report, args.weights], args.force)
        backend = _backend(args.backend)  # e.g. the CUDA backend on a machine without a GPU
        prepared = prepare(comm, scenario, args.strategy)
    except _user_errors() as e:
        failure = str(e)
    if not _agree(comm, failure):
        return 2
    weights: dict[str, Any] | None = {} if args.weights else None
    # from here an error on one rank ends the whole job with the rank and the message
    with abort_on_error(comm):
        result = execute(comm, prepared, backend, args.timeout, weights, args.lost_after)
    lost = any(e.get("failures") or e.get("lost_ranks") for e in result["results"])
    if not rank0:
        return _exit_without_finalize() if lost else 0
    if args.weights:
        import numpy as np

        flat = {f"{s}/{layer}/{k}": v for s, layers in (weights or {}).items()
                for layer, params in layers.items() for k, v in params.items()}
        with open(args.weights, "wb") as fh:
            np.savez(fh, **flat)
        print(f"weights written to {args.weights}", file=_human(args))
    print(format_measured(result), file=_human(args))
    _write_outputs(result, args)
    if args.trace:
        _write_json(args.trace, measured_trace(result))
        _written("trace", args.trace, args)
    if lost:
        return _exit_without_finalize()
    return 0


def _exit_without_finalize() -> int:
    """After a lost rank, MPI_Finalize would wait for it forever: leave without it (the
    outputs are written and flushed)."""
    import os

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
    for e in result["results"]:
        if "staleness" in e:
            st = e["staleness"]
            lines.append(f"{e['strategy']}: gradient staleness mean {st['mean']:.2f}, max "
                         f"{st['max']}; {e['samples_processed']} samples processed")
        for f in e.get("failures", []):
            lines.append(f"{e['strategy']}: rank {f['rank']} {f['what']}")
    lines += [f"skipped {s}" for s in result.get("skipped", [])]
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


def format_sweep(result: dict[str, Any]) -> str:
    """One row per point and strategy: throughput and scaling efficiency."""
    rows = [("point", "strategy", "devs", "samples/s", "iter ms", "speedup", "efficiency")]
    for e in result["results"]:
        point = ", ".join(f"{k}={v}" for k, v in e["sweep_point"].items())
        if e["throughput_samples_per_s"] is None:
            rows.append((point, e["strategy"], str(e["devices"]), "-", "-", "-", "does not fit"))
            continue
        rows.append((point, e["strategy"], str(e["devices"]),
                     f"{e['throughput_samples_per_s']:.1f}",
                     f"{e['iteration_time_s'] * 1e3:.3f}",
                     f"{e['speedup_over_one_device']:.2f}x", f"{e['efficiency']:.1%}"))
    lines = [f"{result['scenario']['name']}: sweep of {result['sweep']['points']} point(s), "
             f"{result['sweep']['scaling']} scaling"]
    lines += columns(rows, left=2)
    for point, names in result["sweep"]["skipped"].items():
        lines.append(f"skipped at {point}: {', '.join(names)} (cannot run at that size)")
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    from simulator.plan_report import memory_text

    sc = result["scenario"]
    head = (f"{sc['name']}: {sc['devices']} x {sc['device']}, global batch {sc['batch_size']}; "
            f"one device: {sc['one_device_throughput_samples_per_s']:.1f} samples/s")
    cols = ("strategy", "devs", "samples/s", "iter ms", "speedup", "compute", "comm", "ps wait",
            "idle", "fits")
    rows = [cols]
    for e in result["results"]:
        if e["throughput_samples_per_s"] is None:
            rows.append((e["strategy"], str(e["devices"]), "-", "-", "-", "-", "-", "-", "-",
                         f"no: {e['note']}"))
            continue
        bd = e["breakdown_s"]
        rows.append((e["strategy"], str(e["devices"]), f"{e['throughput_samples_per_s']:.1f}",
                     f"{e['iteration_time_s'] * 1e3:.3f}",
                     f"{e['speedup_over_one_device']:.2f}x",
                     *(f"{bd[k] * 1e3:.3f}" for k in ("compute", "exposed_communication",
                                                       "ps_wait", "idle")),
                     "yes"))
    out = [head, "(breakdown columns: ms per iteration, averaged over worker devices)"]
    out += columns(rows, ragged_last=True)
    for e in result["results"]:
        for g in e.get("memory_over", ()):
            out.append(f"{e['strategy']} does not fit on {memory_text(g)}")
    extra = [e for e in result["results"] if "staleness" in e]
    for e in extra:
        st = e["staleness"]
        out.append(f"{e['strategy']}: gradient staleness mean {st['mean']:.2f}, max {st['max']}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())

"""The simulator's commands of ``parasim``: plan, simulate, sweep and search (the command
line itself, which registers these and the executor's and the report's, is ``parasim/cli.py``).
Bad input raises a ``UserError``: one line and exit 2."""

from __future__ import annotations

import argparse
from typing import Any

from simulator.console import SCENARIO_HELP, columns, target_line
from simulator.errors import UsageError
from simulator.outputs import (
    JSON_OUT,
    STDOUT,
    check_outputs,
    human,
    write_json,
    write_outputs,
    written,
)

__all__ = ["STDOUT", "UsageError", "add_parsers", "format_table"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register plan, simulate, sweep and search."""
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
    sim.add_argument("--profile", metavar="FILE", help="predict with this calibration profile "
                     "(written by parasim calibrate) in place of the scenario's device and links")
    sim.add_argument("--force", action="store_true", help="overwrite output files")
    sim.set_defaults(func=cmd_simulate)
    sw = sub.add_parser("sweep", help="simulate a grid of cluster sizes or field values",
                        description="Simulate every point of a grid: --devices and/or the "
                        "scenario's 'sweep' block. Runs on local processes, or over MPI when "
                        "launched as: mpiexec -n N python -m mpi4py.futures -m parasim "
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
                        "parasim search ... (docs/search.md)")
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




# ---- plan --------------------------------------------------------------------------------------

def cmd_plan(args: argparse.Namespace) -> int:
    from simulator.plan_report import describe_plan
    from simulator.predict import context
    from simulator.strategies import build_plan

    scenario = _load(args.scenario, [args.strategy])
    check_outputs([args.json], args.force)
    ctx = context(scenario)
    spec = next(s for s in scenario.strategies if s.name == args.strategy)
    plan = build_plan(ctx, spec)
    print(describe_plan(plan, ctx.cluster), file=human(args))
    if args.json:
        write_json(args.json, plan.to_dict())
        written("plan", args.json, args)
    return 0


# ---- simulate ----------------------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace) -> int:
    from simulator.predict import simulate_scenario

    scenario = _load(args.scenario, args.strategy)
    if args.profile:
        from simulator.scenario import with_profile

        scenario = with_profile(args.scenario, args.profile)
    check_outputs([args.json, args.trace, args.report], args.force)
    from simulator.progress import factory

    result, engines = simulate_scenario(scenario, args.strategy, trace=bool(args.trace),
                                        timeline=args.timeline, progress=factory())
    print(format_table(result), file=human(args))
    write_outputs(result, args)
    if args.trace:
        from simulator.engine.trace import chrome_trace

        write_json(args.trace, chrome_trace(engines), compact=True)
        written("trace", args.trace, args, " (open it in https://ui.perfetto.dev)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from simulator.sweep import run_sweep

    scenario = _load(args.scenario, None)
    check_outputs([args.json, args.report], args.force)
    result = run_sweep(scenario, args.devices, args.strong)
    print(format_sweep(result), file=human(args))
    write_outputs(result, args)
    return 0


def _families() -> tuple[str, ...]:
    from simulator.search.space import SCHEME_FAMILIES

    return SCHEME_FAMILIES


def cmd_search(args: argparse.Namespace) -> int:
    """``parasim search`` (``--validate`` runs under the executor: ``parasim/cli.py`` sends it
    to ``executor.commands.cmd_search_validate``)."""
    from simulator.search import format_search, run_search

    scenario, constraints = search_inputs(args)
    result = run_search(scenario, constraints)
    print(format_search(result), file=human(args))
    write_outputs(result, args)
    return 0


def search_inputs(args: argparse.Namespace):  # noqa: ANN201
    """The scenario (with the profile when given) and the search's constraints: the scenario's
    ``search`` block, the options over it."""
    from simulator.schema import did_you_mean
    from simulator.search.space import Constraints

    if args.profile:
        from simulator.scenario import with_profile

        scenario = with_profile(args.scenario, args.profile)
    else:
        scenario = _load(args.scenario, None)
    check_outputs([args.json, args.report], args.force)
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
    return scenario, constraints


def format_sweep(result: dict[str, Any]) -> str:
    """One row per point and strategy: throughput and scaling efficiency."""
    targets = any("target" in e for e in result["results"])
    rows = [("point", "strategy", "devs", "samples/s", "iter ms", "speedup", "efficiency")
            + ("steps to target", "s to target") * targets]
    for e in result["results"]:
        point = ", ".join(f"{k}={v}" for k, v in e["sweep_point"].items())
        if e["throughput_samples_per_s"] is None:
            rows.append((point, e["strategy"], str(e["devices"]), "-", "-", "-", "does not fit")
                        + ("-", "-") * targets)
            continue
        rows.append((point, e["strategy"], str(e["devices"]),
                     f"{e['throughput_samples_per_s']:.1f}",
                     f"{e['iteration_time_s'] * 1e3:.3f}",
                     f"{e['speedup_over_one_device']:.2f}x", f"{e['efficiency']:.1%}")
                    + _to_target(e) * targets)
    lines = [f"{result['scenario']['name']}: sweep of {result['sweep']['points']} point(s), "
             f"{result['sweep']['scaling']} scaling"]
    lines += columns(rows, left=2)
    lines += _fastest(result["results"]) if targets else []
    for point, names in result["sweep"]["skipped"].items():
        lines.append(f"skipped at {point}: {', '.join(names)} (cannot run at that size)")
    return "\n".join(lines)


def _fastest(entries: list[dict[str, Any]]) -> list[str]:
    """Per strategy, the sweep point that reaches the target soonest, and why it is not the
    largest device count when it is not (the steps grew faster than the step time fell)."""
    out = []
    for name in dict.fromkeys(e["strategy"] for e in entries):
        mine = [e for e in entries if e["strategy"] == name and e.get("time_to_target_s")]
        if len(mine) < 2:
            continue
        best = min(mine, key=lambda e: e["time_to_target_s"])
        top = max(mine, key=lambda e: e["devices"])
        line = (f"{name}: fastest to target at {best['devices']} devices "
                f"({best['time_to_target_s']:.3g} s)")
        if best is not top:
            line += (f"; at {top['devices']} devices each step is "
                     f"{best['step_time_s'] / top['step_time_s']:.2f}x faster but it needs "
                     f"{top['steps_to_target'] / best['steps_to_target']:.2f}x the steps")
        out.append(line)
    return out


def _to_target(e: dict[str, Any]) -> tuple[str, str]:
    """A sweep row's steps and seconds to target ("-" when not reached)."""
    t = e.get("target") or {}
    if not t.get("reached"):
        return ("-", "not reached")
    unit = " epochs" if t.get("step_unit") == "epoch" else ""
    return (f"{t['steps']:,.0f}{unit}", f"{t['time_s']:.3g}")


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
    out += [line for e in result["results"] if (line := target_line(e))]
    roofline = sorted({k for e in result["results"] for k in e.get("kernels_on_roofline", ())})
    if roofline:
        out.append(f"on the {sc['device']} roofline (no per-class kernel curve): "
                   + ", ".join(roofline))
    gemm = sorted({k for e in result["results"] for k in e.get("kernels_on_gemm_curve", ())})
    if gemm:
        out.append(f"on the {sc['device']}'s curve of convolutions run as GEMMs (no "
                   "per-class kernel curve): " + ", ".join(gemm))
    return "\n".join(out)


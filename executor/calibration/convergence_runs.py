"""``parasim calibrate-convergence``: run the scenario's strategies for real to its target, read
how many steps each took to every level of the metric, fit the steps-to-target model
(``convergence_fit.py``) and write a convergence profile (``simulator/convergence_file.py``).

Not itself under ``mpiexec``: each run is its own ``mpiexec -n R parasim execute`` (R = the ranks
the strategy's plan needs), so runs with different rank counts share one calibration. Each
strategy runs at the scenario's learning rate and at every ``--learning-rate`` given, each
``--repeats`` times with seeds ``seed, seed + 1, ...`` (another initialisation and, for Downpour,
another interleaving).

Levels: the metric values between where every run has already passed (the highest windowed
loss every run reached below, with a margin) and the target, spaced evenly (in the logarithm for
a loss or error, linearly for an accuracy); a run's steps to a level are read off its training
curve with the window the executor stops with (``training.target.window`` samples), its steps to
the target from the executor's own stop. A DBN run's levels are its first layer's reconstruction
errors, one per epoch, and its steps ``(epochs - 1/2) x steps per epoch`` (the level was crossed
somewhere in the last epoch).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from executor.calibration.convergence_fit import (
    FitError,
    Observation,
    check_enough,
    fit,
    predicted,
)
from executor.interpreter.target import Window
from simulator.console import columns
from simulator.convergence import Setting, setting_of
from simulator.convergence_file import dump_convergence
from simulator.errors import ScenarioError, UsageError, UserError
from simulator.outputs import check_outputs, write_text
from simulator.predict import plans
from simulator.scenario import parse_scenario
from simulator.schema import did_you_mean
from simulator.specs import TargetSpec
from simulator.yaml_input import load_yaml, read_text

LEVELS = 6  # levels fitted between the start and the target (the target is the last)


class RunFailed(UserError):
    """A calibration run that failed or did not reach the target: nothing is written."""


def derived_scenario(path: Path, strategy: str, learning_rate: float, seed: int,
                     folder: Path, batch: int | None = None) -> Path:
    """The scenario with one strategy, this rate and seed, written into ``folder`` (relative
    files it names made absolute; its own convergence coefficients dropped)."""
    data = load_yaml(read_text(path, "scenario"))
    base = path.parent.resolve()

    def absolute(d: Any, key: str) -> None:
        if isinstance(d, dict) and isinstance(d.get(key), str) and not os.path.isabs(d[key]):
            d[key] = str(base / d[key])

    spec = data.get("data") if isinstance(data.get("data"), dict) else {}
    for key in ("path", "images", "labels"):  # the loaders' file keys (executor/loaders.py)
        absolute(spec, key)
    if isinstance(spec.get("batches"), list):  # cifar10's batch files
        spec["batches"] = [f if not isinstance(f, str) or os.path.isabs(f) else str(base / f)
                           for f in spec["batches"]]
    absolute(data.get("cluster"), "profile")
    training = data["training"]
    training.pop("convergence", None)
    training["learning_rate"] = learning_rate
    if batch is not None:
        training["batch_size"] = batch
    data["seed"] = seed
    data["strategies"] = [s for s in data["strategies"] if s.get("name") == strategy]
    data.pop("sweep", None)
    import yaml

    from simulator.profile import _plain

    name = f"{strategy}-b{batch or training['batch_size']}-lr{learning_rate:g}-seed{seed}"
    out = folder / (name.replace("/", "_").replace(os.sep, "_") + ".yaml")
    out.write_text(yaml.safe_dump(_plain(data), sort_keys=False))
    return out


def launch(scenario: Path, strategy: str, ranks: int, out: Path, backend: str,
           timeout: float, no_limits: bool = False) -> dict[str, Any]:
    """One ``mpiexec`` run; its measured entry."""
    mpiexec = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable)
                                                                         .parent))
    if mpiexec is None:
        raise UsageError("calibrate-convergence runs the executor with mpiexec, which is not on "
                         "PATH: pip install 'parasim[exec,mpi]'")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    cmd = [mpiexec, "-disable-auto-cleanup", "-n", str(ranks), sys.executable, "-m", "parasim",
           "execute", str(scenario), "--strategy", strategy, "--backend", backend, "--json",
           str(out), "--force"] + ["--no-limits"] * no_limits
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{strategy}: the run took more than {timeout:g} s (--timeout)") from None
    if done.returncode != 0 or not out.is_file():
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RunFailed(f"{strategy}: the run failed (exit {done.returncode}): {last}")
    entry = json.loads(out.read_text())["results"][0]
    return entry


# ---- reading a run: steps to each level ---------------------------------------------------

def windowed(entry: dict[str, Any], target: TargetSpec) -> list[tuple[float, float]]:
    """``(samples so far, windowed metric)`` after every point of the run's training curve,
    by the executor's own window (``executor.interpreter.target.Window``: the last
    ``ceil(window / n)`` points, ``n`` the samples of a point, sample-weighted)."""
    t = entry.get("training") or {}
    samples, values = t.get("samples") or [], t.get(target.metric) or []
    out, window, prev = [], None, 0.0
    for cum, v in zip(samples, values):
        n = cum - prev if cum > prev else 1.0
        prev = max(prev, cum)
        window = window or Window(target, n)
        window.add(v * n, v * n, n)  # the point's sum of the metric, whichever it is
        out.append((cum, window.value))
    return out


def observation(entry: dict[str, Any], plan: Any, training: Any, target: TargetSpec,
                values: list[float], label: str) -> Observation:
    """The run's setting and its steps to each level of ``values`` (the target last)."""
    s = setting_of(plan, training, entry)
    block = entry.get("target") or {}
    steps: list[float | None] = []
    if s.unit == "epoch":
        errors = entry["pretraining"]["layers"][0]["reconstruction_error"]
        for v in values:
            e = next((i + 1 for i, x in enumerate(errors) if target_reached(target, v, x)), None)
            steps.append(None if e is None else (e - 0.5) * s.steps_per_unit)
        return Observation(s, tuple(steps), label)
    per_point = s.batch  # samples behind one step
    for v in values[:-1]:
        hit = next((cum for cum, w in windowed(entry, target) if target_reached(target, v, w)),
                   None)
        steps.append(None if hit is None else hit / per_point)
    steps.append(float(block["steps"]) if block.get("reached") else None)
    return Observation(s, tuple(steps), label)


def target_reached(target: TargetSpec, level: float, value: float) -> bool:
    return value >= level if target.higher_is_better else value <= level


def choose_levels(entries: list[dict[str, Any]], target: TargetSpec, dbn: bool,
                  count: int = LEVELS) -> list[float]:
    """``count`` levels from where every run has passed to the target (the target last)."""
    starts = []
    for e in entries:
        if dbn:
            first = e["pretraining"]["layers"][0]["reconstruction_error"][:1]
        else:
            first = [w for _, w in windowed(e, target)[:1]]
        if first:
            starts.append(first[0])
    if not starts:
        return [target.value]
    if target.higher_is_better:
        start = max(starts)
        top = start + 0.1 * (target.value - start)
        return [top + (target.value - top) * i / (count - 1) for i in range(count)]
    start = min(starts)
    top = target.value + 0.8 * (start - target.value)
    if top <= target.value or target.value <= 0:
        return [target.value]
    ratio = target.value / top
    return [top * ratio ** (i / (count - 1)) for i in range(count)]


# ---- the command ---------------------------------------------------------------------------

def without_coefficients(path: Path) -> Any:
    """The scenario, read without its ``training.convergence`` (what is being fitted: the
    profile it names may not exist yet)."""
    data = load_yaml(read_text(path, "scenario"))
    if isinstance(data, dict) and isinstance(data.get("training"), dict):
        data["training"].pop("convergence", None)
    try:
        return parse_scenario(data, str(path))
    except ScenarioError as e:
        raise (e if e.file else e.with_file(str(path))) from None


def cmd_calibrate_convergence(args: Any) -> int:
    path = Path(args.scenario)
    scenario = without_coefficients(path)
    target = scenario.training.target
    if target is None:
        raise UsageError(f"{path}: training.target is required: calibrate-convergence runs "
                         "every strategy to it")
    check_outputs([args.output], args.force)
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {args.repeats})")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds (got {args.timeout})")
    rates = [scenario.training.learning_rate] + [r for r in (args.learning_rate or [])
                                                 if r != scenario.training.learning_rate]
    if any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise UsageError(f"--learning-rate must be positive and finite (got {rates[1:]})")
    known = [s.name for s in scenario.strategies]
    for name in args.strategy or ():
        if name not in known:
            raise UsageError(f"{path}: no strategy {name!r}{did_you_mean(name, known)} "
                             f"(it has {', '.join(known)})")
    batches = [None] + [b for b in (args.batch_size or [])
                        if b != scenario.training.batch_size]
    if any(b is not None and b < 1 for b in batches):
        raise UsageError(f"--batch-size must be at least 1 (got {batches[1:]})")
    chosen = [(b, p) for b in batches for p in plans(_at_batch(scenario, b), args.strategy)]
    if len({p.scheme == "dbn_pretrain" for _, p in chosen}) > 1:
        raise UsageError(f"{path}: DBN pre-training counts epochs of its first layer, the other "
                         "schemes optimizer steps: calibrate them separately (--strategy)")
    seen, unique = set(), []
    # a strategy whose own option fixes its batch runs once, not once per --batch-size
    for b, p in chosen:
        key = (p.strategy, p.samples_per_period, p.options.get("batch_per_rank"))
        if key not in seen:
            seen.add(key)
            unique.append((b, p))
    runs = [(b, p, lr, scenario.seed + k) for b, p in unique for lr in rates
            for k in range(args.repeats)]
    # too few or too alike runs are refused before any runs (the fit would refuse them after)
    check_enough([Observation(setting_of(p, _at_batch(scenario, b, lr).training, {}), (None,))
                  for b, p, lr, _ in runs])
    cap = ("each within its strategy's epochs" if unique[0][1].scheme == "dbn_pretrain" else
           f"at most {scenario.training.iterations} periods each")
    print(f"{scenario.name}: {len(runs)} run(s) to {target.describe()} ({cap})")
    measured = []
    with tempfile.TemporaryDirectory(prefix="parasim-convergence-") as tmp:
        folder = Path(tmp)
        for i, (batch, plan, lr, seed) in enumerate(runs):
            derived = derived_scenario(path, plan.strategy, lr, seed, folder, batch)
            entry = launch(derived, plan.strategy, len(plan.ranks), folder / f"run{i}.json",
                           args.backend, args.timeout, getattr(args, "no_limits", False))
            block = entry.get("target") or {}
            if not block.get("reached"):
                raise RunFailed(f"{path}: strategy {plan.strategy} (learning rate {lr:g}, seed "
                                f"{seed}) did not reach {target.describe()}: "
                                f"{block.get('why', 'no target in its Result')}; raise "
                                "training.iterations (or the strategy's epochs) or ease the "
                                "target")
            print(f"  {plan.strategy:<24} batch {batch or scenario.training.batch_size:<6} "
                  f"lr {lr:<8g} seed {seed:<4} "
                  f"{block['steps']:>7,} {block.get('step_unit', 'step')}s  "
                  f"{block['time_s']:.3g} s")
            measured.append((batch, plan, lr, seed, entry))
    dbn = chosen[0][1].scheme == "dbn_pretrain"
    values = choose_levels([e for *_, e in measured], target, dbn)
    obs = []
    for batch, plan, lr, seed, entry in measured:
        training = _at_batch(scenario, batch, lr).training
        obs.append(observation(entry, plan, training, target, values,
                               f"{plan.strategy} B {batch or scenario.training.batch_size} "
                               f"lr {lr:g} seed {seed}"))
    result = fit(obs, values, str(args.output))
    print(residual_table(result, obs))
    record = profile_record(scenario, target, result, obs, values)
    write_text(args.output, dump_convergence(record))
    print(f"convergence profile written to {args.output} (use it with training.convergence: "
          f"{{profile: {args.output}}})")
    return 0


def _at_batch(scenario: Any, batch: int | None, lr: float | None = None) -> Any:
    """The scenario at global batch ``batch`` (None: its own) and rate ``lr``."""
    from dataclasses import replace

    t = scenario.training
    t = replace(t, batch_size=batch or t.batch_size,
                learning_rate=t.learning_rate if lr is None else lr)
    return replace(scenario, training=t)


def residual_table(result: Any, obs: list[Observation]) -> str:
    """Per run: its setting, the measured and the fitted steps to the target, the miss."""
    c = result.convergence
    rows = [("run", "batch", "staleness", "k", "replicas", "measured", "fitted", "miss")]
    for o in obs:
        fitted = predicted(c, o)[-1]
        got = o.steps[-1]
        rows.append((o.label, f"{o.setting.batch:g}", f"{o.setting.staleness:.2f}",
                     str(o.setting.local_steps), str(o.setting.workers),
                     "-" if got is None else f"{got:,.1f}", f"{fitted:,.1f}",
                     "-" if got is None else f"{fitted / got - 1:+.1%}"))
    lines = columns(rows)
    lines.append(f"fit over {result.points} level crossings: residual {result.residual:.3f} "
                 f"(RMS of log fitted/measured); lr_max "
                 f"{c.lr_max:g}, staleness_penalty {c.staleness_penalty:.4g}, "
                 f"averaging_penalty {c.averaging_penalty:.4g}")
    lines += [f"not measured: {m}" for m in result.not_measured]
    return "\n".join(lines)


def profile_record(scenario: Any, target: TargetSpec, result: Any, obs: list[Observation],
                   values: list[float]) -> dict[str, Any]:
    c = result.convergence
    return {
        "scenario": scenario.name,
        "model": scenario.model.zoo or "custom",
        "data": (scenario.data or {}).get("kind", "synthetic"),
        "metric": target.metric,
        "target": target.value,
        "lr_max": c.lr_max,
        "staleness_penalty": c.staleness_penalty,
        "averaging_penalty": c.averaging_penalty,
        "levels": [{"value": v, "steps_min": s, "noise_batch": b} for v, s, b in c.levels],
        "fit": {"residual_log_rms": result.residual, "crossings": result.points,
                "fitted": list(result.fitted), "not_measured": list(result.not_measured),
                "window": target.window,
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
        "settings": [{"run": o.label, "batch": o.setting.batch,
                      "learning_rate": o.setting.learning_rate,
                      "staleness": o.setting.staleness, "local_steps": o.setting.local_steps,
                      "replicas": o.setting.workers, "unit": o.setting.unit,
                      "steps_per_unit": o.setting.steps_per_unit,
                      "steps_to_levels": list(o.steps)} for o in obs],
    }


__all__ = ["FitError", "Setting", "cmd_calibrate_convergence"]

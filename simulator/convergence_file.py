"""``training.target`` and ``training.convergence`` of a scenario, and the convergence profile
``parasim calibrate-convergence`` writes (the model's coefficients fitted on real runs).

A convergence profile::

    convergence:
      scenario: ...        # what it was fitted on
      model: mlp
      data: digits
      metric: loss
      target: 0.3
      lr_max: 0.8          # null: the rate is tuned for every batch
      staleness_penalty: 0.05
      averaging_penalty: 0.01
      levels:              # in the order a run passes them, the target last
        - {value: 1.5, steps_min: 12.0, noise_batch: 40.0}
      fit: {...}           # residual, settings measured, date
      settings: [...]      # what was measured at each setting

A scenario names it (``training.convergence.profile``, relative to the scenario's folder) or
writes the coefficients itself (one level: the target's). The model: ``simulator/convergence.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulator.errors import ScenarioError
from simulator.schema import Fields, choice, integer, number, string
from simulator.specs import ConvergenceSpec, TargetSpec
from simulator.yaml_input import load_yaml, read_text

METRICS = ("loss", "accuracy", "reconstruction_error")
COEFFICIENTS = ("steps_min", "noise_batch", "lr_max", "staleness_penalty", "averaging_penalty")


def target_field(f: Fields) -> TargetSpec:
    """``training.target``: metric, value, data (the training data), window (samples)."""
    metric = f.get("metric", choice(METRICS))
    if metric == "accuracy":
        value = f.get("value", number(maximum=1.0))
    else:
        value = f.get("value", number(positive=False, minimum=0.0))
    on = f.get("data", string, "train")
    if on != "train":
        raise f.error("data", "the executor measures a target on the data it trains on: "
                      "'train' (a held-out evaluation is not run during training)")
    window = f.get("window", integer(1), 512)
    f.done(("metric", "value", "data", "window"))
    return TargetSpec(metric=metric, value=value, on=on, window=window)


def convergence_field(f: Fields, target: TargetSpec, scenario_file: str
                      ) -> ConvergenceSpec:
    """``training.convergence``: a profile (``profile: FILE``) and/or the coefficients; a
    coefficient written here overrides the profile's."""
    base = None
    if f.has("profile"):
        path = Path(f.get("profile", string))
        if not path.is_absolute() and scenario_file and not scenario_file.startswith("<"):
            path = Path(scenario_file).parent / path
        base = load_convergence(path)
        if base[1] != target.metric:
            raise f.error("profile", f"its coefficients are for {base[1]}; the target is "
                          f"{target.metric}", value=str(path))
        base = base[0]
    lr_max = f.get("lr_max", number(), base.lr_max if base else None)
    stale = f.get("staleness_penalty", number(positive=False, minimum=0.0),
                  base.staleness_penalty if base else 0.0)
    avg = f.get("averaging_penalty", number(positive=False, minimum=0.0),
                base.averaging_penalty if base else 0.0)
    if f.has("steps_min") or base is None:
        levels = ((target.value, f.get("steps_min", number()),
                   f.get("noise_batch", number(positive=False, minimum=0.0), 0.0)),)
        source = "training.convergence" if base is None else f"training.convergence, {base.source}"
    else:
        if f.has("noise_batch"):
            raise f.error("noise_batch", "overrides a level of the profile: give steps_min too")
        levels, source = base.levels, base.source
    f.done(("profile", *COEFFICIENTS))
    return ConvergenceSpec(levels=levels, lr_max=lr_max, staleness_penalty=stale,
                           averaging_penalty=avg, source=source)


def load_convergence(path: str | Path) -> tuple[ConvergenceSpec, str, dict[str, Any]]:
    """A convergence profile: its coefficients, its metric and the whole record."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"no such convergence profile ({path}); fit one with `parasim "
                            "calibrate-convergence SCENARIO -o FILE`", path="training.convergence"
                            ".profile", value=str(path), has_value=True)
    text = read_text(path, "convergence profile")
    try:
        data = load_yaml(text)
        return parse_convergence(data, str(path))
    except ScenarioError as e:
        raise (e if e.file else e.with_file(str(path))) from None


def parse_convergence(data: Any, file: str) -> tuple[ConvergenceSpec, str, dict[str, Any]]:
    top = Fields(data, "")
    f = top.sub("convergence")
    metric = f.get("metric", choice(METRICS))
    record = {k: f.raw(k) for k in ("scenario", "model", "data", "target", "fit", "settings")}
    lr_max = f.get("lr_max", lambda v, p: None if v is None else number()(v, p), None)
    stale = f.get("staleness_penalty", number(positive=False, minimum=0.0), 0.0)
    avg = f.get("averaging_penalty", number(positive=False, minimum=0.0), 0.0)
    raw = f.raw("levels")
    if not isinstance(raw, list) or not raw:
        raise f.error("levels", "must be a non-empty list of {value, steps_min, noise_batch}")
    levels = []
    for i, item in enumerate(raw):
        lv = Fields(item, f"convergence.levels[{i}]")
        levels.append((lv.get("value", number(positive=False)), lv.get("steps_min", number()),
                       lv.get("noise_batch", number(positive=False, minimum=0.0))))
        lv.done(("value", "steps_min", "noise_batch"))
    values = [v for v, *_ in levels]
    rising = metric == "accuracy"
    if any((b <= a) if rising else (b >= a) for a, b in zip(values, values[1:])):
        raise f.error("levels", "must be in the order a run passes them ("
                      f"{'rising' if rising else 'falling'} {metric})", value=values)
    f.done(("metric", "lr_max", "staleness_penalty", "averaging_penalty", "levels",
            "scenario", "model", "data", "target", "fit", "settings"))
    top.done(("convergence",))
    return (ConvergenceSpec(levels=tuple(levels), lr_max=lr_max, staleness_penalty=stale,
                            averaging_penalty=avg, source=file), metric, record)


def dump_convergence(record: dict[str, Any]) -> str:
    """The convergence profile's text (what :func:`parse_convergence` reads back)."""
    import yaml

    from simulator.profile import _plain

    head = ("# A parasim convergence profile (written by `parasim calibrate-convergence`): the\n"
            "# coefficients of the steps-to-target model (simulator/convergence.py) fitted on\n"
            "# real runs. A scenario uses it with training.convergence: {profile: FILE}.\n")
    return head + yaml.safe_dump(_plain({"convergence": record}), sort_keys=False, width=100)

"""Sweeps: simulate a scenario at every point of a grid (device counts, batch size, link
bandwidth, any numeric field) and collect one Result for the scaling curves.

A point changes the scenario's YAML data, then the scenario is loaded and validated again, so a
bad value is the same clear error as in a scenario file (prefixed by the point). ``devices``
is special: it sets the cluster size (nodes x devices per node) and resizes every strategy with
its module's ``at_scale``; by default the per-device batch is kept (weak scaling), ``strong``
keeps the global batch. Points run in local processes, or over MPI with ``mpi4py.futures`` when
the command was launched under ``mpiexec`` (``mpiexec -n N python -m mpi4py.futures -m
parasim sweep ...``).
"""

from __future__ import annotations

import copy
import itertools
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

from simulator import limits
from simulator.errors import ScenarioError
from simulator.specs import Scenario
from simulator.yaml_input import load_yaml, read_text

MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD")


def plain(data: Any) -> Any:
    """YAML data as plain dicts and lists (picklable, copyable)."""
    if isinstance(data, dict):
        return {k: plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain(v) for v in data]
    return data


def grid(axes: tuple[tuple[str, tuple], ...]) -> list[dict[str, Any]]:
    names = [a for a, _ in axes]
    return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in axes))]


def apply_point(raw: dict, point: dict[str, Any], strong: bool) -> tuple[dict, list[str]]:
    """The scenario data at ``point``, and the strategies that cannot run there."""
    from simulator.strategies import SCHEMES, scheme_module

    data = copy.deepcopy(raw)
    skipped: list[str] = []
    for field, value in point.items():
        if field != "devices":
            _set(data, field, value)
    if "devices" in point:
        devices = point["devices"]
        cluster = data["cluster"]
        before = cluster["nodes"] * cluster["devices_per_node"]
        per_node = cluster["devices_per_node"]
        if devices <= per_node:
            cluster["nodes"], cluster["devices_per_node"] = 1, devices
        elif devices % per_node:
            raise ScenarioError(f"{devices} devices are not whole nodes of {per_node}",
                                path="sweep.devices", value=devices, has_value=True)
        else:
            cluster["nodes"] = devices // per_node
        if not strong:
            training = data["training"]
            training["batch_size"] = max(1, training["batch_size"] * devices // before)
        kept = []
        for entry in data["strategies"]:
            scheme = entry.get("scheme")
            resized = (scheme_module(scheme).at_scale(entry, devices)
                       if scheme in SCHEMES else entry)
            if resized is None:
                skipped.append(entry.get("name", "?"))
            else:
                kept.append(resized)
        data["strategies"] = kept
    return data, skipped


def _set(data: dict, field: str, value: Any) -> None:
    from simulator import catalogue

    keys = field.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, dict) and isinstance(node.get(key), str) and (
                node[key] in catalogue.devices() or node[key] in catalogue.links()):
            node[key] = {"base": node[key]}  # a catalogue name becomes an override
        if not isinstance(node, dict) or key not in node:
            raise ScenarioError("the scenario has no such field", path=f"sweep.{field}",
                                value=".".join(keys[:i + 1]), has_value=True)
        node = node[key]
    if not isinstance(node, dict):
        raise ScenarioError("the scenario has no such field", path=f"sweep.{field}",
                            value=field, has_value=True)
    node[keys[-1]] = value


def run_point(raw: dict, file: str, point: dict[str, Any], strong: bool,
              limited: bool = True) -> dict[str, Any]:
    """Simulate one point; returns its Result entries (or the error that stopped it).
    ``limited``: whether ``simulator/limits.py`` applies (a worker process does not inherit the
    command's ``--no-limits``)."""
    with limits.lifted(not limited):
        return _run_point(raw, file, point, strong)


def _run_point(raw: dict, file: str, point: dict[str, Any], strong: bool) -> dict[str, Any]:
    from simulator.predict import simulate_scenario
    from simulator.scenario import parse_scenario

    label = _label(point)
    try:
        data, skipped = apply_point(raw, point, strong)
        scenario = parse_scenario(data, file)
    except ScenarioError as e:
        return {"point": point, "error": {"message": f"at sweep point {label}: {e.message}",
                                          "path": e.path, "value": e.value,
                                          "has_value": e.has_value, "line": e.line}}
    result, _ = simulate_scenario(scenario)
    for entry in result["results"]:
        entry["sweep_point"] = point
        entry.pop("timeline", None)  # one iteration's spans per point would bloat the file
    return {"point": point, "entries": result["results"], "skipped": skipped}


def under_mpi() -> bool:
    return any(k in os.environ for k in MPI_ENV)


def executor(points: int) -> tuple[Executor | None, str]:
    if under_mpi():
        from mpi4py import MPI
        from mpi4py.futures import MPIPoolExecutor

        if MPI.COMM_WORLD.Get_size() > 1 or MPI.Comm.Get_parent() != MPI.COMM_NULL:
            return MPIPoolExecutor(), "MPI"
    workers = min(points, os.cpu_count() or 1)
    if workers <= 1:
        return None, "this process"
    return ProcessPoolExecutor(max_workers=workers), f"{workers} local processes"


def run_sweep(scenario: Scenario, devices: list[int] | None = None, strong: bool = False,
              out=None) -> dict[str, Any]:  # noqa: ANN001
    """Simulate every point; the merged Result (entries carry ``sweep_point``). Progress goes
    to ``out`` (standard error by default)."""
    out = out or sys.stderr
    raw = plain(load_yaml(read_text(scenario.file, "scenario")))
    raw.pop("sweep", None)
    axes = dict(scenario.sweep)
    if devices:
        axes["devices"] = tuple(devices)
    if not axes:
        raise ScenarioError("nothing to sweep: give --devices or a 'sweep' block",
                            file=scenario.file, path="sweep")
    points = grid(tuple(axes.items()))
    for p in points:  # fail fast, before any work, on a point that cannot be built
        apply_point(raw, p, strong)
    pool, where = executor(len(points))
    progress = Progress(len(points), out, where)
    done = []
    if pool is None:
        for p in points:
            done.append(run_point(raw, scenario.file, p, strong))
            progress.step(p)
    else:
        with pool:
            futures = [pool.submit(run_point, raw, scenario.file, p, strong, limits.active())
                       for p in points]
            for p, f in zip(points, futures):
                done.append(f.result())
                progress.step(p)
    progress.close()
    errors = [d["error"] for d in done if "error" in d]
    if errors:
        raise ScenarioError(**errors[0], file=scenario.file)
    from simulator.predict import code_version

    return {
        "scenario": {"name": scenario.name, "description": scenario.description,
                     "file": scenario.file, "seed": scenario.seed,
                     "device": scenario.cluster.device.name,
                     "batch_size": scenario.training.batch_size},
        "code_version": code_version(),
        "sweep": {"axes": {k: list(v) for k, v in axes.items()}, "points": len(points),
                  "scaling": "strong" if strong else "weak", "ran_on": where,
                  "skipped": {_label(d["point"]): d["skipped"] for d in done
                              if d["skipped"]}},
        "results": [e for d in done for e in d["entries"]],
    }


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


class Progress:
    """A bar on a terminal; plain lines when the output is not one."""

    def __init__(self, total: int, out, where: str):  # noqa: ANN001
        self.total, self.out, self.count = total, out, 0
        self.tty = hasattr(out, "isatty") and out.isatty()
        print(f"sweep: {total} point(s) on {where}", file=out, flush=True)

    def step(self, point: dict[str, Any]) -> None:
        self.count += 1
        if self.tty:
            filled = round(30 * self.count / self.total)
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.count}/{self.total} "
                  f"{_label(point)}\033[K", end="", file=self.out, flush=True)
        else:
            print(f"point {self.count}/{self.total} done: {_label(point)}", file=self.out,
                  flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.out, flush=True)

"""Calibration profiles: what ``parasim calibrate`` measured, in the catalogue's own format.

A profile is a YAML file with three parts::

    calibration:             # the record: when, where, with what, and the raw measurements
      date: 2026-11-21T10:00:00+00:00
      hosts: [node-a]
      ranks: 2
      ranks_per_node: 2
      cores_per_node: 2      # read by the simulator: ranks beyond this share cores (0: not
                             # measured, no core sharing: a profile imported from a GPU trace)
      co_run: {ranks: 2, slowdown: 1.12}   # read by the simulator (see NodeMeasurements)
      wakeup:                # read by the simulator: a blocked thread's wake-up latency
        - {ranks_per_core: 1.0, latency_us: 20}
        - {ranks_per_core: 2.0, latency_us: 1300}
      message_wakeup:        # read by the simulator: a process's, after a quiet wait
        - {ranks_per_core: 1.0, latency_us: 90}
        - {ranks_per_core: 2.0, latency_us: 150}
      migration:             # read by the simulator: a left core idles that long
        - {ranks_per_core: 2.0, latency_us: 2000}
      spread:                # read by the simulator: how unevenly ranks finish equal work
        - {ranks_per_core: 1.0, std_us: 40, work_us: 9000}
        - {ranks_per_core: 2.0, std_us: 1500, work_us: 18000}
      collectives:           # read by the simulator: fitted all-reduce costs per algorithm
        scope: intra
        ring: {latency_us: 40, bandwidth_GBps: 8, ranks: [2]}
        oversubscribed:      # the same, measured with more ranks than cores
          - {ranks_per_core: 2.0, ring: {latency_us: 300, bandwidth_GBps: 2.5, ranks: [4]}}
      backend: cpu
      versions: {parasim: ..., python: ..., numpy: ..., numba: ..., mpi: ...}
      conditions:            # what it was measured in (optional: older profiles lack it)
        load:                # other processes' CPU time on the job's cores, per window
          before: {seconds: 0.5, foreign_cores: 0.01, foreign_share: 0.005, load_average: 0.4}
          during: {...}
          after: {...}
        foreign_share: 0.005 # the largest of the three (null where it could not be measured)
        repeats: {limit: 0.25, remeasures: 2, timings: 160, measured_again: 4,
                  median_spread: 0.03, max_spread: 0.2, noisy: []}
        warnings: []         # as printed by calibrate; figures it refused, when accepted
        accepted_noisy: false  # written with --accept-noisy
        simulated: true      # only when the kernels ran under numba's CUDA simulator (CPU
                             # emulation): the device's figures are not a GPU's
      measured: {...}        # kernel, copy, point-to-point and all-reduce tables, as measured
    devices:                 # exactly one entry, read like devices.yaml (with ``kernels`` curves)
      NAME: {...}
    links:                   # one intra-node entry, and an inter-node one if it was measured
      NAME: {...}

A scenario names it with ``cluster: {profile: FILE, ...}`` (relative to the scenario's folder):
the profile's device and links become the cluster's defaults, and its names can be used like
catalogue names (``device: NAME`` or ``{base: NAME, ...}``). Errors name the profile file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from simulator.catalogue import read_device, read_link
from simulator.errors import ScenarioError
from simulator.schema import (
    Fields,
    boolean,
    choice,
    integer,
    list_of,
    number,
    string,
)
from simulator.specs import DeviceSpec, LinkSpec, NodeMeasurements
from simulator.yaml_input import load_yaml, read_text

CALIBRATION_KEYS = ("date", "hosts", "ranks", "ranks_per_node", "cores_per_node", "co_run",
                    "wakeup", "message_wakeup", "migration", "spread", "collectives", "backend",
                    "versions", "conditions", "measured")
CONDITIONS_KEYS = ("load", "foreign_share", "repeats", "warnings", "accepted_noisy",
                   "simulated")
ALGORITHMS = ("ring", "tree", "mpi")


@dataclass(frozen=True)
class Profile:
    file: str
    devices: dict[str, DeviceSpec]
    links: dict[str, LinkSpec]
    cores_per_node: int
    measured: NodeMeasurements = field(default_factory=NodeMeasurements)
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> DeviceSpec:
        return next(iter(self.devices.values()))

    def link(self, scope: str) -> LinkSpec | None:
        return next((v for v in self.links.values() if v.scope == scope), None)


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile; every error names ``path``."""
    path = Path(path)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError as e:
        raise ScenarioError(f"cannot read the profile: {e.strerror}", file=str(path)) from None
    return _load(str(path), stamp)


@lru_cache(maxsize=16)
def _load(path: str, stamp: int) -> Profile:  # noqa: ARG001 - the stamp keys the cache
    text = read_text(path, "profile")
    try:
        return parse_profile(load_yaml(text), path)
    except ScenarioError as e:
        raise e.with_file(path) from None


def parse_profile(data: Any, file: str = "<profile>") -> Profile:
    top = Fields(data, "")
    cal = top.sub("calibration")
    record = {
        "date": cal.get("date", _text),
        "hosts": list(cal.get("hosts", list_of(string))),
        "ranks": cal.get("ranks", integer(1)),
        "ranks_per_node": cal.get("ranks_per_node", integer(1)),
        "backend": cal.get("backend", string),
        "versions": dict(cal.get("versions", _mapping)),
        "measured": dict(cal.get("measured", _mapping, {})),
    }
    if cal.has("conditions"):  # profiles written before calibrate checked itself have none
        record["conditions"] = _conditions(cal.sub("conditions"))
    cores = cal.get("cores_per_node", integer(0))
    co = cal.sub("co_run")
    co_run = (co.get("ranks", integer(1)), co.get("slowdown", number(minimum=1.0)))
    co.done(("ranks", "slowdown"))
    def wake(e: Fields, load: float) -> float:
        value = e.get("latency_us", number(positive=False, minimum=0.0))
        e.done(("ranks_per_core", "latency_us"))
        return value

    def spreads(e: Fields, load: float) -> tuple[float, float]:
        value = (e.get("std_us", number(positive=False, minimum=0.0)),
                 e.get("work_us", number()))
        e.done(("ranks_per_core", "std_us", "work_us"))
        return value

    wakeup = _by_load(cal, "wakeup", wake)
    message_wakeup = _by_load(cal, "message_wakeup", wake)

    def lags(e: Fields, load: float) -> float:
        if load <= 1.0:
            raise e.error("ranks_per_core", "must be above 1 (more ranks than cores)")
        return wake(e, load)

    migration = _by_load(cal, "migration", lags)
    spread = _by_load(cal, "spread", spreads)
    collectives, scope, shared = {}, "intra", {}
    if cal.has("collectives"):
        cf = cal.sub("collectives")
        scope = cf.get("scope", choice(("intra", "inter")), "intra")

        def fits(e: Fields, load: float) -> dict[str, tuple[float, float]]:
            if load <= 1.0:
                raise e.error("ranks_per_core", "must be above 1 (more ranks than cores)")
            return _fits(e, ("ranks_per_core",))

        shared = _by_load(cf, "oversubscribed", fits)
        collectives = _fits(cf, ("scope", "oversubscribed"))  # last: it checks for strays
    cal.done(CALIBRATION_KEYS)
    record.update(cores_per_node=cores, co_run={"ranks": co_run[0], "slowdown": co_run[1]})

    dev_f = top.sub("devices")
    if len(dev_f.data) != 1:
        raise ScenarioError("must hold exactly one device entry", path="devices",
                            value=sorted(map(str, dev_f.data)), has_value=True,
                            line=dev_f.start_line)
    devices = {str(n): read_device(str(n), dev_f.sub(n)) for n in list(dev_f.data)}
    dev_f.done()
    link_f = top.sub("links")
    links = {str(n): read_link(str(n), link_f.sub(n)) for n in list(link_f.data)}
    link_f.done()
    scopes = [v.scope for v in links.values()]
    if scopes.count("intra") != 1 or scopes.count("inter") > 1:
        raise ScenarioError("must hold one intra-node link and at most one inter-node link",
                            path="links", value=scopes, has_value=True,
                            line=link_f.start_line)
    top.done(("calibration", "devices", "links"))
    measured = NodeMeasurements(co_run=co_run, collectives=collectives,
                                collectives_scope=scope, collectives_shared=shared,
                                wakeup=wakeup, message_wakeup=message_wakeup, migration=migration,
                                spread=spread)
    return Profile(file=file, devices=devices, links=links, cores_per_node=cores,
                   measured=measured, calibration=record)


def _entries(f: Fields, key: str) -> list:
    """The list under ``key`` (empty when absent), each entry keyed by its ranks per core."""
    entries = f.raw(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ScenarioError("must be a list of entries, each with its ranks_per_core",
                            path=f"{f.path}.{key}", value=entries, has_value=True,
                            line=f.line(key))
    return entries


def _by_load(f: Fields, key: str, read: Callable[[Fields, float], Any]) -> dict[float, Any]:
    """The list under ``key``, one entry per ranks per core: ``read`` gives an entry's value."""
    out: dict[float, Any] = {}
    for i, entry in enumerate(_entries(f, key)):
        e = Fields(entry, f"{f.path}.{key}[{i}]", getattr(entry, "start_line", None))
        load = e.get("ranks_per_core", number())
        if load in out:
            raise e.error("ranks_per_core", "must appear once")
        out[load] = read(e, load)
    return out


def _fits(f: Fields, also: tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """The per-algorithm all-reduce fits of one mapping: (seconds per step, bytes/s)."""
    out = {}
    for alg in ALGORITHMS:
        if f.has(alg):
            a = f.sub(alg)
            out[alg] = (a.get("latency_us", number(positive=False, minimum=0.0)),
                        a.get("bandwidth_GBps", number()))
            a.get("ranks", list_of(integer(1)), ())
            a.done(("latency_us", "bandwidth_GBps", "ranks"))
    f.done((*also, *ALGORITHMS))
    return out


def _conditions(f: Fields) -> dict[str, Any]:
    """What a profile was measured in: the record is kept as written, its warnings and the
    share of the cores other processes took (``null`` where unmeasured) checked."""
    share = f.raw("foreign_share")
    out = {"load": dict(f.get("load", _mapping, {})),
           "foreign_share": None if share is None else f.get(
               "foreign_share", number(positive=False, minimum=0.0)),
           "repeats": dict(f.get("repeats", _mapping, {})),
           "warnings": list(f.get("warnings", list_of(string, min_len=0), ())),
           "accepted_noisy": f.get("accepted_noisy", boolean, False)}
    if f.has("simulated"):  # written only for numba's CUDA simulator
        out["simulated"] = f.get("simulated", boolean)
    f.done(CONDITIONS_KEYS)
    return out


def _text(v: Any, path: str) -> str:
    """A date: YAML may read an unquoted timestamp as a datetime; keep it as written."""
    return v.isoformat() if hasattr(v, "isoformat") else string(v, path)


def _mapping(v: Any, path: str) -> dict:
    if not isinstance(v, dict):
        raise ScenarioError("must be a mapping", path=path, value=v, has_value=True)
    return v


def dump_profile(calibration: dict[str, Any], device: tuple[str, dict[str, Any]],
                 links: dict[str, dict[str, Any]]) -> str:
    """The profile file's text (what :func:`parse_profile` reads back)."""
    import yaml

    head = ("# A parasim calibration profile (written by `parasim calibrate`). Units are in the\n"
            "# key names, as in the catalogue: *_TFLOPS, *_GBps, *_us, *_GiB; times in seconds.\n")
    doc = {"calibration": calibration, "devices": {device[0]: device[1]}, "links": links}
    return head + yaml.safe_dump(_plain(doc), sort_keys=False, width=100)


def _plain(v: Any) -> Any:
    """Plain YAML types (tuples as lists, numpy scalars as floats)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item"):
        return v.item()
    return v



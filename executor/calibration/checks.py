"""What ``parasim calibrate`` checks in its own measurements before it writes a profile.

A calibration on a machine that other processes are using measures them as much as the
machine: slowdowns, bandwidths and latencies that no idle machine has, which the simulator then
takes for the machine's own. Three checks, each a pure function of figures, so that they are
tested on synthetic measurements:

* **Spread of repeats.** A timing kept as the median of its repeats is checked by their
  spread, the interquartile range over 1.349 x the median (the coefficient of variation for
  normally distributed repeats, and, like the median, moved by no single outlier). Above
  ``SPREAD_LIMIT`` the timing is measured again, ``REMEASURES`` times at most, and the calmest
  attempt kept; one still above it is a warning naming it (``Repeats``). Timings whose spread is
  the effect measured (all-reduce on time-shared cores, a kernel beside MPI's polling waits,
  wake-ups, the rank spread itself, bursts between waits) are not checked this way.
* **Foreign load** (``executor/calibration/load.py``): the share of the job's cores that other
  processes took before, during and after; a warning from ``LOAD_DOUBT``, a refusal from
  ``LOAD_LIMIT``.
* **Physical bounds** (``check_profile``): each figure of the profile against a floor and a
  ceiling no machine this runs on can pass (a refusal) and a narrower range outside which it is
  doubtful (a warning). Each bound's reason is beside it. A device measured under numba's CUDA
  simulator (CPU emulation) is no GPU: its figures are not judged, and the profile is marked
  ``simulated`` instead (``conclude``).

The command refuses (exit 2, no profile) on any refusal unless ``--accept-noisy``; warnings are
printed one a line and recorded in the profile's ``calibration.conditions`` either way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulator.errors import UserError

SPREAD_LIMIT = 0.25  # a timing's repeats spread by more than a quarter of their median
REMEASURES = 2  # times a timing that spread too much is measured again
LOAD_DOUBT = 0.10  # other processes took a tenth of the job's cores: warn
LOAD_LIMIT = 0.30  # ... almost a third: refuse (each rank then gets 1/1.3 of a core or less)
SHOWN = 5  # noisy timings printed one a line; the rest are counted in one line


class Refused(UserError):
    """``parasim calibrate`` will not write a profile of a machine it could not measure."""


def spread(samples: list[float]) -> float:
    """The robust coefficient of variation of a timing's repeats: interquartile range over
    1.349 x the median (0 for fewer than two repeats or a zero median)."""
    if len(samples) < 2:
        return 0.0
    mid = statistics.median(samples)
    if mid <= 0:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / (1.349 * mid)


class Repeats:
    """Every checked timing's spread, measured again while it is above the limit.

    ``measure(name, once)`` calls ``once()`` for ``(value, repeats)``; where several ranks
    measure together, ``agree`` turns this rank's spread into the one every rank acts on (the
    largest), so that all of them measure again, or none."""

    def __init__(self, limit: float = SPREAD_LIMIT, remeasures: int = REMEASURES):
        self.limit, self.remeasures = limit, remeasures
        self.spreads: list[float] = []
        self.again = 0
        self.noisy: list[dict[str, Any]] = []

    def measure(self, name: str, once: Callable[[], tuple[float, list[float]]],
                agree: Callable[[float], float] | None = None) -> float:
        tried: list[tuple[float, float]] = []  # (spread, value) of each measurement
        while not tried or (tried[-1][0] > self.limit and len(tried) <= self.remeasures):
            value, samples = once()
            s = spread(samples)
            tried.append((agree(s) if agree is not None else s, value))
        best = min(tried, key=lambda t: t[0])  # the calmest measurement
        self.spreads.append(best[0])
        self.again += len(tried) > 1
        if best[0] > self.limit:
            self.noisy.append({"timing": name, "spread": round(best[0], 3),
                               "measurements": len(tried)})
        return best[1]

    def record(self) -> dict[str, Any]:
        """The ``repeats`` entry of the profile's conditions."""
        s = self.spreads
        return {"limit": self.limit, "remeasures": self.remeasures, "timings": len(s),
                "measured_again": self.again,
                "median_spread": round(statistics.median(s), 3) if s else 0.0,
                "max_spread": round(max(s), 3) if s else 0.0,
                "noisy": sorted(self.noisy, key=lambda n: -n["spread"])}


@dataclass(frozen=True)
class Finding:
    """A figure outside a bound: refused (``refuse``) or doubtful."""

    figure: str
    value: float
    relation: str  # "below" or "above"
    limit: float
    refuse: bool
    why: str

    def text(self) -> str:
        bound = (f"{self.relation} the {'floor' if self.relation == 'below' else 'ceiling'} "
                 f"{number(self.limit)}" if self.refuse
                 else f"{self.relation} {number(self.limit)}, doubtful")
        return f"{self.figure} = {number(self.value)} is {bound} ({self.why})"


def number(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


@dataclass(frozen=True)
class Bound:
    """Limits on one figure, in the profile's units: outside ``floor`` .. ``ceiling`` no
    machine this runs on can be (a refusal, for the reason ``impossible``); outside ``low`` ..
    ``high`` it is doubtful (a warning, for the reason ``doubtful``)."""

    floor: float | None = None
    ceiling: float | None = None
    low: float | None = None
    high: float | None = None
    impossible: str = ""
    doubtful: str = ""

    def judge(self, figure: str, value: float | None, note: str = "") -> list[Finding]:
        """At most one finding, a refusal before a doubt; ``note`` goes before the reason."""
        if value is None:
            return []
        if not math.isfinite(value):
            return [Finding(figure, value, "above", self.ceiling or 0.0, True,
                            "not a finite number")]
        for limit, below, refuse in ((self.floor, True, True), (self.ceiling, False, True),
                                     (self.low, True, False), (self.high, False, False)):
            if limit is not None and (value < limit if below else value > limit):
                why = self.impossible if refuse else self.doubtful
                return [Finding(figure, value, "below" if below else "above", limit, refuse,
                                f"{note}; {why}" if note else why)]
        return []


# ---- the bounds -------------------------------------------------------------------------------
SLOWDOWN_MARGIN = 2.5  # x ranks per core: what caches, memory and SMT siblings can add
CO_RUN = Bound(ceiling=SLOWDOWN_MARGIN, low=0.8, high=1.5,
               impossible="ranks with a core each slow each other only through caches, memory "
                          "and SMT siblings (two hardware threads of one core: 2x at most)",
               doubtful="above 1.5 more than caches and memory explain, below 0.8 the run alone "
                        "was the slow one")


def time_shared(over: float, quiet: bool) -> Bound:
    """A kernel's slowdown beside the node's other ranks waiting, ``over`` ranks per core:
    time-sharing R ranks on C cores gives each C/R of a core (R/C times slower)."""
    return Bound(ceiling=SLOWDOWN_MARGIN * over, high=1.5 if quiet else None,
                 impossible=f"{over:g} rank(s) per core slow a rank {over:g}x by time-sharing, "
                            f"and caches, memory and SMT siblings at most {SLOWDOWN_MARGIN:g}x "
                            "that",
                 doubtful="ranks waiting quietly sleep: the rank computing is as good as alone")


MEMORY = Bound(floor=0.5, ceiling=1000.0, low=2.0, high=200.0,
               impossible="one core streaming memory: DRAM since 2003 moves 3.2 GB/s a channel "
                          "or more, and no core's L1 cache moves 1000 GB/s",
               doubtful="below 2 the core was shared, above 200 the arrays stayed in a cache")
GPU_MEMORY = Bound(floor=10.0, ceiling=20_000.0, low=100.0,
                   impossible="a GPU streaming its memory: no CUDA GPU's moves less than "
                              "10 GB/s, and HBM3e moves 4.8-8 TB/s",
                   doubtful="below 100 GB/s the GPU was shared, or its clocks held down")
PEAK = {"cpu": Bound(floor=1e-4, ceiling=1.0, low=1e-3,
                     impossible="the fastest kernel rate, which every efficiency is against: a "
                                "core does at most FMA units x SIMD lanes x 2 x clock (0.32 "
                                "TFLOPS with AVX-512 at 5 GHz), and 0.1 GFLOP/s is a 1990s CPU",
                     doubtful="below 1 GFLOP/s even the largest GEMM ran on a shared core"),
        "gpu": Bound(floor=1e-4, ceiling=2000.0,
                     impossible="the fastest kernel rate, which every efficiency is against: no "
                                "GPU does 2000 TFLOPS in fp32 or TF32")}
LAUNCH = Bound(floor=0.0, ceiling=100_000.0, high=1000.0,
               impossible="a negative time, or a tenth of a second per op",
               doubtful="the executor's own cost per op is microseconds of Python; above 1 ms "
                        "the core was shared")
LATENCY = Bound(floor=0.0, ceiling=100_000.0, high=1000.0,
                impossible="a negative time is the timer's; a tenth of a second is tens of the "
                           "scheduler's time slices",
                doubtful="above 1 ms the receiver was not running when the message came")
LINK_IMPOSSIBLE = ("no cluster link is slower than 100 Mbit/s Ethernet (0.0125 GB/s) or faster "
                   "than NVLink 4 (900 GB/s)")
LINK_BANDWIDTH = {
    "intra": Bound(floor=0.01, ceiling=1000.0, low=0.5, impossible=LINK_IMPOSSIBLE,
                   doubtful="a message within a node is a memory copy, gigabytes a second"),
    "inter": Bound(floor=0.01, ceiling=1000.0, low=0.1, impossible=LINK_IMPOSSIBLE,
                   doubtful="slower than gigabit Ethernet (0.125 GB/s)")}
FIT_BANDWIDTH = Bound(low=0.01, high=1000.0,
                      doubtful="a fitted all-reduce bandwidth no link has: the sizes measured "
                               "did not pin the per-byte cost down")
WAKE_IMPOSSIBLE = "a negative time, or a second: no wake-up"
WAKE = {False: Bound(floor=0.0, ceiling=1e6, high=1000.0, impossible=WAKE_IMPOSSIBLE,
                     doubtful="with a core per rank a woken thread runs within microseconds"),
        True: Bound(floor=0.0, ceiling=1e6, high=100_000.0, impossible=WAKE_IMPOSSIBLE,
                    doubtful="a tenth of a second is tens of the scheduler's time slices")}
MIGRATION = Bound(floor=0.0, ceiling=1e6, impossible=WAKE_IMPOSSIBLE)
SPREAD_OF_WORK = Bound(floor=0.0, high=0.25, impossible="a negative deviation",
                       doubtful="equal work on a core each finishes within a few percent: a "
                                "rank lost its core")
LOAD = Bound(ceiling=LOAD_LIMIT, high=LOAD_DOUBT,
             impossible=f"a rank computing beside them gets 1/{1 + LOAD_LIMIT:g} of its core "
                        "or less, and what is measured is theirs as much as the machine's",
             doubtful="a tenth of the cores: the figures measured with every rank computing "
                      "are slower than the machine")


def check_profile(calibration: dict[str, Any], device: tuple[str, dict[str, Any]],
                  links: dict[str, dict[str, Any]], device_bounds: bool = True
                  ) -> list[Finding]:
    """Every bound on the figures of a profile as ``calibrate`` builds it (the profile's
    units): the refusals and the doubts; the device's own figures (memory bandwidth, peak,
    kernel times, launch overhead) only with ``device_bounds``."""
    name, dev = device
    over = calibration["ranks_per_node"] / max(1, calibration["cores_per_node"])
    measured = calibration.get("measured", {})
    sharing = measured.get("core_sharing", {})
    out: list[Finding] = []
    if sharing.get("alone_s"):
        out += CO_RUN.judge("calibration.co_run.slowdown",
                            sharing["together_s"] / sharing["alone_s"])
    if "waiting_slowdown" in sharing:
        out += time_shared(over, True).judge(
            "calibration.measured.core_sharing.waiting_slowdown", sharing["waiting_slowdown"])
        out += time_shared(over, False).judge(
            "calibration.measured.core_sharing.polling_wait_slowdown",
            sharing["polling_wait_slowdown"])
    if device_bounds:
        out += device_findings(name, dev, measured.get("kernels_s", {}))
    for link, entry in links.items():
        out += LATENCY.judge(f"links.{link}.latency_us", entry["latency_us"])
        out += LINK_BANDWIDTH[entry["scope"]].judge(f"links.{link}.bandwidth_GBps",
                                                    entry["bandwidth_GBps"])
    for key in ("wakeup", "message_wakeup", "migration"):
        for row in calibration.get(key, []):
            load = row["ranks_per_core"]
            bound = MIGRATION if key == "migration" else WAKE[load > 1]
            out += bound.judge(f"calibration.{key}[ranks_per_core={load:g}].latency_us",
                               row["latency_us"])
    for row in calibration.get("spread", []):
        if row["ranks_per_core"] <= 1 and row["work_us"] > 0:
            out += SPREAD_OF_WORK.judge(
                f"calibration.spread[ranks_per_core={row['ranks_per_core']:g}].std_us / "
                "work_us", row["std_us"] / row["work_us"])
    for alg, fit in calibration.get("collectives", {}).items():
        if isinstance(fit, dict) and "latency_us" in fit:  # at most one rank per core
            out += LATENCY.judge(f"calibration.collectives.{alg}.latency_us", fit["latency_us"])
            out += FIT_BANDWIDTH.judge(f"calibration.collectives.{alg}.bandwidth_GBps",
                                       fit["bandwidth_GBps"])
    return out


def device_findings(name: str, dev: dict[str, Any], kernels_s: dict[str, list]
                    ) -> list[Finding]:
    """The bounds on a device entry's own figures, and its kernel times positive."""
    memory = GPU_MEMORY if dev["kind"] == "gpu" else MEMORY
    out = memory.judge(f"devices.{name}.memory_bandwidth_GBps", dev["memory_bandwidth_GBps"])
    out += PEAK[dev["kind"]].judge(f"devices.{name}.peak_TFLOPS.fp32", dev["peak_TFLOPS"]["fp32"])
    for key, points in kernels_s.items():
        least = min(t for _, t in points)
        if least <= 0:
            out.append(Finding(f"calibration.measured.kernels_s.{key}", least, "below", 0.0,
                               True, "a kernel time that is not positive: the timer did not "
                               "advance"))
    out += LAUNCH.judge(f"devices.{name}.launch_overhead_us", dev["launch_overhead_us"])
    return out


def check_load(load: dict[str, dict[str, Any]], cores: int) -> list[Finding]:
    """The foreign load of each window (``before``, ``during``, ``after``) against its bounds."""
    out = []
    for when, window in load.items():
        if window.get("foreign_share") is not None:
            out += LOAD.judge(f"conditions.load.{when}.foreign_share", window["foreign_share"],
                              f"other processes took {window['foreign_cores']:.2f} of the "
                              f"{cores} core(s) this job runs on")
    return out


def noisy_lines(repeats: dict[str, Any]) -> list[str]:
    """One warning per timing still spread after measuring it again (the worst ``SHOWN``),
    and one line counting the rest."""
    noisy = repeats["noisy"]
    out = [f"timing {n['timing']!r}: spread {n['spread']:.3g} of its repeats after "
           f"{n['measurements']} measurements is above the doubt bound {repeats['limit']:g}"
           for n in noisy[:SHOWN]]
    if len(noisy) > SHOWN:
        out.append(f"{len(noisy) - SHOWN} more timings spread above {repeats['limit']:g}: "
                   "calibration.conditions.repeats.noisy lists them")
    return out


def verdict(findings: list[Finding], accept_noisy: bool, refuses: str = "write the profile"
            ) -> tuple[list[str], Refused | None]:
    """The warnings to print and record, and the refusal to do what ``refuses`` says (``None``
    with ``--accept-noisy``, whose refused figures become warnings)."""
    refused = [f for f in findings if f.refuse]
    warnings = [f.text() for f in findings if not f.refuse]
    if refused and not accept_noisy:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        return warnings, Refused(
            f"calibrate refuses to {refuses}: {refused[0].text()}{more}; run it on an idle "
            "machine, or pass --accept-noisy to write the profile with the warnings recorded")
    return [f"accepted with --accept-noisy: {f.text()}" for f in refused] + warnings, None


def conclude(calibration: dict[str, Any], device: tuple[str, dict[str, Any]],
             links: dict[str, dict[str, Any]], load: dict[str, dict[str, Any]], cores: int,
             repeats: Repeats, accept_noisy: bool, simulated: str | None = None
             ) -> tuple[list[str], Refused | None]:
    """Check a profile as ``calibrate`` built it, and the load it was measured under: the
    warnings and the refusal (``verdict``); without a refusal, ``calibration["conditions"]``
    records them, with the spread of the repeats (placed before the raw ``measured`` tables).
    ``simulated``: why the device is no GPU (numba's CUDA simulator); its figures are not
    judged, the reason is the first warning, and the conditions say ``simulated: true``."""
    warnings, refusal = verdict(check_load(load, cores)
                                + check_profile(calibration, device, links,
                                                device_bounds=simulated is None), accept_noisy)
    if refusal is not None:
        return warnings, refusal
    if simulated is not None:
        warnings.insert(0, f"{simulated}; they were not checked against a GPU's bounds")
    record = repeats.record()
    warnings += noisy_lines(record)
    shares = [w["foreign_share"] for w in load.values() if w["foreign_share"] is not None]
    measured = calibration.pop("measured", {})
    calibration["conditions"] = {"load": load, "foreign_share": max(shares) if shares else None,
                                 "repeats": record, "warnings": warnings,
                                 "accepted_noisy": accept_noisy,
                                 **({"simulated": True} if simulated is not None else {})}
    calibration["measured"] = measured
    return warnings, None


def conditions_line(conditions: dict[str, Any]) -> str:
    """The summary's line on what the measurements were taken in."""
    load = ", ".join(f"{w['foreign_share']:.0%} {when}" if w["foreign_share"] is not None
                     else f"unmeasured {when}" for when, w in conditions["load"].items())
    r = conditions["repeats"]
    return (f"  conditions: other processes took {load} of the cores; {r['timings']} timings "
            f"checked, {r['measured_again']} measured again, spread median "
            f"{r['median_spread']:.3f}, worst {r['max_spread']:.3f}, "
            f"{len(r['noisy'])} above {r['limit']:g}; {len(conditions['warnings'])} warning(s)")

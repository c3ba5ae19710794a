"""``parasim calibrate``: measure this allocation and write a profile the simulator reads.

Run under ``mpiexec`` with at least two ranks. Measured, in this order:

* kernels (rank 0, the other ranks waiting without polling): every executor kernel over a grid
  of shapes (``executor/calibration/kernels.py``), giving efficiency curves against FLOPs, cold
  (the last-level cache spilled before each call) and hot (``hot:`` curves, back to back); the
  executor's own per-op cost (dependencies, timing, bookkeeping) as the launch overhead, from a
  real one-rank period of a model whose kernels are nearly free;
* memory bandwidth of one rank (a streaming add, 3 bytes moved per byte summed);
* the cache a step's data stay in (``cache_MiB``): passes over buffers up to the last-level
  cache's size, timed back to back, the largest still faster than memory by far
  (``kernels.cache_sweep``); a rank whose working set fits half its share of it takes the hot
  curves (``simulator/engine/hardware.py``);
* host-device copy bandwidth, on a GPU backend;
* on a GPU backend (``cuda``) the device's memory bandwidth is a streaming ``axpy`` on it (12
  bytes moved per element), its SM count and memory are the device's, and the host's cache is
  not swept (a GPU kernel does not use it); the core-sharing, wake-up and spread measurements
  below run their work on the host's cores (the ``cpu`` kernels) either way: they measure how
  the node's cores and the OS treat the ranks' threads;
* core sharing: the cores each node gives this job, ranks per node, the slowdown of a kernel
  while the node's other ranks run the same kernel (``co_run``), and, when ranks outnumber
  cores, the slowdown while they wait inside MPI (whether MPI's waits poll);
* thread wake-up latency, per ranks per core: how long a thread that blocked waits for a core
  once another thread hands over to it (the executor's comm stream and main thread); a
  process's after the executor's quiet wait for a message, and, when ranks outnumber cores, how
  long a core a rank leaves idles while the others queue (``executor/calibration/sharing.py``);
* point-to-point one-way times (a send and its acknowledgement, less the acknowledgement's way)
  from rank 0 to a rank on its node, and one on another node when there is one, as a training
  step sends (a freshly written message into a receive buffer out of the caches): latency (the
  smallest message) and bandwidth (a least-squares fit of T = latency + S / bandwidth over
  large messages), and MPI's eager limit (the largest blocking send that returns before its
  receiver is there);
* all-reduce time against size, rank count and ranks per core (ring, tree and MPI's own), as a
  gradient exchange runs it, next to what the simulator predicts for it from the measured link
  and memory bandwidth, and the per-algorithm fit the simulator uses instead.

Before the first measurement and after the last, every rank sleeps while the load other
processes put on the job's cores is measured (``executor/calibration/load.py``), and during
them too; timings are checked for the spread of their repeats, and the profile's figures for
physical bounds (``executor/calibration/checks.py``). A machine too busy to be measured, or a
figure no machine can have, is a refusal (no profile) unless ``--accept-noisy``; doubtful
figures are warnings. Both are recorded in the profile's ``calibration.conditions``.

Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, no GPU) the ``cuda`` kernels run as
Python threads on the CPU: they are timed on the smallest shapes (``kernels.SIMULATED``), the
device's figures are the emulator's and are not judged against a GPU's bounds, and the profile
says so (``calibration.conditions.simulated: true``, a warning, the device's ``source``).

The profile (``simulator/profile.py``) is written by rank 0.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from executor.calibration.checks import (
    LOAD_DOUBT,
    Refused,
    Repeats,
    check_load,
    conclude,
    conditions_line,
    verdict,
)
from executor.calibration.comm import (
    CommCalibration,
    fit_collectives,
    predicted_allreduce,
    quiet_barrier,
    steps_and_volume,
)
from executor.calibration.kernels import (
    GRIDS,
    HOT,
    cache_sweep,
    checked,
    kernel_grid,
    measure_kernels,
    runner_overhead,
    simulated,
    timed_samples,
)
from executor.calibration.load import LoadProbe
from executor.calibration.sharing import SharingCalibration
from simulator.predict import code_version

F32 = np.float32
LOAD_WINDOW_S = {"tiny": 0.1, "small": 0.5, "full": 1.0}  # each sleeping look at the load
LOAD_TRIES = 3  # looks at most, while other processes take a tenth of the cores or more
SIMULATED_NOTE = ("the cuda kernels ran under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), "
                  "CPU emulation: the device's figures (peak, kernel curves, memory and copy "
                  "bandwidth, launch overhead, SMs, memory) are the emulator's, not a GPU's")


@dataclass
class Outcome:
    """What ``calibrate`` gives each rank: on rank 0 the profile's text, the summary and the
    warnings, or the refusal (on every rank when it came before measuring)."""

    text: str = ""
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refusal: Refused | None = None


class Calibration(CommCalibration, SharingCalibration):
    def __init__(self, comm: MPI.Comm, backend: Any, grid: str):
        self.comm, self.backend, self.grid = comm, backend, grid
        self.gpu = backend.name == "cuda"
        self.simulated = simulated(backend)
        # the kernels the host-side measurements (``SharingCalibration``) run as work: the
        # host's cores, which a GPU backend's kernels leave to the rank's threads
        self.k = backend
        if self.gpu:
            from executor.kernels import get_backend

            self.k = get_backend("cpu")
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        hosts = comm.allgather(MPI.Get_processor_name())
        self.hosts = hosts
        self.local = self.node.Get_rank()
        self.ranks_per_node = self.node.Get_size()
        self.cores = min(comm.allgather(len(os.sched_getaffinity(0))))
        self.measured: dict[str, Any] = {}
        self.repeats = Repeats()
        self.probe = LoadProbe(comm, self.node)

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def timing(self, name: str, samples: Callable[[], list[float]], wait: Callable[[], None],
               check: bool = True) -> float:
        """The median of ``samples()`` (every rank calls it; the ranks that do not measure
        return no samples and get 0), then ``wait()`` on every rank; with ``check``, all of it
        again on every rank while the largest spread of any rank's repeats is above the limit
        (``executor/calibration/checks.py``)."""
        def once() -> tuple[float, list[float]]:
            got = samples()
            wait()
            return (statistics.median(got) if got else 0.0), got

        if not check:
            return once()[0]
        return self.repeats.measure(name, once,
                                    agree=lambda s: self.comm.allreduce(s, op=MPI.MAX))

    # ---- kernels and memory (rank 0) ------------------------------------------------------
    def kernels(self) -> dict[str, list[tuple[float, float]]]:
        out = measure_kernels(self.backend, self.grid, self.repeats) if self.rank == 0 else {}
        quiet_barrier(self.comm)
        return out

    def launch_overhead(self) -> float:
        """Seconds the executor spends per op beyond the kernel: a one-rank period of a deep
        model of 4-wide layers, less the same kernels called directly, per op."""
        value = 0.0
        if self.rank == 0:
            value = runner_overhead(self.backend, kernel_grid(self.backend, self.grid),
                                    self.repeats)
        quiet_barrier(self.comm)
        return self.comm.bcast(value, root=0)

    def memory(self) -> tuple[float, dict[str, Any]]:
        """Rank 0's memory bandwidth (the host's: all-reduce sums there), and the cache its data
        stay in (``cache_sweep``; none on a GPU backend, whose kernels do not use it)."""
        value, cache = 0.0, {}
        if self.rank == 0:
            n = 1 << 24
            a, b = np.ones(n, F32), np.ones(n, F32)
            t = checked(self.repeats, "memory bandwidth: a streaming add", lambda: timed_samples(
                lambda: np.add(a, b, out=a), lambda: None, 5, 0.05))
            value = 3 * 4 * n / t
            cache = {} if self.gpu else cache_sweep(self.repeats, GRIDS[self.grid])
        quiet_barrier(self.comm)
        return self.comm.bcast((value, cache), root=0)

    def device_memory(self) -> float:
        """Rank 0's GPU memory bandwidth: ``y += a x`` over device arrays (read x and y, write
        y: 12 bytes an element) of 64 MiB each, past any GPU's L2 cache (256 elements, once,
        under the simulator: a Python thread each)."""
        value = 0.0
        if self.rank == 0:
            k = self.backend
            n, reps = (1 << 8, 1) if self.simulated else (1 << 24, 5)
            x, y = k.to_device(np.ones(n, F32)), k.to_device(np.ones(n, F32))
            t = checked(self.repeats, "memory bandwidth: a streaming axpy on the device",
                        lambda: timed_samples(lambda: k.axpy(0.0, x, y), k.synchronize, reps,
                                              0.05 * reps))
            value = 3 * 4 * n / t
        quiet_barrier(self.comm)
        return self.comm.bcast(value, root=0)

    def copies(self) -> dict[str, Any] | None:
        """Host-to-device and device-to-host bandwidth (GPU backends only)."""
        if not self.gpu:
            return None
        out = None
        if self.rank == 0:
            sizes = [1 << 16, 1 << 20, 1 << 24]
            h2d, d2h = [], []
            for s in sizes:
                host = np.ones(s // 4, F32)
                k = self.backend
                dev = k.to_device(host)
                h2d.append(checked(self.repeats, f"host-to-device copy of {s} B",
                                   lambda host=host, k=k: timed_samples(
                                       lambda: k.to_device(host), k.synchronize, 3, 0.02)))
                d2h.append(checked(self.repeats, f"device-to-host copy of {s} B",
                                   lambda dev=dev, k=k: timed_samples(
                                       lambda: k.to_host(dev), k.synchronize, 3, 0.02)))
            out = {"bytes": sizes, "host_to_device_s": h2d, "device_to_host_s": d2h,
                   "host_to_device_GBps": sizes[-1] / h2d[-1] / 1e9,
                   "device_to_host_GBps": sizes[-1] / d2h[-1] / 1e9}
        quiet_barrier(self.comm)
        return self.comm.bcast(out, root=0)


def versions(backend: Any) -> dict[str, str]:
    import numba

    lib = MPI.Get_library_version().strip().splitlines()[0]
    out = {"parasim": code_version(), "python": platform.python_version(),
           "numpy": np.__version__, "numba": numba.__version__,
           "mpi4py": __import__("mpi4py").__version__, "mpi": lib, "backend": backend.name,
           "platform": platform.platform(), "argv": " ".join(sys.argv[1:])}
    if backend.name == "cuda":
        from importlib import metadata

        try:
            out["numba-cuda"] = metadata.version("numba-cuda")
        except metadata.PackageNotFoundError:
            pass
        out["gpu"] = gpu_properties(backend)["name"]
    return out


def gpu_properties(backend: Any) -> dict[str, Any]:
    """The current CUDA device's name, SM count and memory (bytes, None when unknown); under
    the simulator, which has no SMs and whose device memory is the host's, the simulator."""
    from numba import cuda

    if simulated(backend):
        return {"name": "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1, CPU emulation)",
                "sms": 1, "memory_bytes": None}
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return {"name": f"{name} (compute capability "
                    f"{'.'.join(map(str, dev.compute_capability))})",
            "sms": int(dev.MULTIPROCESSOR_COUNT),
            "memory_bytes": int(cuda.current_context().get_memory_info().total)}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def calibrate(comm: MPI.Comm, backend: Any, grid: str, name: str, accept_noisy: bool = False
              ) -> Outcome:
    """Measure everything (every rank takes part) and check it; rank 0 gets the profile's
    text, a summary and the warnings, or the refusal; the others an empty ``Outcome`` (or the
    refusal, when the load before measuring refused it)."""
    from simulator.progress import Steps

    cal = Calibration(comm, backend, grid)
    cal.say(f"calibrating {comm.Get_size()} rank(s) on {', '.join(sorted(set(cal.hosts)))} "
            f"({backend.name} backend, {grid} grid)")
    step = Steps(12, enabled=comm.Get_rank() == 0)
    step("the load other processes put on the cores, before measuring")
    machine_load = {"before": cal.probe.idle(LOAD_WINDOW_S[grid], LOAD_TRIES, LOAD_DOUBT)}
    _, refusal = verdict(check_load(machine_load, cal.probe.cores), accept_noisy, "measure")
    if refusal is not None:  # every rank has the same figures
        return Outcome(refusal=refusal)
    began = cal.probe.mark()
    if cal.simulated:
        cal.say(f"  {SIMULATED_NOTE}; the kernels are timed once each, on the "
                "smallest shapes")
    step("kernel efficiency curves, per kind and per layer shape")
    curves = cal.kernels()
    cold = [k for k in curves if not k.startswith(HOT)]
    kinds = [k for k in cold if "@" not in k]
    cal.say(f"  kernels: {sum(len(curves[k]) for k in kinds)} points over {len(kinds)} kinds "
            f"and {len(cold) - len(kinds)} layer shapes, "
            + ("each timed back to back" if cal.gpu else "each timed cold and hot"))
    step("launch overhead")
    launch = cal.launch_overhead()
    step("memory bandwidth, and the cache a step's data stay in")
    membw, cache = cal.memory()
    device_membw = cal.device_memory() if cal.gpu else membw
    if cache:
        cal.say(f"  cache: {cache['effective_MiB']:g} MiB of the {cache['last_level_MiB']:g} "
                "MiB last-level cache keeps a working set from one pass to the next")
    step("host-device copies")
    copies = cal.copies()
    step("core sharing: ranks computing side by side, and beside waiting ranks")
    sharing = cal.core_sharing()
    cal.say(f"  core sharing: {cal.ranks_per_node} rank(s) per node on {cal.cores} core(s); "
            f"co-running slowdown {sharing['co_run_slowdown']:.2f}x")
    if "waiting_slowdown" in sharing:
        cal.say(f"  beside waiting ranks: {sharing['waiting_slowdown']:.2f}x waiting quietly, "
                f"{sharing['polling_wait_slowdown']:.2f}x in MPI's own (polling) waits")
    step("thread wake-ups")
    wakeup = cal.wakeup()
    cal.say("  thread wake-up: " + ", ".join(f"{r['latency_us']:.0f} us at "
                                              f"{r['ranks_per_core']:g} rank(s) per core"
                                              for r in wakeup))
    step("message wake-ups and the migration lag")
    message_wakeup, migration = cal.message_wakeup(), cal.migration()
    for what, rows_ in (("message wake-up (quiet wait)", message_wakeup),
                        ("a left core idles (migration lag)", migration)):
        cal.say(f"  {what}: " + ", ".join(f"{r['latency_us']:.0f} us at {r['ranks_per_core']:g} "
                                         "rank(s) per core" for r in rows_))
    step("the spread of ranks' finish times")
    spread = cal.spread()
    cal.say("  rank spread: " + ", ".join(f"{r['std_us']:.0f} us at {r['ranks_per_core']:g} "
                                           "rank(s) per core" for r in spread))
    step("point-to-point latency and bandwidth")
    links = cal.p2p()
    step("all-reduce times against size, ranks and ranks per core")
    rows = cal.allreduce()
    machine_load["during"] = cal.probe.since(began)
    step("the load other processes put on the cores, after measuring")
    machine_load["after"] = cal.probe.idle(LOAD_WINDOW_S[grid], LOAD_TRIES, LOAD_DOUBT)
    if comm.Get_rank() != 0:
        return Outcome()
    # the fastest rate measured, hot or cold (no hot point is clipped); efficiencies kept to 5
    # significant figures: a cold small kernel runs at 1e-5 of the peak and less
    peak = max(f / t for points in curves.values() for f, t in points)
    kernels = {key: {"flops": [float(f) for f, _ in pts],
                     "efficiency": [float(f"{min(1.0, f / t / peak):.5g}") for f, t in pts]}
               for key, pts in sorted(curves.items())}
    intra = links.get("intra") or links.get("inter")
    loads = sorted({r["ranks_per_core"] for r in rows if r["ranks_per_core"] > 1})
    fits = fit_collectives([r for r in rows if r["ranks_per_core"] <= 1])
    shared = {load: fit_collectives([r for r in rows if r["ranks_per_core"] == load])
              for load in loads}
    for row in rows:
        row["link_model_seconds"] = predicted_allreduce(
            row["ranks"], row["bytes"], row["algorithm"], intra["latency_s"],
            intra["bandwidth_Bps"], membw)
        f = (shared[row["ranks_per_core"]] if row["ranks_per_core"] > 1 else fits)[
            row["algorithm"]]
        steps, volume = steps_and_volume(row["algorithm"], row["ranks"], row["bytes"])
        row["fitted_seconds"] = (steps * f["latency_us"] * 1e-6
                                 + volume / (f["bandwidth_GBps"] * 1e9))
    date = now()
    hosts = sorted(set(cal.hosts))
    where = f"measured by parasim calibrate on {', '.join(hosts)} at {date}"
    dense = curves.get("dense.fwd") or next(iter(curves.values()))
    gpu = gpu_properties(backend) if cal.gpu else {}
    device = {
        "kind": "gpu" if cal.gpu else "cpu",
        "sms": gpu.get("sms", 1),
        "peak_TFLOPS": {"fp32": peak / 1e12},
        "memory_GiB": (gpu.get("memory_bytes") or _memory_per_rank(cal.ranks_per_node)) / 2**30,
        "memory_bandwidth_GBps": device_membw / 1e9,
        "launch_overhead_us": launch * 1e6,
        "compute_efficiency": round(min(1.0, dense[-1][0] / dense[-1][1] / peak), 5),
        "memory_efficiency": 1.0,
        "blocks_per_sm": 1,
        "comm_sms": 0,
        "kernels": kernels,
        # the cache a working set stays in; measured on the host, so a GPU's own is not
        # known (0: the simulator keeps the cold curves)
        "cache_MiB": cache["effective_MiB"] if backend.name != "cuda" else 0.0,
        "source": f"{where} ({backend.name} backend"
                  f"{', ' + gpu['name'] if gpu else ''}): peak is the fastest kernel rate "
                  "measured; efficiencies per kernel kind against it"
                  + (f"; {SIMULATED_NOTE}" if cal.simulated else ""),
    }
    link_entries = {}
    for scope, m in links.items():
        link_entries[f"{name}_{scope}"] = {
            "scope": scope, "bandwidth_GBps": m["bandwidth_Bps"] / 1e9,
            "latency_us": m["latency_s"] * 1e6, "efficiency": 1.0,
            "eager_limit_KiB": m["eager_limit_bytes"] / 1024,
            "source": f"{where}: MPI one-way message times, latency of the smallest "
                      "message, bandwidth fitted over large messages; the eager limit: the "
                      "largest blocking send that returned before its receiver was there"}
    measured = {"kernels_s": {k: [[f, t] for f, t in v] for k, v in sorted(curves.items())},
                "memory_bandwidth_GBps": membw / 1e9, "cache": cache,
                **({"device_memory_bandwidth_GBps": device_membw / 1e9} if cal.gpu else {}),
                "launch_overhead_s": launch,
                "core_sharing": sharing, "wakeup": wakeup, "message_wakeup": message_wakeup,
                "migration": migration, "spread": spread, "p2p": links,
                "allreduce": rows}
    if copies:
        measured["host_device_copy"] = copies
    calibration = {"date": date, "hosts": hosts, "ranks": comm.Get_size(),
                   "ranks_per_node": cal.ranks_per_node, "cores_per_node": cal.cores,
                   "co_run": {"ranks": sharing["together_ranks"],
                              "slowdown": round(sharing["co_run_slowdown"], 4)},
                   "wakeup": [{"ranks_per_core": r["ranks_per_core"],
                               "latency_us": round(r["latency_us"], 2)} for r in wakeup],
                   **{key: [{"ranks_per_core": r["ranks_per_core"],
                             "latency_us": round(r["latency_us"], 2)} for r in rows_]
                      for key, rows_ in (("message_wakeup", message_wakeup),
                                         ("migration", migration))},
                   "spread": [{"ranks_per_core": r["ranks_per_core"],
                               "std_us": round(r["std_us"], 2),
                               "work_us": round(r["work_s"] * 1e6, 1)} for r in spread],
                   "collectives": {"scope": "inter" if len(set(cal.hosts)) > 1 else "intra",
                                   **fits,
                                   **({"oversubscribed": [{"ranks_per_core": load, **f}
                                                          for load, f in shared.items()]}
                                      if shared else {})},
                   "backend": backend.name, "versions": versions(backend),
                   "measured": measured}
    warnings, refusal = conclude(calibration, (name, device), link_entries, machine_load,
                                 cal.probe.cores, cal.repeats, accept_noisy,
                                 SIMULATED_NOTE if cal.simulated else None)
    if refusal is not None:
        return Outcome(refusal=refusal)
    from simulator.profile import dump_profile

    text = dump_profile(calibration, (name, device), link_entries)
    return Outcome(text, summary(device, link_entries, rows, sharing, cal)
                   + [conditions_line(calibration["conditions"])], warnings)


def _memory_per_rank(ranks_per_node: int) -> float:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2**30
    return total / max(1, ranks_per_node)


def summary(device: dict, links: dict, rows: list[dict], sharing: dict, cal: Calibration
            ) -> list[str]:
    out = [f"  peak {device['peak_TFLOPS']['fp32'] * 1e3:.1f} GFLOP/s per rank, launch "
           f"overhead {device['launch_overhead_us']:.1f} us, memory "
           f"{device['memory_bandwidth_GBps']:.1f} GB/s"]
    curves = device["kernels"]
    cold = [key for key in curves if not key.startswith(HOT)]
    shaped = sum("@" in key for key in cold)
    out.append(f"  kernel curves: {len(cold) - shaped} kinds, {shaped} layer shapes, "
               + ("back to back" if device["kind"] == "gpu" else
                  f"cold and hot (hot where a rank's working set fits half its share of "
                  f"{device['cache_MiB']:g} MiB)"))
    for key in cold:
        if "@" in key:
            continue
        e, hot = curves[key]["efficiency"], curves.get(HOT + key, {}).get("efficiency")
        speedup = (f", hot {statistics.median(h / c for h, c in zip(hot, e)):.2f}x faster "
                   "(median)" if hot else "")
        out.append(f"  {key:<18} efficiency {min(e):.3g} .. {max(e):.3g} over "
                   f"{curves[key]['flops'][0]:.3g} .. {curves[key]['flops'][-1]:.3g} FLOPs"
                   f"{speedup}")
    for n, lk in links.items():
        out.append(f"  {n}: latency {lk['latency_us']:.2f} us, bandwidth "
                   f"{lk['bandwidth_GBps']:.2f} GB/s, eager limit {lk['eager_limit_KiB']:g} KiB")
    out.append("  all-reduce ranks per-core      bytes  measured ms   link model   error   fitted"
               "   error")
    for r in rows:
        e1 = (r["link_model_seconds"] - r["seconds"]) / r["seconds"]
        e2 = (r["fitted_seconds"] - r["seconds"]) / r["seconds"]
        out.append(f"  {r['algorithm']:<10} {r['ranks']:>5} {r['ranks_per_core']:>8.3g} "
                   f"{r['bytes']:>10} "
                   f"{r['seconds'] * 1e3:>12.3f} {r['link_model_seconds'] * 1e3:>12.3f} "
                   f"{e1:>+7.0%} {r['fitted_seconds'] * 1e3:>8.3f} {e2:>+7.0%}")
    return out

"""Kernel efficiency curves: each executor kernel timed over a range of shapes on one backend.

Every case is a small model graph built by the simulator's own layer builder, so the FLOPs a
measured point is filed under are exactly the FLOPs the simulator will cost that layer at. A
point is timed through the code the executor's ranks run (``executor.interpreter.model.Forward`` for
forward, backward and the loss; ``sgd_momentum`` per parameter tensor for the update; the
CD-1 step with its uniforms and local update as ``executor/dbn/pretrain.py`` runs it), median of
repeats after a warm-up; a timing whose repeats spread too much is measured again
(``executor/calibration/checks.py``). Curves are ``kind.phase -> [(FLOPs, seconds), ...]``
over every shape of the kind, and ``kind.phase@shape`` over the batches of one layer shape
(``kernel_shape``: the simulator prices a layer of a measured shape from its own curve, others
from the kind's); ``calibrate`` turns seconds into efficiencies against the fastest rate
measured (the profile's peak).

Every point is timed twice: cold, with the last-level cache spilled before each call (a step
whose weights, gradients and activations do not fit the cache), and hot, back to back after
the warm-up (a step whose whole working set stays in the cache: a small model's kernels find
their data there). The hot curves are filed under the same names prefixed ``hot:``
(``hot:act_relu.fwd``, ``hot:dense.fwd@64>128``); the simulator chooses between the two by
the rank's working set against half its share of the cache (``simulator/engine/hardware.py``).
Hot timing writes no spill buffer, and a kernel long enough that the cache's refill is a small
part of it is filed at its cold time untimed: the hot timings add about a tenth to a fifth of
the kernel step's time.

On a GPU backend (``cuda``) every point is timed once, back to back, under the plain names: the
host's spill buffer does not reach the GPU's L2 cache, and a GPU profile has no cache size, so
the simulator takes the same curves for any working set (the L2 is left out). Under numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``: a Python thread per GPU thread, ``executor/kernels/
cuda.py``; a GEMM of one 128 x 128 tile is 256 of them) any grid's shapes would take hours; the
cases shrink to ``SIMULATED`` (one smallest shape of each kind, one batch, one repeat), which
times every kernel the executor calls once, and the profile says its figures are the
emulator's (``executor/calibration/calibrate.py``).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from executor.calibration.checks import Repeats
from executor.interpreter.forward import Forward
from executor.interpreter.model import Layer, init_weights
from simulator.catalogue import HOT
from simulator.model import build_custom
from simulator.strategies.common import kernel_kind, kernel_shape

F32 = np.float32

# (kind, input shape per sample, layers) per grid; every case is timed at each of its batches
DENSE = [(64, 64), (256, 256), (512, 512), (784, 1024), (1024, 1024), (2048, 2048),
         (1024, 10), (500, 2000)]
CONV = [((1, 28, 28), 6, 5, 2), ((1, 32, 32), 6, 5, 0), ((6, 14, 14), 16, 5, 0),
        ((16, 16, 16), 32, 3, 1), ((32, 16, 16), 64, 3, 1)]
POOL = [(6, 28), (16, 10), (32, 16), (64, 16)]
ELEMENTS = [256, 4096, 65536, 262144]
RBM = [(784, 500), (500, 500), (500, 2000), (256, 256)]
SHAPES = {"dense": DENSE, "conv": CONV, "pool": POOL, "elements": ELEMENTS, "rbm": RBM}
HOT_UNTIMED = 10  # a kernel this many times the cache's refill cold is not timed hot
# ``warmup``: a call before the timed ones (JIT compilation, caches, the GPU's clocks);
# ``depth`` and ``periods``: the (dense, relu) pairs of the model whose one-rank period gives
# the launch overhead, and the periods timed
GRIDS: dict[str, dict[str, Any]] = {
    "tiny": {"batches": (16, 64), "take": 2, "repeats": 3, "min_s": 0.005, "shapes": SHAPES,
             "warmup": True, "depth": 11, "periods": 9},
    "small": {"batches": (32, 64, 128, 256), "take": 5, "repeats": 5, "min_s": 0.03,
              "shapes": SHAPES, "warmup": True, "depth": 11, "periods": 15},
    "full": {"batches": (16, 64, 128, 256, 512), "take": 99, "repeats": 7, "min_s": 0.1,
             "shapes": SHAPES, "warmup": True, "depth": 11, "periods": 21},
}
# under numba's CUDA simulator, whatever the grid: each kind once, at its smallest, one call
# each (the simulator compiles nothing: no warm-up)
SIMULATED: dict[str, Any] = {
    "batches": (2,), "take": 1, "repeats": 1, "min_s": 0.0, "warmup": False, "depth": 1,
    "periods": 1,
    "shapes": {"dense": [(8, 8)], "conv": [((1, 6, 6), 2, 3, 1)], "pool": [(2, 4)],
               "elements": [64], "rbm": [(8, 8)]}}


def simulated(backend: Any) -> bool:
    """Whether ``backend``'s kernels run under numba's CUDA simulator (CPU emulation)."""
    if getattr(backend, "name", "") != "cuda":
        return False
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def kernel_grid(backend: Any, grid_name: str) -> dict[str, Any]:
    """The grid the kernels of ``backend`` are timed on: ``SIMULATED`` under the simulator."""
    return SIMULATED if simulated(backend) else GRIDS[grid_name]


def last_level_cache() -> int:
    """Bytes of this CPU's last-level cache (Linux sysfs, else ``sysconf``; 0 if unknown)."""
    best = (0, 0)
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((d / "level").read_text())
            text = (d / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, (level, int(digits) * scale))
    if best[1]:
        return best[1]
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError):
            continue
        if size > 0:
            return size
    return 0


@lru_cache(maxsize=1)
def spill_buffer() -> np.ndarray:
    """A buffer twice the last-level cache (64 MiB when the system does not say, at most
    512 MiB): writing it leaves other data out of every cache."""
    return np.zeros(int(min(512 << 20, max(64 << 20, 2 * last_level_cache()))) // 4, F32)


def cache_sweep(repeats: Repeats | None, grid: dict[str, Any]) -> dict[str, Any]:
    """How much data stays in this core's caches from one pass over it to the next: an
    in-place add over buffers of 1, 1.5, 2, 3, 4, 6, ... MiB up to the last-level cache's size,
    each timed back to back, against the same add over the spill buffer (twice the cache: from
    memory). ``effective_MiB`` is the largest buffer below the first one to run slower than
    the geometric mean of the fastest rate and the memory's: the working set a training step
    can cycle through and find in the cache (0 when the cache size is unknown). A step touches
    its weights, gradients and activations once each, in turn, like these passes; what keeps
    data is less than the cache's nominal size where the replacement policy is not LRU, and
    where the cache is shared with cores the job does not own (a virtual machine: 8-12 MiB of this
    project's 2-core test machine's 32 MiB, as busy as its other tenants make it)."""
    llc = last_level_cache()
    if not llc:
        return {"last_level_MiB": 0.0, "effective_MiB": 0.0, "sweep": []}

    def rate(name: str, buf: np.ndarray) -> float:
        t = checked(repeats, name, lambda: timed_samples(
            lambda: np.add(buf, 1.0, out=buf), lambda: None, grid["repeats"], grid["min_s"] / 4))
        return 2 * buf.nbytes / t  # read and write

    sizes = [m for e in range(16) for m in (2.0**e, 1.5 * 2.0**e) if m * 2**20 <= llc]
    sweep = [(m, rate(f"cache sweep: {m:g} MiB", np.ones(int(m * 2**20) // 4, F32)))
             for m in sizes]
    memory = rate("cache sweep: the spill buffer", spill_buffer())
    bound = (max(r for _, r in sweep) * memory) ** 0.5 if sweep else math.inf
    effective = 0.0
    for m, r in sweep:
        if r < bound:
            break
        effective = m
    return {"last_level_MiB": llc / 2**20, "effective_MiB": effective,
            "memory_GBps": memory / 1e9, "bound_GBps": bound / 1e9,
            "sweep": [[m, r / 1e9] for m, r in sweep]}


def timed(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, min_s: float,
          evict: bool = False, warmup: bool = True) -> float:
    """Median seconds of ``fn`` after one warm-up call, over at least ``repeats`` calls and
    ``min_s`` seconds (:func:`timed_samples`)."""
    return statistics.median(timed_samples(fn, sync, repeats, min_s, evict, warmup))


def timed_samples(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, min_s: float,
                  evict: bool = False, warmup: bool = True) -> list[float]:
    """Seconds of each call of ``fn`` after one warm-up call (unless not ``warmup``), at least
    ``repeats`` calls and ``min_s`` seconds (200 at most). With ``evict``, a buffer twice the
    last-level cache is
    written before each call (not timed): in a training step the rest of the model's weights,
    gradients and activations pass through the caches between two uses of one layer's data,
    and a kernel timed back to back with hot caches runs measurably faster (the momentum
    update of a 1024x1024 layer 2.3-2.6x on this project's 2-core test machine, as
    ``benchmarks/machine_effects.py`` prints it)."""
    if warmup:
        fn()
        sync()
    spill = spill_buffer() if evict else None
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - began < min_s:
        if spill is not None:
            np.add(spill, 1.0, out=spill)
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if len(times) >= 200:
            break
    return times


def checked(repeats: Repeats | None, name: str, samples: Callable[[], list[float]]) -> float:
    """The median of ``samples()``, measured again while its repeats spread too much when
    ``repeats`` keeps the record (``executor/calibration/checks.py``)."""
    if repeats is None:
        return statistics.median(samples())

    def once() -> tuple[float, list[float]]:
        s = samples()
        return statistics.median(s), s

    return repeats.measure(name, once)


def _cases(grid: dict[str, Any]) -> list[tuple[list[dict], list[int]]]:
    take, shapes = grid["take"], grid["shapes"]
    out = []
    for i, o in shapes["dense"][:take + 1]:
        out.append(([{"kind": "dense", "units": o}, {"kind": "act", "fn": "relu"},
                     {"kind": "dense", "units": 10}, {"kind": "softmax"}], [i]))
    for shape, oc, k, pad in shapes["conv"][:take]:
        out.append(([{"kind": "conv", "out_channels": oc, "kernel": k, "padding": pad},
                     {"kind": "flatten"}], list(shape)))
    for c, hw in shapes["pool"][:take]:
        for mode in ("max", "avg"):
            out.append(([{"kind": "pool", "kernel": 2, "stride": 2, "mode": mode}],
                        [c, hw, hw]))
    for n in shapes["elements"][:take + 1]:
        for fn in ("sigmoid", "tanh"):
            out.append(([{"kind": "act", "fn": fn}], [n]))
    for v, h in shapes["rbm"][:take]:
        out.append(([{"kind": "rbm", "units": h}], [v]))
    return out


class KernelTimer:
    """Times the layers of one case graph on ``backend`` at one batch size: each point with
    the caches spilled before every call (``evict``), and with ``hot`` also back to back,
    filed under ``hot:`` names."""

    def __init__(self, backend: Any, grid: dict[str, Any], seed: int = 0, evict: bool = True,
                 repeats: Repeats | None = None, hot: bool = False):
        self.k = backend
        self.fwd = Forward(backend)
        self.grid = grid
        self.rng = np.random.default_rng(seed)
        self.evict = evict
        self.repeats = repeats
        self.hot = hot

    @cached_property
    def refill_s(self) -> float:
        """About the seconds filling the last-level cache from memory takes: half a pass over
        the spill buffer (twice the cache)."""
        spill = spill_buffer()
        return timed(lambda: np.add(spill, 1.0, out=spill), lambda: None, 3, 0.0) / 2

    def _time(self, name: str, fn: Callable[[], Any]) -> tuple[float, float | None]:
        """(seconds as ``evict`` says, seconds hot or None): the hot timing takes the grid's
        repeats, and a quarter of its least time since no spill buffer is written between
        calls (its calls are as many as the cold timing's or more). A kernel that takes
        ``HOT_UNTIMED`` times the cache's refill or more cold is not timed hot: hot, it saves
        at most that refill (the data it finds in the cache), a tenth of its time at most,
        and it is filed at its cold time (the grid's largest kernels: on the 2-core test
        machine the hot timings added 20-40 s to the small grid's 50-60 s of cold ones, 5-12 s
        without these)."""
        g = self.grid
        t = checked(self.repeats, name, lambda: timed_samples(
            fn, self.k.synchronize, g["repeats"], g["min_s"], self.evict, g["warmup"]))
        if not self.hot:
            return t, None
        if t >= HOT_UNTIMED * self.refill_s:
            return t, t
        return t, checked(self.repeats, f"{HOT}{name}", lambda: timed_samples(
            fn, self.k.synchronize, g["repeats"], g["min_s"] / 4))

    @staticmethod
    def _file(out: dict[str, list[tuple[float, float]]], keys: tuple[str, ...], flops: float,
              times: tuple[float, float | None]) -> None:
        """A point under each of ``keys``, and its hot time under their ``hot:`` names."""
        cold, hot = times
        for key in keys:
            out[key].append((flops, cold))
            if hot is not None:
                out[HOT + key].append((flops, hot))

    def case(self, layers: list[dict], shape: list[int], batch: int,
             out: dict[str, list[tuple[float, float]]]) -> None:
        graph = build_custom(layers, shape)
        order = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
        whole = init_weights(graph, order, 0)
        k = self.k
        x = k.to_device(self.rng.random((batch, *shape), dtype=F32))
        for name in order:
            node = graph.nodes[name]
            layer = Layer(name, node)
            layer.params = {key: k.to_device(v) for key, v in whole.get(name, {}).items()}
            kind = node["kind"]
            key = kernel_kind(node)
            shape = kernel_shape(node)
            y, saved = self.fwd.forward(layer, x)
            if kind == "softmax":
                labels = k.to_device(self.rng.integers(0, y.shape[1], batch))
                t = self._time(f"{key}.fwd@{shape} batch {batch}",
                               lambda y=y, labels=labels: self.fwd.loss(y, labels, batch))
                _, _, dy = self.fwd.loss(y, labels, batch)
            else:
                t = self._time(f"{key}.fwd@{shape} batch {batch}",
                               lambda layer=layer, x=x: self.fwd.forward(layer, x))
                dy = k.to_device(self.rng.standard_normal((batch, *node["out_shape"]))
                                 .astype(F32))
            self._file(out, (f"{key}.fwd", f"{key}.fwd@{shape}"), node["fwd_flops"] * batch, t)

            def backward(layer=layer, dy=dy, saved=saved, y=y) -> Any:  # noqa: ANN001
                layer.grads.clear()
                return self.fwd.backward(layer, dy, saved, y)

            self._file(out, (f"{key}.bwd", f"{key}.bwd@{shape}"), node["bwd_flops"] * batch,
                       self._time(f"{key}.bwd@{shape} batch {batch}", backward))
            if kind == "rbm":
                self._file(out, ("rbm.cd1",), node["cd1_flops"] * batch,
                           self._cd1(f"rbm.cd1@{shape} batch {batch}", layer, x))
            if layer.params:
                n = sum(int(np.prod(v.shape)) for v in whole[name].values())
                self._file(out, ("update",), 4.0 * n,
                           self._update(f"update@{shape} batch {batch}", layer))
            x = y

    def _cd1(self, name: str, layer: Layer, x: Any) -> tuple[float, float | None]:
        """One CD-1 step as ``executor/dbn/pretrain.py`` times it: uniforms, ``rbm_cd1``, local
        update."""
        k, p = self.k, layer.params
        n, hidden = x.shape[0], p["b"].shape[0]
        p.setdefault("b_vis", k.zeros((x.shape[1],)))
        delta = {key: k.zeros(v.shape) for key, v in p.items()}
        gen = np.random.Generator(np.random.Philox(0))

        def step() -> None:
            u = k.to_device(gen.random((n, hidden)).astype(F32))
            dw, db_vis, db_hid, _ = k.rbm_cd1(x, p["w"], p["b_vis"], p["b"], u)
            for key, g in zip(("w", "b_vis", "b"), (dw, db_vis, db_hid)):
                k.axpy(0.0, g, p[key])
                k.axpy(0.0, g, delta[key])

        return self._time(name, step)

    def _update(self, name: str, layer: Layer) -> tuple[float, float | None]:
        k = self.k
        grads = {key: k.zeros(v.shape) for key, v in layer.params.items()}
        vel = {key: k.zeros(v.shape) for key, v in layer.params.items()}

        def step() -> None:
            for key, w in layer.params.items():
                k.sgd_momentum(w, grads[key], vel[key], 0.0, 0.9)

        return self._time(name, step)


def measure_kernels(backend: Any, grid_name: str, repeats: Repeats | None = None
                    ) -> dict[str, list[tuple[float, float]]]:
    """``kind.phase -> [(FLOPs, seconds), ...]`` sorted by FLOPs, equal FLOPs merged (the
    median time), zero-FLOP layers (flatten) left out: they cost the launch overhead only;
    every curve timed cold, and hot under its ``hot:`` name (the same points); on a GPU
    backend once, back to back. ``repeats``: check each timing's spread and keep the record."""
    grid = kernel_grid(backend, grid_name)
    host = backend.name != "cuda"
    timer = KernelTimer(backend, grid, evict=host, repeats=repeats, hot=host)
    raw: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for layers, shape in _cases(grid):
        for batch in grid["batches"]:
            timer.case(layers, shape, batch, raw)
    out = {}
    for key, points in raw.items():
        by_flops: dict[float, list[float]] = defaultdict(list)
        for f, t in points:
            if f > 0:
                by_flops[float(f)].append(t)
        if by_flops:
            out[key] = [(f, statistics.median(ts)) for f, ts in sorted(by_flops.items())]
    return out


def runner_overhead(backend: Any, grid: dict[str, Any], repeats: Repeats) -> float:
    """Seconds the executor spends per op beyond the kernel: a real one-rank period
    (``RankRunner``) of a deep model of 4-wide layers (``grid["depth"]`` dense and relu pairs),
    less the same kernels called directly, per op (``launch_overhead_us``)."""
    from mpi4py import MPI

    from executor.interpreter.runner import RankRunner
    from simulator.catalogue import devices, links
    from simulator.cluster import build_cluster
    from simulator.specs import ClusterSpec, StrategySpec, TrainingSpec
    from simulator.strategies import build_plan, default_options
    from simulator.strategies.common import Context

    layers = ([{"kind": "dense", "units": 4}, {"kind": "act", "fn": "relu"}] * grid["depth"]
              + [{"kind": "dense", "units": 2}, {"kind": "softmax"}])
    graph = build_custom(layers, [4])
    cluster = build_cluster(ClusterSpec(nodes=1, devices_per_node=1,
                                        device=devices()["cpu_core"], intra_link=links()["shm"],
                                        inter_link=links()["eth_10g"]))
    batch = 4
    ctx = Context(graph, cluster, TrainingSpec(batch_size=batch, precision="fp32",
                                               optimizer="momentum", iterations=1,
                                               warmup_iterations=0))
    plan = build_plan(ctx, StrategySpec("one", "data_parallel",
                                        default_options("data_parallel", devices=1)))
    runner = RankRunner(MPI.COMM_SELF, plan, graph, backend, 0, 0.0, 0.0)
    x = np.ones((batch, 4), F32)
    y = np.zeros(batch, np.int64)
    period = checked(repeats, "launch overhead: a one-rank period", lambda: timed_samples(
        lambda: runner.run_period(x, y), backend.synchronize, grid["periods"], grid["min_s"],
        warmup=grid["warmup"]))
    direct: dict[str, list[tuple[float, float]]] = defaultdict(list)
    # back to back like the period's own kernels (their data stays in the caches)
    KernelTimer(backend, grid, evict=False).case(layers, [4], batch, direct)
    kernels = sum(t for points in direct.values() for _, t in points)
    return max(0.0, (period - kernels) / len(plan.ranks[0].ops))

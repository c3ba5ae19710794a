"""The hardware actors of the SimPy model: devices, parameter-server shards, the coordinator.

Device (a GPU as an array of SMs, or one CPU core as one 'SM'):
  kernel time = launch overhead x kernels + max(FLOPs / (peak x compute efficiency x SM share
  x wave efficiency), bytes / (memory bandwidth x memory efficiency))      (the roofline,
  Williams, Waterman & Patterson 2009), times the device's straggler slowdown.
  A kernel of B thread blocks on s SMs holding k blocks each runs in ceil(B / (s k)) waves; the
  last, partial wave wastes SMs (wave efficiency = B / (waves x s x k)). While a communication
  kernel runs (NCCL-style, ``comm_sms`` of the device entry), compute kernels that start get the
  remaining SMs. Ignored: caches, tensor-core shape constraints, clock boost and throttling.
  With a calibration profile, a kernel of a kind the profile measured takes its measured curve
  instead (launch overhead x kernels + FLOPs / (peak x efficiency at those FLOPs)), the hot one
  (``hot:`` names: timed back to back) on a device that runs hot, else the cold one (the cache
  spilled before each call): see ``runs_hot``.

ParameterServer shard: a host with its own NIC (a topology element, so NIC contention is the
network's). Applying a push is memory-bound on the host and serialised per shard (a SimPy
resource): accumulate = 3 x bytes (read sum, read gradient, write sum), update = (3 + 2 x
optimizer copies) x bytes, over the host's memory bandwidth x efficiency. Synchronous shards
accumulate every worker's push, then update once and release the pulls of that iteration;
asynchronous (Downpour) shards update on every push; batch (Sandblaster) shards accumulate and
update when the coordinator says so.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import simpy

from simulator.catalogue import HOT
from simulator.engine import gpu
from simulator.plan import Compute, Op
from simulator.specs import DeviceSpec
from simulator.units import BYTES_PER_ELEMENT

# a working set runs hot up to this fraction of its share of the cache, inverted: LeNet-5 on 2
# ranks (5.2 MiB of memory need each, shares of 6 MiB) ran as its cold curves price it
HOT_MARGIN = 2.0
_CHOICES: dict[tuple[int, str], dict] = {}
_KEEP: dict[int, DeviceSpec] = {}


class Device:
    def __init__(self, env: simpy.Environment, name: str, spec: DeviceSpec, precision: str,
                 slowdown: float = 1.0, jitter: float = 0.0,
                 rng: np.random.Generator | None = None,
                 spread: tuple[float, float] = (0.0, 0.0), hot: bool = False):
        self.env = env
        self.hot = hot  # its rank's working set stays in the cache (``runs_hot``)
        self.name = name
        self.spec = spec
        pf = spec.peak_flops
        self.peak = pf.get(precision) or pf.get("fp32") or max(pf.values())
        self.precision = precision
        self.bpe = BYTES_PER_ELEMENT[precision]
        # the GPU kernel curves this device lacked, its ops on the roofline (``kernel_time``)
        self.on_roofline: set[str] = set()
        # ... and those it timed on its curve of convolutions run as GEMMs instead (a
        # GEMM-only library's PRECISION:conv.PHASE, or PRECISION:conv.PHASE#gemm)
        self.on_kind_curve: set[str] = set()
        # the per-kernel model's choices, by op geometry: shared by every device of one spec
        self._choices = _CHOICES.setdefault((id(spec), precision), {})
        _KEEP[id(spec)] = spec  # an id stays that spec's while the cache is used
        self.slowdown = slowdown
        self.jitter = jitter
        self.spread = spread
        self.rng = rng
        self.comm_active = 0
        self.busy = 0.0  # seconds of compute in measured iterations

    def kernel_time(self, op: Op) -> float:
        """Seconds one compute/update op takes on this device right now."""
        s = self.spec
        curve, name, cls = None, "", ""
        tiles = s.kind == "gpu" and s.kernel_model == "tiles" and isinstance(op, Compute)
        key, shape = curve_key(op), getattr(op, "shape", "")
        if tiles and shape:
            cls = shape_class(op.layer_kind, shape)
        if s.kernels:  # the curve of this shape when one was measured, else its shape
            # class's (a GPU's), else the device's curve of convolutions run as GEMMs (for a
            # convolution that runs as GEMMs only), else the kind's at this precision (a
            # GEMM-only library's convolutions), else the kind's; on a device that runs
            # hot, hot curves first
            kind = (f"{self.precision}:{key}", key)
            names = (f"{key}@{shape}", *kind) if shape else kind
            if cls:
                # a convolution that runs as GEMMs only, of a class without a curve: the
                # device's curve of such convolutions (``PRECISION:conv.PHASE#gemm``)
                pooled = ((f"{self.precision}:{key}#{gpu.GEMM_CLASS}",)
                          if op.layer_kind == "conv" and runs_as_gemm(shape) else ())
                names = (names[0], f"{self.precision}:{key}#{cls}", f"{key}#{cls}", *pooled,
                         *kind)
            if self.hot:
                names = tuple(HOT + n for n in names) + names
            name = next((n for n in names if n in s.kernels), "")
            curve = s.kernels.get(name)
        sms = s.sms - (s.comm_sms if self.comm_active else 0)
        if curve is not None and "#" in name:  # the class's efficiency in the per-kernel model
            choice = self.gpu_choice(op, sms, efficiency_at(curve, op.flops))
            if choice is not None:
                if not name.endswith(f"#{cls}"):  # the pooled GEMM convolutions' curve
                    self.on_kind_curve.add(f"{self.precision}:{key}#{cls}")
                return choice.seconds * self.slowdown
        if curve is not None and tiles and cls and name.endswith(kind[0]):
            # no class curve but the precision's PRECISION:KIND.PHASE: the device's GEMM
            # convolution curve, measured under a library that computed every convolution as
            # a GEMM (gpu_curves.GEMM_ONLY), so the op runs as GEMMs (implicit, or the
            # scatter data gradient), and the prediction says so
            choice = self.gpu_choice(op, sms, efficiency_at(curve, op.flops),
                                     gpu.GEMM_ALGORITHMS)
            if choice is not None:
                self.on_kind_curve.add(f"{self.precision}:{key}#{cls}")
                return choice.seconds * self.slowdown
        if curve is not None:
            kernels = getattr(op, "kernels", 1)
            t = op.flops / (self.peak * efficiency_at(curve, op.flops)) if op.flops else 0.0
            return (s.launch_overhead * kernels + t) * self.slowdown
        if tiles and cls:
            # a convolution or dense layer of a shape class no published table covers on this
            # device stays on the roofline, and the prediction says so: on a device whose
            # kernels tables price (it has curves), the per-kernel roofline (its kernels'
            # math at the device's ``compute_efficiency``, the algorithm the autotuner would
            # take); on one without any, the FLOPs roofline below
            self.on_roofline.add(f"{self.precision}:{key}#{cls}")
            if s.kernels:
                choice = self.gpu_choice(op, sms, s.compute_efficiency)
                if choice is not None:
                    return choice.seconds * self.slowdown
        elif tiles:  # memory-bound layers: their passes (simulator/engine/gpu.py)
            choice = self.gpu_choice(op, sms, s.compute_efficiency)
            if choice is not None:
                return choice.seconds * self.slowdown
        share = sms / s.sms
        wave_eff = 1.0
        if isinstance(op, Compute):
            capacity = sms * s.blocks_per_sm
            waves = math.ceil(op.blocks / capacity)
            wave_eff = op.blocks / (waves * capacity)
        kernels = getattr(op, "kernels", 1)
        t_flops = op.flops / (self.peak * s.compute_efficiency * share * wave_eff)
        t_mem = op.bytes / (s.memory_bandwidth * s.memory_efficiency)
        return (s.launch_overhead * kernels + max(t_flops, t_mem)) * self.slowdown

    def gpu_choice(self, op: Compute, sms: int, efficiency: float,
                   algorithms: tuple[str, ...] | None = None) -> gpu.Choice | None:
        """The per-kernel model's algorithm and time for a conv or dense op on ``sms`` SMs,
        its kernels reaching ``efficiency`` of an SM's peak (``simulator/engine/gpu.py``),
        a convolution by one of ``algorithms`` (None: any); None for the kinds it leaves to
        the roofline."""
        key = (op.layer_kind, op.phase, op.shape, op.samples, sms, op.input_grad, op.bias,
               efficiency, algorithms)
        hit = self._choices.get(key, False)
        if hit is False:
            geo = gpu.parse_shape(op.shape)
            model = gpu.Model(self.spec, self.peak, self.bpe, sms, efficiency, algorithms)
            hit = self._choices[key] = (None if geo is None else
                                        model.choose(op.layer_kind, op.phase, geo, op.samples,
                                                     op.input_grad, op.bias))
        return hit

    def noise(self) -> float:
        """A run of kernels' time factor: log-normal with mean 1 and relative std ``jitter``
        (clock and contention noise), drawn from the scenario-seeded generator; 1 without it."""
        if not self.jitter or self.rng is None:
            return 1.0
        sigma = math.sqrt(math.log1p(self.jitter**2))
        return float(self.rng.lognormal(-sigma**2 / 2, sigma))

    def skewed(self, seconds: float) -> float:
        """A run of kernels' time moved early or late by the measured spread of ranks' finish
        times: normal, with the measured standard deviation, in proportion for runs shorter
        than the work it was measured on (a short run is less likely to lose a time slice);
        at least half the run remains."""
        std, work = self.spread
        if not std or self.rng is None or not seconds:
            return seconds
        std *= min(1.0, seconds / work)
        return max(0.5 * seconds, seconds + float(self.rng.normal(0.0, std)))


def runs_hot(spec: DeviceSpec, working_set: float, sharers: int) -> bool:
    """Whether a rank's kernels find their data in the cache, and take the profile's hot
    curves: its working set (the plan's memory need for its device: weights, gradients,
    optimizer state, activations, buffers) is at most ``1 / HOT_MARGIN`` of its share of
    ``spec.cache`` (the cache a working set stays in, as calibration measured it), the share
    being the cache over the ranks that use it at once (``sharers``: a CPU node's processes; a
    GPU's cache is its own).

    Calibration times every kernel cold (the cache spilled before each call: a step whose
    data do not fit, where the rest of the model passes through the cache between two uses of
    a layer's data) and hot (back to back). A model whose whole step fits finds its data in
    the cache from one step to the next and its kernels run hot: the cold curves priced the
    MLP 64-128-10 at batch 32 2-3 times slower than it ran (docs/validation.md). The
    margin: the memory need leaves out data a step touches besides (the backward's
    activation gradients, the input batch, message buffers), and a working set close to the
    cache's size runs partly cold already. Without a cache size or hot curves (catalogue
    devices, older profiles) every kernel takes its cold curve. Ignored: a working set between
    the two, which runs partly hot (here all hot or all cold)."""
    if spec.cache <= 0:
        return False
    share = spec.cache / (max(1, sharers) if spec.kind == "cpu" else 1)
    return working_set * HOT_MARGIN <= share


@functools.cache
def runs_as_gemm(shape: str) -> bool:
    """``gpu.runs_as_gemm`` of a convolution's kernel-shape string, parsed once per shape."""
    geo = gpu.parse_shape(shape)
    return geo is not None and len(geo.in_shape) == 3 and gpu.runs_as_gemm(geo)


@functools.cache
def shape_class(kind: str, shape: str) -> str:
    """``gpu.shape_class`` of a kernel-shape string, parsed once per shape."""
    return gpu.shape_class(kind, gpu.parse_shape(shape))


def curve_key(op: Op) -> str:
    """The kernel-curve name of an op: ``dense.fwd``, ``conv.bwd``, ``rbm.cd1``, ``update``."""
    if isinstance(op, Compute):
        return f"{op.layer_kind}.{op.phase}"
    return "update"


def efficiency_at(curve: tuple[tuple[float, float], ...], flops: float) -> float:
    """A measured efficiency curve at ``flops``: linear in log FLOPs, constant past its ends."""
    if flops <= curve[0][0]:
        return curve[0][1]
    if flops >= curve[-1][0]:
        return curve[-1][1]
    x = math.log(flops)
    for (f0, e0), (f1, e1) in zip(curve, curve[1:]):
        if flops <= f1:
            w = (x - math.log(f0)) / (math.log(f1) - math.log(f0))
            return e0 + w * (e1 - e0)
    return curve[-1][1]


def core_sharing(cores: int, ranks: int, co_run: tuple[int, float]) -> float:
    """How many times slower a rank's kernels run when ``ranks`` processes live on a node of
    ``cores`` cores (0: a core per device, no sharing). Two effects, both measured by
    calibration: ranks beyond the cores time-share them (``ranks / cores``, counting every rank
    as busy; the engine's processor sharing, ``node.py``, shares the cores as ranks actually
    compute), and ranks computing at once on one node slow each
    other (shared caches, memory bandwidth, clocks): ``co_run = (k, s)`` is the slowdown ``s``
    measured with ``k`` ranks at once, taken linear in the ranks that run at once."""
    if cores <= 0 or ranks <= 1:
        return 1.0
    together = min(ranks, cores)
    k, s = co_run
    contention = 1.0 + (s - 1.0) * (together - 1) / (k - 1) if k > 1 else 1.0
    return max(1.0, ranks / cores) * max(1.0, contention)


class ParameterServer:
    """One shard of the parameter server, on its own host."""

    def __init__(self, env: simpy.Environment, host: str, shard: int, spec: DeviceSpec,
                 workers: int, optimizer_copies: int, mode: str):
        self.env = env
        self.host = host
        self.shard = shard
        self.spec = spec
        self.workers = workers
        self.optimizer_copies = optimizer_copies
        self.mode = mode  # sync: aggregate every worker, then update | async | batch
        self.sync = mode == "sync"
        self.lock = simpy.Resource(env, capacity=1)
        self.version = 0
        self.pushes: dict[int, int] = defaultdict(int)
        self.ready: dict[int, simpy.Event] = defaultdict(env.event)
        self.staleness: list[int] = []
        self.busy = 0.0
        self.wake = 0.0  # seconds an idle shard takes to wake up for a message
        # on a one-node cluster the shard is a process of the workers' node: its service runs
        # on the node's shared cores (the engine's model of them, and this rank's route)
        self.cpu: tuple | None = None

    def idle(self) -> bool:
        """Nothing being served and nothing queued: the shard is waiting for messages."""
        return self.lock.count == 0 and not self.lock.queue

    def _memory_time(self, nbytes: float) -> float:
        return nbytes / (self.spec.memory_bandwidth * self.spec.memory_efficiency)

    def copy_time(self, nbytes: float) -> float:
        """Copying ``nbytes`` of parameters into the reply to a fetch (read and write)."""
        return self._memory_time(2 * nbytes)

    def work(self, seconds: float):
        """Process steps: ``seconds`` of service (alone on a core), on the node's shared cores
        when the shard lives there, and counted as busy."""
        if seconds <= 0:
            return
        start = self.env.now
        if self.cpu is None:
            yield self.env.timeout(seconds)
        else:
            cpus, route = self.cpu
            yield cpus.transfer(route, seconds)
        self.busy += self.env.now - start

    def apply(self, iteration: int, nbytes: float, seen_version: int,
              receive: Callable[[], simpy.Event] | None = None,
              taken: simpy.Event | None = None):
        """Process: accept one pushed gradient, which has crossed the network, or, with
        ``receive`` (a message past the eager limit), crosses it once the shard takes it up
        (then ``taken`` fires: the worker's send is complete)."""
        idle = self.idle()
        with self.lock.request() as req:
            yield req
            if idle and self.wake:
                yield self.env.timeout(self.wake)
            if receive is not None:
                yield receive()
                taken.succeed()
            if self.sync:
                t = self._memory_time(3 * nbytes)
                self.pushes[iteration] += 1
                last = self.pushes[iteration] == self.workers
                if last:
                    t += self._memory_time((3 + 2 * self.optimizer_copies) * nbytes)
                yield from self.work(t)
                if last:
                    self.version += 1
                    self.ready[iteration].succeed()
            elif self.mode == "batch":  # accumulate; the coordinator's step updates
                yield from self.work(self._memory_time(3 * nbytes))
            else:
                yield from self.work(self._memory_time((3 + 2 * self.optimizer_copies)
                                                       * nbytes))
                self.staleness.append(self.version - seen_version)
                self.version += 1

    def step(self, nbytes_moved: float):
        """Process: a batch optimisation step (Sandblaster's L-BFGS) over this shard."""
        with self.lock.request() as req:
            yield req
            yield from self.work(self._memory_time(nbytes_moved))
            self.version += 1


class Coordinator:
    """Sandblaster's coordinator: hands out work portions to whichever worker asks first."""

    def __init__(self, host: str, portions: int):
        self.host = host
        self.portions = portions
        self.left = portions
        self.handed: dict[int, int] = defaultdict(int)  # rank -> portions taken (load balance)

    def reset(self) -> None:
        self.left = self.portions

    def take(self, rank: int, measured: bool = True) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        if measured:
            self.handed[rank] += 1
        return True

"""Typed, frozen, validated scenario objects. All values SI (seconds, bytes, bytes/s, FLOP/s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DeviceSpec:
    """A compute device: a GPU (an array of SMs) or one CPU core (one 'SM')."""

    name: str
    kind: str  # gpu | cpu
    sms: int
    peak_flops: dict[str, float]  # precision -> FLOP/s
    memory: float  # bytes
    memory_bandwidth: float  # bytes/s
    launch_overhead: float  # s per kernel
    compute_efficiency: float
    memory_efficiency: float
    blocks_per_sm: int
    comm_sms: int
    source: str
    # measured kernel efficiency curves (a calibration profile): "kind.phase" (dense.fwd,
    # conv.bwd, act.fwd, update, ...) -> ((FLOPs, efficiency), ...) with FLOPs increasing; a
    # kernel of a kind with a curve takes FLOPs / (peak x efficiency at its FLOPs), which
    # replaces the roofline for that kind (the curve has the caches and the memory in it)
    kernels: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # bytes of cache a working set stays in from one step to the next, as calibration
    # measured it (``cache_MiB``; 0: unknown); a rank whose working set fits half its share
    # of it takes the profile's ``hot:`` curves (``simulator.engine.hardware.runs_hot``)
    cache: float = 0.0
    # how a GPU's conv and dense kernels are timed: ``tiles`` (the per-kernel model of
    # ``simulator/engine/gpu.py``) or ``roofline`` (FLOPs at one efficiency, bytes at another)
    kernel_model: str = "tiles"
    # the library whose published kernel curves a catalogue GPU takes (``library``: e.g.
    # ``cudnn7.0``, where kernel_curves.yaml has a table of that version); "" the default's
    library: str = ""
    # the most workspace (bytes) the framework lets the library's autotuner give a
    # convolution algorithm (``workspace_MiB``: TensorFlow's TF_CUDNN_WORKSPACE_LIMIT_IN_MB,
    # MXNet's ``workspace``); an algorithm that needs more is not tried. 0: no limit
    workspace: float = 0.0


@dataclass(frozen=True)
class LinkSpec:
    """A link type: per-direction bandwidth of one port, one-way small-message latency, and
    MPI's eager limit over it: a send of up to ``eager_limit`` bytes completes without its
    receiver; a larger one (rendezvous) completes when the receiver has taken it."""

    name: str
    scope: str  # intra | inter
    bandwidth: float  # bytes/s per direction
    latency: float  # s
    efficiency: float
    source: str
    eager_limit: float = 16 * 2**10  # bytes
    # a link between two switches (a PCIe switch's uplink, a socket link, a fat tree's
    # leaf-to-spine link): its latency is one hop's and is paid at every hop, and it does not
    # end the run of the link around it (``Cluster.latency``)
    per_hop: bool = False

    @property
    def effective_bandwidth(self) -> float:
        return self.bandwidth * self.efficiency


@dataclass(frozen=True)
class ParameterServerSpec:
    hosts: int
    device: DeviceSpec  # what applies the updates (its memory bandwidth bounds a shard's service)
    nic: LinkSpec


@dataclass(frozen=True)
class Straggler:
    device: int  # global device index
    slowdown: float  # compute takes this many times longer


@dataclass(frozen=True)
class DegradedLink:
    element: str  # topology element whose uplink is degraded, e.g. "node1.nic0", "node0.gpu3"
    factor: float  # bandwidth is multiplied by this (0 < factor <= 1)


@dataclass(frozen=True)
class NodeMeasurements:
    """What a calibration profile measured of the ranks on a node, beyond its device and links
    (``simulator/engine/node.py`` applies it; none of it without a profile)."""

    # the slowdown of a rank's kernels while ``co_run[0]`` ranks compute at once on one node
    # (shared caches, memory bandwidth, clocks)
    co_run: tuple[int, float] = (1, 1.0)
    # all-reduce cost per algorithm: (seconds per step, bytes/s), used for groups inside one
    # node (scope intra) or any group (scope inter) instead of the flow model
    collectives: dict[str, tuple[float, float]] = field(default_factory=dict)
    collectives_scope: str = "intra"
    # the same, measured with more ranks than cores on a node, by ranks per core (time-shared
    # cores: a step waits for its peer to be scheduled)
    collectives_shared: dict[float, dict[str, tuple[float, float]]] = field(
        default_factory=dict)
    # a blocked thread's wake-up latency (seconds) by ranks per core: what a rank's stream
    # pays when it waited for another stream, and a parameter server that idled
    wakeup: dict[float, float] = field(default_factory=dict)
    # a process's wake-up latency (seconds) by ranks per core when it slept in a quiet wait
    # (executor/mpi/collectives.py) for a message: what a rank waiting for a message pays on a node
    # with
    # more ranks than cores, and a parameter-server rank polling for one
    message_wakeup: dict[float, float] = field(default_factory=dict)
    # by ranks per core above 1: how long a core that a rank leaves idles while other ranks
    # wait in other cores' run queues, until the scheduler moves one (seconds; see
    # ``simulator.engine.node.bursts``)
    migration: dict[float, float] = field(default_factory=dict)
    # the spread of ranks' finish times by ranks per core: (standard deviation, duration of the
    # work it was measured on), seconds; each run of kernels on a device is early or late at
    # random by that much, scaled down for runs shorter than that work
    spread: dict[float, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeTopology:
    """A node's inside as a graph (``simulator/topology.py``): full-duplex links between its
    elements, named locally (``gpu{i}`` for device i whatever its kind, ``pcie{w}`` PCIe
    switches, ``socket{s}`` CPU sockets' root complexes, ``nvswitch``, ``nic{k}``)."""

    name: str
    devices: int
    nics: int
    # (child, parent, link, width): ``width`` links of the type side by side (two NVLinks
    # between one pair of GPUs); a degraded element's factor applies where it is the child
    edges: tuple[tuple[str, str, LinkSpec, int], ...]
    source: str
    device: str = ""  # the catalogue device the box holds, when it has one (the default)


@dataclass(frozen=True)
class FabricSpec:
    """The network between the nodes' NICs and the parameter-server hosts
    (``simulator/topology.py``)."""

    kind: str  # switch | fat_tree | rails | torus | graph
    nodes_per_leaf: int = 0  # fat_tree: nodes whose NICs one leaf switch holds
    spines: int = 1  # fat_tree, rails: spine switches
    oversubscription: float = 1.0  # fat_tree, rails: a leaf's downlink / uplink bandwidth
    dims: tuple[int, ...] = ()  # torus: (X, Y, Z)
    link: LinkSpec | None = None  # torus: the link between neighbouring routers
    hop_latency: float = 0.0  # s, paid at each switch-to-switch (router-to-router) hop
    # graph: (a, b, link) full-duplex edges between NICs, PS hosts and switches (a link
    # between two switches is ``per_hop``)
    edges: tuple[tuple[str, str, LinkSpec], ...] = ()
    file: str = ""


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    devices_per_node: int
    device: DeviceSpec
    intra_link: LinkSpec
    inter_link: LinkSpec
    nics_per_node: int = 1
    # each device's own link to its NIC (a GPU and its NIC under one PCIe switch, GPUDirect
    # RDMA): traffic between nodes then leaves the node fabric alone; None: it crosses the
    # device's fabric port and the fabric's link to the NIC
    host_link: LinkSpec | None = None
    parameter_servers: ParameterServerSpec | None = None
    stragglers: tuple[Straggler, ...] = ()
    degraded_links: tuple[DegradedLink, ...] = ()
    compute_jitter: float = 0.0  # relative standard deviation of a run of kernels' time
    # core sharing (CPU ranks): the cores a node has (0: one per device, no sharing)
    cores_per_node: int = 0
    profile: str = ""  # the calibration profile the device and links came from, if any
    profile_hosts: tuple[str, ...] = ()  # the hosts that profile was measured on
    measured: NodeMeasurements = field(default_factory=lambda: NodeMeasurements())
    node: NodeTopology | None = None  # None: the flat node fabric
    fabric: FabricSpec | None = None  # None: one non-blocking core switch

    @property
    def device_count(self) -> int:
        return self.nodes * self.devices_per_node


@dataclass(frozen=True)
class ModelSpec:
    zoo: str | None
    params: dict[str, Any] = field(default_factory=dict)
    layers: tuple[Any, ...] | None = None
    input_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TargetSpec:
    """``training.target``: the quality a run must reach. ``metric`` is ``loss`` or
    ``accuracy`` (of the training batches, averaged over the last ``window`` samples) or
    ``reconstruction_error`` (a DBN's first RBM layer, per epoch); ``on`` (``data:`` in the
    scenario) names the data it is measured on (the training data: ``train``)."""

    metric: str  # loss | accuracy | reconstruction_error
    value: float
    on: str = "train"
    window: int = 512  # samples the batch metric is averaged over

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def reached(self, measured: float) -> bool:
        return measured >= self.value if self.higher_is_better else measured <= self.value

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.value:g}"


@dataclass(frozen=True)
class ConvergenceSpec:
    """``training.convergence``: the coefficients of the steps-to-target model
    (``simulator/convergence.py``), as written in a scenario or fitted into a profile.

    ``levels``: (metric value, steps_min, noise_batch) per level the fit measured, in the order
    the run passes them (the target is one of them or between two); a scenario's own
    coefficients are one level, the target's."""

    levels: tuple[tuple[float, float, float], ...]
    lr_max: float | None = None  # None: the learning rate is tuned for every batch size
    staleness_penalty: float = 0.0
    averaging_penalty: float = 0.0
    source: str = "scenario"


@dataclass(frozen=True)
class TrainingSpec:
    batch_size: int  # global mini-batch: samples per iteration over all replicas
    precision: str
    optimizer: str  # sgd | momentum | adam
    iterations: int  # measured iterations (periods) the engine runs
    warmup_iterations: int
    learning_rate: float = 0.05  # the executor's SGD step
    momentum: float = 0.9
    # the backward also computes the gradient of the model's input (the first layer's data
    # gradient): Torch7's nn, whose backward computes every module's gradInput, or an input
    # tensor that requires a gradient; frameworks otherwise skip it
    input_gradient: bool = False
    target: TargetSpec | None = None  # run to this quality (the iterations are then a cap)
    convergence: ConvergenceSpec | None = None  # how many steps the target takes


@dataclass(frozen=True)
class StrategySpec:
    name: str
    scheme: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    model: ModelSpec
    cluster: ClusterSpec
    training: TrainingSpec
    strategies: tuple[StrategySpec, ...]
    file: str = "<scenario>"
    sweep: tuple[tuple[str, tuple], ...] = ()  # (field path or "devices", values) per axis
    search: dict[str, Any] = field(default_factory=dict)  # ``parasim search`` constraints
    data: dict[str, Any] = field(default_factory=dict)  # the executor's dataset, as written

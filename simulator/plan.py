"""The Plan: the contract between the strategies and the two engines.

A Plan is frozen, JSON-serialisable data. For every rank it holds an ordered program of operations
(compute a layer shard forward/backward on a micro-batch, send/receive bytes to a peer, a
collective over a group with a named algorithm, push/pull a parameter-server shard, apply an
update), with the dependencies between them. The simulator (SimPy) predicts it, the executor
(MPI) runs it; nothing else crosses between them. This module imports only the standard library.

Execution semantics, shared by both engines:

* Each rank has *streams* (``compute`` and ``comm``). Ops on one stream run in program order; an
  op additionally waits for the ops named in ``deps`` (ids on the same rank). So "communication
  overlaps backward" is simply a collective on the ``comm`` stream that depends on a backward op.
* ``Send``, ``Recv``, ``PSPush`` and ``PSPull`` are non-blocking (like ``MPI_Isend``): each
  starts as soon as its ``deps`` are done, whatever its stream, and a program period ends when
  all of them have completed.
* ``Send``/``Recv`` match by (source, destination, tag). A ``Collective`` is matched across the
  ranks of its group by ``key``; it starts when every member has reached it.
* ``PSPush``/``PSPull`` address a parameter-server shard (a rank whose role is ``server``).
* ``WorkLoop`` (Sandblaster) repeats its body for every work portion the coordinator hands out.
* A program is one *period*: one iteration for synchronous schemes, ``period_steps`` worker steps
  for Downpour. Engines repeat it.

What the bytes are (the executor moves them; the simulator only needs their size): ``tensor``
names them, for the op's ``micro_batch``:

* ``act:L``: the output of layer L; ``dout:L``: the gradient with respect to L's output;
  ``din:L``: the gradient with respect to L's input (what L's backward produced);
* ``wgrad:L1,L2,...``: the weight and bias gradients of those layers, concatenated in that order;
* a collective's ``axis`` says how members' parts fit together: ``batch`` (each member holds some
  samples), ``feature`` (each holds a slice of the features / channels), or ``""`` (each holds the
  whole buffer, for reductions).

Units: bytes, FLOPs, samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

COMPUTE = "compute"
COMM = "comm"
PHASES = ("fwd", "bwd", "cd1")


@dataclass(frozen=True)
class Op:
    id: int
    stream: str
    deps: tuple[int, ...]
    kind: ClassVar[str] = "op"


@dataclass(frozen=True)
class Compute(Op):
    """Forward/backward of one layer (or a shard of it) on ``samples`` samples.

    ``flops`` and ``bytes`` are the totals for this op (already scaled by samples and shard);
    ``blocks`` is the number of thread blocks the kernel launches (for wave quantisation);
    ``kernels`` the number of kernel launches it costs.
    """

    layer: str
    phase: str
    micro_batch: int
    samples: int
    shard: int
    shards: int
    flops: float
    bytes: float
    blocks: int
    kernels: int = 1
    layer_kind: str = ""  # the model layer's kind (dense, conv, act, ...): its kernel curve
    shape: str = ""  # the layer's per-sample geometry: a kernel curve of that shape, if any
    # a forward run again before the backward (activation recomputation): it restores what the
    # layer keeps for backward from the layer's input, and sends nothing
    recompute: bool = False
    # a backward that needs no input gradient: the layer reads the data itself (frameworks
    # skip the first layer's data gradient; the op's FLOPs keep it, see layers.py)
    input_grad: bool = True
    # the layer adds a bias: a GPU framework adds it, and reduces its gradient, in kernels of
    # their own (``simulator/engine/gpu.py``)
    bias: bool = False
    kind: ClassVar[str] = "compute"


@dataclass(frozen=True)
class Update(Op):
    """Apply the optimizer to ``params`` parameters held by this rank."""

    params: int
    flops: float
    bytes: float
    kind: ClassVar[str] = "update"


@dataclass(frozen=True)
class Send(Op):
    peer: int
    bytes: float
    tag: str
    tensor: str = ""
    micro_batch: int = 0
    kind: ClassVar[str] = "send"


@dataclass(frozen=True)
class Recv(Op):
    peer: int
    bytes: float
    tag: str
    tensor: str = ""
    micro_batch: int = 0
    kind: ClassVar[str] = "recv"


@dataclass(frozen=True)
class Collective(Op):
    """A collective over ``group`` (a key of ``Plan.groups``).

    ``collective`` is ``allreduce``, ``allgather``, ``reduce_scatter`` or ``broadcast``;
    ``algorithm`` is ``ring``, ``tree``, ``hierarchical`` or ``mpi`` (the library's own);
    ``bytes`` is the buffer size S each member contributes.
    """

    collective: str
    algorithm: str
    group: str
    bytes: float
    key: str
    tensor: str = ""
    axis: str = ""
    micro_batch: int = 0
    kind: ClassVar[str] = "collective"


@dataclass(frozen=True)
class PSPush(Op):
    """Push ``bytes`` of gradients to parameter-server shard ``shard``."""

    shard: int
    bytes: float
    tag: str
    kind: ClassVar[str] = "ps_push"


@dataclass(frozen=True)
class PSPull(Op):
    """Fetch ``bytes`` of parameters from parameter-server shard ``shard``."""

    shard: int
    bytes: float
    tag: str
    kind: ClassVar[str] = "ps_pull"


@dataclass(frozen=True)
class Barrier(Op):
    """Wait until every rank of ``group`` has reached this barrier (the sync PS step)."""

    group: str
    key: str
    kind: ClassVar[str] = "barrier"


@dataclass(frozen=True)
class WorkLoop(Op):
    """Sandblaster: ask ``coordinator`` for a portion, run ``body``, repeat until none is left."""

    coordinator: int
    body: tuple[Op, ...]
    kind: ClassVar[str] = "work_loop"


KERNEL_OPS = (Compute, Update)  # ops that run kernels on the rank's device

OP_TYPES: dict[str, type[Op]] = {
    t.kind: t for t in (Compute, Update, Send, Recv, Collective, PSPush, PSPull, Barrier, WorkLoop)
}

ROLES = ("worker", "server", "coordinator")


class ImageOps(Sequence):
    """A rank's ops as the image of another rank's program under the plan's mirrors: the same
    ops with peers, groups and the shard index moved (``Plan.mirrors``). The ranks of a
    data x pipeline x tensor grid share their stage's program this way, so a plan's size grows
    with its stages, not its ranks. Made op by op when first read (then kept); the simulator
    reads ``source`` and the maps instead and never makes them."""

    __slots__ = ("source", "peers", "groups", "shard", "_made")

    def __init__(self, source: tuple[Op, ...], peers: dict[int, int], groups: dict[str, str],
                 shard: int | None = None):
        self.source, self.peers, self.groups, self.shard = source, peers, groups, shard
        self._made: tuple[Op, ...] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        return self.ops()[i]

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops())

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def ops(self) -> tuple[Op, ...]:
        if self._made is None:
            self._made = tuple(self.image(op) for op in self.source)
        return self._made

    def image(self, op: Op) -> Op:
        fields_ = dict(op.__dict__)
        if "peer" in fields_:
            fields_["peer"] = self.peers.get(fields_["peer"], fields_["peer"])
        if "group" in fields_:
            fields_["group"] = self.groups.get(fields_["group"], fields_["group"])
        if self.shard is not None and isinstance(op, Compute):
            fields_["shard"] = self.shard
        # a frozen op from checked fields, without running __init__ again
        new = object.__new__(type(op))
        object.__setattr__(new, "__dict__", fields_)
        return new


@dataclass(frozen=True)
class RankProgram:
    rank: int
    device: str  # hardware name, e.g. "node0.gpu3" or "ps1"
    role: str  # worker | server | coordinator
    ops: tuple[Op, ...] = ()
    shard_params: int = 0  # servers: parameters this shard holds
    # the samples of each period's global batch this rank reads: (offset, count) of the inputs
    # (its first layer's data) and of the labels (where its loss is computed); (0, 0) for none
    inputs: tuple[int, int] = (0, 0)
    labels: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a device needs for this plan, by category; ``capacity`` is what it has.

    ``activations`` are what the device keeps for backward over the micro-batches in flight;
    ``buffers`` are transient peaks on top (ZeRO-3's gathered parameters, the one block that
    full recomputation re-runs); ``detail`` names the parts: ``(what, bytes)`` pairs, the
    activations by tensor (``attention softmax outputs``, ``dropout masks``, ...) and the
    buffers by name.
    """

    device: str
    weights: float
    gradients: float
    optimizer: float
    activations: float
    capacity: float
    buffers: float = 0.0
    detail: tuple[tuple[str, float], ...] = ()

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.buffers

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


@dataclass(frozen=True)
class Plan:
    strategy: str  # the scenario's name for this strategy entry
    scheme: str  # data_parallel, downpour, sandblaster, pipeline, tensor, branch, hybrid
    mode: str  # sync | async | batch
    samples_per_period: int  # samples all workers process in one period
    period_steps: int  # worker steps per period (1 for sync)
    ranks: tuple[RankProgram, ...]
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    memory: tuple[MemoryNeed, ...] = ()
    portions: int = 0  # Sandblaster: work portions per batch
    options: dict[str, Any] = field(default_factory=dict)
    # rank permutations the plan is unchanged under (a tensor group's ranks are images of each
    # other): each maps rank i to mirrors[k][i], programs equal up to shard indices, with peers
    # and group members mapped. The simulator runs one rank per orbit where nothing in the
    # cluster breaks the symmetry (``simulator/engine/symmetry.py``); the executor runs all.
    mirrors: tuple[tuple[int, ...], ...] = ()

    @property
    def fits(self) -> bool:
        return all(m.fits for m in self.memory)

    def workers(self) -> list[RankProgram]:
        return [r for r in self.ranks if r.role == "worker"]

    def to_dict(self) -> dict[str, Any]:
        def op_dict(op: Op) -> dict[str, Any]:
            d: dict[str, Any] = {"op": op.kind}
            for f in fields(op):
                v = getattr(op, f.name)
                d[f.name] = [op_dict(b) for b in v] if f.name == "body" else v
            return d

        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["memory"] = [asdict(m) for m in self.memory]
        d["ranks"] = [
            {**{f.name: getattr(r, f.name) for f in fields(r) if f.name != "ops"},
             "ops": [op_dict(op) for op in r.ops]}
            for r in self.ranks
        ]
        d["groups"] = {k: list(v) for k, v in self.groups.items()}
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Plan:
        def op_from(o: dict[str, Any]) -> Op:
            cls = OP_TYPES[o["op"]]
            kw = {k: v for k, v in o.items() if k != "op"}
            kw["deps"] = tuple(kw["deps"])
            if "body" in kw:
                kw["body"] = tuple(op_from(b) for b in kw["body"])
            return cls(**kw)

        ranks = tuple(
            RankProgram(**{k: (tuple(v) if k in ("inputs", "labels") else v)
                           for k, v in r.items() if k != "ops"},
                        ops=tuple(op_from(o) for o in r["ops"]))
            for r in d["ranks"]
        )
        return Plan(
            strategy=d["strategy"], scheme=d["scheme"], mode=d["mode"],
            samples_per_period=d["samples_per_period"], period_steps=d["period_steps"],
            ranks=ranks, groups={k: tuple(v) for k, v in d["groups"].items()},
            memory=tuple(MemoryNeed(**{**m, "detail": tuple(tuple(x) for x in
                                                        m.get("detail", ()))})
                         for m in d["memory"]),
            portions=d.get("portions", 0), options=dict(d.get("options", {})),
            mirrors=tuple(tuple(m) for m in d.get("mirrors", ())),
        )


def _check_size(ops: int) -> None:
    """Refuse a rank's program past ``simulator.limits.OPS`` operations (``--no-limits``)."""
    from simulator import limits
    from simulator.errors import LimitError

    if ops >= limits.OPS and limits.active():
        raise LimitError(f"a rank's program passes {limits.OPS:,} operations, the limit (the "
                         "micro-batches, steps per iteration or messages per step are many); "
                         f"{limits.LIFT}")


class ProgramBuilder:
    """Appends ops to one rank's program, handing out ids and default stream order."""

    CHECK_EVERY = 65_536  # ops between checks of the limit on a program's length

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.named: dict[str, int] = {}  # ops a later phase looks up by name (loss statistics)
        self.scripts: dict = {}  # phases worked out once, replayed per micro-batch (strategies)
        self.check_at = self.CHECK_EVERY  # the next size at which the limit on ops is checked

    def add(self, cls: type[Op], *, stream: str = COMPUTE, deps: tuple[int, ...] = (),
            **kw: Any) -> int:
        op_id = len(self.ops)
        if op_id >= self.check_at:  # now and then, not every op (a plan is millions of them)
            self.check_at = op_id + self.CHECK_EVERY
            _check_size(op_id)
        self.ops.append(cls(id=op_id, stream=stream, deps=tuple(deps), **kw))
        return op_id

    def last(self, stream: str | None = None) -> int | None:
        for op in reversed(self.ops):
            if stream is None or op.stream == stream:
                return op.id
        return None

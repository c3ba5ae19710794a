"""What every strategy needs: per-layer op costs, memory needs, gradient buckets.

Kernel model (an assumption of the cost model, not of any device): GEMM-like layers (dense, conv,
attention, rbm) launch one thread block per 128x128 output tile; element-wise layers one block per
1,024 output elements. The engine turns blocks into waves over the device's SMs.

Bytes moved through device memory (the roofline's memory side): forward reads the input and the
weights and writes the output; backward reads the output gradient, the input and the weights and
writes the input and weight gradients; a layer's intermediate tensors between its kernels
(attention's scores, ``scratch_elems``) are written and read once forward, twice backward.
Memory per device is ``memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import networkx as nx

from simulator.cluster import Cluster
from simulator.errors import ScenarioError
from simulator.plan import COMPUTE, Compute, MemoryNeed, Op, ProgramBuilder, RankProgram
from simulator.specs import TrainingSpec
from simulator.units import BYTES_PER_ELEMENT

GEMM_KINDS = frozenset({"dense", "conv", "attention", "rbm", "embedding"})
GEMM_TILE = 128 * 128
ELEMENTWISE_BLOCK = 1024

# optimizer state per parameter, in parameter-sized copies (momentum: one velocity; Adam: m and v)
OPTIMIZER_COPIES = {"sgd": 0, "momentum": 1, "adam": 2}


@dataclass
class Context:
    """Everything a strategy reads: the model graph, the built cluster, training settings."""

    graph: nx.DiGraph
    cluster: Cluster
    training: TrainingSpec
    # compute_op's costs per (layer, phase, samples, shards, split input, recompute)
    op_costs: dict = field(default_factory=dict, repr=False)
    # the Compute ops made so far, by costs, place, deps, micro-batch and shard (``compute_op``)
    ops_made: dict = field(default_factory=dict, repr=False)

    @cached_property
    def layers(self) -> list[str]:
        return sorted(self.graph.nodes, key=lambda n: self.graph.nodes[n]["order"])

    @property
    def bpe(self) -> int:
        return BYTES_PER_ELEMENT[self.training.precision]

    def node(self, layer: str) -> dict:
        return self.graph.nodes[layer]

    def param_bytes(self, layers: list[str], shards: dict[str, int] | None = None) -> float:
        shards = shards or {}
        return sum(self.node(n)["params"] / shards.get(n, 1) for n in layers) * self.bpe

    def peak(self) -> float:
        """Peak FLOP/s of one device at the training precision (fp32 if the device lacks it)."""
        pf = self.cluster.device_spec.peak_flops
        return pf.get(self.training.precision) or pf.get("fp32") or max(pf.values())


def compute_op(b: ProgramBuilder, ctx: Context, layer: str, phase: str, samples: int, *,
               micro_batch: int = 0, shard: int = 0, shards: int = 1,
               deps: tuple[int, ...] = (), recompute: bool = False,
               split_input: bool = False) -> int:
    """One layer's forward or backward on ``samples`` samples, 1/``shards`` of it (its input
    split too when ``split_input``); ``recompute`` marks a forward run again before backward."""
    key = (layer, phase, samples, shards, split_input, recompute)
    costs = ctx.op_costs.get(key)
    if costs is None:  # the same for every micro-batch and rank: computed once
        costs = ctx.op_costs[key] = _costs(ctx, layer, phase, samples, shards, split_input,
                                           recompute)
    if type(b) is not ProgramBuilder:  # a script recording a phase (``sharding.Script``)
        return b.add(Compute, deps=deps, micro_batch=micro_batch, shard=shard, **costs)
    # ops are immutable: ranks whose programs hold the same op at the same place share it
    op_id = len(b.ops)
    whole = (key, op_id, deps, micro_batch, shard)
    op = ctx.ops_made.get(whole)
    if op is None:
        op = ctx.ops_made[whole] = Compute(id=op_id, stream=COMPUTE, deps=tuple(deps),
                                           micro_batch=micro_batch, shard=shard, **costs)
    b.ops.append(op)
    return op_id


def _costs(ctx: Context, layer: str, phase: str, samples: int, shards: int, split_input: bool,
           recompute: bool) -> dict[str, Any]:
    n = ctx.node(layer)
    flops = (n["fwd_flops"] if phase == "fwd" else n["bwd_flops"]) * samples / shards
    inputs = n["in_elems"] / (shards if split_input else 1)
    act = (inputs + n["out_elems"] / shards) * samples
    # intermediate tensors between the layer's kernels (attention's scores): written and read
    # once per pass forward, twice as much backward
    act += n.get("scratch_elems", 0) * samples / shards * (1 if phase == "fwd" else 2)
    if phase == "bwd":
        act += inputs * samples  # input gradient written
        weights = 2 * n["params"] / shards  # read weights, write weight gradients
    else:
        weights = n["params"] / shards
    nbytes = (act + weights) * ctx.bpe
    per_block = GEMM_TILE if n["kind"] in GEMM_KINDS else ELEMENTWISE_BLOCK
    blocks = max(1, math.ceil(n["out_elems"] * samples / shards / per_block))
    return {"layer": layer, "phase": phase, "samples": samples, "shards": shards,
            "flops": float(flops), "bytes": float(nbytes), "blocks": blocks,
            "layer_kind": kernel_kind(n), "shape": kernel_shape(n, shards),
            "recompute": recompute,
            **({"input_grad": False} if phase == "bwd" and not ctx.graph.in_degree(layer)
               and not ctx.training.input_gradient else {}),
            **({"bias": True} if n.get("bias") else {})}


def kernel_kind(node: dict) -> str:
    """The kernel a layer runs, as calibration curves name it: the layer kind, with the
    function for activations and the mode for pooling (``act_relu`` and ``act_tanh``, or
    ``pool_max`` and ``pool_avg``, cost differently)."""
    if node["kind"] == "act":
        return f"act_{node['fn']}"
    if node["kind"] == "pool":
        return f"pool_{node['mode']}"
    return node["kind"]


def kernel_shape(node: dict, shards: int = 1) -> str:
    """A layer's per-sample geometry as calibration curves name it beside the kind: input and
    output shapes (``1x32x32>6x28x28``), the window of a convolution or pooling
    (``k5x5s1x1p0x0``), groups, and the shard count (``/2``). At equal FLOPs a kernel's
    efficiency depends on its shape: a 1-channel convolution is bound by its im2col, a
    6-channel one by its GEMM (16.8 against 30.6 GFLOP/s, LeNet-5's at batch 64)."""
    def dims(v: Any) -> str:
        return "x".join(str(int(d)) for d in (v if isinstance(v, (tuple, list)) else (v,)))

    out = f"{dims(node['in_shape'])}>{dims(node['out_shape'])}"
    if "kernel" in node:
        out += f"k{dims(node['kernel'])}s{dims(node['stride'])}p{dims(node['padding'])}"
    if node.get("groups", 1) > 1:
        out += f"g{node['groups']}"
    if shards > 1:
        out += f"/{shards}"
    return out


def buckets(ctx: Context, layers_bwd_order: list[str], bucket_bytes: float,
            shards: dict[str, int] | None = None) -> list[list[str]]:
    """Group layers (in backward order) into gradient buckets of at least ``bucket_bytes``.

    ``bucket_bytes`` 0 means one bucket for the whole model (exchange after backward).
    Layers without parameters join the bucket that is open.
    """
    out: list[list[str]] = [[]]
    size = 0.0
    for n in layers_bwd_order:
        out[-1].append(n)
        size += ctx.param_bytes([n], shards)
        if bucket_bytes and size >= bucket_bytes:
            out.append([])
            size = 0.0
    return [b for b in out if b and ctx.param_bytes(b, shards) > 0] or [layers_bwd_order]


def split_batch(batch: int, parts: int, path: str, what: str = "devices") -> int:
    if batch < parts:
        raise ScenarioError(f"the batch of {batch} samples cannot be split over {parts} {what}",
                            path=path, value=parts, has_value=True)
    return batch // parts


def check_devices(options: dict, key: str, cluster, path: str) -> int:  # noqa: ANN001
    """The number of devices an option asks for, checked against the cluster."""
    count = cluster.device_count
    want = options.get(key) or count
    if want > count:
        raise ScenarioError(f"asks for {want} devices but the cluster has {count}",
                            path=f"{path}.{key}", value=want, has_value=True)
    return want


def update_op(b: ProgramBuilder, ctx: Context, params: float, deps: tuple[int, ...]) -> int:
    """Apply the optimizer: memory-bound, reads weights, gradients, state; writes weights, state."""
    from simulator.plan import Update

    copies = 3 + 2 * OPTIMIZER_COPIES[ctx.training.optimizer]
    return b.add(Update, deps=deps, params=int(params), flops=float(4 * params),
                 bytes=float(copies * params * ctx.bpe))


def replicas(ctx: Context, ops: tuple[Op, ...], workers: int, servers: list[str],
             need: MemoryNeed, per_worker: int = 0
             ) -> tuple[tuple[RankProgram, ...], tuple[MemoryNeed, ...]]:
    """Worker ranks 0..workers-1 all running ``ops`` (one shared tuple), each reading its own
    ``per_worker`` samples, then one server rank per parameter-server host holding an equal
    shard; every worker holds the whole model and needs ``need``."""
    total = sum(ctx.node(n)["params"] for n in ctx.layers)
    ranks = [RankProgram(rank=r, device=ctx.cluster.devices[r], role="worker", ops=ops,
                         inputs=(r * per_worker, per_worker), labels=(r * per_worker, per_worker))
             for r in range(workers)]
    ranks += [RankProgram(rank=workers + j, device=h, role="server",
                          shard_params=total // len(servers)) for j, h in enumerate(servers)]
    return tuple(ranks), tuple(replace(need, device=ctx.cluster.devices[r])
                               for r in range(workers))


def wgrad_tensor(ctx: Context, layers: list[str]) -> str:
    """The plan's name for the weight gradients of the layers (those with parameters)."""
    return "wgrad:" + ",".join(n for n in layers if ctx.node(n)["params"])

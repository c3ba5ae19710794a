"""Parallel DBN pre-training (Hinton, Osindero & Teh 2006; De Filippo De Grazia et al., MPI).

A Deep Belief Network is pre-trained greedily, one RBM layer after the other, with one-step
contrastive divergence (CD-1). Each layer is trained data-parallel over ``k`` ranks (rank 0 is
the master): every rank holds ``samples / k`` training samples, runs one epoch of CD-1 over its
mini-batches applying each update locally, then the master averages the k ranks' weight and bias
changes (their *deltas*) and broadcasts the new weights. A layer stops after ``epochs`` epochs,
or earlier when the reconstruction error has not fallen by more than ``tau`` for three
consecutive epochs. The layer's hidden probabilities on every rank's shard are then the next
layer's data. The classifier on top (zoo ``dbn`` with ``classes``) is not pre-trained; with
``fine_tune`` the whole network (the pre-trained RBMs as sigmoid layers, then the classifier) is
then fine-tuned by back-propagation, data parallel, for ``fine_tune_epochs`` epochs.

Modelled, per rank and RBM layer L (v visible, h hidden units, P = vh + v + h parameters):

- one ``cd1`` Compute op per mini-batch of b samples: ``cd1_flops x b`` = 10vh b FLOPs (up, down,
  up, two outer products; see ``simulator/model/layers.py``), five GEMM launches, and bytes
  ``(b (5v + 8h) + 7 P) x bytes per element``: the three GEMMs read the batch and W, the sample
  step reads h0 and the uniforms and writes the sample, the outer products read v0, h0, v1, h1
  and write dW; the local step ``W += lr dW`` reads W and dW and writes W. The local update is
  part of the op (no separate Update op);
- per epoch one ``allreduce`` of the deltas (tensor ``delta:L``, P x bytes per element) over the
  group ``world``. The default ``exchange: tree`` *is* "the master averages and broadcasts": a
  binomial-tree reduce to rank 0 followed by a binomial broadcast from rank 0, as
  ``executor/mpi/collectives.py`` runs it, costing ``2 ceil(log2 k) (alpha + S/B)``. ``ring``,
  ``mpi`` or
  ``hierarchical`` model a library all-reduce instead (same result, other cost);
- after each layer but the last, one ``fwd`` Compute op over the rank's shard (the hidden
  probabilities become the next layer's data; the top layer's are not needed for pre-training).

Fine-tuning (``fine_tune``), after the pre-training ops, per epoch and per global batch: the
``samples`` training samples are cut into global batches of ``k x batch_per_rank`` (a last short
one is kept when every rank gets a sample) and rank r takes its contiguous ``shard_bounds`` part
of each, as ``data_parallel`` splits a global batch: the same global batches whatever k. Per
step the ops of a ``data_parallel`` step: ``fwd`` of every layer (RBMs, classifier, softmax),
``bwd`` in reverse, one ``allreduce`` of tensor ``wgrad:<layers>`` (key ``finetune.eE.sJ``; the
bytes are the weights and hidden biases: back-propagation does not train the visible biases)
after the last backward, and an ``Update`` of the optimizer after it.

The simulator cannot know when the tau rule stops a layer, so it plays ``expected_epochs`` epochs
per layer (one number for every layer, or one per RBM layer; default ``epochs``). One period is
the whole pre-training (and fine-tuning): ``period_steps`` = the total epochs (pre-training and
fine-tuning), ``samples_per_period`` the samples all those epochs process, so the engine's
iteration time is the mean epoch time (the forward passes between layers spread over the
epochs) and its throughput samples per second.

Memory per device: the largest, over layers, of that layer's weights, its delta, and the rank's
data shard of the layer's input (plus the shard of its output where a forward pass follows);
with fine-tuning at least the data-parallel need of the whole network (``memory_need``).
Ignored: the trained lower layers' weights (they can leave memory), the mini-batch work buffers,
random-number generation, the reconstruction-error sums the executor sends with the deltas
(two floats per exchange).

Units: samples, FLOPs, bytes.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx

from simulator.errors import ScenarioError
from simulator.plan import (
    COMM,
    COMPUTE,
    Collective,
    Compute,
    MemoryNeed,
    Plan,
    ProgramBuilder,
    RankProgram,
)
from simulator.schema import boolean, choice, integer, number
from simulator.strategies.common import (
    GEMM_KINDS,
    GEMM_TILE,
    Context,
    check_devices,
    compute_op,
    split_batch,
    update_op,
    wgrad_tensor,
)
from simulator.strategies.memory import memory_need

EXCHANGES = ("tree", "ring", "mpi", "hierarchical")
CD1_KERNELS = 5  # three GEMMs (up, down, up) and two outer products
STALL_EPOCHS = 3  # the tau rule: three epochs in a row without a fall larger than tau


def _epochs_option(v: Any, path: str) -> int | list[int]:
    """``expected_epochs``: one count for every layer, or a list with one per RBM layer."""
    if isinstance(v, list):
        return [integer(1)(x, f"{path}[{i}]") for i, x in enumerate(v)]
    return integer(1)(v, path)


OPTIONS = {
    "devices": (integer(1), None),
    "epochs": (integer(1), 10),
    "tau": (number(positive=False, minimum=0.0), 0.001),
    "expected_epochs": (_epochs_option, None),
    "batch_per_rank": (integer(1), None),
    "samples": (integer(1), 60000),
    "fine_tune": (boolean, False),
    "fine_tune_epochs": (integer(1), 5),
    "exchange": (choice(EXCHANGES), "tree"),
}


def rbm_layers(graph: nx.DiGraph) -> list[str]:
    """The RBM layers, in model order (those that are pre-trained)."""
    order = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
    return [n for n in order if graph.nodes[n]["kind"] == "rbm"]


def _bad(message: str, path: str, value: Any) -> ScenarioError:
    return ScenarioError(message, path=path, value=value, has_value=True)


def check(options, graph, cluster, training, path):  # noqa: ANN001, ANN201
    devices = check_devices(options, "devices", cluster, path)
    order = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
    layers = rbm_layers(graph)
    if not layers:
        raise _bad("DBN pre-training needs RBM layers (model.zoo: dbn)", f"{path}.scheme",
                   "dbn_pretrain")
    if order[:len(layers)] != layers:
        first = next(n for n in order if graph.nodes[n]["kind"] != "rbm")
        raise _bad(f"the RBM layers must come first, but layer {first!r} precedes one",
                   f"{path}.scheme", "dbn_pretrain")
    if options["samples"] < devices:
        raise _bad(f"{options['samples']} samples cannot be shared by {devices} ranks",
                   f"{path}.samples", options["samples"])
    if options["batch_per_rank"] is None:
        split_batch(training.batch_size, devices, f"{path}.devices")
    expected = options["expected_epochs"]
    if isinstance(expected, list) and len(expected) != len(layers):
        raise _bad(f"names {len(expected)} epoch count(s) but the model has {len(layers)} RBM "
                   "layers", f"{path}.expected_epochs", expected)
    for i, e in enumerate(expected if isinstance(expected, list) else [expected]):
        if e is not None and e > options["epochs"]:
            where = f"{path}.expected_epochs" + (f"[{i}]" if isinstance(expected, list) else "")
            raise _bad(f"more than the {options['epochs']} epochs a layer may run", where, e)
    if options["fine_tune"] and len(order) == len(layers):
        raise _bad("fine-tuning needs a classifier on top of the RBMs (model.params.classes)",
                   f"{path}.fine_tune", True)


def expected_epochs(options: dict, layers: list[str]) -> list[int]:
    """Epochs the simulator plays per layer."""
    e = options["expected_epochs"]
    if e is None:
        return [options["epochs"]] * len(layers)
    return list(e) if isinstance(e, list) else [e] * len(layers)


def shard_bounds(samples: int, ranks: int, rank: int) -> tuple[int, int]:
    """``(offset, count)`` of rank ``rank``'s contiguous shard (the first ``samples % ranks``
    ranks hold one sample more)."""
    q, extra = divmod(samples, ranks)
    return rank * q + min(rank, extra), q + (1 if rank < extra else 0)


def mini_batches(count: int, batch: int) -> list[int]:
    """Sizes of one epoch's mini-batches over ``count`` samples (the last may be short)."""
    return [min(batch, count - i) for i in range(0, count, batch)]


def cd1_op(b: ProgramBuilder, ctx: Context, layer: str, samples: int, micro_batch: int,
           deps: tuple[int, ...] = ()) -> int:
    """One CD-1 step with its local update on ``samples`` samples (costs: module docstring)."""
    n = ctx.node(layer)
    v, h = n["in_elems"], n["out_elems"]
    nbytes = (samples * (5 * v + 8 * h) + 7 * n["params"]) * ctx.bpe
    per_block = GEMM_TILE if n["kind"] in GEMM_KINDS else 1024
    blocks = max(1, math.ceil(h * samples / per_block))
    return b.add(Compute, deps=deps, layer=layer, phase="cd1", micro_batch=micro_batch,
                 samples=samples, shard=0, shards=1, flops=float(n["cd1_flops"] * samples),
                 bytes=float(nbytes), blocks=blocks, kernels=CD1_KERNELS, layer_kind="rbm")


def fine_tune_batches(samples: int, ranks: int, batch: int) -> list[int]:
    """Sizes of one fine-tuning epoch's global batches: ``ranks x batch`` samples each, the last
    (short) one kept when it gives every rank a sample."""
    full, rest = divmod(samples, ranks * batch)
    return [ranks * batch] * full + ([rest] if rest >= ranks else [])


def backprop_params(ctx: Context, layer: str) -> int:
    """Parameters back-propagation trains: an RBM's weights and hidden biases (not its visible
    biases, which only reconstruct), every other layer's all."""
    n = ctx.node(layer)
    return n["params"] - (n["in_elems"] if n["kind"] == "rbm" else 0)


def fine_tune_ops(b: ProgramBuilder, ctx: Context, parts: list[int], epochs: int, exchange: str,
                  after: tuple[int, ...]) -> None:
    """Data-parallel back-propagation over the whole network: per epoch, per global batch (this
    rank's ``parts`` of them), forward, backward, the gradient all-reduce and the update."""
    layers = ctx.layers
    trained = [n for n in layers if backprop_params(ctx, n)]
    total = sum(backprop_params(ctx, n) for n in layers)
    for e in range(epochs):
        for j, n in enumerate(parts):
            for i, layer in enumerate(layers):
                compute_op(b, ctx, layer, "fwd", n, deps=after if i == 0 else ())
            for layer in reversed(layers):
                compute_op(b, ctx, layer, "bwd", n)
            grads = b.add(Collective, stream=COMM, deps=(b.last(COMPUTE),),
                          collective="allreduce", algorithm=exchange, group="world",
                          bytes=float(total * ctx.bpe), key=f"finetune.e{e}.s{j}",
                          tensor=wgrad_tensor(ctx, trained))
            update_op(b, ctx, total, deps=(grads,))
            after = ()


def pretraining_length(ops: tuple) -> int:
    """How many of a rank's ops are the pre-training: up to the top layer's last averaging (the
    fine-tuning ops follow)."""
    return 1 + max(i for i, op in enumerate(ops)
                   if isinstance(op, Collective) and op.tensor.startswith("delta:"))


def rank_program(ctx: Context, layers: list[str], epochs: list[int], count: int, batch: int,
                 exchange: str, fine_tune: tuple[list[int], int] | None = None) -> tuple:
    """What a rank holding ``count`` samples runs: every layer's epochs, then its forward; then,
    with ``fine_tune`` = (this rank's part of each global batch, epochs), the fine-tuning."""
    b = ProgramBuilder()
    after: tuple[int, ...] = ()
    sizes = mini_batches(count, batch)
    for i, layer in enumerate(layers):
        nbytes = ctx.node(layer)["params"] * ctx.bpe
        for e in range(epochs[i]):
            for j, n in enumerate(sizes):
                cd1_op(b, ctx, layer, n, j, deps=after if j == 0 else ())
            # the averaging waits for the epoch's last step; the next epoch for the averaging
            avg = b.add(Collective, stream=COMM, deps=(b.last(COMPUTE),), collective="allreduce",
                        algorithm=exchange, group="world", bytes=float(nbytes),
                        key=f"{layer}.e{e}", tensor=f"delta:{layer}")
            after = (avg,)
        if i < len(layers) - 1:
            compute_op(b, ctx, layer, "fwd", count, deps=after)
            after = ()
    if fine_tune:
        fine_tune_ops(b, ctx, *fine_tune, exchange, after)
    return tuple(b.ops)


def _memory(ctx: Context, device: str, layers: list[str], count: int,
            fine_tune_part: int) -> MemoryNeed:
    needs = []
    for i, layer in enumerate(layers):
        n = ctx.node(layer)
        data = n["in_elems"] + (n["out_elems"] if i < len(layers) - 1 else 0)
        needs.append(MemoryNeed(device=device, weights=n["params"] * ctx.bpe,
                                gradients=n["params"] * ctx.bpe, optimizer=0.0,
                                activations=float(count * data * ctx.bpe),
                                capacity=ctx.cluster.device_spec.memory))
    if fine_tune_part:
        needs.append(memory_need(ctx, device, ctx.layers, act_samples=fine_tune_part))
    return max(needs, key=lambda m: m.total)


def build(ctx: Context, spec) -> Plan:  # noqa: ANN001
    o = spec.options
    k = o["devices"] or ctx.cluster.spec.device_count
    batch = o["batch_per_rank"] or ctx.training.batch_size // k
    layers = rbm_layers(ctx.graph)
    epochs = expected_epochs(o, layers)
    ft_epochs = o["fine_tune_epochs"] if o["fine_tune"] else 0
    global_batches = fine_tune_batches(o["samples"], k, batch) if ft_epochs else []
    programs: dict[tuple, tuple] = {}  # ranks with equal shards share one program
    ranks, memory = [], []
    for r in range(k):
        offset, count = shard_bounds(o["samples"], k, r)
        parts = [shard_bounds(n, k, r)[1] for n in global_batches]
        if (count, *parts) not in programs:
            programs[(count, *parts)] = rank_program(
                ctx, layers, epochs, count, batch, o["exchange"],
                (parts, ft_epochs) if ft_epochs else None)
        device = ctx.cluster.devices[r]
        # pre-training is unsupervised: a rank reads its shard's inputs and no labels; the
        # fine-tuning reads the inputs and labels of its part of every global batch
        labels = shard_bounds(global_batches[0], k, r) if ft_epochs else (0, 0)
        ranks.append(RankProgram(rank=r, device=device, role="worker",
                                 ops=programs[(count, *parts)], inputs=(offset, count),
                                 labels=labels))
        memory.append(_memory(ctx, device, layers, count, max(parts, default=0)))
    total = sum(epochs) + ft_epochs
    return Plan(strategy=spec.name, scheme="dbn_pretrain", mode="sync",
                samples_per_period=o["samples"] * sum(epochs) + sum(global_batches) * ft_epochs,
                period_steps=total, ranks=tuple(ranks), groups={"world": tuple(range(k))},
                memory=tuple(memory),
                options={**o, "workers": k, "batch_per_rank": batch, "expected_epochs": epochs,
                         "layers": layers, "fine_tune_batches": global_batches})


def at_scale(raw: dict, devices: int) -> dict | None:
    """This strategy's scenario entry on ``devices`` devices (for sweeps): all of them."""
    return {**raw, "devices": devices}


# ---- per-layer times from a Result entry's timeline -------------------------------------------

def _span_layer(name: str) -> str | None:
    """The layer a timeline span belongs to: ``rbm1.cd1``, ``rbm1.fwd``, ``allreduce:rbm1.e3``
    (the averaging of epoch 3); None for waits and anything else."""
    if name.startswith("allreduce:"):
        name = name[len("allreduce:"):]
    head, dot, _ = name.rpartition(".")
    return head if dot else None


def _pretraining_ends(spans: list, top: str) -> dict[str, float]:
    """Per device, when its pre-training ended: the end of its top layer's last CD-1 step or
    averaging (every later span on that device is fine-tuning)."""
    ends: dict[str, float] = {}
    for device, _, name, t, dur in spans:
        if name == f"{top}.cd1" or name.startswith(f"allreduce:{top}.e"):
            ends[device] = max(ends.get(device, t + dur), t + dur)
    return ends


def split_timeline(entry: dict, layers: list[str]) -> tuple[list, list]:
    """The entry's timeline spans cut into (pre-training, fine-tuning), device by device."""
    spans = entry["timeline"]["spans"]
    ends = _pretraining_ends(spans, layers[-1])
    pre, fine = [], []
    for s in spans:
        end = ends.get(s[0], math.inf)
        # spans are (start, duration): allow for the rounding of start + duration
        (fine if s[3] >= end - 1e-9 * max(1.0, abs(end)) else pre).append(s)
    return pre, fine


def layer_times(entry: dict, layers: list[str]) -> dict[str, float]:
    """Seconds each layer took, from the entry's timeline (predicted or measured: both engines
    name spans ``layer.phase`` and collectives ``allreduce:key``). Layers run one after the
    other, every rank finishing a layer at its last averaging (or forward pass): a layer's time
    is from the end of the previous layer (the timeline's start for the first) to its own end,
    the latest over ranks. Fine-tuning spans (after a device's pre-training) are left out."""
    spans, _ = split_timeline(entry, layers)
    start = min((s[3] for s in spans), default=0.0)
    ends: dict[str, float] = {}
    for _, _, name, t, dur in spans:
        layer = _span_layer(name)
        if layer in layers:
            ends[layer] = max(ends.get(layer, start), t + dur)
    out, prev = {}, start
    for layer in layers:
        end = ends.get(layer, prev)
        out[layer] = end - prev
        prev = end
    return out


def fine_tuning_time(entry: dict, layers: list[str]) -> float:
    """Seconds from the end of the pre-training (latest over ranks) to the end of the
    fine-tuning (latest over ranks); 0 without fine-tuning."""
    pre, fine = split_timeline(entry, layers)
    if not fine:
        return 0.0
    return max(s[3] + s[4] for s in fine) - max(s[3] + s[4] for s in pre)


def predicted_pretraining(entry: dict, plan: Plan) -> dict[str, Any]:
    """The ``pretraining`` block of a predicted entry, in the executor's shape: per layer the
    epochs played (``expected_epochs``) and the seconds they took, their total and the total
    pre-training time; with fine-tuning, ``fine_tuning`` with its epochs and seconds.
    Reconstruction and classification errors are not predicted. Needs the entry's timeline
    (the engine records the first measured period of the first 64 ranks)."""
    layers = plan.options["layers"]
    epochs = plan.options["expected_epochs"]
    times = layer_times(entry, layers)
    out = {"layers": [{"layer": n, "epochs": e, "time_s": times[n]}
                      for n, e in zip(layers, epochs)],
           "epochs_to_convergence": sum(epochs),
           "total_time_s": sum(times.values())}
    if plan.options.get("fine_tune"):
        out["fine_tuning"] = {"epochs": plan.options["fine_tune_epochs"],
                              "steps_per_epoch": len(plan.options["fine_tune_batches"]),
                              "time_s": fine_tuning_time(entry, layers)}
    return out

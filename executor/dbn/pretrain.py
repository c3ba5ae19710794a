"""Parallel DBN pre-training for real: greedy layer-wise CD-1 over MPI ranks, measured.

Runs a ``dbn_pretrain`` plan (``simulator/strategies/dbn_pretrain.py``). Rank r holds the plan's
shard of the training set (its ``inputs``). Per RBM layer, per epoch: the rank runs ``rbm_cd1``
on each of its mini-batches applying every step locally (``W += lr dW``, plain CD-1, rate
``training.learning_rate``) and adding it to the epoch's delta; the k deltas are summed by the
all-reduce the plan names (default ``tree``: reduce to the master, rank 0, then broadcast) and
every rank sets ``W = W_start + sum / k``: the master's average. The reconstruction errors
(per-sample mean squared error of the one-step reconstruction) travel in the same buffer, so
every rank takes the same stopping decision: after ``epochs`` epochs or when the error has not
fallen by more than ``tau`` for three epochs in a row. The layer's hidden probabilities on every
shard are then the next layer's data. With ``fine_tune`` the network is then fine-tuned by
back-propagation (``executor/dbn/finetune.py``).

With ``training.target`` (metric ``reconstruction_error``) the first layer stops instead at the
end of the first epoch whose error is at most the target's value (or after ``epochs``: not
reached); the later layers follow the tau rule. The entry's target block counts that layer's
epochs, and its time runs from the start of its first epoch to the end of that epoch's averaging.

The plan is the contract: mini-batch sizes, the all-reduce algorithm and which layers run a
forward pass are read from each layer's first epoch in the plan (which plays
``expected_epochs``); the executor repeats that epoch up to ``epochs`` times.

Randomness: the Bernoulli sample of CD-1 takes its uniforms from a Philox counter-based
generator keyed by (seed, layer index, epoch); sample g's h uniforms are the stream's positions
[g h, (g + 1) h). Every sample gets the same draws whatever the number of ranks. Each step draws
its mini-batch's uniforms inside its timed span, as a CD-1 code must (the plan does not cost the
generator itself: a gap between predicted and measured).

Measured: every epoch between barriers; each CD-1 step, averaging and forward pass is a
timeline span named as the simulator names them (``rbm1.cd1``, ``allreduce:rbm1.e3``,
``rbm1.fwd``), so ``dbn_pretrain.layer_times`` reads both. Kernels are JIT-warmed before.

Run: ``mpiexec -n K parasim pretrain SCENARIO --strategy NAME --json OUT``; rank 0 writes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from executor.interpreter.measure import peak_rss
from executor.interpreter.model import ExecutorError, init_weights
from executor.interpreter.target import put, target_block
from executor.mpi import collectives as xcomm
from simulator.intervals import length, minus, union
from simulator.plan import Collective, Compute, Plan
from simulator.strategies.dbn_pretrain import STALL_EPOCHS, pretraining_length

F32 = np.float32


@dataclass(frozen=True)
class LayerSchedule:
    """One layer's epoch as the plan gives it to this rank."""

    layer: str
    batches: tuple[int, ...]  # mini-batch sizes of one epoch
    algorithm: str  # the averaging all-reduce
    forward: bool  # a forward pass over the shard follows (not after the top layer)


def schedule(plan: Plan, rank: int) -> list[LayerSchedule]:
    """Per RBM layer, in order: its first epoch's mini-batches, averaging and forward pass
    (from the pre-training: the ops up to the last averaging; fine-tuning follows them)."""
    out: dict[str, dict[str, Any]] = {}
    ops = plan.ranks[rank].ops
    for op in ops[:pretraining_length(ops)]:
        if isinstance(op, Compute):
            s = out.setdefault(op.layer, {"batches": [], "algorithm": None, "forward": False})
            if op.phase == "cd1" and s["algorithm"] is None:
                s["batches"].append(op.samples)
            elif op.phase == "fwd":
                s["forward"] = True
        elif isinstance(op, Collective) and op.tensor.startswith("delta:"):
            s = out[op.tensor[len("delta:"):]]
            s["algorithm"] = s["algorithm"] or op.algorithm
    return [LayerSchedule(n, tuple(s["batches"]), s["algorithm"], s["forward"])
            for n, s in out.items()]


def uniform_stream(seed: int, layer: int, epoch: int, first: int, hidden: int
                   ) -> np.random.Generator:
    """The generator of one layer's epoch, positioned at sample ``first`` (a global index):
    ``random((n, hidden))`` then gives the uniforms of samples ``first .. first + n - 1``, the
    next call those of the samples after them; a sample gets the same draws in any shard."""
    key = np.random.SeedSequence([seed, layer, epoch]).generate_state(2, np.uint64)
    bits = np.random.Philox(key=key)
    position = first * hidden  # one 64-bit draw per double; Philox yields four per counter step
    bits.advance(position // 4)
    if position % 4:
        bits.random_raw(position % 4)
    return np.random.Generator(bits)


def training_inputs(data: Any, samples: int, visible: int) -> np.ndarray:
    """The first ``samples`` samples flattened to ``(samples, visible)`` float32 in [0, 1]."""
    x = np.asarray(data.x)
    if len(x) < samples:
        raise ExecutorError(f"the data set {data.name} holds {len(x)} samples; the strategy "
                            f"asks for samples: {samples}")
    flat = x[:samples].reshape(samples, -1)
    if flat.shape[1] != visible:
        raise ExecutorError(f"{data.name} samples have {flat.shape[1]} values but the first RBM "
                            f"has {visible} visible units (model.params.sizes[0])")
    return np.ascontiguousarray(flat, dtype=F32)


PARAMS = ("w", "b_vis", "b")  # weights, visible biases, hidden biases: the delta's layout


class RankTrainer:
    """One rank's part of the pre-training: its shard, its kernels, its timed spans."""

    def __init__(self, comm: Any, plan: Plan, backend: Any, learning_rate: float, seed: int):
        from mpi4py import MPI

        self.comm, self.k, self.wtime = comm, len(plan.workers()), MPI.Wtime
        self.backend, self.lr, self.seed = backend, learning_rate, seed
        self.offset, self.count = plan.ranks[comm.Get_rank()].inputs
        self.spans: list[tuple[str, str, float, float]] = []

    def span(self, stream: str, name: str, start: float) -> None:
        self.spans.append((stream, name, start, self.wtime()))

    def epoch(self, s: LayerSchedule, index: int, epoch: int, p: dict, x: Any) -> float:
        """One epoch of CD-1 over the shard from ``p`` (updated in place to the master's
        average); returns the epoch's reconstruction error, sample-weighted over every rank."""
        from executor.mpi import collectives as xcomm

        k, hidden = self.backend, p["b"].shape[0]
        start = {key: np.array(k.to_host(v)) for key, v in p.items()}
        delta = {key: k.zeros(v.shape) for key, v in p.items()}
        draws = uniform_stream(self.seed, index, epoch, self.offset, hidden)
        err_sum, pos = 0.0, 0
        for n in s.batches:
            t = self.wtime()
            u = k.to_device(draws.random((n, hidden)).astype(F32))
            dw, db_vis, db_hid, err = k.rbm_cd1(x[pos:pos + n], p["w"], p["b_vis"], p["b"], u)
            for key, g in zip(PARAMS, (dw, db_vis, db_hid)):
                k.axpy(self.lr, g, p[key])
                k.axpy(self.lr, g, delta[key])
            k.synchronize()
            self.span("compute", f"{s.layer}.cd1", t)
            err_sum += err * n
            pos += n
        t = self.wtime()
        buf = np.concatenate([np.asarray(k.to_host(delta[key]), F32).ravel() for key in PARAMS]
                             + [np.array([err_sum, self.count], F32)])
        xcomm.allreduce(self.comm, buf, s.algorithm)
        at = 0
        for key in PARAMS:  # the master's average: W_start + (sum of deltas) / k
            size = start[key].size
            mean = buf[at:at + size].reshape(start[key].shape) * F32(1.0 / self.k)
            p[key] = k.to_device(start[key] + mean)
            at += size
        self.span("comm", f"allreduce:{s.layer}.e{epoch}", t)
        return float(buf[-2]) / float(buf[-1])

    def forward(self, s: LayerSchedule, p: dict, x: Any) -> Any:
        """The layer's hidden probabilities on the shard: the next layer's data."""
        t = self.wtime()
        y = self.backend.act_forward(self.backend.dense_forward(x, p["w"], p["b"]), "sigmoid")
        self.backend.synchronize()
        self.span("compute", f"{s.layer}.fwd", t)
        return y


def run_dbn(comm: Any, plan: Plan, graph: Any, scenario: Any, data: Any, backend: Any,
            dog: Any, weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pre-train (and fine-tune) under ``plan``; rank 0 returns the Result entry (``{}``
    elsewhere). When ``weights`` is a dict, rank 0 puts the trained ``{layer: {w, b, b_vis}}``
    (fine-tuned: the classifier too, the RBMs' visible biases as pre-trained) under the
    strategy's name."""
    o, rank = plan.options, comm.Get_rank()
    me = RankTrainer(comm, plan, backend, scenario.training.learning_rate, scenario.seed)
    layers = schedule(plan, rank)
    whole = init_weights(graph, sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"]),
                         scenario.seed)
    trained: dict[str, dict[str, np.ndarray]] = {}  # per layer, its trained parameters
    visible = graph.nodes[layers[0].layer]["in_shape"][0]
    x = backend.to_device(training_inputs(data, o["samples"], visible)
                          [me.offset:me.offset + me.count])
    _warm_up(backend, x, whole[layers[0].layer])
    tuner = None
    if o["fine_tune"]:  # set up and compiled before anything is timed
        from executor.dbn.finetune import FineTuner

        tuner = FineTuner(comm, plan, graph, scenario, data, backend)
    # per epoch: (its end, reconstruction error or loss, training accuracy, samples)
    curve: list[tuple[float, float, float | None, int]] = []
    record, epoch_times = [], []
    target, to_target = scenario.training.target, None  # the first layer's epochs and time
    xcomm.barrier(comm)
    begin = me.wtime()
    for index, s in enumerate(layers):
        p = {key: backend.to_device(v) for key, v in whole[s.layer].items()}
        errors: list[float] = []
        stalled, layer_start = 0, None
        for epoch in range(o["epochs"]):
            dog.tick(f"{plan.strategy}, {s.layer}, epoch {epoch}")
            xcomm.barrier(comm)
            t0 = me.wtime()
            layer_start = t0 if layer_start is None else layer_start
            errors.append(me.epoch(s, index, epoch, p, x))
            xcomm.barrier(comm)
            t1 = me.wtime()
            epoch_times.append(t1 - t0)
            curve.append((t1 - begin, errors[-1], None, o["samples"]))
            if target is not None and index == 0:
                # the error is all-reduced: every rank stops at the same epoch
                if target.reached(errors[-1]):
                    to_target = (len(errors), t1 - layer_start)
                    break
                continue
            if epoch > 0:
                stalled = stalled + 1 if errors[-2] - errors[-1] <= o["tau"] else 0
            if stalled >= STALL_EPOCHS:
                break
        if s.forward:
            x = me.forward(s, p, x)
            xcomm.barrier(comm)
        record.append({"layer": s.layer, "epochs": len(errors), "reconstruction_error": errors,
                       "converged": stalled >= STALL_EPOCHS,
                       "time_s": me.wtime() - layer_start})
        trained[s.layer] = {key: np.array(backend.to_host(v)) for key, v in p.items()}
    end = pre_end = me.wtime()
    if tuner is not None:  # the fine-tuning's spans, epochs and weights join the record
        end = tuner.follow(dog, trained, begin, me.spans, epoch_times, curve)
    if weights is not None and rank == 0:
        weights[plan.strategy] = trained
    device = plan.ranks[rank].device
    timeline = [(device, stream, name, a - begin, b - a) for stream, name, a, b in me.spans]
    gathered = comm.gather((device, _breakdown(me.spans, begin, end), timeline, peak_rss()),
                           root=0)
    if rank != 0:
        return {}
    entry = _entry(plan, backend, gathered, record, epoch_times, curve, end - begin,
                   pre_end - begin)
    if tuner is not None:
        entry["pretraining"]["fine_tuning"] = tuner.report()
    if target is not None:
        first = record[0]["reconstruction_error"]
        put(entry, target_block(
            target, unit="epoch", steps=to_target[0] if to_target else None,
            time_s=to_target[1] if to_target else None,
            samples=to_target[0] * o["samples"] if to_target else None, cap=o["epochs"],
            cap_source=f"the strategy's epochs: {o['epochs']}",
            best=min(first) if first else None, window=False))
    return entry


def _warm_up(backend: Any, x: Any, params: dict[str, np.ndarray]) -> None:
    """Compile the kernels (Numba JIT) on two samples before anything is timed."""
    p = {key: backend.to_device(v.copy()) for key, v in params.items()}
    v = x[:2]
    u = backend.to_device(np.full((v.shape[0], p["b"].shape[0]), 0.5, F32))
    dw, _, _, _ = backend.rbm_cd1(v, p["w"], p["b_vis"], p["b"], u)
    backend.axpy(0.0, dw, p["w"])
    backend.act_forward(backend.dense_forward(v, p["w"], p["b"]), "sigmoid")
    backend.synchronize()


def _breakdown(spans: list, begin: float, end: float) -> dict[str, float]:
    """The simulator's phases over the whole pre-training on this rank (seconds)."""
    compute = union([(a, b) for stream, _, a, b in spans if stream == "compute"], begin, end)
    comm = union([(a, b) for stream, _, a, b in spans if stream == "comm"], begin, end)
    out = {"compute": length(compute), "exposed_communication": minus(comm, compute),
           "ps_wait": 0.0, "host_device_copy": 0.0}
    out["idle"] = max(0.0, (end - begin) - sum(out.values()))
    return out


def _entry(plan: Plan, backend: Any, gathered: list, record: list, epoch_times: list[float],
           curve: list[tuple], total: float, pretraining: float) -> dict[str, Any]:
    o = plan.options
    epochs, samples = len(curve), sum(c[3] for c in curve)  # pre-training and fine-tuning
    breakdown = {key: statistics.fmean(m[key] for _, m, *_ in gathered) / epochs
                 for key in gathered[0][1]}
    accuracy = [c[2] for c in curve] if o["fine_tune"] else None
    return {
        "strategy": plan.strategy,
        "scheme": plan.scheme,
        "mode": "measured",
        "backend": backend.name,
        "devices": len(plan.workers()),
        "samples_per_iteration": samples,
        # as the simulator's period / period_steps: forward passes spread over the epochs
        "iteration_time_s": total / epochs,
        "iteration_times_s": epoch_times,
        "throughput_samples_per_s": samples / total,
        "breakdown_s": breakdown,
        "utilisation_per_device": {d: m["compute"] / total for d, m, *_ in gathered},
        "fits": plan.fits,
        "memory_bytes_per_device": {m.device: m.total for m in plan.memory},
        "peak_rss_bytes_per_device": {d: rss for d, _, _, rss in gathered},
        "training": {"wall_time_s": [c[0] for c in curve],
                     "samples": np.cumsum([c[3] for c in curve]).tolist(),
                     "loss": [c[1] for c in curve], "accuracy": accuracy},
        "timeline": {"iteration": 0, "devices_shown": len(gathered),
                     "spans": [list(s) for _, _, spans, _ in gathered for s in spans]},
        "pretraining": {"layers": record,
                        "epochs_to_convergence": sum(r["epochs"] for r in record),
                        "total_time_s": pretraining, "tau": o["tau"], "max_epochs": o["epochs"]},
    }


def time_to_error(entry: dict[str, Any], target: float, layer: int = 0) -> float | None:
    """Seconds from the start until layer ``layer``'s (default the first) epoch-mean
    reconstruction error first reached ``target``; None if it never did."""
    record = entry["pretraining"]["layers"]
    before = sum(r["epochs"] for r in record[:layer])
    for i, err in enumerate(record[layer]["reconstruction_error"]):
        if err <= target:
            return entry["training"]["wall_time_s"][before + i]
    return None

"""Supervised fine-tuning of a pre-trained DBN by back-propagation, data parallel, for real.

Runs the fine-tuning part of a ``dbn_pretrain`` plan with ``fine_tune``: the ops after the last
``delta:`` averaging of each rank's program. They are ``data_parallel`` steps (forward of every
layer, backward, the ``wgrad:`` all-reduce, the update), so each step is run by
``executor.interpreter.runner.RankRunner`` as a one-period data-parallel plan: the step's ops of
every rank
(dependencies on the pre-training dropped: they are done), its global batch the sum of the
ranks' samples. One runner holds the network and runs the steps one after the other.

The network starts from the pre-trained RBMs (weights and hidden biases; the visible biases are
not part of the feed-forward network) and a classifier drawn from the scenario's seed as
``init_weights`` draws it; SGD with ``training.learning_rate`` and ``momentum``. Step j of an
epoch trains global batch j of the training set (its first ``samples`` samples): the samples
after the steps before it, rank r taking the plan's part r of them (its op sample counts, in
rank order), as ``data_parallel`` splits a global batch, so every k trains on the same global
batches. The loss of a step is the sum over the global batch / its size, so the all-reduced
gradient is the global batch's mean whatever k.

The test set, never trained on: the last ``TEST_FRACTION`` of the data set, the same on every
rank. Its classification error is measured (untimed, on rank 0) before the fine-tuning (the
pre-trained features under the untrained classifier) and after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from executor.interpreter.forward import Forward
from executor.interpreter.model import ExecutorError, Layer
from executor.interpreter.runner import RankRunner
from executor.mpi import collectives as xcomm
from simulator.plan import Collective, Compute, Plan, RankProgram, Update
from simulator.strategies.dbn_pretrain import pretraining_length

F32 = np.float32
TEST_FRACTION = 0.2


def test_split(n: int) -> tuple[int, int]:
    """``(first, count)`` of the held-out test set in a data set of ``n`` samples: its last
    ``round(TEST_FRACTION n)`` (at least one)."""
    count = max(1, round(n * TEST_FRACTION))
    return n - count, count


def data_size_for(options: dict) -> int:
    """The smallest data set a strategy can run on: its ``samples``, and with fine-tuning the
    test set after them."""
    samples = options["samples"]
    if not options["fine_tune"]:
        return samples
    n = math.ceil(samples / (1 - TEST_FRACTION))
    while test_split(n)[0] < samples:
        n += 1
    return n


def labelled(data: Any, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``first .. first + count - 1`` flattened to float32, and their labels."""
    x = np.asarray(data.x[first:first + count], dtype=F32).reshape(count, -1)
    return np.ascontiguousarray(x), np.asarray(data.y[first:first + count], dtype=np.int64)


def check_test_split(data: Any, options: dict) -> None:
    """With fine-tuning, the training samples must lie before the test set."""
    samples = options["samples"]
    first, count = test_split(len(data.y))
    if options["fine_tune"] and samples > first:
        raise ExecutorError(f"the data set {data.name} holds {len(data.y)} samples; fine-tuning "
                            f"holds out the last {count} as the test set, so samples may be at "
                            f"most {first}, not {samples}")


@dataclass(frozen=True)
class Step:
    """One fine-tuning step of the plan, as a one-period data-parallel plan."""

    epoch: int
    plan: Plan  # every rank's ops of this step
    first: int  # the global batch's first sample in the training set
    offset: int  # this rank's first sample within the global batch
    count: int  # this rank's samples
    key: str  # the all-reduce's key: the timeline names it allreduce:KEY


def _cut(ops: tuple) -> list[tuple]:
    """The fine-tuning part of a program (after the last pre-training averaging), cut after
    each update; dependencies on ops outside a step are dropped (they ran before it)."""
    steps, current = [], []
    for op in ops[pretraining_length(ops):]:
        current.append(op)
        if isinstance(op, Update):
            ids = {o.id for o in current}
            steps.append(tuple(replace(o, deps=tuple(d for d in o.deps if d in ids))
                               for o in current))
            current = []
    if current:
        raise ExecutorError("the plan's fine-tuning ends without an update")
    return steps


def fine_tune_steps(plan: Plan, rank: int) -> list[Step]:
    """The plan's fine-tuning steps in order, with where rank ``rank``'s samples lie."""
    cut: dict[int, list[tuple]] = {}  # ranks with equal shards share one program
    for r in plan.ranks:
        cut.setdefault(id(r.ops), _cut(r.ops))
    per_rank = [cut[id(r.ops)] for r in plan.ranks]
    per_epoch = len(plan.options["fine_tune_batches"])
    if {len(s) for s in per_rank} != {per_epoch * plan.options["fine_tune_epochs"]}:
        raise ExecutorError("the plan's ranks do not all hold the fine-tuning's steps")
    out, first = [], 0
    for j in range(len(per_rank[0])):
        counts = [next(op.samples for op in s[j] if isinstance(op, Compute))
                  for s in per_rank]
        progs = tuple(RankProgram(rank=r.rank, device=r.device, role=r.role, ops=s[j],
                                  inputs=(0, n), labels=(0, n))
                      for r, s, n in zip(plan.ranks, per_rank, counts))
        sub = Plan(strategy=f"{plan.strategy}.fine-tuning", scheme="data_parallel",
                   mode="sync", samples_per_period=sum(counts), period_steps=1, ranks=progs,
                   groups=plan.groups)
        key = next(op.key for op in per_rank[rank][j] if isinstance(op, Collective))
        if j % per_epoch == 0:
            first = 0
        out.append(Step(j // per_epoch, sub, first, sum(counts[:rank]), counts[rank], key))
        first += sum(counts)
    return out


class StepRunner(RankRunner):
    """A RankRunner that runs a sequence of one-period plans over the same network."""

    def use(self, step: Step) -> None:
        self.plan, self.prog = step.plan, step.plan.ranks[self.rank]
        self.step_samples = step.plan.samples_per_period  # the loss's normaliser


class FineTuner:
    """One rank's fine-tuning: set up (and the kernels compiled) before anything is timed,
    ``run`` timed, ``report`` after (the test errors, untimed)."""

    def __init__(self, comm: Any, plan: Plan, graph: Any, scenario: Any, data: Any,
                 backend: Any):
        o, t = plan.options, scenario.training
        check_test_split(data, o)
        self.comm, self.plan, self.k = comm, plan, backend
        self.steps = fine_tune_steps(plan, comm.Get_rank())
        self.runner = StepRunner(comm, self.steps[0].plan, graph, backend, scenario.seed,
                                 t.learning_rate, t.momentum)
        self.x, self.y = labelled(data, 0, o["samples"])
        self.test = labelled(data, *test_split(len(data.y)))
        _warm_up(self.runner, self.x[:2], self.y[:2])
        # (start, end, loss, training accuracy, samples) per epoch; timeline spans
        self.epochs: list[tuple[float, float, float, float, int]] = []
        self.spans: list[tuple[str, str, float, float]] = []
        self.start: dict[str, dict[str, np.ndarray]] = {}

    def run(self, dog: Any, start: dict[str, dict[str, Any]]) -> None:
        """Fine-tune from ``start`` (``{rbm layer: {w, b, ...}}``, host arrays): the RBMs
        become sigmoid layers with their weights and hidden biases; the classifier is as
        drawn."""
        from mpi4py import MPI

        k, runner = self.k, self.runner
        for name, params in start.items():
            layer = runner.layers[name]
            layer.params = {key: k.to_device(np.array(params[key], F32)) for key in ("w", "b")}
            layer.velocity = {key: k.zeros(v.shape) for key, v in layer.params.items()}
        self.start = {n: {key: np.array(k.to_host(v)) for key, v in layer.params.items()}
                      for n, layer in runner.layers.items() if layer.params}
        for e in range(self.plan.options["fine_tune_epochs"]):
            dog.tick(f"{self.plan.strategy}, fine-tuning epoch {e}")
            xcomm.barrier(self.comm)
            t0 = MPI.Wtime()
            stats = np.zeros(3)
            for step in (s for s in self.steps if s.epoch == e):
                lo = step.first + step.offset
                runner.use(step)
                timings, got = runner.run_period(self.x[lo:lo + step.count],
                                                 self.y[lo:lo + step.count])
                stats += (got["loss_sum"], got["correct"], got["counted"])
                self.spans += [(stream, f"allreduce:{step.key}" if name.startswith("wgrad:")
                                else name, a, b) for stream, name, a, b in timings.spans]
            xcomm.barrier(self.comm)
            t1 = MPI.Wtime()
            total = self.comm.allreduce(stats)
            self.epochs.append((t0, t1, total[0] / total[2], total[1] / total[2],
                                int(total[2])))

    def follow(self, dog: Any, trained: dict, begin: float, spans: list, epoch_times: list,
               curve: list) -> float:
        """Fine-tune from the pre-trained ``trained`` and add to the pre-training's record: the
        spans, each epoch's time and (end - ``begin``, loss, accuracy, samples), the fine-tuned
        weights into ``trained`` (the RBMs' visible biases stay as pre-trained); returns the
        time the fine-tuning ended."""
        from mpi4py import MPI

        self.run(dog, trained)
        end = MPI.Wtime()
        spans += self.spans
        epoch_times += [t1 - t0 for t0, t1, *_ in self.epochs]
        curve += [(t1 - begin, *figures) for _, t1, *figures in self.epochs]
        for layer, params in self.weights().items():
            trained[layer] = {**trained.get(layer, {}), **params}
        return end

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """The fine-tuned network (this rank's copy: every rank holds the same)."""
        return {n: {key: np.array(self.k.to_host(v)) for key, v in layer.params.items()}
                for n, layer in self.runner.layers.items() if layer.params}

    def report(self) -> dict[str, Any]:
        """The entry's ``pretraining.fine_tuning`` block; the test errors (before: the
        pre-trained network under the untrained classifier) are measured on rank 0 only."""
        rank0 = self.comm.Get_rank() == 0
        eps = self.epochs
        return {"epochs": len(eps), "steps_per_epoch": len(self.steps) // max(1, len(eps)),
                "loss": [e[2] for e in eps], "train_accuracy": [e[3] for e in eps],
                "time_s": eps[-1][1] - eps[0][0] if eps else 0.0,
                "test_samples": len(self.test[1]),
                "test_error_before": self.error(self.start) if rank0 else None,
                "test_error": self.error(self.weights()) if rank0 else None}

    def error(self, weights: dict[str, dict[str, np.ndarray]]) -> float:
        """The share of the test set the network with ``weights`` misclassifies (forward
        through every layer; the softmax layer's input is the logits)."""
        x, y = self.test
        h = self.k.to_device(x)
        for name in self.runner.order:
            layer = Layer(name, self.runner.graph.nodes[name],
                          params={key: self.k.to_device(v)
                                  for key, v in weights.get(name, {}).items()})
            h, _ = self.runner.fwd.forward(layer, h)
        return float(np.mean(np.asarray(self.k.to_host(h)).argmax(axis=1) != y))


def fine_tune(comm: Any, plan: Plan, graph: Any, scenario: Any, data: Any, backend: Any,
              dog: Any, start: dict[str, dict[str, Any]]) -> FineTuner:
    """Set up, run and measure the plan's fine-tuning from ``start`` in one call."""
    tuner = FineTuner(comm, plan, graph, scenario, data, backend)
    tuner.run(dog, start)
    return tuner


def _warm_up(runner: RankRunner, x: np.ndarray, y: np.ndarray) -> None:
    """Compile the kernels (Numba JIT) on copies of the layers before anything is timed."""
    k, fwd = runner.k, Forward(runner.k)
    layers = [Layer(n, runner.graph.nodes[n],
                    params={key: k.to_device(np.array(k.to_host(v)))
                            for key, v in runner.layers[n].params.items()})
              for n in runner.order]
    h, saved = k.to_device(x), []
    for layer in layers:
        h, s = fwd.forward(layer, h)
        saved.append((s, h))
    _, _, dy = fwd.loss(h, k.to_device(y), len(y))
    for layer, (s, out) in zip(reversed(layers), reversed(saved)):
        dy = fwd.backward(layer, dy, s, out)
    for layer in layers:
        for key, g in layer.grads.items():
            k.sgd_momentum(layer.params[key], g, k.zeros(g.shape), 0.0, 0.0)
    k.synchronize()


def summary(entry: dict[str, Any]) -> str:
    """One line of an entry's fine-tuning: per epoch loss and training accuracy, test errors."""
    ft = entry["pretraining"]["fine_tuning"]
    return (f"{entry['strategy']}: fine-tuned {ft['epochs']} epochs in {ft['time_s']:.3f} s, "
            "loss " + " ".join(f"{x:.3f}" for x in ft["loss"]) + ", train accuracy "
            + " ".join(f"{x:.3f}" for x in ft["train_accuracy"])
            + f"; test error {ft['test_error_before']:.3f} before, {ft['test_error']:.3f} "
            f"after ({ft['test_samples']} held-out samples)")

"""Rank r runs rank r's program of the Plan, for real: kernels on a backend, tensors over MPI.

The plan's streams become threads: the ``comm`` stream (collectives) runs in its own thread
beside the main thread (compute, and the non-blocking point-to-point ops), each op after its
dependencies, so gradient buckets really are all-reduced while backward goes on (kernels release
the GIL: NumPy's BLAS, Numba ``nogil``, mpi4py's MPI calls; MPI runs with THREAD_MULTIPLE).
``Send``/``Recv`` are posted where the program has them and waited for when a later op needs the
tensor; collectives run the algorithm the plan names on the group's communicator. What each op
moves comes from the plan's tensor names (``act:L``, ``dout:L``, ``din:L``, ``wgrad:...``, see
``simulator/plan.py``).

Every op is timed with ``MPI.Wtime`` into one of the simulator's breakdown phases. What a
layer computes and reads is ``layer_ops``, what crosses between ranks ``exchange``, ZeRO's
sharded state ``zero``, the parameter-server client ``ps_client``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from mpi4py import MPI

from executor.interpreter.forward import Forward
from executor.interpreter.layer_ops import LayerOps
from executor.interpreter.model import ExecutorError, Layer, chunk, init_weights, shard_params
from executor.interpreter.zero import ZeroState
from executor.mpi import collectives as xcomm
from executor.mpi.exchange import TensorExchange
from executor.mpi.faults import slowdown
from executor.mpi.groups import group_communicators
from executor.ps.client import ParameterServerClient
from executor.ps.server import (
    flat_layout,
    push_pull_layout,
)
from simulator.plan import (
    COMM,
    COMPUTE,
    Barrier,
    Collective,
    Compute,
    Op,
    Plan,
    PSPull,
    PSPush,
    RankProgram,
    Recv,
    Send,
    Update,
    WorkLoop,
)

Span = tuple[str, str, float, float]  # (stream, name, start, end) in MPI.Wtime seconds


@dataclass
class Timings:
    spans: list[Span] = field(default_factory=list)
    phase: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class RankRunner(LayerOps, TensorExchange, ParameterServerClient, ZeroState):
    def __init__(self, comm: MPI.Comm, plan: Plan, graph: nx.DiGraph, backend: Any,
                 seed: int, learning_rate: float, momentum: float):
        self.comm, self.plan, self.graph, self.k = comm, plan, graph, backend
        self.rank = comm.Get_rank()
        self.prog: RankProgram = plan.ranks[self.rank]
        self.fwd = Forward(backend)
        self.lr, self.momentum = learning_rate, momentum
        self.order = sorted(graph.nodes, key=lambda n: graph.nodes[n]["order"])
        self.states: dict[str, str] = plan.options.get("states", {}) or {}
        self.seq = set(plan.options.get("sequence_split", ()) or ())
        self.shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self.layers = self._my_layers(seed)
        self.groups = group_communicators(comm, plan)
        self.step_samples = plan.samples_per_period // plan.period_steps
        # model averaging (data parallel with local_steps > 1): each replica steps on its own
        # batch's mean gradient (the loss is normalised by the global step's samples: the rate
        # is scaled by the replicas), and the exchange averages the parameters
        self.replicas = len(plan.workers())
        self.averaging = (plan.scheme == "data_parallel" and self.replicas > 1
                          and (plan.options.get("local_steps") or 1) > 1
                          and plan.options.get("exchange") != "ps")
        # predictions per sample: one class, or one next token per position of a sequence
        head = self.graph.nodes[self.order[-1]]["out_shape"]
        self.per_sample = int(np.prod(head[:-1])) if len(head) == 2 else 1
        # forwards run again before backward (recomputation): what their layers keep for
        # backward is dropped after the first forward (``_drop``)
        self.redo = {(op.layer, op.micro_batch) for op in self._ops()
                     if isinstance(op, Compute) and op.recompute}
        self._fwd_done: set[tuple[str, int]] = set()
        self.store: dict[tuple[str, str, int], Any] = {}
        self.pending: dict[tuple[str, str, int], Any] = {}
        self.sends: list[Any] = []
        self.timings = Timings()
        self.slowdown = slowdown(self.rank)
        self.ps_ranks = [r.rank for r in plan.ranks if r.role == "server"]
        if self.ps_ranks:
            flat, self.layout = flat_layout(graph, self.order, seed)
            self.ps_chunks = push_pull_layout(flat.size, len(self.ps_ranks))
            self._pulled = np.empty_like(flat)
            self.versions = [0] * len(self.ps_ranks)
            # kept across periods: no fresh pages to fault in on every exchange
            self._push_buf = np.empty(flat.size + len(self.ps_ranks), np.float32)
            self._pull_bufs = [np.empty(hi - lo + 1, np.float32) for lo, hi in self.ps_chunks]
        self._pulled_shards: set[int] = set()
        self._pushed: set[int] = set()
        self._push_packed = False
        self._flat_bufs: dict[int, np.ndarray] = {}
        # only a GPU backend has copies worth timing (the CPU's "device" is host memory)
        self.copies_cost = getattr(backend, "name", "") == "cuda"
        self._zero_setup()

    # ---- set-up ---------------------------------------------------------------------------
    def _my_layers(self, seed: int) -> dict[str, Layer]:
        whole = init_weights(self.graph, self.order, seed)
        layers: dict[str, Layer] = {}
        for op in self._ops():
            if isinstance(op, Compute) and op.layer not in layers:
                state = self.states.get(op.layer, "rep")
                if op.shards > 1 and state == "rep" and op.layer not in self.seq:
                    raise ExecutorError(f"layer {op.layer!r} is split over {op.shards} devices "
                                        "but the plan gives no split state")
                layer = Layer(op.layer, self.graph.nodes[op.layer], state, op.shard, op.shards)
                layer.params = {k: self.k.to_device(v) for k, v in
                                shard_params(layer, whole.get(op.layer, {})).items()}
                layers[op.layer] = layer
        for layer in layers.values():  # an output layer tied to an embedding elsewhere
            owner = layer.node.get("tied_to")
            if owner and owner not in layers:
                # its copy of the token table: the rows of its vocabulary slice
                table = whole[owner]["w"]
                lo, hi = (chunk(table.shape[0], layer.shards, layer.shard) if layer.split
                          else (0, table.shape[0]))
                layer.params = {"w": self.k.to_device(table[lo:hi].copy())}
        for name, layer in layers.items():
            layer.velocity = {k: self.k.zeros(v.shape) for k, v in layer.params.items()}
            self.shapes[name] = {k: tuple(v.shape) for k, v in layer.params.items()}
        return layers

    def _ops(self) -> list[Op]:
        return [o for op in self.prog.ops for o in (getattr(op, "body", None) or (op,))]

    def whole_weights(self) -> dict[str, dict[str, np.ndarray]] | None:
        """Every layer's whole parameters, put together from all ranks' shards, on rank 0
        (None elsewhere): to compare partitioned and unpartitioned training, or to keep."""
        self._zero_materialise()
        # a tied output layer's copy is the embedding's table: not a weight of its own
        mine = [(n, layer.state, layer.shard, layer.shards,
                 {k: np.asarray(self.k.to_host(v)) for k, v in layer.params.items()})
                for n, layer in self.layers.items()
                if layer.params and not layer.node.get("tied_to")]
        parts = self.comm.gather(mine, root=0)
        if parts is None:
            return None
        by_layer: dict[str, dict[int, tuple[str, dict]]] = defaultdict(dict)
        for rank_parts in parts:
            for name, state, shard, _, params in rank_parts:
                by_layer[name].setdefault(shard, (state, params))
        out = {}
        for name, shards in by_layer.items():
            state, first = shards[0]
            if state in ("rep",) or len(shards) == 1:
                out[name] = first
                continue
            ordered = [shards[s][1] for s in sorted(shards)]
            kind = self.graph.nodes[name]["kind"]
            axis = 0 if kind == "conv" or state == "row" else 1
            out[name] = {"w": np.concatenate([p["w"] for p in ordered], axis=axis)}
            if state == "row":
                out[name]["b"] = first["b"]
            else:
                out[name]["b"] = np.concatenate([p["b"] for p in ordered])
        return out

    # ---- one period ------------------------------------------------------------------------
    def run_period(self, x: np.ndarray | None, y: np.ndarray | None) -> tuple[Timings, dict]:
        """Run the program once on this period's inputs and labels (the rank's own samples)."""
        self.store.clear()
        self._fwd_done.clear()
        self.inputs = None if x is None else self.k.to_device(x)
        self.labels = None if y is None else self.k.to_device(y)
        self.loss_sum, self.correct, self.counted = 0.0, 0, 0
        if self.plan.mode != "async":  # Downpour accumulates gradients across pushes
            for layer in self.layers.values():
                layer.grads.clear()
            self._push_packed = False
        t = self.timings = Timings()
        # collectives run in the comm thread; parameter-server exchanges (a blocking request
        # and reply with the server) stay on the main thread
        threaded = [op for op in self.prog.ops
                    if op.stream == COMM and not isinstance(op, (PSPush, PSPull))]
        comm_ops = threaded
        main_ops = [op for op in self.prog.ops if op not in threaded]
        done = {op.id: threading.Event() for op in self.prog.ops}
        failure: list[BaseException] = []
        worker = None
        if comm_ops:  # the comm stream runs beside compute, as the plan's streams say
            worker = threading.Thread(target=self._stream, args=(comm_ops, done, t, failure),
                                      name=f"rank{self.rank}-comm", daemon=True)
            worker.start()
        self._stream(main_ops, done, t, failure)
        if worker is not None:
            worker.join()
        if failure:
            raise failure[0]
        for req in self.sends:
            xcomm.wait(req)
        self.sends.clear()
        stats = {"loss_sum": self.loss_sum, "correct": self.correct, "counted": self.counted}
        return t, stats

    def _stream(self, ops: list[Op], done: dict[int, threading.Event], t: Timings,
                failure: list[BaseException]) -> None:
        """Run one stream's ops in order, each after its dependencies (on any stream)."""
        try:
            for op in ops:
                for dep in op.deps:
                    while not done[dep].wait(0.5):
                        if failure:
                            return
                if isinstance(op, Compute) and self.pending:
                    self._await_inputs(op)  # waiting for a peer is idle, not compute
                start = MPI.Wtime()
                phase = self._run(op)
                self.k.synchronize()
                end = MPI.Wtime()
                t.phase[phase] += end - start
                stream = (COMPUTE if phase == "compute" else
                          "ps" if isinstance(op, (PSPush, PSPull)) else COMM)
                t.spans.append((stream, _name(op), start, end))
                if self.free_after:
                    self._after_op(op.id)
                done[op.id].set()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, re-raised there
            failure.append(e)
            for ev in done.values():
                ev.set()

    def _run(self, op: Op) -> str:
        if isinstance(op, Compute):
            start = time.perf_counter()
            (self._forward if op.phase == "fwd" else self._backward)(op)
            if self.slowdown > 1.0:  # an injected straggler: the kernel takes that much longer
                time.sleep((self.slowdown - 1.0) * (time.perf_counter() - start))
            return "compute"
        if isinstance(op, WorkLoop):
            self._work_loop(op)
            return "compute"
        if isinstance(op, Barrier):
            xcomm.barrier(self.groups[op.group])
            return "communication"
        if isinstance(op, Update):
            self._zero_update() if self.zero else self._update()
            return "compute"
        if isinstance(op, Send):
            self._send(op)
            return "communication"
        if isinstance(op, Recv):
            self._post_recv(op)
            return "communication"
        if isinstance(op, Collective):
            self._collective(op)
            return "communication"
        if isinstance(op, PSPush):
            self._ps_push(op)
            return "communication"
        if isinstance(op, PSPull):
            self._ps_pull(op)
            return "communication"
        raise ExecutorError(f"the executor cannot run {op.kind!r} ops yet")

    def _update(self, names: list[str] | None = None) -> None:
        """The optimizer step of every layer (``names``: of those) that holds gradients."""
        lr = self.lr * self.replicas if self.averaging else self.lr
        for name, layer in self.layers.items():
            if names is not None and name not in names:
                continue
            for key, w in layer.params.items():
                g = layer.grads.get(key)
                if g is not None:
                    self.k.sgd_momentum(w, g, layer.velocity[key], lr, self.momentum)
            layer.grads.clear()

    # ---- host <-> device copies (GPU buffers go through host memory: MPI is not CUDA-aware) ----
    def _to_host(self, value: Any) -> np.ndarray:
        return self._timed_copy(self.k.to_host, value)

    def _to_device(self, value: Any) -> Any:
        return self._timed_copy(self.k.to_device, value)

    def _timed_copy(self, fn: Any, value: Any) -> Any:
        if not self.copies_cost:
            return fn(value)
        start = MPI.Wtime()
        out = fn(value)
        self.k.synchronize()
        self.timings.spans.append(("copy", "host-device copy", start, MPI.Wtime()))
        return out

def _name(op: Op) -> str:
    if isinstance(op, Compute):
        return f"{op.layer}.{op.phase}"
    return getattr(op, "tensor", "") or op.kind


__all__ = ["RankRunner", "ExecutorError", "chunk"]

"""Write the hand-made Kineto traces of this folder (see README.md): ``python make_traces.py``.

The trace is rank 0 of a LeNet-5 trained by PyTorch DistributedDataParallel on two V100s, as
``torch.profiler`` exports it (``prof.export_chrome_trace``); none of its times is measured.
Each layer's kernel times (``KERNELS_US`` below) are what ``python make_traces.py --model``
printed: per layer and phase, the time parasim's per-kernel GPU model gives the op on the
catalogue's V100 (``simulator/engine/gpu.py`` with the catalogue's fitted class curves, the
launch overhead set to this trace's ``GAP_US``), times a noise factor, lognormal of sigma
``NOISE_SIGMA`` from a generator seeded ``NOISE_SEED``, split among the op's kernels in the
proportions of the hand-chosen ``HAND_US``; the optimizer's update (which the model does not
time) keeps its hand-chosen times. They are frozen here so that the trace, like a measured
one, does not move when the catalogue's curves do; when the model's algorithms change, the
times are printed again and frozen anew (README.md says when). Each kernel then varies by up to 3%
per step from a seeded generator. The test ``tests/executor/test_trace_import.py`` reads what
each layer's kernels took in each step from here as the figures the import must reproduce.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = 64  # samples per GPU
STEPS = (3, 4, 5)  # ProfilerStep numbers (a schedule with wait=1, warmup=2, active=3)
GAP_US = 1.5  # the GPU's idle time between two kernels when the second was already launched
NOISE_SEED, NOISE_SIGMA = 1, 0.1  # the per-layer noise on the model's times (``--model``)
PID, MAIN, BWD = 2101, 2101, 2187  # the process, its main thread, the autograd engine's thread
COMPUTE, NCCL_STREAM = 7, 20

# the kernels' names, in the style of cuDNN's, cuBLAS's and PyTorch's
ATEN = "void at::native::"
CONV = "void implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, false, false, true>"
ADD = ATEN + "vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>"
TANH = ATEN + "vectorized_elementwise_kernel<4, at::native::tanh_kernel_cuda>"
TANH_BWD = ATEN + "vectorized_elementwise_kernel<4, at::native::tanh_backward_kernel_cuda>"
POOL = ATEN + "avg_pool2d_out_cuda_frame<float, float>"
POOL_BWD = ATEN + "avg_pool2d_backward_out_cuda_frame<float, float>"
GEMM = "volta_sgemm_32x32_sliced1x4_tn"
SUM = ATEN + "reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t>>"
DGRAD = "void cudnn::detail::dgrad_engine<float, 128, 6, 7, 3, 3, 5, false>"
WGRAD = "void cudnn::detail::wgrad_alg0_engine<float, 128, 6, 8, 3, 3, 5, false, 512>"
SOFTMAX = "void at::native::cunn_SoftMaxForward<4, float, float, float>"
SOFTMAX_BWD = "void at::native::cunn_SoftMaxBackward<4, float, float, float>"
NLL = "void at::native::nll_loss_forward_reduce_cuda_kernel_2d<float>"
NLL_BWD = "void at::native::nll_loss_backward_reduce_cuda_kernel_2d<float>"
FILL = "void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>"
FOREACH = "void at::native::multi_tensor_apply_kernel<TensorListMetadata<2>>"
# per model layer and phase, the kernels its operators launch (kernel name, microseconds),
# chosen by hand: the update's times, and each op's split among its kernels (``--model``)
HAND_US = {
    ("c1", "fwd"): [(CONV, 14.2), (ADD, 2.6)],
    ("c1.tanh", "fwd"): [(TANH, 3.1)],
    ("s2", "fwd"): [(POOL, 3.4)],
    ("c3", "fwd"): [(CONV, 17.8), (ADD, 2.4)],
    ("c3.tanh", "fwd"): [(TANH, 2.6)],
    ("s4", "fwd"): [(POOL, 2.7)],
    ("c5", "fwd"): [(CONV, 12.5), (ADD, 2.2)],
    ("c5.tanh", "fwd"): [(TANH, 2.3)],
    ("f6", "fwd"): [(GEMM, 6.1)],
    ("f6.tanh", "fwd"): [(TANH, 2.2)],
    ("output", "fwd"): [(GEMM, 5.4)],
    ("softmax", "fwd"): [(SOFTMAX, 2.9), (NLL, 3.3)],
    ("softmax", "bwd"): [(FILL, 2.1), (NLL_BWD, 2.8), (SOFTMAX_BWD, 2.7)],
    ("output", "bwd"): [(GEMM, 5.2), (GEMM, 5.6), (SUM, 3.9)],
    ("f6.tanh", "bwd"): [(TANH_BWD, 2.4)],
    ("f6", "bwd"): [(GEMM, 5.8), (GEMM, 6.3), (SUM, 3.8)],
    ("c5.tanh", "bwd"): [(TANH_BWD, 2.4)],
    ("c5", "bwd"): [(DGRAD, 14.6), (WGRAD, 18.9), (SUM, 4.1)],
    ("s4", "bwd"): [(POOL_BWD, 3.0)],
    ("c3.tanh", "bwd"): [(TANH_BWD, 2.6)],
    ("c3", "bwd"): [(DGRAD, 21.3), (WGRAD, 24.7), (SUM, 4.4)],
    ("s2", "bwd"): [(POOL_BWD, 4.2)],
    ("c1.tanh", "bwd"): [(TANH_BWD, 3.4)],
    ("c1", "bwd"): [(WGRAD, 19.6), (SUM, 4.8)],  # no input gradient: the data need none
    ("update", ""): [(FOREACH, 4.5), (FOREACH, 5.0), (FOREACH, 5.2)],
}
# per model layer and phase, its kernels' times: what ``python make_traces.py --model`` printed
KERNELS_US = {
    ("c1", "fwd"): [(CONV, 12.36), (ADD, 2.26)],
    ("c1.tanh", "fwd"): [(TANH, 4.47)],
    ("s2", "fwd"): [(POOL, 3.6)],
    ("c3", "fwd"): [(CONV, 10.81), (ADD, 1.46)],
    ("c3.tanh", "fwd"): [(TANH, 2.48)],
    ("s4", "fwd"): [(POOL, 2.21)],
    ("c5", "fwd"): [(CONV, 10.29), (ADD, 1.81)],
    ("c5.tanh", "fwd"): [(TANH, 1.57)],
    ("f6", "fwd"): [(GEMM, 6.33)],
    ("f6.tanh", "fwd"): [(TANH, 1.55)],
    ("output", "fwd"): [(GEMM, 5.78)],
    ("softmax", "fwd"): [(SOFTMAX, 0.7), (NLL, 0.8)],
    ("softmax", "bwd"): [(FILL, 0.42), (NLL_BWD, 0.56), (SOFTMAX_BWD, 0.54)],
    ("output", "bwd"): [(GEMM, 2.46), (GEMM, 2.65), (SUM, 1.84)],
    ("f6.tanh", "bwd"): [(TANH_BWD, 1.59)],
    ("f6", "bwd"): [(GEMM, 3.51), (GEMM, 3.81), (SUM, 2.3)],
    ("c5.tanh", "bwd"): [(TANH_BWD, 1.6)],
    ("c5", "bwd"): [(DGRAD, 3.52), (WGRAD, 4.56), (SUM, 0.99)],
    ("s4", "bwd"): [(POOL_BWD, 2.64)],
    ("c3.tanh", "bwd"): [(TANH_BWD, 3.16)],
    ("c3", "bwd"): [(DGRAD, 9.07), (WGRAD, 10.52), (SUM, 1.87)],
    ("s2", "bwd"): [(POOL_BWD, 5.64)],
    ("c1.tanh", "bwd"): [(TANH_BWD, 5.79)],
    ("c1", "bwd"): [(WGRAD, 16.18), (SUM, 3.96)],
    ("update", ""): [(FOREACH, 4.5), (FOREACH, 5.0), (FOREACH, 5.2)],
}


def model_kernels_us() -> dict[tuple[str, str], list[tuple[str, float]]]:
    """``KERNELS_US`` from parasim's per-kernel model of the catalogue V100 (the module's
    docstring says how)."""
    root = HERE.parents[2]
    sys.path.insert(0, str(root))
    from dataclasses import replace

    from simulator.catalogue import devices
    from simulator.engine import gpu
    from simulator.engine.hardware import efficiency_at
    from simulator.plan import Compute
    from simulator.predict import plans
    from simulator.scenario import load_scenario
    from simulator.units import BYTES_PER_ELEMENT

    scenario = load_scenario(root / "scenarios" / "lenet5_traced_v100.yaml")
    precision = scenario.training.precision
    (plan,) = plans(scenario, ["ddp-2gpu"])
    ops = {(op.layer, op.phase): op for op in plan.ranks[0].ops if isinstance(op, Compute)}
    spec = replace(devices()["V100"], launch_overhead=GAP_US * 1e-6)
    rng = random.Random(NOISE_SEED)
    out = {}
    for key, kernels in HAND_US.items():
        noise = rng.lognormvariate(0.0, NOISE_SIGMA)
        op = ops.get(key)
        if op is None:  # the update: not a Compute op the model times
            out[key] = list(kernels)
            continue
        assert op.samples == BATCH, (key, op.samples)
        geo = gpu.parse_shape(op.shape)
        # the class curve's efficiency where the catalogue has one, else the device's
        curve = spec.kernels.get(f"{precision}:{op.layer_kind}.{op.phase}#"
                                 f"{gpu.shape_class(op.layer_kind, geo)}")
        e = efficiency_at(curve, op.flops) if curve else spec.compute_efficiency
        model = gpu.Model(spec, spec.peak_flops[precision], BYTES_PER_ELEMENT[precision], None, e)
        choice = model.choose(op.layer_kind, op.phase, geo, op.samples, op.input_grad, op.bias)
        # the noise is on the kernels' work, not on the launch overhead per kernel the model
        # counts (the trace's gaps, which the import measures): a kernel too small to take
        # longer than its launch stays at that floor
        floor = spec.launch_overhead * choice.kernels
        us = (floor + (choice.seconds - floor) * noise) * 1e6
        total = sum(t for _, t in kernels)
        out[key] = [(kernel, round(us * t / total, 2)) for kernel, t in kernels]
    return out


def print_table(table: dict[tuple[str, str], list[tuple[str, float]]]) -> None:
    """The table as this file spells it (kernel names by their constants)."""
    names = {v: k for k, v in globals().items() if k.isupper() and isinstance(v, str)}
    print("KERNELS_US = {")
    for key, kernels in table.items():
        ks = ", ".join(f"({names.get(n, json.dumps(n))}, {us})" for n, us in kernels)
        print(f"    {key!r}: [{ks}],".replace("'", '"'))
    print("}")


# DDP's two gradient buckets (bucket_cap_mb=0.05): output, f6, c5; then c3, c1 (float32)
BUCKETS = [(59134, 38.0), (2572, 14.0)]  # (elements, microseconds)
NCCL = "ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)"
CONV_GEOMETRY = {"c1": ([BATCH, 1, 32, 32], [6, 1, 5, 5]),
                 "c3": ([BATCH, 6, 14, 14], [16, 6, 5, 5]),
                 "c5": ([BATCH, 16, 5, 5], [120, 16, 5, 5])}
TANH_IN = {"c1.tanh": [BATCH, 6, 28, 28], "c3.tanh": [BATCH, 16, 10, 10],
           "c5.tanh": [BATCH, 120, 1, 1], "f6.tanh": [BATCH, 84]}
POOL_IN = {"s2": [BATCH, 6, 28, 28], "s4": [BATCH, 16, 10, 10]}
DENSE = {"f6": (120, 84), "output": (84, 10)}


class Writer:
    """Events in the order and form Kineto writes them; CPU threads and GPU streams keep their
    own clocks (microseconds)."""

    def __init__(self, seed: int = 5):
        self.rng = random.Random(seed)
        self.events: list[dict] = []
        self.ids = iter(range(1000, 10**6))
        self.corr = iter(range(50000, 10**6))
        self.clock = {MAIN: 0.0, BWD: 0.0}
        self.free = {COMPUTE: 0.0, NCCL_STREAM: 0.0}
        self.seq = 700
        # what the kernels of each (layer, phase) took in each step: the figures an import
        # of the trace must find (``label`` and ``step`` say where a kernel belongs)
        self.truth: dict[tuple[str, str], dict[int, float]] = {}
        self.label: tuple[str, str] | None = None
        self.step = 0

    def op(self, name: str, tid: int, start: float, end: float, cat: str = "cpu_op",
           **args) -> int:
        ext = next(self.ids)
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": PID, "tid": tid,
                            "ts": round(start, 3), "dur": round(end - start, 3),
                            "args": {"External id": ext, "Record function id": 0, **args}})
        return ext

    def kernel(self, name: str, us: float, ext: int, tid: int, stream: int = COMPUTE,
               extra: dict | None = None) -> None:
        """A launch on ``tid`` now and the kernel it starts on ``stream``."""
        launch = self.clock[tid] + 2.0
        corr = next(self.corr)
        self.events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel",
                            "pid": PID, "tid": tid, "ts": round(launch, 3), "dur": 4.5,
                            "args": {"External id": ext, "cbid": 211, "correlation": corr}})
        ready = launch + 4.5 + 1.0
        start = max(ready, self.free[stream] + GAP_US * self.rng.uniform(0.95, 1.05))
        dur = round(us * self.rng.uniform(0.97, 1.03), 3)
        self.free[stream] = start + dur
        if self.label is not None:
            per_step = self.truth.setdefault(self.label, {})
            per_step[self.step] = per_step.get(self.step, 0.0) + dur
        grid = [max(1, int(us * 12)), 1, 1]
        self.events.append({"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream,
                            "ts": round(start, 3), "dur": dur,
                            "args": {"External id": ext, "queued": 0, "device": 0, "context": 1,
                                     "stream": stream, "correlation": corr,
                                     "registers per thread": 32, "shared memory": 0,
                                     "blocks per SM": round(grid[0] / 80, 6),
                                     "warps per SM": round(grid[0] / 10, 6), "grid": grid,
                                     "block": [256, 1, 1], "est. achieved occupancy %": 50,
                                     **(extra or {})}})
        self.events.append({"ph": "s", "id": corr, "pid": PID, "tid": tid,
                            "ts": round(launch, 3), "cat": "ac2g", "name": "ac2g"})
        self.events.append({"ph": "f", "id": corr, "pid": 0, "tid": stream,
                            "ts": round(start, 3), "cat": "ac2g", "name": "ac2g", "bp": "e"})
        self.clock[tid] = launch + 4.5

    def call(self, tid: int, name: str, args: dict | None = None,
             kernels: list[tuple[str, float]] = (), children: list[tuple] = (),
             cpu_us: float = 4.0, cat: str = "cpu_op") -> int:
        """An operator on ``tid`` from its clock on: it launches ``kernels``, then calls
        ``children`` (each the arguments of another ``call``); returns its External id."""
        start = self.clock[tid]
        ext = next(self.ids)
        self.clock[tid] += 1.0
        for kname, us in kernels:
            self.kernel(kname, us, ext, tid)
        for child in children:
            self.call(tid, *child)
        self.clock[tid] += cpu_us
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": PID, "tid": tid,
                            "ts": round(start, 3), "dur": round(self.clock[tid] - start, 3),
                            "args": {"External id": ext, "Record function id": 0,
                                     **(args or {})}})
        self.clock[tid] += 1.0
        return ext


def dims(*shapes: list) -> dict:
    return {"Input Dims": list(shapes), "Input type": ["float" if s else "" for s in shapes]}


def forward(w: Writer, seqs: dict[str, int]) -> None:
    def seq(key: str) -> dict:
        w.seq += 1
        seqs[key] = w.seq
        return {"Sequence number": w.seq, "Fwd thread id": 0}

    for layer in ("c1", "c1.tanh", "s2", "c3", "c3.tanh", "s4", "c5", "c5.tanh", "flatten",
                  "f6", "f6.tanh", "output", "softmax"):
        k = KERNELS_US.get((layer, "fwd"), [])
        w.label = (layer, "fwd")
        if layer in CONV_GEOMETRY:  # the bias is added inside _convolution, after cuDNN's
            x, wt = CONV_GEOMETRY[layer]
            conv = ["", "", "", "[1, 1]", "[0, 0]", "[1, 1]", "False", "[0, 0]", "1"]
            w.call(MAIN, "aten::conv2d", {**dims(x, wt, [wt[0]], [], [], [], []),
                                          "Concrete Inputs": conv[:6] + ["1"]}, children=[
                ("aten::convolution", {**dims(x, wt, [wt[0]], [], [], [], [], [], []),
                                       **seq(layer), "Concrete Inputs": conv}, (), [
                    ("aten::_convolution", dims(x, wt, [wt[0]], [], [], [], [], [], []), (), [
                        ("aten::cudnn_convolution", dims(x, wt), k[:1]),
                        ("aten::add_", dims([BATCH, wt[0]] + x[2:], [1, wt[0], 1, 1]),
                         k[1:])])])])
        elif layer in TANH_IN:
            w.call(MAIN, "aten::tanh", {**dims(TANH_IN[layer]), **seq(layer)}, k)
        elif layer in POOL_IN:
            w.call(MAIN, "aten::avg_pool2d",
                   {**dims(POOL_IN[layer], [], [], [], [], [], []), **seq(layer),
                    "Concrete Inputs": ["", "[2, 2]", "[2, 2]", "[0, 0]", "False", "True",
                                        ""]}, k)
        elif layer == "flatten":
            w.call(MAIN, "aten::flatten", dims([BATCH, 120, 1, 1], [], []), children=[
                ("aten::view", {**dims([BATCH, 120, 1, 1], []), **seq(layer)})])
        elif layer in DENSE:
            i, o = DENSE[layer]
            w.call(MAIN, "aten::linear", dims([BATCH, i], [o, i], [o]), children=[
                ("aten::t", dims([o, i])),
                ("aten::addmm", {**dims([o], [BATCH, i], [i, o], [], []), **seq(layer),
                                 "Concrete Inputs": ["", "", "", "1", "1"]}, k)])
        else:  # the loss: log-softmax, then the negative log-likelihood
            logits, labels = [BATCH, 10], [BATCH]
            w.call(MAIN, "aten::cross_entropy_loss", dims(logits, labels, [], [], [], []),
                   children=[
                ("aten::log_softmax", dims(logits, [], []), (), [
                    ("aten::_log_softmax", {**dims(logits, [], []), **seq("log_softmax")},
                     k[:1])]),
                ("aten::nll_loss_nd", dims(logits, labels, [], [], []), (), [
                    ("aten::nll_loss", dims(logits, labels, [], [], []), (), [
                        ("aten::nll_loss_forward",
                         {**dims(logits, labels, [], [], []), **seq("nll")}, k[1:])])])])


BACKWARD = [  # (autograd node, layer, its forward's sequence key, inner ops and their kernels)
    ("NllLossBackward0", "softmax", "nll", [("aten::nll_loss_backward", 2)]),
    ("LogSoftmaxBackward0", "softmax", "log_softmax",
     [("aten::_log_softmax_backward_data", 1)]),
    ("AddmmBackward0", "output", "output", [("aten::mm", 1), ("aten::mm", 1), ("aten::sum", 1)]),
    ("TanhBackward0", "f6.tanh", "f6.tanh", [("aten::tanh_backward", 1)]),
    ("AddmmBackward0", "f6", "f6", [("aten::mm", 1), ("aten::mm", 1), ("aten::sum", 1)]),
    ("ViewBackward0", "flatten", "flatten", [("aten::reshape", 0)]),
    ("TanhBackward0", "c5.tanh", "c5.tanh", [("aten::tanh_backward", 1)]),
    ("ConvolutionBackward0", "c5", "c5", [("aten::convolution_backward", 3)]),
    ("AvgPool2DBackward0", "s4", "s4", [("aten::avg_pool2d_backward", 1)]),
    ("TanhBackward0", "c3.tanh", "c3.tanh", [("aten::tanh_backward", 1)]),
    ("ConvolutionBackward0", "c3", "c3", [("aten::convolution_backward", 3)]),
    ("AvgPool2DBackward0", "s2", "s2", [("aten::avg_pool2d_backward", 1)]),
    ("TanhBackward0", "c1.tanh", "c1.tanh", [("aten::tanh_backward", 1)]),
    ("ConvolutionBackward0", "c1", "c1", [("aten::convolution_backward", 2)]),
]


def backward(w: Writer, seqs: dict[str, int]) -> None:
    w.clock[BWD] = max(w.clock[BWD], w.clock[MAIN] + 3.0)
    used: dict[str, int] = {}
    for node, layer, key, inner in BACKWARD:
        kernels = KERNELS_US.get((layer, "bwd"), [])[used.get(layer, 0):]
        used[layer] = used.get(layer, 0) + sum(n for _, n in inner)
        children, at = [], 0
        for name, n in inner:
            children.append((name, {}, kernels[at:at + n]))
            at += n
        tag = {"Sequence number": seqs[key], "Fwd thread id": 1}
        w.label = (layer, "bwd")
        w.call(BWD, f"autograd::engine::evaluate_function: {node}", tag,
               children=[(node, tag, (), children)])
        if layer in ("output", "f6", "c5", "c3", "c1"):  # weight and bias gradients, kept
            for _ in range(2):
                w.call(BWD, "autograd::engine::evaluate_function: "
                       "torch::autograd::AccumulateGrad", {},
                       children=[("torch::autograd::AccumulateGrad", {}, (),
                                  [("aten::detach", {})])], cpu_us=2.0)
        w.label = None
        if layer in ("c5", "c1"):  # a bucket is ready: DDP's hook all-reduces it
            nelems, us = BUCKETS[0 if layer == "c5" else 1]
            meta = {"Collective name": "allreduce", "In msg nelems": nelems,
                    "Out msg nelems": nelems, "Group size": 2, "dtype": "Float"}
            w.free[NCCL_STREAM] = max(w.free[NCCL_STREAM], w.free[COMPUTE])
            start, ext = w.clock[BWD], next(w.ids)
            w.clock[BWD] += 1.0
            w.kernel(NCCL, us, ext, BWD, NCCL_STREAM, meta)
            w.clock[BWD] += 6.0
            w.events.append({"ph": "X", "cat": "cpu_op", "name": "record_param_comms",
                             "pid": PID, "tid": BWD, "ts": round(start, 3),
                             "dur": round(w.clock[BWD] - start, 3),
                             "args": {"External id": ext, "Record function id": 0,
                                      "Process Group Name": "0",
                                      "Process Group Description": "default_pg", **meta}})
            w.clock[BWD] += 1.0


def step(w: Writer, n: int) -> None:
    start = w.clock[MAIN]
    w.clock[MAIN] += 2.0
    w.call(MAIN, "Optimizer.zero_grad#SGD.zero_grad", cat="user_annotation")
    for what, nbytes in (("images", BATCH * 32 * 32 * 4), ("labels", BATCH * 8)):
        t = w.clock[MAIN]
        corr, ext = next(w.corr), next(w.ids)
        w.events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaMemcpyAsync",
                         "pid": PID, "tid": MAIN, "ts": round(t + 2.0, 3), "dur": 8.0,
                         "args": {"External id": ext, "cbid": 41, "correlation": corr}})
        g = max(t + 10.5, w.free[COMPUTE] + GAP_US)
        dur = round(nbytes / 11.0e3, 3)  # 11 GB/s from pageable memory
        w.events.append({"ph": "X", "cat": "gpu_memcpy",
                         "name": "Memcpy HtoD (Pageable -> Device)", "pid": 0, "tid": COMPUTE,
                         "ts": round(g, 3), "dur": dur,
                         "args": {"External id": ext, "device": 0, "context": 1,
                                  "stream": COMPUTE, "correlation": corr, "bytes": nbytes,
                                  "memory bandwidth (GB/s)": round(nbytes / dur / 1e3, 3)}})
        w.events.append({"ph": "X", "cat": "cpu_op", "name": "aten::copy_", "pid": PID,
                         "tid": MAIN, "ts": round(t, 3), "dur": 12.0,
                         "args": {"External id": ext, "Record function id": 0,
                                  **dims([BATCH] if what == "labels" else [BATCH, 1, 32, 32],
                                         [BATCH] if what == "labels" else [BATCH, 1, 32, 32],
                                         [])}})
        w.free[COMPUTE] = g + dur
        w.clock[MAIN] = t + 13.0
    seqs: dict[str, int] = {}
    fwd_start = w.clock[MAIN]
    w.clock[MAIN] += 1.0
    forward(w, seqs)
    w.op("DistributedDataParallel.forward", MAIN, fwd_start, w.clock[MAIN],
         cat="user_annotation")
    w.clock[MAIN] += 2.0
    backward(w, seqs)
    w.clock[MAIN] = max(w.clock[MAIN], w.clock[BWD] + 2.0, w.free[NCCL_STREAM] + 3.0)
    w.label = ("update", "")
    w.call(MAIN, "Optimizer.step#SGD.step", cat="user_annotation", children=[
        (name, {}, [k]) for name, k in zip(("aten::_foreach_mul_", "aten::_foreach_add_",
                                            "aten::_foreach_add_"), KERNELS_US[("update", "")])])
    w.label = None
    w.clock[MAIN] = max(w.clock[MAIN] + 3.0, w.free[COMPUTE] + 2.0)
    w.op(f"ProfilerStep#{n}", MAIN, start, w.clock[MAIN], cat="user_annotation")
    w.clock[MAIN] += 20.0


def lenet5() -> tuple[dict, dict[tuple[str, str], list[float]]]:
    """The trace, and per (layer, phase) what its kernels took in each step (microseconds)."""
    w = Writer()
    w.clock[MAIN] = w.clock[BWD] = 1000.0
    for n in STEPS:
        w.step = n
        step(w, n)
    events = sorted(w.events, key=lambda e: (e["ts"], e.get("pid", 0) != PID))
    meta = [{"name": "process_name", "ph": "M", "ts": 0.0, "pid": PID, "tid": 0,
             "args": {"name": "python"}},
            {"name": "process_name", "ph": "M", "ts": 0.0, "pid": 0, "tid": 0,
             "args": {"name": "GPU 0"}},
            {"name": "thread_name", "ph": "M", "ts": 0.0, "pid": 0, "tid": COMPUTE,
             "args": {"name": f"stream {COMPUTE}"}},
            {"name": "thread_name", "ph": "M", "ts": 0.0, "pid": 0, "tid": NCCL_STREAM,
             "args": {"name": f"stream {NCCL_STREAM}"}}]
    truth = {key: [round(v, 3) for _, v in sorted(steps.items())]
             for key, steps in w.truth.items()}
    return {
        "schemaVersion": 1,
        "deviceProperties": [{"id": 0, "name": "Tesla V100-SXM2-16GB",
                              "totalGlobalMem": 16945512448, "computeMajor": 7,
                              "computeMinor": 0, "maxThreadsPerBlock": 1024,
                              "maxThreadsPerMultiprocessor": 2048, "regsPerBlock": 65536,
                              "warpSize": 32, "sharedMemPerBlock": 49152, "numSms": 80,
                              "regsPerMultiprocessor": 65536, "sharedMemPerBlockOptin": 98304,
                              "sharedMemPerMultiprocessor": 98304}],
        "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 2},
        "record_shapes": 1,
        "with_stack": 0,
        "cupti_version": 16,
        "cuda_runtime_version": 11070,
        "cuda_driver_version": 11070,
        "displayTimeUnit": "ms",
        "baseTimeNanoseconds": 1700000000000000000,
        "traceEvents": meta + events + [{"name": "Record Window End", "ph": "i", "s": "g",
                                         "pid": "", "tid": "", "ts": round(w.clock[MAIN], 3)}],
        "traceName": "lenet5_ddp2_v100.json",
    }, truth


def dump(trace: dict) -> str:
    """One event a line, as Kineto writes them (a trace of a few hundred events stays
    readable in a diff)."""
    head = {k: v for k, v in trace.items() if k != "traceEvents"}
    lines = ["{"] + [f'  "{k}": {json.dumps(v)},' for k, v in head.items()
                     if k != "traceName"]
    lines.append('  "traceEvents": [')
    lines.append(",\n".join("  " + json.dumps(e) for e in trace["traceEvents"]))
    lines.append("  ],")
    lines.append(f'  "traceName": {json.dumps(trace["traceName"])}')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--model"]:
        print_table(model_kernels_us())
    else:
        (HERE / "lenet5_ddp2_v100.json").write_text(dump(lenet5()[0]))

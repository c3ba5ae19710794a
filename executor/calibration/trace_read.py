"""Reading a framework's profile: the Chrome-trace JSON that PyTorch's ``torch.profiler``
(Kineto) exports with ``prof.export_chrome_trace(FILE)``, into operators, the GPU kernels each
launched, and training steps.

The format, as Kineto writes it (``libkineto/src/output_json.cpp``; HTA reads the same):

* a JSON object with ``traceEvents`` (a list of events), ``deviceProperties`` (one entry per
  GPU: ``name``, ``totalGlobalMem`` in bytes, ``numSms``, ``computeMajor``, ...), and metadata
  beside them (``schemaVersion``, ``distributedInfo``, ``cuda_runtime_version``, ...);
* complete events (``ph: "X"``) with ``ts`` and ``dur`` in microseconds; ``cat`` says what an
  event is: ``cpu_op`` (an ATen operator or autograd node on a CPU thread, ``pid``/``tid``
  the process and thread, ``args`` with ``External id``, and with ``record_shapes`` its
  ``Input Dims``, ``Input type`` and ``Concrete Inputs``; autograd-recorded ones also
  ``Sequence number`` and ``Fwd thread id``), ``user_annotation`` (``record_function``
  ranges: ``ProfilerStep#N``, ``Optimizer.step#SGD.step``, ``DistributedDataParallel.forward``),
  ``cuda_runtime`` (``cudaLaunchKernel``, ``args.correlation``), ``kernel`` (on the GPU:
  ``pid`` the device, ``tid`` the stream; ``args`` ``External id`` = the launching operator's,
  ``correlation`` = the launch's, ``device``, ``stream``, ``grid``, ``block``), ``gpu_memcpy``
  and ``gpu_memset``;
* a kernel launched inside ``record_param_comms`` (a ``torch.distributed`` collective) carries
  that operator's ``Collective name``, ``In msg nelems``, ``Out msg nelems``, ``Group size``
  and ``dtype`` in its own ``args`` (older traces only on the operator).

Operators nest by time on their thread (a child starts and ends inside its parent). A kernel
belongs to the operator whose External id it carries, else (a trace without it) to the
innermost operator around its launch, found through the launch's ``correlation``. Ignored:
instant, counter, flow and metadata events; memory events; CPU-only operators.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.errors import UserError

EPS_US = 1e-3  # Kineto writes times to the nanosecond


class TraceError(UserError):
    """A file that is not a usable Kineto trace: one line naming the file."""


@dataclass(eq=False)
class Op:
    """A CPU operator or annotation, with the ops it called and the kernels it launched."""

    name: str
    cat: str
    thread: tuple[Any, Any]
    ts: float
    dur: float
    args: dict[str, Any]
    parent: Op | None = None
    children: list[Op] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.ts + self.dur

    def subtree(self):  # noqa: ANN201 - a generator of Op
        yield self
        for c in self.children:
            yield from c.subtree()

    def all_kernels(self) -> list[Kernel]:
        return [k for op in self.subtree() for k in op.kernels]


@dataclass(eq=False)
class Kernel:
    name: str
    ts: float
    dur: float
    stream: Any
    device: Any
    args: dict[str, Any]
    launch_end: float | None = None  # when its launch returned on the CPU (None: unknown)
    op: Op | None = None

    @property
    def end(self) -> float:
        return self.ts + self.dur

    @property
    def is_nccl(self) -> bool:
        return "nccl" in self.name.lower()


@dataclass
class Trace:
    file: str
    roots: list[Op]  # every thread's outermost operators, in time order
    kernels: list[Kernel]
    devices: list[dict[str, Any]]  # deviceProperties
    steps: list[tuple[str, float, float]]  # ProfilerStep#N: (name, start, end)
    copies: list[dict[str, Any]]  # gpu_memcpy / gpu_memset events
    meta: dict[str, Any]  # the top-level keys besides traceEvents

    def ops(self):  # noqa: ANN201 - a generator of Op
        for root in self.roots:
            yield from root.subtree()


def read_trace(path: str | Path) -> Trace:
    """Read and link a Kineto trace; a file that is not one is a ``TraceError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TraceError(f"{path}: cannot read the trace: {e.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a trace: not a text file (a gzipped trace? gunzip it "
                         "first)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: not a trace: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TraceError(f"{path}: not a Kineto trace: no traceEvents list (export it with "
                         "torch.profiler's prof.export_chrome_trace)")
    events = [e for e in data["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X"
              and isinstance(e.get("ts"), (int, float)) and isinstance(e.get("dur"), (int, float))]
    cats = {str(e.get("cat", "")).lower() for e in events}
    if "cpu_op" not in cats and "operator" not in cats:
        raise TraceError(f"{path}: not a Kineto trace: no cpu_op events (a PyTorch profiler "
                         "trace records its operators as cpu_op)")
    ops, runtime, kernels, steps, copies = [], {}, [], [], []
    for e in events:
        cat, args = str(e.get("cat", "")).lower(), e.get("args") or {}
        if cat in ("cpu_op", "operator", "user_annotation"):
            ops.append(Op(str(e.get("name", "")), cat, (e.get("pid"), e.get("tid")),
                          float(e["ts"]), float(e["dur"]), args))
            if cat == "user_annotation" and str(e.get("name", "")).startswith("ProfilerStep#"):
                steps.append((e["name"], float(e["ts"]), float(e["ts"]) + float(e["dur"])))
        elif cat in ("cuda_runtime", "cuda_driver"):
            if "correlation" in args:
                runtime[args["correlation"]] = (e, args)
        elif cat == "kernel":
            kernels.append(Kernel(str(e.get("name", "")), float(e["ts"]), float(e["dur"]),
                                  args.get("stream", e.get("tid")),
                                  args.get("device", e.get("pid")), args))
        elif cat in ("gpu_memcpy", "gpu_memset"):
            copies.append(e)
    if not kernels:
        raise TraceError(f"{path}: the trace has no GPU kernels (profile with "
                         "activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] on a GPU)")
    roots = _nest(ops)
    _link(ops, kernels, runtime)
    meta = {k: v for k, v in data.items() if k != "traceEvents"}
    devices = [d for d in data.get("deviceProperties") or [] if isinstance(d, dict)]
    return Trace(str(path), roots, kernels, devices, sorted(steps, key=lambda s: s[1]),
                 copies, meta)


def _nest(ops: list[Op]) -> list[Op]:
    """Parents and children by time on each thread; the outermost operators, in time order."""
    roots: list[Op] = []
    by_thread: dict[tuple, list[Op]] = {}
    for op in ops:
        by_thread.setdefault(op.thread, []).append(op)
    for thread_ops in by_thread.values():
        thread_ops.sort(key=lambda o: (o.ts, -o.dur))
        stack: list[Op] = []
        for op in thread_ops:
            while stack and op.ts >= stack[-1].end - EPS_US:
                stack.pop()
            if stack and op.end <= stack[-1].end + EPS_US:
                op.parent = stack[-1]
                stack[-1].children.append(op)
            else:
                roots.append(op)
            stack.append(op)
    roots.sort(key=lambda o: o.ts)
    return roots


def _link(ops: list[Op], kernels: list[Kernel], runtime: dict) -> None:
    """Each kernel to its launching operator: by External id, else by the launch's
    correlation to the innermost operator around the launch on its thread."""
    by_ext = {}
    for op in ops:
        ext = op.args.get("External id")
        if ext is not None and op.cat != "user_annotation":
            by_ext.setdefault(ext, op)
    by_thread: dict[tuple, list[Op]] = {}
    for op in ops:
        by_thread.setdefault(op.thread, []).append(op)
    starts = {t: sorted(v, key=lambda o: o.ts) for t, v in by_thread.items()}
    keys = {t: [o.ts for o in v] for t, v in starts.items()}
    for k in kernels:
        launch = runtime.get(k.args.get("correlation"))
        if launch is not None:
            e, largs = launch
            k.launch_end = float(e["ts"]) + float(e["dur"])
        op = by_ext.get(k.args.get("External id"))
        if op is None and launch is not None:
            op = by_ext.get(largs.get("External id"))
            if op is None:
                op = _innermost(starts, keys, (e.get("pid"), e.get("tid")), float(e["ts"]))
        if op is not None:
            k.op = op
            op.kernels.append(k)


def _innermost(starts: dict, keys: dict, thread: tuple, ts: float) -> Op | None:
    ops = starts.get(thread)
    if not ops:
        return None
    i = bisect.bisect_right(keys[thread], ts) - 1
    best = None
    stop = max(-1, i - 256)  # a fallback for traces without External ids: look back a while
    while i > stop:
        op = ops[i]
        if op.ts <= ts <= op.end and (best is None or op.dur < best.dur):
            best = op
        if best is not None and op.end < best.ts:
            break
        i -= 1
    return best

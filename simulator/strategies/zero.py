"""ZeRO (Rajbhandari et al. 2020) as plan ops over a data-parallel group of N ranks.

Each rank owns 1/N of every gradient bucket (stages 1, 2) or of every unit's parameters (stage
3), as a contiguous chunk of the bucket's or unit's parameters concatenated in the plan's tensor
order (``axis: flat``); it updates only its chunk, so the optimizer state is 1/N.

- Stages 1 and 2: the gradient all-reduce becomes a reduce-scatter (each rank gets the sum of
  its chunk), the update runs on Psi/N parameters, and an all-gather of the updated parameters
  follows: 2 Psi per step in all, as an all-reduce moves (the paper's section 7.2). Stage 2
  keeps only its chunk of the gradients, so with several micro-batches it reduce-scatters after
  every micro-batch's backward (as DeepSpeed does); stage 1 once, after the last.
- Stage 3 (PyTorch FSDP): parameters are all-gathered unit by unit (a transformer layer, or a
  layer outside blocks) before the unit's forward, and again before its backward; the gathering
  of the next unit starts when the current one starts computing (prefetch, overlapping compute);
  after a unit's backward its gradients are reduce-scattered. 3 Psi per step (section 7.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.plan import COMM, Collective, Compute, ProgramBuilder
from simulator.strategies import sharding
from simulator.strategies.common import Context, buckets, update_op
from simulator.strategies.memory import layer_params


@dataclass(frozen=True)
class Zero:
    stage: int
    group: str  # the data-parallel group's name in the plan
    ranks: int  # N
    bucket_bytes: float = 0.0  # stages 1, 2: gradient buckets (0: one for the whole model)
    overlap: bool = False  # stages 1, 2: reduce-scatter a bucket as soon as its backward ends


def unit_runs(ctx: Context, layers: list[str]) -> list[list[str]]:
    """Consecutive layers grouped by checkpoint unit (block); a layer outside blocks alone."""
    out: list[list[str]] = []
    key = None
    for n in layers:
        block = ctx.node(n).get("block")
        if block is None or block != key or not out:
            out.append([n])
        else:
            out[-1].append(n)
        key = block
    return out


def _bytes(ctx: Context, layers: list[str], lay: sharding.Layout) -> float:
    sh = lay.param_shards()
    return sum(layer_params(ctx, n, sh.get(n, 1)) for n in layers) * ctx.bpe


def _tensor(ctx: Context, kind: str, layers: list[str]) -> str:
    return f"{kind}:" + ",".join(n for n in layers if ctx.node(n)["params"])


def emit_phase(b: ProgramBuilder, ctx: Context, layers: list[str], lay: sharding.Layout,
               phase: str, samples: int, group: str, zero: Zero | None, *,
               micro_batch: int = 0, shard: int = 0, deps: tuple[int, ...] = (),
               recompute: dict[str, str] | None = None,
               last_bwd: dict[str, int] | None = None) -> int | None:
    """One phase of ``layers`` (``sharding.emit``), with stage 3's gathers and reduce-scatters
    around each unit. ``last_bwd`` collects each layer's last backward op (gradient buckets)."""

    def run_of(run: list[str], after: tuple[int, ...]) -> tuple[int | None, int]:
        start = len(b.ops)
        last = sharding.emit(b, ctx, run, lay, phase, samples, group, micro_batch=micro_batch,
                             shard=shard, deps=after, recompute=recompute)
        if last_bwd is not None:
            for op in b.ops[start:]:
                if isinstance(op, Compute) and op.phase == "bwd" and not op.recompute:
                    last_bwd[op.layer] = op.id
        return last, start

    if zero is None or zero.stage < 3:
        return run_of(layers, deps)[0]
    runs = unit_runs(ctx, layers)
    if phase == "bwd":
        runs = runs[::-1]
    with_params = [r for r in runs if _bytes(ctx, r, lay)]

    def gather(run: list[str], after: tuple[int, ...]) -> int:
        return b.add(Collective, stream=COMM, deps=after, collective="allgather",
                     algorithm="ring", group=zero.group, bytes=_bytes(ctx, run, lay),
                     key=f"{phase}{micro_batch}:gather:{run[0]}",
                     tensor=_tensor(ctx, "param", run), axis="flat", micro_batch=micro_batch)

    gathered: dict[str, int] = {}
    if with_params:
        # backward gathers again what forward freed: not before the forward is over
        after = deps + ((b.last("compute"),) if phase == "bwd" and b.last("compute")
                        is not None else ())
        gathered[with_params[0][0]] = gather(with_params[0], after)
    last: int | None = None
    for run in runs:
        need = (gathered[run[0]],) if run[0] in gathered else ()
        # after what the unit before ended with: a collective its result needs (the input
        # gradient a column layer all-reduces)
        last, started = run_of(run, ((last,) if last is not None else deps) + need)
        nxt = next((r for r in with_params if r[0] not in gathered), None)
        if nxt is not None and run in with_params:  # prefetch the next while this computes
            gathered[nxt[0]] = gather(nxt, (started,))
        if phase == "bwd" and run in with_params:
            last = b.add(Collective, stream=COMM, deps=(last,), collective="reduce_scatter",
                         algorithm="ring", group=zero.group, bytes=_bytes(ctx, run, lay),
                         key=f"bwd{micro_batch}:scatter:{run[0]}",
                         tensor=_tensor(ctx, "wgrad", run), axis="flat",
                         micro_batch=micro_batch)
    return last


def reduce_gradients(b: ProgramBuilder, ctx: Context, layers: list[str], lay: sharding.Layout,
                     zero: Zero, last_bwd: dict[str, int], end: int,
                     micro_batch: int = 0) -> list[int]:
    """Stages 1 and 2: reduce-scatter each gradient bucket (after its last backward op when
    overlapping, else after the end of backward); the ops the update waits for."""
    out = []
    sh = lay.param_shards()
    for i, bucket in enumerate(buckets(ctx, list(reversed(layers)), zero.bucket_bytes, sh)):
        dep = last_bwd.get(bucket[-1], end) if zero.overlap else end
        out.append(b.add(Collective, stream=COMM, deps=(dep,), collective="reduce_scatter",
                         algorithm="ring", group=zero.group, bytes=_bytes(ctx, bucket, lay),
                         key=f"grad{micro_batch}.{i}", tensor=_tensor(ctx, "wgrad", bucket),
                         axis="flat", micro_batch=micro_batch))
    return out


def update(b: ProgramBuilder, ctx: Context, layers: list[str], lay: sharding.Layout, zero: Zero,
           params: float, deps: tuple[int, ...]) -> int:
    """The update of this rank's 1/N of the parameters; stages 1 and 2 then all-gather the
    updated parameters, bucket by bucket (the buckets the gradients were reduced in)."""
    last = update_op(b, ctx, params / zero.ranks, deps=deps)
    if zero.stage >= 3:
        return last
    sh = lay.param_shards()
    for i, bucket in enumerate(buckets(ctx, list(reversed(layers)), zero.bucket_bytes, sh)):
        last = b.add(Collective, stream=COMM, deps=(last,) if i == 0 else (),
                     collective="allgather", algorithm="ring", group=zero.group,
                     bytes=_bytes(ctx, bucket, lay),
                     key=f"params.{i}", tensor=_tensor(ctx, "param", bucket), axis="flat")
    return last

"""The plans a search considers: scenario strategy entries, generated per scheme from the model,
the cluster and the user's constraints (``Constraints``). Every candidate is a plain entry a
scenario could hold, so that the search's pick can be pasted into one.

* data x pipeline x tensor grids (``parallel_3d``): tensor degrees dividing a node (across nodes
  only with ``cross_node_tensor``), pipeline degrees up to the model's blocks (its layers when
  it has none), the data degree filling the devices; micro-batch sizes of powers of two up to a
  replica's batch with at least as many micro-batches as stages; GPipe, 1F1B and the
  interleaved 1F1B (2 model chunks per stage); no, selective (models with attention) and full
  recomputation; sequence parallelism with tensor parallelism; ZeRO stages 0-3 (0-1 with a
  pipeline, as DeepSpeed runs them);
* data parallel (``data_parallel``): every all-reduce algorithm, once after backward and in
  25 MiB buckets overlapping it (PyTorch DDP's default bucket; a model with less than 100 MiB
  of gradients also in 4 buckets of a quarter of them), the parameter server when the
  cluster has one, ZeRO stages 1-3; with recomputation, the ring (plain, overlapped, ZeRO).
  A grid of one stage and no tensor split is data parallel: it is left to this scheme;
* a deep belief net whose scenario pre-trains it (every strategy ``dbn_pretrain``): each
  entry's pre-training under every exchange (how many epochs a layer takes depends on its ranks
  and batch, which the entries' measured ``expected_epochs`` say: the search keeps them);
* the conv-DP / FC-MP hybrid (``hybrid``) for models with convolutions and dense layers, branch
  placement (``branch``) for models with branches, Downpour (fetching and pushing every step
  and every 4 steps) and Sandblaster (2, 4 and 8 portions per worker) when asynchronous
  training is allowed and the cluster has parameter servers. Asynchronous plans are ranked by
  throughput like the others: what their staleness costs in accuracy per sample is not in it.

Rules a candidate breaks (a batch that does not split, heads a tensor group cannot share whole,
a schedule the techniques forbid) are the schemes' own load-time checks (``check``), so the
search prunes exactly what a scenario file would refuse, with the same message.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.specs import Scenario
from simulator.strategies.partition import blocks_of

SCHEME_FAMILIES = ("parallel_3d", "data_parallel", "hybrid", "branch", "downpour",
                   "sandblaster", "dbn_pretrain")
BUCKET_MIB = 25.0  # PyTorch DistributedDataParallel's default bucket_cap_mb
SMALL_BUCKETS = 4  # a small model's gradients overlap in this many buckets
# Downpour's fetch and push intervals: every step, and every 4 steps (Dean et al. 2012 name
# n_fetch and n_push as the knobs that trade communication for staleness)
DOWNPOUR_EVERY = (1, 4)
# Sandblaster's portions per worker: its coordinator hands out many more portions than workers
# so that fast workers take more (Dean et al. 2012, section 4.2); 4 is the scheme's default
SANDBLASTER_PORTIONS = (2, 4, 8)


@dataclass(frozen=True)
class Constraints:
    devices: int | None = None  # at most this many (None: all)
    batch: tuple[int, ...] | None = None  # global batches to try (None: the scenario's)
    headroom: float = 0.0  # fraction of device memory to leave free
    exclude: tuple[str, ...] = ()  # schemes left out
    synchronous_only: bool = False
    cross_node_tensor: bool = False
    top: int = 20


def _buckets(scenario: Scenario, graph) -> list[float]:  # noqa: ANN001
    """Gradient bucket sizes to overlap backward with: DDP's 25 MiB, and for a model whose
    gradients fit in fewer than ``SMALL_BUCKETS`` such buckets a bucket of 1/``SMALL_BUCKETS``
    of them too (one 25 MiB bucket would hold all and overlap nothing)."""
    from simulator.units import BYTES_PER_ELEMENT, MIB

    grads = sum(d["params"] for _, d in graph.nodes(data=True)) * BYTES_PER_ELEMENT[
        scenario.training.precision] / MIB
    small = float(f"{grads / SMALL_BUCKETS:.3g}")
    return [BUCKET_MIB] + ([small] if 0 < small and grads < SMALL_BUCKETS * BUCKET_MIB else [])


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(scenario: Scenario, graph, constraints: Constraints,  # noqa: ANN001
               ctx) -> list[tuple[str, dict]]:  # noqa: ANN001
    """(scheme, options) for every candidate, in a fixed order (deterministic)."""
    c = scenario.cluster
    n_all = c.nodes * c.devices_per_node
    limit = min(n_all, constraints.devices or n_all)
    kinds = {d["kind"] for _, d in graph.nodes(data=True)}
    out: list[tuple[str, dict]] = []
    skip = set(constraints.exclude)
    pretrain = [s for s in scenario.strategies if s.scheme == "dbn_pretrain"]
    if pretrain and len(pretrain) == len(scenario.strategies):
        # a deep belief net pre-trained layer by layer: how many epochs each layer takes
        # depends on the ranks and the batch (the entries' expected_epochs, measured), so the
        # search keeps each entry's ranks and settings and varies how the ranks exchange
        from simulator.strategies.dbn_pretrain import EXCHANGES

        if "dbn_pretrain" in skip:
            return []
        return [("dbn_pretrain", {**{k: v for k, v in s.options.items() if v is not None},
                                  "exchange": exchange, "from": s.name})
                for s in pretrain if (s.options.get("devices") or 1) <= limit
                for exchange in EXCHANGES]
    if "parallel_3d" not in skip:
        out += _grids(scenario, graph, constraints, ctx, limit, kinds)
    if "data_parallel" not in skip:
        for n in _sizes(c, limit):
            for rec in _recomputes(kinds):
                more = {} if rec == "none" else {"recompute": rec}
                for exchange in ("ring", "tree", "hierarchical", "mpi") + (
                        ("ps",) if c.parameter_servers and rec == "none" else ()):
                    if rec != "none" and exchange != "ring":
                        continue  # (recomputation is for memory: with the one exchange)
                    out.append(("data_parallel", {"devices": n, "exchange": exchange, **more}))
                    if exchange != "ps":
                        for bucket in _buckets(scenario, graph):
                            out.append(("data_parallel", {"devices": n, "exchange": exchange,
                                                          "bucket_MiB": bucket,
                                                          "overlap": True, **more}))
                for zero in (1, 2, 3):
                    out.append(("data_parallel", {"devices": n, "exchange": "ring",
                                                  "zero": zero, **more}))
    if "hybrid" not in skip and "conv" in kinds and "dense" in kinds:
        for n in _sizes(c, limit):
            if n > 1:
                out.append(("hybrid", {"devices": n}))
                out.append(("hybrid", {"devices": n, "bucket_MiB": BUCKET_MIB,
                                       "overlap": True}))
    if "branch" not in skip and any(d.get("branch") for _, d in graph.nodes(data=True)):
        for n in divisors(c.devices_per_node):
            if 1 < n <= limit:
                out.append(("branch", {"devices": n}))
    if c.parameter_servers and not constraints.synchronous_only:
        for n in _sizes(c, limit):
            if "downpour" not in skip:
                for every in DOWNPOUR_EVERY:
                    out.append(("downpour", {"workers": n} if every == 1 else
                                {"workers": n, "n_fetch": every, "n_push": every}))
            if "sandblaster" not in skip and n > 1:
                for per in SANDBLASTER_PORTIONS:
                    out.append(("sandblaster", {"workers": n, "portions": per * n}))
    return out


def _recomputes(kinds: set[str]) -> tuple[str, ...]:
    """Recomputation modes for a model: selective needs attention."""
    return ("none", "selective", "full") if "attention" in kinds else ("none", "full")


def _sizes(c, limit: int) -> list[int]:  # noqa: ANN001
    """Device counts to try: the whole of what may be used, and (to see whether fewer is
    faster) halvings down to one node's worth."""
    out, n = [], limit
    while n >= 1:
        out.append(n)
        if n <= c.devices_per_node:
            break
        n //= 2
    return out


def _grids(scenario: Scenario, graph, constraints: Constraints, ctx, limit: int,  # noqa: ANN001
           kinds: set[str]) -> list[tuple[str, dict]]:
    c = scenario.cluster
    blocks = len(blocks_of(ctx)) or graph.number_of_nodes()
    batch = scenario.training.batch_size
    tensors = [t for t in divisors(limit)
               if t <= (limit if constraints.cross_node_tensor else c.devices_per_node)]
    recomputes = _recomputes(kinds)
    out = []
    for t in tensors:
        for p in divisors(limit // t):
            if p > blocks:
                continue
            if p == t == 1 and "data_parallel" not in constraints.exclude:
                continue  # data parallel's own candidates (ring, with ZeRO and recomputation)
            d = limit // (t * p)
            if batch % d:
                continue
            per = batch // d
            mbs = 1
            while mbs <= per:
                m = per // mbs
                if per % mbs == 0 and m >= p:
                    for schedule, v in (("1f1b", 1), ("gpipe", 1), ("1f1b", 2)):
                        if v > 1 and (p < 2 or m % p or blocks % (p * v)):
                            continue
                        if p == 1 and (schedule == "gpipe" or m > 1):
                            continue  # without a pipeline, micro-batches only cost
                        for rec in recomputes:
                            for sp in ((False, True) if t > 1 else (False,)):
                                for zero in ((0, 1) if p > 1 else (0, 1, 2, 3)):
                                    if d == 1 and zero:
                                        continue
                                    out.append(("parallel_3d", {
                                        "data": d, "pipeline": p, "tensor": t,
                                        "micro_batches": m, "schedule": schedule,
                                        "virtual_stages": v, "recompute": rec,
                                        "sequence_parallel": sp, "zero": zero}))
                mbs *= 2
    return out


def label(scheme: str, options: dict) -> str:
    """A short name for a candidate: its scheme and what differs from the defaults."""
    o = options
    if scheme == "parallel_3d":
        parts = [f"d{o['data']}", f"p{o['pipeline']}", f"t{o['tensor']}"]
        if o["pipeline"] > 1:
            parts.append(f"m{o['micro_batches']}")
            parts.append(o["schedule"] + (f"x{o['virtual_stages']}"
                                          if o.get("virtual_stages", 1) > 1 else ""))
        if o.get("recompute", "none") != "none":
            parts.append(f"rc-{o['recompute']}")
        if o.get("sequence_parallel"):
            parts.append("sp")
        if o.get("zero"):
            parts.append(f"z{o['zero']}")
        return "3d-" + "-".join(parts)
    parts = [scheme.replace("_", "-")]
    for key in ("devices", "workers", "exchange"):
        if key in o:
            parts.append(str(o[key]))
    if o.get("n_push", 1) > 1 or o.get("n_fetch", 1) > 1:
        parts.append(f"fetch{o.get('n_fetch', 1)}-push{o.get('n_push', 1)}")
    if "portions" in o:
        parts.append(f"portions{o['portions']}")
    if scheme == "dbn_pretrain":
        return f"{o['from']}-{o['exchange']}"
    if o.get("overlap"):
        parts.append("overlap" if o.get("bucket_MiB", BUCKET_MIB) == BUCKET_MIB
                     else f"overlap{o['bucket_MiB']:g}MiB")
    if o.get("recompute", "none") != "none":
        parts.append(f"rc-{o['recompute']}")
    if o.get("zero"):
        parts.append(f"z{o['zero']}")
    return "-".join(parts)

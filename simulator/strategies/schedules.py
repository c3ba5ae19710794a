"""Pipeline schedules: the order of (phase, micro-batch, model chunk) on one pipeline stage, and
how many micro-batches' activations it keeps at its peak.

- GPipe (Huang et al. 2019): every forward, then every backward. Keeps m micro-batches.
- 1F1B (Narayanan et al. 2019, PipeDream-Flush; Megatron-LM's non-interleaved schedule): stage s
  of p runs min(p - s - 1, m) warm-up forwards, then alternates one forward and one backward,
  then drains the backwards. Keeps at most p - s micro-batches. Bubble (p-1)/(m+p-1) of the
  iteration for uniform stages.
- Interleaved 1F1B (Narayanan et al. 2021, section 2.2; Megatron-LM's
  ``forward_backward_pipelining_with_interleaving``): each device holds V model chunks (chunk c
  of device s is the model's part c x p + s). Virtual micro-batch k (of m x V) is micro-batch
  (k // pV) p + k % p on chunk (k % pV) // p going forward, chunk V - 1 - that going backward;
  device s runs (p - s - 1) x 2 + (V - 1) x p warm-up forwards, then one forward and one
  backward, then drains. The bubble shrinks V-fold, to (p-1)/V of a micro-batch's time per
  device, at V times the point-to-point messages. Megatron-LM needs m to be a multiple of p.
"""

from __future__ import annotations

from collections import defaultdict

Step = tuple[str, int, int]  # (phase, micro-batch, chunk)


def order(kind: str, stage: int, stages: int, m: int, virtual: int = 1) -> list[Step]:
    """The schedule of one stage: (phase, micro-batch, local chunk index)."""
    if kind == "gpipe":
        return [("fwd", i, 0) for i in range(m)] + [("bwd", i, 0) for i in reversed(range(m))]
    if virtual > 1:
        return _interleaved(stage, stages, m, virtual)
    warm = min(stages - stage - 1, m)
    out = [("fwd", i, 0) for i in range(warm)]
    for i in range(m - warm):
        out += [("fwd", warm + i, 0), ("bwd", i, 0)]
    return out + [("bwd", i, 0) for i in range(m - warm, m)]


def _interleaved(stage: int, p: int, m: int, v: int) -> list[Step]:
    total = m * v
    warm = min((p - stage - 1) * 2 + (v - 1) * p, total)

    def micro(k: int) -> int:
        return (k // (p * v)) * p + k % p

    def chunk(k: int, forward: bool) -> int:
        c = (k % (p * v)) // p
        return c if forward else v - 1 - c

    out = [("fwd", micro(k), chunk(k, True)) for k in range(warm)]
    for k in range(total - warm):
        out += [("fwd", micro(warm + k), chunk(warm + k, True)),
                ("bwd", micro(k), chunk(k, False))]
    return out + [("bwd", micro(k), chunk(k, False)) for k in range(total - warm, total)]


def peak_in_flight(steps: list[Step], weight: dict[int, float] | None = None) -> dict[int, int]:
    """Micro-batches whose activations each chunk holds (forward run, backward not yet) at the
    moment the held total, weighted per chunk by ``weight`` (its bytes per micro-batch), is
    largest."""
    held: dict[int, int] = defaultdict(int)
    best: dict[int, int] = {}
    best_total = -1.0
    w = weight or {}
    # whole-number weights (elements per micro-batch) add up exactly: the total is kept as
    # it changes, and only a forward can raise it
    exact = all(float(x).is_integer() and abs(x) < 2**52 for x in w.values())
    total = 0.0
    for phase, _, c in steps:
        fwd = phase == "fwd"
        held[c] += 1 if fwd else -1
        if exact:
            total += w.get(c, 1.0) if fwd else -w.get(c, 1.0)
            if not fwd:
                continue
        else:
            total = sum(n * w.get(ch, 1.0) for ch, n in held.items())
        if total > best_total:
            best_total, best = total, dict(held)
    return best

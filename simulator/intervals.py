"""Time intervals: the breakdown both engines compute (what was busy, what was hidden under
what). Standard library only."""

from __future__ import annotations

Interval = tuple[float, float]


def union(intervals: list[Interval], lo: float, hi: float) -> list[Interval]:
    out: list[Interval] = []
    end = None  # the last merged interval's end
    # clipping to [lo, hi] keeps the sorted order (it is monotone in both ends)
    for a, b in sorted(intervals):
        if a < lo:
            a = lo
        if b > hi:
            b = hi
        if b <= a:
            continue
        if end is not None and a <= end:
            if b > end:
                end = b
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
            end = b
    return out


def length(iv: list[Interval]) -> float:
    return sum(b - a for a, b in iv)


def minus(a: list[Interval], b: list[Interval]) -> float:
    """Length of union(a) minus its overlap with union(b) (both already unions)."""
    overlap, j = 0.0, 0
    for x0, x1 in a:
        while j < len(b) and b[j][1] <= x0:
            j += 1
        k = j
        while k < len(b) and b[k][0] < x1:
            overlap += max(0.0, min(x1, b[k][1]) - max(x0, b[k][0]))
            k += 1
    return length(a) - overlap

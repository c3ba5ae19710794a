"""Text for the console: aligned columns of the tables the commands print."""

from __future__ import annotations


def columns(rows: list[tuple[str, ...]], left: int = 1, ragged_last: bool = False) -> list[str]:
    """Rows as aligned text: the first ``left`` columns left-aligned, the rest right-aligned;
    with ``ragged_last`` the last column (free text) is not padded."""
    n = len(rows[0]) - (1 if ragged_last else 0)
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    out = []
    for r in rows:
        line = "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r[:n], widths)))
        out.append(line + ("  " + r[-1] if ragged_last else ""))
    return out


# help texts that several commands share
SCENARIO_HELP = "a scenario YAML file: model, cluster, training, strategies (docs/scenarios.md)"
BACKEND_HELP = ("the executor's kernels: cpu (Numba on the cores), cuda (numba-cuda on the "
                "GPUs), reference (NumPy, the slow ground truth); default cpu")

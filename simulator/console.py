"""Text for the console: aligned columns of the tables the commands print."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text


def columns(rows: list[tuple[str, ...]], left: int = 1, ragged_last: bool = False) -> list[str]:
    """Rows as aligned text (a borderless ``rich`` table, two spaces between columns): the first
    ``left`` columns left-aligned, the rest right-aligned; with ``ragged_last`` the last column
    (free text) is left-aligned and not padded."""
    n = len(rows[0])
    table = Table(box=None, show_header=False, show_edge=False, pad_edge=False,
                  padding=(0, 1))
    for i in range(n):
        ragged = ragged_last and i == n - 1
        table.add_column(justify="left" if i < left or ragged else "right", no_wrap=True)
    for r in rows:
        table.add_row(*(Text(c) for c in r))
    width = sum(max(len(r[i]) for r in rows) for i in range(n)) + 2 * n
    sink = Console(file=io.StringIO(), width=width, color_system=None, highlight=False,
                   emoji=False, markup=False, soft_wrap=False)
    sink.print(table)
    return [line.rstrip() for line in sink.file.getvalue().splitlines()]


# help texts that several commands share
SCENARIO_HELP = "a scenario YAML file: model, cluster, training, strategies (docs/scenarios.md)"
BACKEND_HELP = ("the executor's kernels: cpu (Numba on the cores), cuda (numba-cuda on the "
                "GPUs), reference (NumPy, the slow ground truth); default cpu")


def target_line(entry: dict) -> str | None:
    """``STRATEGY: loss <= 0.3 in 57 steps x 21.6 ms = 1.23 s`` (or why it is not reached);
    None for an entry without a target. Predicted and measured entries alike."""
    t = entry.get("target")
    if not isinstance(t, dict):
        return None
    goal = (f"{t.get('metric')} {'>=' if t.get('metric') == 'accuracy' else '<='} "
            f"{t.get('value'):g}")
    name = entry.get("strategy")
    if not t.get("reached"):
        return f"{name}: {goal} not reached: {t.get('why', 'unknown')}"
    unit = t.get("step_unit", "step")
    n = t["steps"]
    count = f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"
    return (f"{name}: {goal} in {count} {unit}s x {t['step_time_s'] * 1e3:.3g} ms = "
            f"{t['time_s']:.3g} s")

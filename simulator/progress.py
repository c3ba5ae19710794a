"""Progress of long simulations on the terminal (``rich``): nothing for runs of a couple of
seconds, a bar of SimPy events against the engine's estimate after that, and the estimate
printed before a run that is large."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

QUIET_S = 2.0  # a run shows its bar once it has taken this long
LARGE = 2_000_000  # events above which the estimate is printed before the run


class SimulationProgress:
    """One strategy's run: ``start(estimate)``, called with (events, simulated seconds), then
    ``close()`` (the engine's progress protocol, ``simulate.predict``)."""

    def __init__(self, name: str, console: Console | None = None):
        self.name = name
        self.console = console or Console(stderr=True)
        self.bar: Progress | None = None
        self.task = None
        self.total = 0
        self.began = 0.0

    def start(self, estimate: int) -> None:
        self.total, self.began = estimate, time.monotonic()
        if estimate > LARGE:
            self.console.print(f"{self.name}: about {estimate:,} events to simulate")

    def __call__(self, events: int, now: float) -> None:
        if self.bar is None:
            if time.monotonic() - self.began < QUIET_S:
                return
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("events, t = {task.fields[t]}"),
                                TimeElapsedColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=max(self.total, events), t="")
        self.bar.update(self.task, completed=events, total=max(self.total, events),
                        t=f"{now * 1e3:,.1f} ms simulated")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def factory(console: Console | None = None):  # noqa: ANN201
    """``simulate_scenario``'s ``progress``: one SimulationProgress per strategy."""
    return lambda name, plan: SimulationProgress(name, console)

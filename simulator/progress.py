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


class Steps:
    """Announce the steps of a long command on the terminal (standard error, ``rich``): what it
    is doing now, which step of how many, and about how long is left at the pace so far. Quiet
    when standard error is not a terminal (logs and pipes get the command's own output only)."""

    def __init__(self, total: int, console: Console | None = None, enabled: bool = True):
        self.total = total
        self.console = console or Console(stderr=True)
        self.on = enabled and self.console.is_terminal
        self.done = 0
        self.began = time.monotonic()

    def left(self) -> str:
        """About how long the steps not yet done take, at the pace of those done."""
        if not self.done:
            return ""
        each = (time.monotonic() - self.began) / self.done
        return f", about {each * (self.total - self.done):.0f} s left"

    def __call__(self, what: str) -> None:
        """Step ``what`` begins."""
        if self.on:
            elapsed = time.monotonic() - self.began
            self.console.print(f"[dim][{self.done + 1}/{self.total}][/dim] {what} "
                               f"[dim]({elapsed:.0f} s in{self.left()})[/dim]",
                               highlight=False)
        self.done += 1

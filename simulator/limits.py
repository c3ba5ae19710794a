"""Limits on what one command is asked to build or simulate, so that a typo (``nodes:
2147483648``, ``n_push: 1000``) ends in one clear line instead of minutes of silence or an
exhausted memory. Each limit is far above what a real study needs (the reason is given with
it); ``--no-limits`` on any command that reads a scenario lifts them all.

The loader checks the sizes it would otherwise allocate for (devices, NICs and parameter-server
hosts, layers); building a plan stops at ``OPS`` operations per rank; the engine
checks its own estimate of the events a strategy's run takes before it starts
(``simulate.predict``), which covers everything that multiplies the work: iterations, steps per
iteration (``local_steps``), messages per step (``n_push``, ``n_fetch``), devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# the largest published training runs use 16,384 GPUs (Llama 3 405B: Meta, "The Llama 3 Herd
# of Models", 2024, section 3.3); four times that leaves room for any study of what is coming
DEVICES = 65_536
# the deepest published networks are about 1,000 layers (ResNet-1001: He et al., "Identity
# Mappings in Deep Residual Networks", ECCV 2016); ten times that, in the model's layer list
LAYERS = 10_000
# operations in one rank's program: the largest shipped plan has 32,898 (GPT-3 175B with full
# recomputation, scenarios/gpt_megatron.yaml), sixty times that
OPS = 2_000_000
# SimPy events one strategy's run may take: about 40,000 events a second on one core of the
# test machine (a Downpour run of 2.57 million events took 66 s), so about ten minutes
EVENTS = 25_000_000

LIFT = "pass --no-limits to run it anyway"

_lifted: ContextVar[bool] = ContextVar("limits_lifted", default=False)


@contextmanager
def lifted(on: bool = True) -> Iterator[None]:
    """Within the block, no limit applies (``--no-limits``)."""
    token = _lifted.set(on)
    try:
        yield
    finally:
        _lifted.reset(token)


def active() -> bool:
    return not _lifted.get()


def check_repeats(what: str, count: int, path: str) -> None:
    """A plan repeats its work ``count`` times per rank and iteration (micro-batches, local
    steps): past ``OPS`` / 2 it cannot be built within the limit on operations (each repeat is
    at least a forward and a backward), so it is refused before any schedule is worked out."""
    if count * 2 > OPS and active():
        from simulator.errors import ScenarioError

        raise ScenarioError(f"{count:,} {what} make a rank's program longer than the limit of "
                            f"{OPS:,} operations; {LIFT}", path=path, value=count,
                            has_value=True)


def events_error(strategy: str, events: int) -> str | None:
    """Why a run estimated at ``events`` is refused, or None."""
    if events <= EVENTS or not active():
        return None
    return (f"strategy {strategy!r}: about {events:,} events to simulate, more than the "
            f"limit of {EVENTS:,} (about ten minutes); fewer iterations, devices or steps per "
            f"iteration shorten it, or {LIFT}")

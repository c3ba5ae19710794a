"""One period's breakdown on one rank, under the simulator's phase names."""

from __future__ import annotations

import resource
import sys

from executor.interpreter.runner import Timings
from simulator.intervals import length, minus, union
from simulator.plan import COMM, COMPUTE


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (the operating system's high-water
    mark: the interpreter, the libraries and the model's arrays together)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS counts bytes, Linux KiB


def phases_of(t: Timings, start: float, end: float) -> dict[str, float]:
    """One period's breakdown on this rank, as the simulator defines it: compute = time some
    kernel ran; exposed communication = communication not under compute; copies between host
    and device (GPU backends) on their own; idle = the rest (waiting for peers, bubbles)."""
    def busy(kind: str) -> list[tuple[float, float]]:
        return union([(s, e) for stream, _, s, e in t.spans if stream == kind], start, end)

    compute, comm, copy, ps = busy(COMPUTE), busy(COMM), busy("copy"), busy("ps")
    out = {"compute": length(compute),
           "exposed_communication": minus(comm, union(compute + copy, start, end)),
           "host_device_copy": minus(copy, compute),
           "ps_wait": minus(ps, union(compute + comm + copy, start, end))}
    out["idle"] = max(0.0, (end - start) - sum(out.values()))
    return out

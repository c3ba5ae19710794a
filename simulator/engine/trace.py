"""Chrome trace (Trace Event Format; opens in Perfetto and chrome://tracing).

One process per device (threads: the compute stream, the communication stream, point-to-point)
and one counter track per link edge showing the bandwidth in use (GB/s). Times in microseconds.
Bounded: at most ``TRACE_SPANS`` spans and ``RATE_LOG`` link samples per strategy (the first
ones; ``otherData.spans_left_out`` counts what was left out).
"""

from __future__ import annotations

from typing import Any

from simulator.engine.runner import Engine

THREADS = {"compute": 0, "comm": 1, "p2p": 2}


def chrome_trace(runs: list[tuple[str, Engine]]) -> dict[str, Any]:
    """Trace events for several simulated strategies, each under its own name prefix."""
    events: list[dict[str, Any]] = []
    left_out: dict[str, int] = {}
    pid = 0
    for strategy, eng in runs:
        pids: dict[str, int] = {}
        for device in sorted({s[0] for s in eng.spans}, key=_natural):
            pid += 1
            pids[device] = pid
            events.append({"ph": "M", "name": "process_name", "pid": pid,
                           "args": {"name": f"{strategy}: {device}"}})
            for tname, tid in THREADS.items():
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                               "args": {"name": tname}})
        for device, thread, name, start, dur in eng.spans:
            events.append({"ph": "X", "name": name, "pid": pids[device],
                           "tid": THREADS.get(thread, 3), "ts": start * 1e6, "dur": dur * 1e6})
        pid += 1
        events.append({"ph": "M", "name": "process_name", "pid": pid,
                       "args": {"name": f"{strategy}: links"}})
        for t, (u, v), rate in eng.network.rate_log:
            events.append({"ph": "C", "name": f"{u}->{v}", "pid": pid, "ts": t * 1e6,
                           "args": {"GBps": rate / 1e9}})
        if eng.spans_left_out:
            left_out[strategy] = eng.spans_left_out
    out: dict[str, Any] = {"traceEvents": events, "displayTimeUnit": "ms"}
    if left_out:  # bounded: the first spans of each strategy are kept
        out["otherData"] = {"spans_left_out": left_out}
    return out


def _natural(name: str) -> tuple:
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))

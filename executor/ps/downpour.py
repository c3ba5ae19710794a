"""Downpour SGD run for real: worker ranks on their own clocks, parameter-server shard ranks
serving in a loop (``executor/ps/server.py``; why not one-sided MPI: docs/downpour.md).

Workers never wait for each other: no barrier between periods. Each runs its program (fetch every
n_fetch steps, push every n_push steps) for every period, then tells each server it is done and
sends its figures to rank 0 (a worker) by point-to-point messages, as do the servers (with the
staleness of every push they applied, the pushes of each worker and their final parameters).

A worker other than rank 0 that is lost (killed, crashed: the watchdog's heartbeats stop, see
``executor/mpi/watchdog.py``; or hung, and so leaving the run) does not stop the others: the
servers stop serving it, rank 0 stops waiting for its figures, and the Result records the
failure, the samples it had pushed and the samples processed in all (the survivors' and the
lost worker's pushed ones). The job then exits 0. Losing rank 0 (it gathers the Result) or a
server (it holds a shard of the only copy of the parameters) aborts the job. The launcher must
leave the survivors running: ``mpiexec -disable-auto-cleanup`` (docs/reliability.md).

Running to ``training.target``: after its warm-up periods each worker tells every server (tag
WARM) and waits for its answer; a server answers once every live worker has finished its
warm-up, having gone back to its initial parameters, optimizer state, version and records
(``ServerRunner.serve_async``). The worker goes back to its own initial state too and runs its
periods from the first batch, keeping a window of its own training metric over its last
``ceil(window / its samples per period)`` periods (``executor/interpreter/target.py``). The
first worker whose window reaches the target records the time since its restart and tells every
other worker (tag STOP, point to point); a worker looks for that message at each period boundary
and stops there. Steps to the target: all workers' mini-batch steps done when they stopped (a
slight over-count of those done by the moment the target was reached: at most the period each
other worker was in, plus the message's way), and those a lost worker had pushed. Every STOP is
received before the run ends: rank 0 tells each worker which ones are still on their way to it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from mpi4py import MPI

from executor.interpreter.checkpoint import load_state, state_of
from executor.interpreter.measure import peak_rss, phases_of
from executor.interpreter.runner import RankRunner
from executor.interpreter.target import Window, better, put, snapshot, target_block
from executor.mpi import collectives as xcomm
from executor.mpi.faults import maybe_fail
from executor.mpi.watchdog import Watchdog, name_ranks
from executor.ps.server import TAG_DONE, TAG_RESULT, TAG_WARM, ServerRunner, unflatten
from simulator.plan import Plan, PSPush

TAG_BYE, TAG_STOP = 7106, 7111


class StopSignal:
    """A worker's side of "the target is reached": tell the other workers, hear them, and
    receive every such message before the run ends (none may be left for a later run)."""

    def __init__(self, comm: MPI.Comm, workers: list[int]):
        self.comm = comm
        self.others = [w for w in workers if w != comm.Get_rank()]
        self.sent_to: list[int] = []
        self.got_from: list[int] = []
        self._one = np.zeros(1, np.float32)  # every message's payload, kept while in flight
        self._got = np.empty(1, np.float32)

    def tell_others(self) -> None:
        for w in self.others:  # fire and forget: a worker lost meanwhile never takes it
            self.comm.Isend(self._one, w, TAG_STOP).Free()
            self.sent_to.append(w)

    def heard(self) -> bool:
        """Whether another worker has said so (every message come so far is taken)."""
        # named sources, not MPI.ANY_SOURCE (see executor/ps/server.py)
        for w in self.others:
            if self.comm.Iprobe(w, TAG_STOP):
                self.comm.Recv(self._got, w, TAG_STOP)
                self.got_from.append(w)
        return bool(self.got_from)

    def settle(self, owed: list[int]) -> None:
        """Take the messages still on their way here (``owed``: their senders)."""
        for w in owed:
            xcomm.recv(self.comm, self._got, w, TAG_STOP)
            self.got_from.append(w)


def run_downpour(comm: MPI.Comm, plan: Plan, graph, scenario, data, backend: Any,  # noqa: ANN001
                 dog: Watchdog, weights: dict[str, Any] | None,
                 period_batch) -> dict[str, Any]:  # noqa: ANN001
    rank = comm.Get_rank()
    prog = plan.ranks[rank]
    t = scenario.training
    xcomm.barrier(comm)  # everyone starts together (all alive here)
    dog.tolerate(r.rank for r in plan.workers() if r.rank != 0)
    timeout = dog.timeout
    stop = None
    if prog.role == "server":
        server = ServerRunner(comm, plan, graph, scenario.seed, t.learning_rate, 0.0)
        dog.tick(f"{plan.strategy}, serving")
        dog.timeout = float("inf")  # a server idles while workers compute: no progress checks
        server.serve_async(lambda: dog.lost,
                           restart=t.target is not None and t.warmup_iterations > 0)
        figures = {"role": "server", "rank": rank, "staleness": server.staleness,
                   "updates": server.version, "busy_s": server.busy, "lost": server.lost,
                   "pushes": server.pushes, "shard": (server.lo, server.hi), "w": server.w,
                   "layout": server.layout}
    else:
        if t.target is not None:
            stop = StopSignal(comm, [r.rank for r in plan.workers()])
        figures = _work(comm, plan, graph, scenario, data, backend, dog, period_batch, stop)
    if rank != 0:  # done: waiting for the others is not a hang of this rank (rank 0 watches)
        dog.timeout = float("inf")
    entry = _collect(comm, plan, figures, weights, dog, stop, t)
    dog.timeout = timeout
    dog.tolerate(())
    return entry


def _work(comm: MPI.Comm, plan: Plan, graph, scenario, data, backend, dog,  # noqa: ANN001
          period_batch, stop: StopSignal | None) -> dict[str, Any]:  # noqa: ANN001
    """This worker's periods (to the target when ``stop`` is given) and its figures."""
    t = scenario.training
    rank = comm.Get_rank()
    prog = plan.ranks[rank]
    runner = RankRunner(comm, plan, graph, backend, scenario.seed, t.learning_rate, 0.0)
    times, phases, curve, start0 = [], [], [], MPI.Wtime()
    warm = t.warmup_iterations
    samples = 0
    window = Window(t.target, prog.inputs[1]) if stop is not None else None
    initial = snapshot(state_of(runner)) if window is not None and warm else None
    reached = None
    for period in range(warm + t.iterations):
        if period == warm:
            if initial is not None:
                _restart(comm, plan, runner, initial)
            start0 = MPI.Wtime()
        if window is not None and period >= warm and stop.heard():
            break  # another worker reached the target
        dog.tick(f"{plan.strategy}, period {period}")
        maybe_fail(rank, period, warm)
        # to a target, the measured periods train from the first batch
        position = period - warm if window is not None and period >= warm else period
        x, _ = period_batch(data, position, plan.samples_per_period, prog.inputs)
        _, y = period_batch(data, position, plan.samples_per_period, prog.labels)
        start = MPI.Wtime()
        timings, stats = runner.run_period(x, y)
        end = MPI.Wtime()
        if period >= warm:
            times.append(end - start)
            phases.append(phases_of(timings, start, end))
            samples += prog.inputs[1]
            curve.append((end - start0, samples, stats["loss_sum"] / max(stats["counted"], 1),
                          stats["correct"] / max(stats["counted"], 1)))
            if window is not None and window.add(stats["loss_sum"], stats["correct"],
                                                 stats["counted"]):
                reached = {"time_s": end - start0, "value": window.value}
                stop.tell_others()
                break
    for server in (r.rank for r in plan.ranks if r.role == "server"):
        xcomm.send(comm, np.zeros(1, np.float32), server, TAG_DONE)
    mean = {k: statistics.fmean(p[k] for p in phases) for k in phases[0]} if phases else {}
    figures = {"role": "worker", "rank": rank, "device": prog.device, "times": times,
               "phases": mean, "curve": curve, "samples": samples, "rss": peak_rss()}
    if stop is not None:
        figures.update(periods=len(times), reached=reached, best=window.best,
                       stop_sent_to=stop.sent_to, stop_got_from=stop.got_from)
    return figures


def _restart(comm: MPI.Comm, plan: Plan, runner: RankRunner, initial: dict) -> None:
    """Warm-up over: tell every server, wait until each has gone back to its initial state
    (once every live worker is there), and go back to this worker's own."""
    servers = [r.rank for r in plan.ranks if r.role == "server"]
    ping = np.zeros(1, np.float32)
    for server in servers:
        xcomm.send(comm, ping, server, TAG_WARM)
    for server in servers:
        xcomm.recv(comm, ping, server, TAG_WARM)
    load_state(runner, initial, "the state before the warm-up")
    for layer in runner.layers.values():  # no gradient of the warm-up left to push
        layer.grads.clear()
    runner._pushed.clear()
    runner._push_packed = False


def _collect(comm: MPI.Comm, plan: Plan, figures: dict[str, Any],
             weights: dict[str, Any] | None, dog: Watchdog,
             stop: StopSignal | None = None, training: Any = None) -> dict[str, Any]:
    """Everyone's figures to rank 0 by point-to-point messages (a collective would wait for a
    dead rank); rank 0 then tells the survivors which ranks were lost (and each worker which
    STOP messages are still on their way to it)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank != 0:
        comm.send(figures, dest=0, tag=TAG_RESULT)
        lost, owed = comm.recv(source=0, tag=TAG_BYE)
        if stop is not None:
            stop.settle(owed)
        return {"lost_ranks": lost}
    got = {0: figures}
    seen: list[int] = []
    while waiting := [r for r in range(1, size) if r not in got and r not in dog.lost]:
        if waiting != seen:  # progress: figures came (or a rank was counted lost)
            dog.tick(f"{plan.strategy}, waiting for the figures of {name_ranks(waiting)}")
            seen = waiting
        for r in waiting:
            message = comm.improbe(r, TAG_RESULT)
            if message is not None:
                figures_of_r = _take(message.irecv(), r, dog)
                if figures_of_r is not None:
                    got[r] = figures_of_r
        time.sleep(0.001)
    lost = sorted(set(range(size)) - set(got))
    owed = _owed(got)
    for r in got:
        if r != 0:
            comm.send((lost, owed.get(r, [])), dest=r, tag=TAG_BYE)
    if stop is not None:
        stop.settle(owed.get(0, []))
    entry = _entry(plan, got, lost)
    if stop is not None:
        put(entry, _target(plan, training, got, entry))
    if weights is not None:
        servers = [f for f in got.values() if f["role"] == "server"]
        if servers and len(servers) == len([r for r in plan.ranks if r.role == "server"]):
            flat = np.concatenate([f["w"] for f in sorted(servers, key=lambda f: f["shard"])])
            weights[plan.strategy] = unflatten(flat, servers[0]["layout"])
    return entry


def _target(plan: Plan, training: Any, got: dict[int, dict], entry: dict[str, Any]
            ) -> dict[str, Any]:
    """The target block: reached when a worker's window reached it, in the time that worker
    took since its restart; the steps are every worker's, as they stood when it stopped (a lost
    worker's: those its pushes carried)."""
    workers = [f for f in got.values() if f["role"] == "worker"]
    steps = sum(f["periods"] for f in workers) * plan.period_steps
    for failure in entry["failures"]:
        per_step = plan.ranks[failure["rank"]].inputs[1] // plan.period_steps
        steps += failure["samples_pushed"] // per_step if per_step else 0
    reached = [f["reached"]["time_s"] for f in workers if f.get("reached")]
    bests = [f["best"] for f in workers if f.get("best") is not None]
    best = None
    for b in bests:
        best = b if best is None else better(training.target, best, b)
    return target_block(
        training.target, unit="step", steps=steps if reached else None,
        time_s=min(reached) if reached else None, samples=entry["samples_processed"],
        cap=training.iterations * plan.period_steps * len(plan.workers()),
        cap_source=(f"training.iterations: {training.iterations} periods of "
                    f"{plan.period_steps} step(s) per worker"), best=best)


def _owed(got: dict[int, dict]) -> dict[int, list[int]]:
    """Per worker, the workers whose STOP message to it it has not taken yet."""
    workers = [f for f in got.values() if f["role"] == "worker"]
    return {f["rank"]: [s["rank"] for s in workers if f["rank"] in s.get("stop_sent_to", ())
                        and s["rank"] not in f.get("stop_got_from", ())] for f in workers}


def _take(req: MPI.Request, peer: int, dog: Watchdog) -> Any:
    """The object ``req`` receives from ``peer``, or None if ``peer`` is lost before it came."""
    while True:
        done, obj = req.test()
        if done:
            return obj
        if peer in dog.lost:
            return None
        time.sleep(0.0005)


def _entry(plan: Plan, got: dict[int, dict], lost: list[int]) -> dict[str, Any]:
    workers = [f for f in got.values() if f["role"] == "worker"]
    servers = [f for f in got.values() if f["role"] == "server"]
    steps = plan.period_steps
    per_step = [statistics.fmean(f["times"]) / steps for f in workers if f["times"]]
    lost_workers = sorted({w for f in servers for w in f["lost"]} | set(lost))
    # a lost worker's samples count as far as its pushes reached the servers
    first = min(servers, key=lambda f: f["shard"])
    pushed = {w: _pushed_samples(plan, w, first["pushes"].get(w, 0)) for w in lost_workers}
    samples = sum(f["samples"] for f in workers) + sum(pushed.values())
    wall = max((f["curve"][-1][0] for f in workers if f["curve"]), default=0.0)
    rates = [f["samples"] / f["curve"][-1][0] for f in workers if f["curve"]]
    stale = [s for f in servers for s in f["staleness"]]
    # every worker's curve on one time line: samples processed by all workers up to each point
    events = sorted((c[0], f["rank"], c[1], c[2], c[3]) for f in workers for c in f["curve"])
    latest: dict[int, int] = {}
    curve = []
    for wall_t, r, cum, loss, acc in events:
        latest[r] = cum
        curve.append((wall_t, sum(latest.values()), loss, acc))
    keys = [k for f in workers for k in f["phases"]]
    breakdown = {k: statistics.fmean(f["phases"][k] for f in workers if f["phases"]) / steps
                 for k in dict.fromkeys(keys)}
    hist: dict[str, int] = {}
    for s in sorted(stale):
        hist[str(s)] = hist.get(str(s), 0) + 1
    return {
        "strategy": plan.strategy,
        "scheme": plan.scheme,
        "mode": "measured",
        "devices": len(plan.workers()),
        "samples_per_iteration": plan.samples_per_period,
        "iteration_time_s": statistics.fmean(per_step) if per_step else None,
        "throughput_samples_per_s": sum(rates) if rates else None,
        "breakdown_s": breakdown,
        "samples_processed": samples,
        "wall_time_s": wall,
        "fits": plan.fits,
        "memory_bytes_per_device": {m.device: m.total for m in plan.memory},
        "peak_rss_bytes_per_device": {f["device"]: f["rss"] for f in workers},
        "staleness": {"mean": statistics.fmean(stale) if stale else 0.0,
                      "max": max(stale, default=0), "histogram": hist},
        "utilisation_per_server": {f"rank{f['rank']}": f["busy_s"] / wall if wall else 0.0
                                   for f in servers},
        "failures": [{"rank": r, "what": "lost (its heartbeat stopped); the others went on",
                      "samples_pushed": pushed[r]} for r in lost_workers],
        "training": {"wall_time_s": [c[0] for c in curve], "samples": [c[1] for c in curve],
                     "loss": [c[2] for c in curve], "accuracy": [c[3] for c in curve]},
    }


def _pushed_samples(plan: Plan, worker: int, pushes: int) -> int:
    """The samples behind ``pushes`` pushes of ``worker`` (each push carries the gradients of
    the steps since the last one)."""
    prog = plan.ranks[worker]
    per_period = sum(isinstance(op, PSPush) and op.shard == 0 for op in prog.ops)
    return pushes * prog.inputs[1] // per_period if per_period else 0

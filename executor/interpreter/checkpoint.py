"""Checkpoints of the synchronous schemes, and resuming from one bit for bit.

``parasim execute --checkpoint DIR --checkpoint-every N`` writes, after every N periods (warm-up
periods count) of a strategy:

* each rank's own state, in its own file ``DIR/K-STRATEGY.rankR.periodP.npz``: the parameters
  and the momentum velocity of every layer (or shard) it holds, ZeRO's chunks of both, and on a
  parameter-server rank its shard, velocity and version; and P, the period that comes next. P is
  the data position too: period P trains on the global batch P (samples ``P*B .. P*B+B-1`` of
  the data set, wrapping; ``Dataset.batches(start_step=P)``).
* the manifest ``DIR/checkpoint.json`` (rank 0): what run it is (the scenario file's SHA-256,
  seed, data set, ranks, backend and strategies), the strategy running and its next period, and
  every finished strategy's Result entry, its whole weights beside it (``K-STRATEGY.weights.npz``).

There is no random generator state to keep: training draws no random number after the initial
weights (they come from the scenario's seed; dropout runs as the identity and batches come in
file order), so the period says everything the data and the randomness need.

Every file is written to a temporary name in DIR, flushed to disk and renamed. After a barrier
rank 0 replaces the manifest the same way: that is the commit. After another barrier each rank
removes its previous file. A job killed at any moment leaves a manifest naming files that exist.

``--resume DIR`` checks that the manifest was written for this run, takes the finished
strategies' entries and weights as they were, restores every rank's state of the strategy that
was running, and runs on from its period: the same arithmetic in the same order, so the final
weights are those of a run never interrupted. It goes on writing checkpoints (into DIR, or the
``--checkpoint`` folder). DIR must be readable by every rank (a shared file system, or each
node's own copy of its ranks' files).

Downpour (asynchronous: no run repeats another), Sandblaster (gradient portions summed in
arrival order) and DBN pre-training are not checkpointed: asking is a clear error before any
work starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from executor.interpreter.model import ExecutorError
from executor.mpi import collectives as xcomm
from simulator.plan import Plan

FORMAT = 1
MANIFEST = "checkpoint.json"


class CheckpointError(ExecutorError):
    """A checkpoint that cannot be written here or resumed by this run; the message says why."""


def not_checkpointable(plan: Plan) -> str | None:
    """Why ``plan`` cannot be checkpointed, or None when it can."""
    if plan.mode == "async":
        return (f"{plan.strategy} is {plan.scheme}, asynchronous: its workers' updates land in "
                "whatever order their clocks give, so no run repeats another and none can be "
                "resumed exactly")
    if plan.mode == "batch":
        return (f"{plan.strategy} is {plan.scheme}: its portions' gradients are summed in the "
                "order they arrive, so no run repeats another and none can be resumed exactly")
    if plan.scheme == "dbn_pretrain":
        return f"{plan.strategy} is {plan.scheme}, whose layer-by-layer loop keeps no checkpoints"
    return None


def tags_of(strategies: list[str]) -> dict[str, str]:
    """Each strategy's file-name prefix: its place in the run and its name, made safe."""
    return {name: f"{i:02d}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"
            for i, name in enumerate(strategies)}


def fingerprint(scenario: Any, data: Any, plans: list[Plan], ranks: int, backend: str
                ) -> dict[str, Any]:
    """What a checkpoint must have been written by for this run to resume it."""
    text = Path(scenario.file).read_bytes() if Path(scenario.file).is_file() else b""
    return {"scenario": scenario.name, "file_sha256": hashlib.sha256(text).hexdigest(),
            "seed": scenario.seed, "data": {"name": data.name, "samples": len(data)},
            "ranks": ranks, "backend": backend, "strategies": [p.strategy for p in plans]}


def open_checkpoints(comm: MPI.Comm, prep: Any, backend: str, folder: str | None,
                     every: int | None, resume: str | None, force: bool) -> Checkpoints | None:
    """Collective, before any work: the run's checkpoints (None without ``--checkpoint`` or
    ``--resume``), resumed when asked. Raises :class:`CheckpointError` on every rank alike,
    except for a rank whose own file is missing."""
    if folder is None and resume is None:
        if every is not None:
            raise CheckpointError("--checkpoint-every needs --checkpoint DIR")
        return None
    if every is not None and every < 1:
        raise CheckpointError(f"--checkpoint-every must be at least 1, not {every}")
    if folder is not None and every is None and resume is None:
        raise CheckpointError("--checkpoint DIR needs --checkpoint-every N (the periods "
                              "between checkpoints)")
    for plan in prep.plans:
        why = not_checkpointable(plan)
        if why:
            raise CheckpointError(f"{'--resume' if resume else '--checkpoint'}: {why}; run it "
                                  "without checkpoints, or leave it out with --strategy "
                                  "(docs/reliability.md)")
    prints = fingerprint(prep.scenario, prep.data, prep.plans, comm.Get_size(), backend)
    source = Path(resume) if resume is not None else None
    target = Path(folder) if folder is not None else source
    assert target is not None
    answer: tuple[str, Any] = ("ok", None)
    if comm.Get_rank() == 0:
        try:
            answer = ("ok", _read_manifest(source, prints) if source else None)
            _prepare_folder(target, source, force)
        except CheckpointError as e:
            answer = ("error", str(e))
    answer = comm.bcast(answer)
    if answer[0] == "error":
        raise CheckpointError(answer[1])
    resumed = answer[1]
    target.mkdir(parents=True, exist_ok=True)  # (a node's own folder, where not shared)
    ck = Checkpoints(comm, target, every or (resumed or {}).get("every", 1), prep.plans,
                     prints, resumed)
    if source is None:
        if force:  # starting afresh: this rank's files of an earlier run go
            for old in target.glob(f"*.rank{ck.rank}.period*.npz"):
                old.unlink()
        return ck
    running = resumed["running"]
    if running:
        path = ck.own_file(running["strategy"], int(running["period"]), source)
        if not path.is_file():
            raise CheckpointError(f"--resume: {path} (rank {ck.rank}'s state) is missing: "
                                  "every rank must see the checkpoint folder")
    ck.resume_from(source)
    return ck


def _read_manifest(source: Path, prints: dict[str, Any]) -> dict[str, Any]:
    path = source / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"--resume {source}: no checkpoint there ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"--resume: {path} cannot be read: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"--resume: {path} is not a checkpoint of this version "
                              f"(format {FORMAT})")
    theirs = manifest.get("run", {})
    for key, ours in prints.items():
        if theirs.get(key) != ours:
            what = ("the scenario file changed since" if key == "file_sha256" else
                    f"its {key} is {theirs.get(key)!r}, this run's is {ours!r}: it is of "
                    "another run than")
            raise CheckpointError(f"--resume {source}: {what} the checkpoint; resume with the "
                                  "same scenario, strategies, backend and number of ranks")
    tags = tags_of(prints["strategies"])
    for name in manifest.get("finished", {}):
        if not (source / f"{tags[name]}.weights.npz").is_file():
            raise CheckpointError(f"--resume: {source / (tags[name] + '.weights.npz')} "
                                  f"({name}'s final weights) is missing")
    return manifest


def _prepare_folder(target: Path, source: Path | None, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"--checkpoint {target}: exists and is not a folder")
    if source is not None and target.resolve() == source.resolve():
        return
    if (target / MANIFEST).exists():
        if not force:
            raise CheckpointError(f"--checkpoint {target}: holds a checkpoint already; continue "
                                  f"it with --resume {target}, or pass --force to start afresh")
        (target / MANIFEST).unlink()
        for old in target.glob("*.weights.npz"):
            old.unlink()


class Checkpoints:
    """One run's checkpoint folder (every rank holds one); collective where it says so."""

    def __init__(self, comm: MPI.Comm, folder: Path, every: int, plans: list[Plan],
                 prints: dict[str, Any], resumed: dict[str, Any] | None = None):
        self.comm, self.folder, self.every = comm, folder, every
        self.rank = comm.Get_rank()
        self.tags = tags_of([p.strategy for p in plans])
        self.manifest: dict[str, Any] = {"format": FORMAT, "run": prints, "every": every,
                                         "running": None, "finished": {}}
        self.weights: dict[str, Any] = {}  # rank 0: finished strategies' whole weights
        self.resumed = resumed  # the manifest resumed from
        self.source: Path | None = None  # its folder
        self._mine: dict[str, Path] = {}  # this rank's latest file per strategy

    # ---- resuming ----------------------------------------------------------------------------
    def resume_from(self, source: Path) -> None:
        """Take over what ``source``'s manifest says (its finished strategies on rank 0)."""
        assert self.resumed is not None
        self.source = source
        self.manifest["finished"] = dict(self.resumed["finished"])
        if self.rank != 0:
            return
        for name in self.manifest["finished"]:
            path = source / f"{self.tags[name]}.weights.npz"
            try:
                with np.load(path) as f:
                    self.weights[name] = unflat({k: f[k] for k in f.files})
            except (OSError, ValueError) as e:
                raise CheckpointError(f"--resume: {path} cannot be read: {e}") from None

    def finished(self, strategy: str) -> dict[str, Any] | None:
        return self.manifest["finished"].get(strategy)

    def own_file(self, strategy: str, period: int, folder: Path | None = None) -> Path:
        return (folder or self.folder) / f"{self.tags[strategy]}.rank{self.rank}.period{period}.npz"

    def restore(self, plan: Plan, obj: Any) -> int:
        """The period to start ``plan`` at: 0, or the resumed one with ``obj``'s state loaded."""
        running = (self.resumed or {}).get("running")
        if not running or running["strategy"] != plan.strategy or self.source is None:
            return 0
        period = int(running["period"])
        path = self.own_file(plan.strategy, period, self.source)
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        if int(arrays.pop("period")) != period:
            raise CheckpointError(f"{path}: holds another period than {MANIFEST} names")
        load_state(obj, arrays, str(path))
        if self.source.resolve() == self.folder.resolve():
            self._mine[plan.strategy] = path  # superseded by the next checkpoint here
        return period

    # ---- writing -----------------------------------------------------------------------------
    def after_period(self, plan: Plan, done: int, periods: int, obj: Any) -> None:
        """Collective: a checkpoint when ``done`` periods are a multiple of N (not the last)."""
        if done % self.every or done >= periods:
            return
        path = self.own_file(plan.strategy, done)
        _save_npz(path, {**state_of(obj), "period": np.array(done)})
        xcomm.barrier(self.comm)  # every rank's file is on disk
        self.manifest["running"] = {"strategy": plan.strategy, "period": done,
                                    "periods": periods}
        self._commit()
        self._drop_previous(plan.strategy, path)

    def finish(self, plan: Plan, entry: dict[str, Any], whole: dict[str, Any] | None) -> None:
        """Collective: ``plan`` is done; rank 0 records its entry and its whole weights."""
        if self.rank == 0:
            self.weights[plan.strategy] = whole or {}
            self.manifest["finished"][plan.strategy] = entry
        self.manifest["running"] = None
        self._commit()
        self._drop_previous(plan.strategy, None)

    def _commit(self) -> None:
        if self.rank == 0:
            for name in self.manifest["finished"]:
                path = self.folder / f"{self.tags[name]}.weights.npz"
                if not path.exists():
                    _save_npz(path, flat(self.weights.get(name, {})))
            _save_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=1,
                                                          default=float) + "\n")
        xcomm.barrier(self.comm)  # the manifest names the new files from here on

    def _drop_previous(self, strategy: str, latest: Path | None) -> None:
        old = self._mine.pop(strategy, None)
        if old is not None and old != latest:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        if latest is not None:
            self._mine[strategy] = latest


# ---- a rank's state as flat arrays ---------------------------------------------------------

def state_of(obj: Any) -> dict[str, np.ndarray]:
    """Everything a rank (RankRunner) or a parameter-server rank (ServerRunner) carries from
    one period to the next, as host arrays."""
    if hasattr(obj, "layers"):
        k = obj.k
        out = {}
        for name, layer in obj.layers.items():
            for key, v in layer.params.items():
                out[f"param/{name}/{key}"] = np.asarray(k.to_host(v))
            for key, v in layer.velocity.items():
                out[f"velocity/{name}/{key}"] = np.asarray(k.to_host(v))
        for seg, s in obj.segments.items():
            if s.grad is not None:
                raise CheckpointError(f"ZeRO segment {seg} holds gradients between periods")
            out[f"segment/{seg}/param"] = np.asarray(k.to_host(s.param))
            out[f"segment/{seg}/velocity"] = np.asarray(k.to_host(s.velocity))
        if obj.ps_ranks:
            out["versions"] = np.array(obj.versions, np.int64)
        return out
    return {"server/w": obj.w, "server/v": obj.v, "server/version": np.array(obj.version)}


def load_state(obj: Any, arrays: dict[str, np.ndarray], where: str) -> None:
    """Put ``state_of``'s arrays back into ``obj``, which must hold the same things."""
    mine = state_of(obj)
    if mine.keys() != arrays.keys():
        extra = sorted(arrays.keys() ^ mine.keys())[:3]
        raise CheckpointError(f"{where}: does not hold this rank's state ({', '.join(extra)} "
                              "differ): it was written by another plan")
    for key, have in mine.items():
        if have.shape != arrays[key].shape or have.dtype != arrays[key].dtype:
            raise CheckpointError(f"{where}: {key} is {arrays[key].dtype}{arrays[key].shape}, "
                                  f"this rank holds {have.dtype}{have.shape}")
    if not hasattr(obj, "layers"):
        obj.w[...] = arrays["server/w"]
        obj.v[...] = arrays["server/v"]
        obj.version = int(arrays["server/version"])
        return
    k = obj.k
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind in ("param", "velocity"):
            name, _, p = rest.rpartition("/")
            store = obj.layers[name].params if kind == "param" else obj.layers[name].velocity
            store[p] = k.to_device(np.ascontiguousarray(value))
        elif kind == "segment":
            seg, _, what = rest.rpartition("/")
            setattr(obj.segments[seg], what, k.to_device(np.ascontiguousarray(value)))
    if "versions" in arrays:
        obj.versions = [int(v) for v in arrays["versions"]]


def flat(whole: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{layer: {key: array}}`` as ``.npz`` names ``layer/key`` (as ``--weights`` writes)."""
    return {f"{layer}/{k}": v for layer, params in whole.items() for k, v in params.items()}


def unflat(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, v in arrays.items():
        layer, _, k = name.rpartition("/")
        out.setdefault(layer, {})[k] = v
    return out


# ---- atomic files ----------------------------------------------------------------------------

def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _save_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)

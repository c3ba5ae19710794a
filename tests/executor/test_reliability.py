"""What a job does when a rank dies, with real ranks under the documented launch line
(``mpiexec -disable-auto-cleanup``): a rank killed with SIGKILL mid-run is named and the
synchronous job aborts within 10 s, keeping the Results of the strategies that had finished;
Downpour goes on without a killed worker and exits 0; a run killed after a checkpoint resumes to
exactly the weights of a run never interrupted; bad fault-injection values are one clear line.

Every launch runs in its own process group with a timeout that fails the test rather than
hangs (as ``tests/procs.py`` does). A test kills a rank from outside: it finds the rank's
process by its ``PMI_RANK`` among the processes carrying the test's own marker variable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.executor.test_execute import launch

LAUNCH = ["-disable-auto-cleanup"]  # the documented launch line (docs/reliability.md)
ABORT_WITHIN_S = 10.0

SYNC = """\
name: reliability
seed: 7
model: {zoo: mlp, params: {sizes: [64, 32, 16, 10]}}
cluster: {nodes: 1, devices_per_node: 4, device: cpu_core, intra_link: shm}
training: {batch_size: 32, iterations: ITERATIONS, warmup_iterations: 2, learning_rate: 0.05,
           momentum: 0.9}
data: {kind: digits}
strategies:
  - {name: pp2, scheme: pipeline, stages: 2, micro_batches: 4, schedule: 1f1b}
  - {name: dp2-zero2, scheme: data_parallel, devices: 2, zero: 2}
  - {name: tp2, scheme: tensor, devices: 2}
  - {name: tp4, scheme: tensor, devices: 4}
  - {name: dp4-ring, scheme: data_parallel, devices: 4, exchange: ring}
"""

DOWNPOUR = """\
name: reliability downpour
seed: 3
model: {zoo: mlp, params: {sizes: [64, 32, 10]}}
cluster: {nodes: 1, devices_per_node: 4, device: cpu_core, intra_link: shm,
          parameter_servers: {hosts: 1, device: cpu_core, nic: eth_10g}}
training: {batch_size: 18, iterations: 10, warmup_iterations: 0, learning_rate: 0.1,
           momentum: 0.0}
data: {kind: digits}
strategies:
  - {name: downpour-3, scheme: downpour, workers: 3, n_fetch: 2, n_push: 1}
  - {name: sync-4, scheme: data_parallel, devices: 4}
  - {name: downpour-1, scheme: downpour, workers: 1}
"""


def scenario(tmp_path: Path, text: str, iterations: int = 40) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("ITERATIONS", str(iterations)))
    return path


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def rank_process(tag: str, rank: int) -> int | None:
    """The process of MPI rank ``rank`` in the job whose processes carry ``tag``: the one whose
    parent has the same rank (its supervisor), or the only one."""
    found: dict[int, tuple[int, int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            parent = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        ranks = [e for e in env if e.startswith(b"PMI_RANK=")]
        if f"PARASIM_TEST_RUN={tag}".encode() in env and ranks:
            found[int(d.name)] = (int(ranks[0].split(b"=")[1]), parent)
    mine = [pid for pid, (r, _) in found.items() if r == rank]
    inner = [pid for pid in mine if found.get(found[pid][1], (None,))[0] == rank]
    return (inner or mine or [None])[0]


def launch_and_kill(ranks: int, args: list[str], rank: int, when: Callable[[], bool],
                    timeout: float, env: dict[str, str] | None = None
                    ) -> tuple[subprocess.CompletedProcess, float]:
    """``mpiexec -disable-auto-cleanup -n RANKS parasim ARGS``; once ``when()`` holds, SIGKILL
    rank ``rank``. Returns the finished run and the seconds from the kill to its end."""
    tag = uuid.uuid4().hex
    cmd = ["mpiexec", *LAUNCH, "-n", str(ranks), sys.executable, "-m", "parasim", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PARASIM_TEST_RUN": tag,
                **(env or {})}
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline, killed = time.monotonic() + timeout, None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if killed is None and when():
                pid = rank_process(tag, rank)
                assert pid is not None, f"no process of rank {rank} found"
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s\n{out[-3000:]}\n"
                        f"{err[-3000:]}")
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, f"the run ended before the kill:\n{out[-2000:]}\n{err[-2000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - killed


def final_weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_a_rank_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path):
    """-n 2: the pipeline finishes, the ZeRO-2 data-parallel run is killed (SIGKILL on rank 1)
    after a checkpoint; the abort names rank 1 within 10 s and the pipeline's Result is on disk;
    the resumed run takes the pipeline as it was, goes on with ZeRO-2 from the checkpoint and
    runs the tensor split, ending with exactly the weights of a run never interrupted."""
    path = scenario(tmp_path, SYNC)
    base = ["execute", str(path), "--backend", "reference"]
    whole = tmp_path / "whole.npz"
    done = launch(2, [*base, "--weights", str(whole)], launcher_args=LAUNCH)
    assert done.returncode == 0, done.stderr

    ck, killed_json = tmp_path / "ck", tmp_path / "killed.json"
    running = lambda: ((read_json(ck / "checkpoint.json").get("running") or {})  # noqa: E731
                       .get("strategy") == "dp2-zero2")
    # rank 0's kernels 20 times slower: the kill lands well before the run could end
    run, after = launch_and_kill(2, [*base, "--json", str(killed_json), "--checkpoint", str(ck),
                                     "--checkpoint-every", "10"], 1, running, timeout=180,
                                 env={"PARASIM_SLOWDOWN": "20@0"})
    assert run.returncode != 0
    assert after < ABORT_WITHIN_S, run.stderr
    assert "rank 1 lost (no heartbeat for 5 s)" in run.stderr
    assert "rank 1 (process" in run.stderr and "was killed by signal 9 (SIGKILL)" in run.stderr
    kept = read_json(killed_json)
    assert kept["partial"] is True and kept["pending"] == ["dp2-zero2", "tp2"]
    assert [e["strategy"] for e in kept["results"]] == ["pp2"]
    assert "rank 1 lost" in kept["failure"]
    assert json.loads((ck / "checkpoint.json").read_text())["running"]["period"] % 10 == 0

    resumed, out = tmp_path / "resumed.npz", tmp_path / "resumed.json"
    done = launch(2, [*base, "--resume", str(ck), "--weights", str(resumed), "--json",
                      str(out)], launcher_args=LAUNCH)
    assert done.returncode == 0, done.stderr
    a, b = final_weights(whole), final_weights(resumed)
    assert a.keys() == b.keys() and len(a) == 3 * 6  # 3 strategies x 3 layers x (w, b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    result = read_json(out)
    assert result["partial"] is False and result["resumed_from"] == str(ck)
    entries = {e["strategy"]: e for e in result["results"]}
    assert entries["pp2"] == kept["results"][0]  # as measured before the kill
    assert entries["dp2-zero2"]["resumed_at_period"] % 10 == 0
    assert "resumed_at_period" not in entries["tp2"]
    assert sorted(p.name for p in ck.iterdir()) == [
        "00-pp2.weights.npz", "01-dp2-zero2.weights.npz", "02-tp2.weights.npz",
        "checkpoint.json"]


def test_a_rank_killed_at_4_ranks_aborts_naming_it_and_keeps_finished_results(tmp_path):
    path = scenario(tmp_path, SYNC)
    out = tmp_path / "r.json"
    first_done = lambda: bool(read_json(out).get("results"))  # noqa: E731
    run, after = launch_and_kill(4, ["execute", str(path), "--backend", "reference", "--json",
                                     str(out)], 2, first_done, timeout=240,
                                 env={"PARASIM_SLOWDOWN": "20@0"})
    assert run.returncode != 0
    assert after < ABORT_WITHIN_S, run.stderr
    assert "rank 2 lost (no heartbeat for 5 s)" in run.stderr
    kept = read_json(out)
    assert kept["partial"] is True and kept["pending"] == ["dp4-ring"]
    assert [e["strategy"] for e in kept["results"]] == ["tp4"]
    assert kept["results"][0]["devices"] == 4 and "rank 2 lost" in kept["failure"]


def test_downpour_goes_on_without_a_killed_worker_and_exits_0(tmp_path):
    """Worker rank 2 is killed with SIGKILL at the start of its period 3: the others finish,
    the Result records the loss and the samples rank 2 had pushed, the synchronous strategy
    after it is not run, and the job exits 0."""
    path = scenario(tmp_path, DOWNPOUR)
    out = tmp_path / "d.json"
    done = launch(4, ["execute", str(path), "--backend", "reference", "--json", str(out),
                      "--lost-after", "2"], timeout=180, launcher_args=LAUNCH,
                  env={"PARASIM_INJECT_FAULT": "kill@2:3"})
    assert done.returncode == 0, done.stderr
    result = read_json(out)
    e = result["results"][0]
    per_worker = 6 * 2 * 10  # samples per step x steps per period x periods
    pushed = 6 * 2 * 3  # periods 0-2, every step pushed (n_push 1)
    assert e["failures"] == [{"rank": 2, "what": "lost (its heartbeat stopped); the others "
                              "went on", "samples_pushed": pushed}]
    assert e["samples_processed"] == 2 * per_worker + pushed
    assert result["lost_ranks"] == [2] and result["partial"] is False
    assert "sync-4: not run: rank 2 lost" in result["skipped"]
    assert "rank 2 (process" in done.stderr and "rank 2 lost (no heartbeat for 2 s)" in done.stderr


@pytest.mark.parametrize("variable,value,expected", [
    ("PARASIM_INJECT_FAULT", "kil@1", "the kind must be one of raise, stall, exit, kill, term "
                                      "(KIND@RANK or KIND@RANK:PERIOD)"),
    ("PARASIM_INJECT_FAULT", "kill@2", "rank 2 is not one of the 2 rank(s) launched"),
    ("PARASIM_SLOWDOWN", "inf@1", "the factor must be a finite number of at least 1"),
    ("PARASIM_SLOWDOWN", "nan@0", "the factor must be a finite number of at least 1"),
])
def test_a_bad_fault_variable_is_one_clear_line(tmp_path, variable, value, expected):
    path = scenario(tmp_path, SYNC)
    done = launch(2, ["execute", str(path), "--backend", "reference"], timeout=60,
                  env={variable: value})
    assert done.returncode == 2
    assert done.stderr.strip() == f"parasim: error: {variable}='{value}': {expected}"


def test_checkpointing_downpour_is_a_clear_error(tmp_path):
    path = scenario(tmp_path, DOWNPOUR)
    done = launch(2, ["execute", str(path), "--backend", "reference", "--checkpoint",
                      str(tmp_path / "ck"), "--checkpoint-every", "2"], timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("parasim: error: --checkpoint: downpour-1 is downpour, "
                                  "asynchronous") and "Traceback" not in done.stderr
    assert not (tmp_path / "ck").exists()

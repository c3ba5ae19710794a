"""``parasim search --validate N`` with real ranks: rank 0 searches while the others sleep, every
rank executes the picks that run on the launched ranks, rank 0 prints predicted against measured
order and writes both into the Result. (Whether the orders agree is a property of the prediction,
calibrated or not, and of a quiet machine: ``benchmarks/search_validate.py`` territory, not this
test's.)
Every job runs in its own session and is killed as a group on timeout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from executor.search_validate import compare, picks
from tests.procs import run_group

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


def parasim(n: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1"}
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "parasim", *args]
    return run_group(cmd, TIMEOUT_S, cwd=ROOT, env=env)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
def test_validate_executes_the_picks_and_compares_the_orders(tmp_path):
    out = tmp_path / "search.json"
    r = parasim(2, "search", "scenarios/executor_mlp.yaml", "--top", "6", "--validate", "2",
                "--timeout", "60", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "validation: the executed plans, predicted against measured" in r.stdout
    # searched without a profile: the console says the comparison is uncalibrated
    assert "parasim: warning: the prediction used the catalogue's figures" in r.stderr
    result = json.loads(out.read_text())
    v = result["validation"]
    executed = [p["strategy"] for p in v["plans"]]
    ranked = [e["strategy"] for e in result["results"] if e["devices"] == 2]
    assert executed[:2] == ranked[:2] and len(executed) >= 3  # the top 2 and lower ones
    assert all(p["measured_samples_per_s"] > 0 for p in v["plans"])
    assert {e["strategy"] for e in v["measured"]["results"]} == set(executed)
    assert v["measured_fastest"] in executed


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
def test_validate_says_when_no_pick_runs_on_the_launched_ranks():
    r = parasim(3, "search", "scenarios/executor_mlp.yaml", "--top", "2", "--validate", "2")
    assert r.returncode == 2
    assert "none of the 2 simulated plans runs on 3 ranks" in r.stderr
    assert "Traceback" not in r.stderr


def test_picks_and_the_verdict():
    entries = [{"strategy": s, "devices": d, "throughput_samples_per_s": t}
               for s, d, t in (("a", 4, 9.0), ("b", 4, 8.0), ("x", 2, 7.5), ("c", 4, 7.0),
                               ("d", 4, 6.0), ("e", 4, 5.0), ("f", 4, 4.0))]
    chosen = picks({"results": entries}, 4, 2)
    assert [e["strategy"] for e in chosen] == ["a", "b", "e", "f"]  # top 2, middle, last
    measured = {"results": [{"strategy": "a", "throughput_samples_per_s": 95.0},
                            {"strategy": "b", "throughput_samples_per_s": 100.0},
                            {"strategy": "e", "throughput_samples_per_s": 50.0},
                            {"strategy": "f", "throughput_samples_per_s": 40.0}]}
    v = compare(chosen, measured)
    assert v["measured_fastest"] == "b" and v["pick_within_10_percent"]
    assert [p["measured_rank"] for p in v["plans"]] == [2, 1, 3, 4]
    measured["results"][0]["throughput_samples_per_s"] = 80.0
    assert not compare(chosen, measured)["pick_within_10_percent"]

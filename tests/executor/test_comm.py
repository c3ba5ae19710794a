"""``executor.mpi.collectives`` with real ranks: ``mpi_cases/comm_cases.py`` under ``mpiexec -n 1,
2, 3, 4``.

Two "nodes" on one host come from MPICH's cliques: ``MPIR_CVAR_NUM_CLIQUES=2`` splits the ranks
into halves ({0,1}, {2,3}), ``MPIR_CVAR_ODD_EVEN_CLIQUES=1`` into {0,2}, {1,3};
``Split_type(COMM_TYPE_SHARED)`` follows them, so the hierarchical all-reduce runs its real
inter-node ring. Hydra oversubscribes cores by default. Every job runs in its own session and is
killed as a group on timeout, so a deadlock fails the test instead of hanging CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import run_group

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "mpi_cases" / "comm_cases.py"
TIMEOUT_S = 120


def mpirun(n: int, *args: str, env: dict[str, str] | None = None
           ) -> tuple[subprocess.CompletedProcess[str], float]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "NUMBA_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, str(CASES), *args]
    start = time.monotonic()
    done = run_group(cmd, TIMEOUT_S, cwd=ROOT, env=full_env)
    return done, time.monotonic() - start


def expected_checks(p: int) -> int:
    """Per rank and size: 4 all-reduces, 3 same-bits checks (not ``mpi``), reduce-scatter,
    all-gather, p broadcasts, send/recv; then the 2-D all-reduce, the blocking send/recv (with
    another rank), the barrier and the tags."""
    sizes = {0, 1, 5, p - 1, 1000, 100003}
    return p * (len(sizes) * (10 + p) + 3 + (p > 1))


@pytest.mark.parametrize(("n", "env", "layout"), [
    (1, {}, "1x1"),
    (2, {}, "1x2"),
    (4, {}, "1x4"),
    (4, {"MPIR_CVAR_NUM_CLIQUES": "2"}, "2x2"),
    (4, {"MPIR_CVAR_ODD_EVEN_CLIQUES": "1"}, "2x2"),
    (3, {"MPIR_CVAR_NUM_CLIQUES": "2"}, "uneven"),  # nodes of 2 and 1: hierarchical = ring
], ids=["n1", "n2", "n4", "n4-2nodes-halves", "n4-2nodes-odd-even", "n3-uneven-nodes"])
def test_collectives_match_closed_forms(n: int, env: dict[str, str], layout: str) -> None:
    res, _ = mpirun(n, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == [f"nodes {layout}", f"OK {expected_checks(n)}"], \
        res.stdout


@pytest.mark.parametrize(("n", "env"), [(2, {}), (3, {}), (4, {"MPIR_CVAR_NUM_CLIQUES": "2"})],
                         ids=["n2", "n3", "n4-2nodes"])
def test_quiet_waits_give_the_same_results(n: int, env: dict[str, str]) -> None:
    # every wait tests its request and sleeps between tests (executor/mpi/collectives.py,
    # "waiting"):
    # the same closed forms, through the non-blocking calls
    res, _ = mpirun(n, "quiet", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[1] == f"OK {expected_checks(n)}", res.stdout


@pytest.mark.parametrize("n", [1, 2])
def test_ranks_sharing_one_core_are_oversubscribed(n: int) -> None:
    res, _ = mpirun(n, "one-core")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"oversubscribed {n > 1}"


@pytest.mark.parametrize("n", [2, 4])
def test_exception_on_one_rank_aborts_the_job(n: int) -> None:
    # The other ranks wait in a ring all-reduce that the failing rank never joins.
    res, elapsed = mpirun(n, "fail", str(n - 1))
    assert res.returncode != 0
    assert f"rank {n - 1}: ValueError: injected failure" in res.stderr
    assert elapsed < 30, f"abort took {elapsed:.1f} s"

"""The CUDA backend without a GPU: ``cuda_cases.py`` in a child pytest under numba's CUDA
simulator, one test here per case function; and the clear error when there is neither a GPU nor
the simulator.

Why a child process: numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported, and
other test modules import numba (for the CPU kernels) before this one runs, so the variable cannot
be switched on inside this process. The child runs all the cases once (about 40 s: the simulator
spends about 0.1 ms on each simulated thread) and reports them as JUnit XML, read back here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import run_group

pytest.importorskip("numba.cuda")

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "cuda_cases.py"
TIMEOUT_S = 600
CASE_NAMES = [node.name for node in ast.parse(CASES.read_text()).body
              if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


def child_env(simulate: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulate:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return env


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``cmd`` in its own session, killed as a group if it outlives TIMEOUT_S."""
    return run_group(cmd, TIMEOUT_S, cwd=ROOT, env=env)


@dataclass
class ChildRun:
    outcomes: dict[str, tuple[str, str]]  # case id -> (passed/failure/error/skipped, message)
    output: str

    def __repr__(self) -> str:  # pytest prints fixtures in failures: keep it to a line
        return f"ChildRun({len(self.outcomes)} cases)"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> ChildRun:
    """One run of all the cases under the simulator."""
    report = tmp_path_factory.mktemp("cuda") / "cases.xml"
    res = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", str(CASES)], child_env(simulate=True))
    outcomes: dict[str, tuple[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            bad = [el for el in case if el.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name", "")] = (bad[0].tag, bad[0].text or "") if bad \
                else ("passed", "")
    return ChildRun(outcomes, f"exit status {res.returncode}\n{res.stdout[-20000:]}\n"
                              f"{res.stderr[-5000:]}")


def test_cases_found() -> None:
    assert len(CASE_NAMES) >= 15, CASE_NAMES


@pytest.mark.parametrize("case", CASE_NAMES)
def test_cuda_kernels_under_simulator(simulated: ChildRun, case: str) -> None:
    mine = {name: res for name, res in simulated.outcomes.items()
            if name == case or name.startswith(case + "[")}
    assert mine, f"{case} did not run in the child pytest:\n{simulated.output}"
    failed = {name: res for name, res in mine.items() if res[0] != "passed"}
    assert not failed, "\n\n".join(f"{name}: {kind}\n{text}"
                                   for name, (kind, text) in failed.items())


def test_without_gpu_or_simulator_the_backend_says_so() -> None:
    script = (
        "from numba import cuda\n"
        "if cuda.is_available():\n"
        "    print('GPU')\n"
        "else:\n"
        "    from executor.kernels import get_backend\n"
        "    try:\n"
        "        get_backend('cuda')\n"
        "    except RuntimeError as e:\n"
        "        print('RuntimeError:', e)\n"
    )
    res = run([sys.executable, "-c", script], child_env(simulate=False))
    assert res.returncode == 0, res.stderr
    if res.stdout.strip() == "GPU":
        pytest.skip("a CUDA GPU is present")
    assert res.stdout.strip() == ("RuntimeError: no CUDA GPU found (set NUMBA_ENABLE_CUDASIM=1 "
                                  "to run the CUDA kernels on the CPU simulator)"), res.stdout

"""Running a command the way the tests launch real processes: in its own session, killed as a
group (mpiexec and every rank) and failed if it outlives its timeout; never a hang."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


def run_group(cmd: list[str] | str, timeout: float, *, cwd: Path | str | None = None,
              env: dict[str, str] | None = None, shell: bool = False,
              preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, shell=shell, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=preexec_fn)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        shown = cmd if isinstance(cmd, str) else " ".join(map(str, cmd))
        pytest.fail(f"{shown} did not finish in {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

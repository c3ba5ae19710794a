"""README.md's commands, as a newcomer runs them: each install line in a fresh virtual
environment (packages from the registry), then the commands of its block, in a copy of the
checkout (what they write does not land in the tree). The set-up pair with the core install; the
executor block, the calibrate/validate block (on the tiny grid) and the time-to-accuracy block
with the executor's extras.
Benchmarks are left out (they take minutes and print figures, ``benchmarks/``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

from tests.procs import run_group

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # one command; installs from a warm pip cache take a minute


def block(heading: str) -> list[str]:
    """The commands of the first ``sh`` block under ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    at = text.index(heading)
    found = re.search(r"```sh\n(.*?)```", text[at:], flags=re.S)
    assert found, f"no sh block under {heading!r}"
    return [ln.strip() for ln in found.group(1).splitlines() if ln.strip()]


def checkout_copy(dest: Path) -> Path:
    """The tracked files of the checkout (no virtual environment, no build outputs)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def run(cmd: str, where: Path, env_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(env_dir), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    if cmd.startswith("pip "):
        cmd = "python -m " + cmd  # the environment's own pip
    return run_group(cmd, TIMEOUT_S, cwd=where, env=env, shell=True)


def fresh(tmp_path: Path) -> tuple[Path, Path]:
    where = checkout_copy(tmp_path / "parasim")
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    return where, env_dir


def play(commands: list[str], where: Path, env_dir: Path) -> dict[str, str]:
    outputs = {}
    for cmd in commands:
        r = run(cmd, where, env_dir)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, f"{cmd}\n{r.stderr[-3000:]}"
        outputs[cmd] = r.stdout
    return outputs


def test_the_set_up_pair_works_with_the_core_install_alone(tmp_path):
    pair = block("## Set up and run (two commands)")
    assert pair[0] == "pip install -e ." and pair[1].startswith("parasim simulate ")
    where, env_dir = fresh(tmp_path)
    out = play(pair, where, env_dir)
    assert "samples/s" in out[pair[1]]
    # the core install has no executor: its commands say which extra to install, in one line
    r = run("parasim execute scenarios/executor_mlp.yaml", where, env_dir)
    assert r.returncode == 2 and "pip install -e '.[exec,mpi]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_executor_and_calibration_blocks_work_with_their_install_line(tmp_path):
    executor = block("## Run it for real: the executor")
    assert executor[0] == 'pip install -e ".[exec,mpi]"'
    calibrate = [c for c in block("## Calibrate, then check the prediction against the run")
                 if not c.startswith("python benchmarks/")]
    assert calibrate[0].startswith("mpiexec -n 2 parasim calibrate")
    # the same measurements, fewer shapes and repeats; and written even when the machine is
    # busy (the suite must pass beside other work: refusing a busy machine is calibrate's own
    # test, tests/executor/test_calibrate.py)
    calibrate[0] += " --grid tiny --accept-noisy"
    to_target = [c for c in block("## Time to accuracy") if not c.startswith("python benchmarks/")]
    where, env_dir = fresh(tmp_path)
    out = play(executor + calibrate + to_target, where, env_dir)
    assert "dp-ring" in out[executor[1]]
    for name in ("measured.json", "predicted.json", "report.html", "profile.yaml",
                 "validation.html", "to_target.json", "digits_convergence.yaml"):
        assert (where / name).stat().st_size > 0, name
    # the sweep line README quotes
    assert "dbn: fastest to target at 8 devices (0.0469 s); at 40 devices each step is " \
        "2.79x faster but it needs 4.25x the steps" in out[to_target[1]]

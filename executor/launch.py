"""What every command run under ``mpiexec`` does first: load MPI (with a clean error naming the
extra to install when it is missing), have every rank check its input alike (rank 0 prints the
first failure, every rank exits 2), and get the kernels' backend."""

from __future__ import annotations

import sys
from typing import Any

from simulator.errors import UsageError


def mpi():  # noqa: ANN202
    try:
        import numba  # noqa: F401
        from mpi4py import MPI
    except ImportError as e:
        raise UsageError(f"this command needs {e.name}: pip install -e '.[exec,mpi]' (or mpi4py "
                         "built against your cluster's MPI)") from None
    return MPI


def agree(comm: Any, failure: str | None) -> bool:
    """Every rank's input check; rank 0 prints the first failure. True when all passed."""
    failures = comm.allgather(failure)
    if any(failures):
        if comm.Get_rank() == 0:
            print(f"parasim: error: {next(f for f in failures if f)}", file=sys.stderr)
        return False
    return True


def backend_named(name: str) -> Any:
    from executor.interpreter.model import ExecutorError
    from executor.kernels import get_backend

    try:
        return get_backend(name)
    except RuntimeError as e:
        raise ExecutorError(f"--backend {name}: {e}") from None

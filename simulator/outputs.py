"""Where a command's outputs go: files written whole (through a temporary file of a unique name
in the same folder, gzipped when the name ends in ``.gz``), ``-`` for standard output (the
tables then go to standard error), existing files kept unless ``--force``, and every output
checked before the work starts (a folder, a missing or unwritable folder)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from simulator.errors import UsageError

STDOUT = "-"  # an output written to standard output instead of a file
JSON_OUT = " (- for standard output; gzipped when FILE ends in .gz)"


def human(args: argparse.Namespace):  # noqa: ANN202
    """Where the tables and messages go: standard error when an output is standard output
    (``--json -``), so that what is piped is that output alone."""
    outs = [getattr(args, k, None) for k in ("json", "trace", "report")]
    return sys.stderr if STDOUT in outs else sys.stdout


def check_outputs(paths: list[str | None], force: bool) -> None:
    """Before any work: each output can be written (its folder exists and is writable, it is
    not a folder, an existing file only with ``force``) and at most one is standard output."""
    if sum(p == STDOUT for p in paths) > 1:
        raise UsageError("only one output can be standard output (-)")
    for p in paths:
        if p is None or p == STDOUT:
            continue
        path = Path(p)
        if path.is_dir():
            raise UsageError(f"{p} is a folder; give a file name")
        if path.exists() and not force:
            raise UsageError(f"{p} exists; pass --force to overwrite it")
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"{p}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):  # the file itself is replaced, not opened
            raise UsageError(f"{p}: the folder {folder} is not writable")


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a new temporary file of a unique name in the same folder, then rename
    it over ``path``: a reader never sees half a file, a failure leaves the old one in place,
    and no existing file (a link, or a user's file that happens to be called ``path.tmp``) is
    written through or consumed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; outputs are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str, data: Any, compact: bool = False) -> None:
    """Write JSON atomically (``write_atomic``): ``compact`` without indentation or spaces,
    gzipped when ``path`` ends in ``.gz``, to standard output for ``-``."""
    text = (json.dumps(data, separators=(",", ":"), default=float) if compact
            else json.dumps(data, indent=1, default=float)) + "\n"
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    raw = text.encode("utf-8")
    if path.endswith(".gz"):
        import gzip

        raw = gzip.compress(raw, mtime=0)
    write_atomic(path, raw)


def write_outputs(result: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        write_json(args.json, result)
        written("result", args.json, args)
    if args.report:
        from reports import build_report

        source = args.json if args.json not in (None, STDOUT) else "(in memory)"
        write_text(args.report, build_report([result], [source]))
        written("report", args.report, args)


def written(what: str, path: str, args: argparse.Namespace, extra: str = "") -> None:
    if path != STDOUT:
        print(f"{what} written to {path}{extra}", file=human(args))


def write_text(path: str, text: str) -> None:
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomic(path, text.encode("utf-8"))

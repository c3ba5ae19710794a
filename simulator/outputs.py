"""Where a command's outputs go: files written whole (through a temporary file, gzipped when
the name ends in ``.gz``), ``-`` for standard output (the tables then go to standard error), and
existing files kept unless ``--force``."""

from __future__ import annotations

import argparse
import json
import sys
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
    if sum(p == STDOUT for p in paths) > 1:
        raise UsageError("only one output can be standard output (-)")
    for p in paths:
        if p is None or p == STDOUT:
            continue
        path = Path(p)
        if path.exists() and not force:
            raise UsageError(f"{p} exists; pass --force to overwrite it")
        if not path.parent.exists():
            raise UsageError(f"{p}: the folder {path.parent} does not exist")


def write_json(path: str, data: Any, compact: bool = False) -> None:
    """Write JSON through a temporary file (nothing half-written is left under ``path``):
    ``compact`` without indentation or spaces, gzipped when ``path`` ends in ``.gz``."""
    text = (json.dumps(data, separators=(",", ":"), default=float) if compact
            else json.dumps(data, indent=1, default=float)) + "\n"
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = Path(path + ".tmp")
    if path.endswith(".gz"):
        import gzip

        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        tmp.write_text(text)
    tmp.replace(path)


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
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)

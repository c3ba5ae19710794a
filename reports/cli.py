"""``parasim report RESULT.json... -o report.html``: the command-line front of :mod:`reports`.

Kept light: argparse only at import time; the report code (and plotly) load when the command
runs. The main CLI calls :func:`add_parser` and turns :class:`ReportError` into exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from reports.errors import ReportError

SHOWN_NOTES = 10  # warnings printed on the console; the page lists more


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` on the main parser's subcommands."""
    p = subparsers.add_parser(
        "report", help="build an HTML comparison report from Result files",
        description="Build one self-contained HTML page (works offline) comparing the "
                    "strategies of one or more Result files: predicted and, where present, "
                    "measured.")
    p.add_argument("results", nargs="+", metavar="RESULT.json",
                   help="Result files written by 'parasim simulate --json' (or the executor)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the HTML file to write")
    p.add_argument("--plotly-js", choices=("inline", "cdn", "directory"), default="inline",
                   help="where the page gets plotly.js (4.8 MB): inline in the page (works "
                   "offline; the default), from cdn.plot.ly, or from one copy written beside "
                   "the page and shared by every report in that folder (directory)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from reports import load_results
    from reports.page import render

    out = Path(args.output)
    check_output(out, args.force)
    results = load_results(args.results)
    mode = getattr(args, "plotly_js", "inline")
    page, notes = render(results, list(args.results), mode)
    for note in notes[:SHOWN_NOTES]:  # the page lists them too
        print(f"parasim: warning: {note}", file=sys.stderr)
    if len(notes) > SHOWN_NOTES:
        print(f"parasim: warning: and {len(notes) - SHOWN_NOTES:,} more parts not drawn "
              "(see the page's Not drawn section)", file=sys.stderr)
    write_atomic(out, page)
    if mode == "directory":
        write_plotly(out.parent)
    print(f"report written to {out}")
    return 0


def write_plotly(folder: Path) -> Path:
    """plotly.js beside the reports, once per version (a report with ``--plotly-js directory``
    reads it from there)."""
    from plotly.offline import get_plotlyjs

    from reports.page import plotly_file

    path = folder / plotly_file()
    if not path.exists():
        write_atomic(path, get_plotlyjs())
    return path


def check_output(out: Path, force: bool) -> None:
    if out.is_dir():
        raise ReportError(f"{out} is a folder; give a file name for the report")
    if out.exists() and not force:
        raise ReportError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise ReportError(f"{out}: the folder {out.parent} does not exist")


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a
    page, and a failure leaves the old file in place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a report is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

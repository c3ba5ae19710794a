"""A Result file's bytes into a JSON value, whatever the bytes: a file that is not UTF-8 text,
not JSON, nested deeper than any Result, or that holds an integer no float can hold is a
one-line :class:`ReportError` naming the file; nothing here raises anything else.

Python's ``json`` reads ``NaN``, ``Infinity`` and ``1e400`` as floats (the last as infinity):
they are kept here, and refused by the checks of the fields that would use them
(:mod:`reports.check`). An integer of more than ``MAX_DIGITS`` digits (which no float holds,
and which Python refuses to turn into text past 4,300 digits) is read as a :class:`HugeInt`,
an infinity that names its length in messages.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from reports.errors import HugeInt, ReportError, cut

MAX_DEPTH = 64  # a Result is 6 deep (results[i].timeline.spans[j][k]); anything deeper is not
MAX_DIGITS = 300  # floats end near 1.8e308: an integer up to 300 digits converts to one


def read_json(path: str) -> Any:
    """The JSON value in the file ``path`` (``.gz``: gzip-compressed). Nesting too deep for
    the parser is refused here; :func:`check_shape` (which every Result passes through)
    bounds the rest."""
    text = _text(path)
    try:
        value = json.loads(text, parse_int=_int)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})"
                          ) from None
    except RecursionError:
        raise ReportError(f"{path}: not a Result: nested more than {MAX_DEPTH} levels deep"
                          ) from None
    except ValueError as e:  # anything else the parser refuses
        raise ReportError(f"{path}: not JSON ({cut(str(e))})") from None
    return value


def _text(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{path}: no such file")
    if p.is_dir():
        raise ReportError(f"{path}: is a folder, not a Result file")
    try:
        if p.name.endswith(".gz"):  # as ``parasim simulate --json NAME.gz`` writes it
            import gzip

            with gzip.open(p, "rb") as f:
                raw = f.read()
        else:
            raw = p.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ReportError(f"{path}: cannot be read ({cut(str(e))})") from None
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as e:
        raise ReportError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start:,}), so not a Result") from None


def _int(digits: str) -> int | float:
    return int(digits) if len(digits.lstrip("-")) <= MAX_DIGITS else HugeInt(digits)


def check_shape(value: Any, source: str) -> None:
    """Refuse a value nested more than ``MAX_DEPTH`` levels deep (or holding itself), or one
    holding an integer too large for a float (only a Result built in memory can: a file's is
    read as a :class:`HugeInt`): the report's code may then walk, copy and print any part of
    what it keeps without running out of stack or of float range."""
    level = [value] if isinstance(value, (dict, list, tuple)) else []
    for _ in range(MAX_DEPTH):
        below = []
        for v in level:
            for item in v.values() if isinstance(v, dict) else v:
                if isinstance(item, (dict, list, tuple)):
                    below.append(item)
                elif type(item) is int and not -_LARGEST <= item <= _LARGEST:
                    raise ReportError(f"{source}: holds an integer of about "
                                      f"{item.bit_length() * 0.30103:,.0f} digits, too large "
                                      "for a number")
        if not below:
            return
        level = below
    raise ReportError(f"{source}: not a Result: nested more than {MAX_DEPTH} levels deep")


_LARGEST = 10**MAX_DIGITS - 1

"""The one error the report code raises for bad input: a one-line message naming the file and
the field (the command line prints it and exits 2), and how a value from a file is quoted in
such a message: as JSON, on one line, cut to about 80 characters, whatever its size."""

from __future__ import annotations

import json
import math
from typing import Any

SHOWN = 80  # characters of a value quoted in a message


class ReportError(Exception):
    """A Result file that cannot be read, or is not a Result."""


class HugeInt(float):
    """A JSON integer with more digits than any float holds (read as infinity, so that every
    number check refuses it), remembering its length for the message."""

    def __new__(cls, digits: str) -> HugeInt:
        value = super().__new__(cls, "-inf" if digits.startswith("-") else "inf")
        value.digits = len(digits.lstrip("-+"))
        return value

    def __getnewargs__(self) -> tuple[str]:  # copies keep the length
        return ("-" * (self < 0) + "9" * self.digits,)

    def __repr__(self) -> str:
        return f"a {self.digits:,}-digit integer"

    __str__ = __repr__


def cut(text: str, limit: int = SHOWN) -> str:
    """``text`` on one line (control characters escaped), at most ``limit`` characters."""
    head = text[:limit + 1]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head)
    return head if len(head) <= limit and len(text) <= limit else head[:limit - 3] + "..."


def show(v: Any, limit: int = SHOWN) -> str:
    """``v`` as JSON for a message, at most ``limit`` characters: a huge list is not written
    out to be cut, a NaN reads NaN, a 5,000-digit integer reads as its length."""
    return cut(_json(v, limit + 1, 0), limit)


def _json(v: Any, budget: int, depth: int) -> str:
    if isinstance(v, HugeInt):
        return repr(v)
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else {"nan": "NaN", "inf": "Infinity"}.get(
            str(v), "-Infinity")
    if isinstance(v, int):
        if v.bit_length() > 3 * budget:  # its decimal text would not be shown anyway
            return f"an integer of about {v.bit_length() * 0.30103:,.0f} digits"
        return str(v)
    if isinstance(v, str):
        return json.dumps(v[:budget], ensure_ascii=False) + ("..." if len(v) > budget else "")
    if depth > 8 or not isinstance(v, (dict, list, tuple)):
        return "..." if depth > 8 else cut(str(type(v).__name__), 20)
    pairs = isinstance(v, dict)
    parts, used = [], 2
    for item in v.items() if pairs else v:
        if used > budget:  # enough to fill the message: the rest is not looked at
            parts.append("...")
            break
        left = budget - used
        part = (f"{_json(str(item[0]), left, depth + 1)}: {_json(item[1], left, depth + 1)}"
                if pairs else _json(item, left, depth + 1))
        parts.append(part)
        used += len(part) + 2
    return ("{" if pairs else "[") + ", ".join(parts) + ("}" if pairs else "]")

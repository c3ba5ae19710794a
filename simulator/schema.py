"""Strict reading of YAML mappings: every field is asked for by name, type and range.

A ``Fields`` wraps one mapping and its dotted path. Asking for a key checks it; ``done()`` rejects
any key nobody asked for. Keys whose name carries a unit suffix (``_GBps``, ``_us``, ``_GiB``, see
:mod:`simulator.units`) are converted to SI here, once. The mappings come from
:mod:`simulator.yaml_input`, which keeps the line of every key, so errors can point at it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

from simulator.errors import ScenarioError
from simulator.units import SUFFIXES
from simulator.yaml_input import join


def type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", type(None): "null"}.get(type(v), "a mapping" if isinstance(v, dict)
                                                   else type(v).__name__)


# ---- value checkers: (value, path) -> converted value, raising ScenarioError -------------------

Check = Callable[[Any, str], Any]


def _bad(msg: str, path: str, value: Any) -> ScenarioError:
    return ScenarioError(msg, path=path, value=value, has_value=True)


def integer(minimum: int | None = 1) -> Check:
    def check(v: Any, path: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _bad(f"must be an integer, not {type_name(v)}", path, v)
        if minimum is not None and v < minimum:
            raise _bad(f"must be at least {minimum}", path, v)
        return v
    return check


def number(positive: bool = True, maximum: float | None = None, minimum: float | None = None
           ) -> Check:
    def check(v: Any, path: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad(f"must be a number, not {type_name(v)}", path, v)
        if v != v or v in (float("inf"), float("-inf")):
            raise _bad("must be a finite number", path, v)
        if positive and v <= 0:
            raise _bad("must be positive", path, v)
        if minimum is not None and v < minimum:
            raise _bad(f"must be at least {minimum}", path, v)
        if maximum is not None and v > maximum:
            raise _bad(f"must be at most {maximum}", path, v)
        return float(v)
    return check


def string(v: Any, path: str) -> str:
    """A non-empty string (not only blanks)."""
    v = any_string(v, path)
    if not v.strip():
        raise _bad("must not be empty", path, v)
    return v


def any_string(v: Any, path: str) -> str:
    """A string, possibly empty."""
    if not isinstance(v, str):
        raise _bad(f"must be a string, not {type_name(v)}", path, v)
    return v


def boolean(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _bad(f"must be true or false, not {type_name(v)}", path, v)
    return v


def did_you_mean(word: Any, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when one of ``options`` is close to ``word`` (a typo), else
    an empty string."""
    if not isinstance(word, str):
        return ""
    # (a letter swapped or wrong in a three-letter name is a ratio of 2/3)
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def choice(options: Iterable[str]) -> Check:
    opts = tuple(options)

    def check(v: Any, path: str) -> str:
        if not isinstance(v, str) or v not in opts:
            raise _bad(f"must be one of {', '.join(opts)}{did_you_mean(v, opts)}", path, v)
        return v
    return check


def list_of(item: Check, min_len: int = 1) -> Check:
    def check(v: Any, path: str) -> tuple:
        if not isinstance(v, list):
            raise _bad(f"must be a list, not {type_name(v)}", path, v)
        if len(v) < min_len:
            raise _bad(f"must have at least {min_len} item(s)", path, v)
        return tuple(item(x, join(path, i)) for i, x in enumerate(v))
    return check


class Fields:
    """One YAML mapping being read strictly. Ask for each key; ``done()`` rejects the rest.

    ``line`` is where the mapping is given (the line of its key in the parent mapping); it
    defaults to the line the mapping starts on, and is the line of errors about absent keys.
    """

    def __init__(self, data: Any, path: str, line: int | None = None):
        if not isinstance(data, dict):
            raise ScenarioError(f"must be a mapping, not {type_name(data)}",
                                path=path or "<top level>", value=data, has_value=True,
                                line=line)
        self.data = data
        self.path = path
        self.start_line = line if line is not None else getattr(data, "start_line", None)
        self.seen: set[str] = set()

    def line(self, key: str) -> int | None:
        """The line of ``key``; for an absent key, the line of this mapping."""
        return getattr(self.data, "lines", {}).get(key, self.start_line)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def _missing(self, key: str) -> ScenarioError:
        """A required key is absent: if a key of the mapping looks like a typo of it, the
        error names that key, its line, and the fix."""
        typo = difflib.get_close_matches(key, [k for k in self.data if isinstance(k, str)
                                               and k not in self.seen], n=1, cutoff=0.75)
        if typo:
            return ScenarioError(f"is required; the unknown key {typo[0]!r} looks like it: "
                                 f"did you mean {key!r}?", path=join(self.path, key),
                                 line=self.line(typo[0]))
        return ScenarioError("is required", path=join(self.path, key), line=self.start_line)

    def get(self, key: str, check: Check, default: Any = ...) -> Any:
        """The value of ``key`` checked by ``check``; SI-converted if the key names a unit."""
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise self._missing(key)
            return default
        try:
            value = check(self.data[key], join(self.path, key))
        except ScenarioError as e:
            raise e.at_line(self.line(key)) from None
        if not isinstance(value, float):
            return value
        si = value * unit_factor(key)
        if not math.isfinite(si) or (si == 0.0) != (value == 0.0):
            raise ScenarioError("is out of range once converted to SI units (it becomes "
                                f"{si!r})", path=join(self.path, key), value=self.data[key],
                                has_value=True, line=self.line(key))
        return si

    def sub(self, key: str) -> Fields:
        self.seen.add(key)
        if key not in self.data:
            raise self._missing(key)
        return Fields(self.data[key], join(self.path, key), self.line(key))

    def error(self, key: str, message: str, value: Any = ..., has_value: bool = True
              ) -> ScenarioError:
        v = self.data.get(key) if value is ... else value
        return ScenarioError(message, path=join(self.path, key), value=v,
                             has_value=has_value, line=self.line(key))

    def done(self, allowed_hint: Iterable[str] | None = None) -> None:
        extra = [k for k in self.data if k not in self.seen]
        if extra:
            known = sorted(allowed_hint if allowed_hint is not None else self.seen)
            raise ScenarioError(f"unknown key{did_you_mean(extra[0], known)} (known here: "
                                f"{', '.join(known)})",
                                path=join(self.path, extra[0]), value=extra[0],
                                has_value=True, line=self.line(extra[0]))


def unit_factor(key: str) -> float:
    for suffix, factor in SUFFIXES.items():
        if key.endswith(suffix):
            return factor
    return 1.0

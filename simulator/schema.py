"""Strict reading of YAML mappings: every field is asked for by name, type and range.

A ``Fields`` wraps one mapping and its dotted path. Asking for a key checks it; ``done()`` rejects
any key nobody asked for. Keys whose name carries a unit suffix (``_GBps``, ``_us``, ``_GiB``, see
:mod:`simulator.units`) are converted to SI here, once. YAML is read with a safe loader that keeps
the line of every key, so errors can point at it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import yaml

from simulator.errors import ScenarioError
from simulator.units import SUFFIXES


class LineDict(dict):
    """A mapping that remembers the line (1-based) of each key in its YAML file."""

    lines: dict[Any, int]


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    d = LineDict()
    d.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in d:
            raise ScenarioError("duplicate key", path=str(key), line=key_node.start_mark.line + 1)
        d[key] = loader.construct_object(value_node, deep=True)
        d.lines[key] = key_node.start_mark.line + 1
    return d


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """Parse YAML safely; syntax errors become ScenarioError with the line."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ScenarioError(f"not valid YAML: {e.problem}", line=line) from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"not valid YAML: {e}") from None


def join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


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
    if not isinstance(v, str) or not v.strip():
        raise _bad(f"must be a non-empty string, not {type_name(v)}", path, v)
    return v


def boolean(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _bad(f"must be true or false, not {type_name(v)}", path, v)
    return v


def choice(options: Iterable[str]) -> Check:
    opts = tuple(options)

    def check(v: Any, path: str) -> str:
        if not isinstance(v, str) or v not in opts:
            raise _bad(f"must be one of {', '.join(opts)}", path, v)
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
    """One YAML mapping being read strictly. Ask for each key; ``done()`` rejects the rest."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise _bad(f"must be a mapping, not {type_name(data)}", path or "<top level>", data)
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def line(self, key: str) -> int | None:
        return getattr(self.data, "lines", {}).get(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def get(self, key: str, check: Check, default: Any = ...) -> Any:
        """The value of ``key`` checked by ``check``; SI-converted if the key names a unit."""
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise ScenarioError("is required", path=join(self.path, key),
                                    line=getattr(self.data, "lines", {}).get("__start__"))
            return default
        try:
            value = check(self.data[key], join(self.path, key))
        except ScenarioError as e:
            raise e.at_line(self.line(key)) from None
        return value * unit_factor(key) if isinstance(value, float) else value

    def sub(self, key: str) -> Fields:
        self.seen.add(key)
        if key not in self.data:
            raise ScenarioError("is required", path=join(self.path, key))
        try:
            return Fields(self.data[key], join(self.path, key))
        except ScenarioError as e:
            raise e.at_line(self.line(key)) from None

    def error(self, key: str, message: str, value: Any = ..., has_value: bool = True
              ) -> ScenarioError:
        v = self.data.get(key) if value is ... else value
        return ScenarioError(message, path=join(self.path, key), value=v,
                             has_value=has_value, line=self.line(key))

    def done(self, allowed_hint: Iterable[str] | None = None) -> None:
        extra = [k for k in self.data if k not in self.seen]
        if extra:
            known = sorted(allowed_hint if allowed_hint is not None else self.seen)
            raise ScenarioError(f"unknown key (known here: {', '.join(known)})",
                                path=join(self.path, extra[0]), value=extra[0],
                                has_value=True, line=self.line(extra[0]))


def unit_factor(key: str) -> float:
    for suffix, factor in SUFFIXES.items():
        if key.endswith(suffix):
            return factor
    return 1.0

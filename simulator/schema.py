"""Strict reading of YAML mappings: every field is asked for by name, type and range.

A ``Fields`` wraps one mapping and its dotted path. Asking for a key checks it; ``done()`` rejects
any key nobody asked for. Keys whose name carries a unit suffix (``_GBps``, ``_us``, ``_GiB``, see
:mod:`simulator.units`) are converted to SI here, once. YAML is read with a safe loader that keeps
the line of every key, so errors can point at it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from simulator.errors import ScenarioError
from simulator.units import SUFFIXES


class LineDict(dict):
    """A mapping that remembers where it stands in its YAML file (lines are 1-based).

    ``lines`` maps each key to its line, ``start_line`` is the line the mapping starts on, and
    ``duplicates`` lists ``(key, value, line)`` for every key given a second time in the same
    mapping (the first value is kept; :func:`load_yaml` rejects the file).
    """

    lines: dict[Any, int]
    start_line: int | None
    duplicates: list[tuple[Any, Any, int]]


class _LineLoader(yaml.SafeLoader):
    pass


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    # keys brought in by a merge (``<<: *anchor``) may be overridden: only two keys written in
    # this mapping itself are a duplicate
    own = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
    loader.flatten_mapping(node)
    d = LineDict()
    d.lines = {}
    d.start_line = node.start_mark.line + 1
    d.duplicates = []
    explicit: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        value = loader.construct_object(value_node, deep=True)
        line = key_node.start_mark.line + 1
        if id(key_node) in own:
            if key in explicit:
                d.duplicates.append((key, value, line))
                continue
            explicit.add(key)
        d[key] = value
        d.lines[key] = line
    return d


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    """Parse YAML safely; syntax errors and duplicate keys become ScenarioError with the line."""
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ScenarioError(f"not valid YAML: {e.problem}", line=line) from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"not valid YAML: {e}") from None
    _reject_duplicates(data, "")
    return data


def _reject_duplicates(data: Any, path: str, seen: set[int] | None = None) -> None:
    """Raise for the first key given twice in one mapping, anywhere in ``data``, by field path."""
    seen = set() if seen is None else seen
    if id(data) in seen:  # an alias to a node already checked (or a recursive one)
        return
    seen.add(id(data))
    if isinstance(data, dict):
        for key, value, line in getattr(data, "duplicates", ()):
            first = getattr(data, "lines", {}).get(key)
            also = f" (first given on line {first})" if first is not None else ""
            raise ScenarioError(f"duplicate key{also}", path=_key_path(path, key), value=value,
                                has_value=True, line=line)
        for key, value in data.items():
            _reject_duplicates(value, _key_path(path, key), seen)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _reject_duplicates(item, join(path, i), seen)


def _key_path(path: str, key: Any) -> str:
    """The path of a mapping key (an integer key is still a key, not a list index)."""
    return f"{path}.{key}" if path else str(key)


_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def line_of(data: Any, path: str) -> int | None:
    """The line of the deepest part of the field ``path`` that ``data`` knows a line for.

    ``model.layers[3].units`` is the line of ``units`` in that layer if it is there, else the
    layer item's own line, else the line of ``layers``; a path naming a key that is absent gets
    the line of the mapping that lacks it.
    """
    line = getattr(data, "start_line", None)
    node = data
    for index, key in _PATH_PART.findall(path):
        if index:
            i = int(index)
            if not isinstance(node, list) or i >= len(node):
                break
            node = node[i]
            line = getattr(node, "start_line", None) or line
        else:
            if not isinstance(node, dict) or key not in node:
                break
            line = getattr(node, "lines", {}).get(key) or line
            node = node[key]
    return line


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
        return value * unit_factor(key) if isinstance(value, float) else value

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

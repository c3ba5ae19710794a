"""Reading YAML input (scenarios, profiles, the catalogue) safely: the file's bytes (bounded,
UTF-8 checked), then a safe loader that keeps the line of every key, refuses duplicate keys,
keys that are lists or mappings, nesting deeper than ``MAX_DEPTH`` and aliases that expand past
``MAX_VALUES`` values (an alias bomb), and finds the line of a field path for error messages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from simulator.errors import ScenarioError


class LineDict(dict):
    """A mapping that remembers where it stands in its YAML file (lines are 1-based).

    ``lines`` maps each key to its line, ``start_line`` is the line the mapping starts on, and
    ``duplicates`` lists ``(key, value, line)`` for every key given a second time in the same
    mapping (the first value is kept; :func:`load_yaml` rejects the file).
    """

    lines: dict[Any, int]
    start_line: int | None
    duplicates: list[tuple[Any, Any, int]]


MAX_BYTES = 16 * 2**20  # a YAML input larger than this is not a scenario or a profile
MAX_DEPTH = 64  # nesting levels (the deepest shipped scenario uses 5)
MAX_VALUES = 1_000_000  # values a document may stand for once its aliases are expanded


def read_text(path: str | Path, what: str) -> str:
    """A YAML input's text: at most ``MAX_BYTES`` read (a device file or a huge file is refused
    without reading it all), UTF-8 checked; errors name ``path`` (``what`` says which input)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ScenarioError(f"cannot read the {what}: {e.strerror}", file=str(path)) from None
    if len(raw) > MAX_BYTES:
        raise ScenarioError(f"the {what} is larger than {MAX_BYTES // 2**20} MiB: not a {what} "
                            "file", file=str(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ScenarioError(f"the {what} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                            f"{e.start})", file=str(path), line=line) from None


class _LineLoader(yaml.SafeLoader):
    """The safe loader, keeping lines (``_construct_mapping``) and refusing documents nested
    deeper than ``MAX_DEPTH`` or whose aliases expand past ``MAX_VALUES`` values (an alias
    bomb: a few lines that stand for billions of values)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ScenarioError(f"nested more than {MAX_DEPTH} levels deep",
                                    line=mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {})
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int | None]) -> int:
    """How many values ``node`` stands for with every alias expanded (each node counted once
    per place it appears); raises past ``MAX_VALUES`` and for an alias inside its own anchor."""
    key = id(node)
    if key in sizes:
        done = sizes[key]
        if done is None:
            raise ScenarioError("an alias refers to a node that contains it (a value without "
                                "end)", line=node.start_mark.line + 1)
        return done
    sizes[key] = None  # in progress
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    if n > MAX_VALUES:
        raise ScenarioError(f"its aliases expand to more than {MAX_VALUES:,} values",
                            line=node.start_mark.line + 1)
    sizes[key] = n
    return n


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
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
            raise ScenarioError(f"a key must be a name or a number, not {kind}",
                                line=key_node.start_mark.line + 1)
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
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        code = ord(e.character) if isinstance(e.character, str) else e.character
        raise ScenarioError(f"not valid YAML: the character U+{code:04X} is not allowed "
                            "in YAML text", line=line) from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"not valid YAML: {e}") from None
    except ValueError:  # the one scalar Python cannot hold: an integer of thousands of digits
        raise ScenarioError("not valid YAML: a number with more digits than can be read "
                            "(thousands)") from None
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

"""Strict type checks for model settings as they come from YAML (plain lists, dicts, scalars).

Each check returns the value converted to its Python type or raises
:class:`~simulator.errors.ScenarioError` naming the field path and the bad value. ``bool`` is not
accepted where an int is wanted (YAML ``yes`` must not become a layer width of 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

from simulator.errors import ScenarioError


def is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def positive_int(value: object, path: str) -> int:
    if not is_int(value):
        raise ScenarioError("must be an integer", path=path, value=value, has_value=True)
    if value <= 0:  # type: ignore[operator]
        raise ScenarioError("must be positive", path=path, value=value, has_value=True)
    return int(value)  # type: ignore[arg-type]


def nonneg_int(value: object, path: str) -> int:
    if not is_int(value):
        raise ScenarioError("must be an integer", path=path, value=value, has_value=True)
    if value < 0:  # type: ignore[operator]
        raise ScenarioError("must not be negative", path=path, value=value, has_value=True)
    return int(value)  # type: ignore[arg-type]


def fraction(value: object, path: str) -> float:
    """A number in [0, 1) (a dropout rate)."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ScenarioError("must be a number", path=path, value=value, has_value=True)
    if not 0 <= value < 1:
        raise ScenarioError("must be in [0, 1)", path=path, value=value, has_value=True)
    return float(value)


def choice(value: object, path: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ScenarioError(f"must be one of {', '.join(options)}", path=path, value=value,
                            has_value=True)
    return value


def name(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScenarioError("must be a non-empty string", path=path, value=value, has_value=True)
    return value


def int_list(value: object, path: str, min_len: int = 1) -> list[int]:
    """A list of positive ints with at least ``min_len`` items."""
    if not isinstance(value, (list, tuple)) or len(value) < min_len:
        raise ScenarioError(f"must be a list of at least {min_len} positive integers", path=path,
                            value=value, has_value=True)
    return [positive_int(item, f"{path}[{i}]") for i, item in enumerate(value)]


def shape(value: object, path: str, ranks: Sequence[int] = (1, 2, 3)) -> tuple[int, ...]:
    """A per-sample input shape: (features,), (seq, features) or (C, H, W)."""
    if not isinstance(value, (list, tuple)) or len(value) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ScenarioError(f"must be a list of {want} positive integers", path=path, value=value,
                            has_value=True)
    return tuple(positive_int(item, f"{path}[{i}]") for i, item in enumerate(value))

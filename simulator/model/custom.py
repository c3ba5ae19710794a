"""A user's sequential layer list (from YAML) turned into a layer graph, strictly.

Each item is a mapping with ``kind``, an optional ``name`` and the kind's keys:

======== =========================================================================
kind     keys (default)
======== =========================================================================
dense    units
conv     out_channels, kernel, stride (1), padding (0), groups (1) -- kernel, stride and
         padding: one int (square) or [h, w]
pool     kernel, stride (= kernel), padding (0), mode (max) -- max or avg
act      fn -- relu, sigmoid, tanh or gelu
dropout  rate (0.5)
norm     (none) -- batch norm over channels, layer norm over the last dimension
lrn      size (5) -- local response normalisation across channels (Krizhevsky 2012)
flatten  (none)
softmax  (none)
rbm      units
======== =========================================================================

A conv's ``kernel``, ``stride`` and ``padding`` may be ``[h, w]`` pairs (``kernel: [1, 7]``, as
PyTorch's ``nn.Conv2d`` takes them); a pool's are one int (square). Nothing is guessed: an
unknown kind or key, a wrong type, a size that is not positive, or a layer that does not fit its
input (dense after conv without a flatten, conv on a vector, a kernel larger than its input)
raises :class:`~simulator.errors.ScenarioError` with the field path (``model.layers[3].units``)
and the bad value. Unnamed layers are called ``<kind><index>`` (``conv0``, ``act1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import networkx as nx

from simulator.errors import ScenarioError
from simulator.model import checks
from simulator.model.layers import ACT_FNS, POOL_MODES, GraphBuilder, LayerError

_REQUIRED = object()
_Check = Callable[[object, str], object]
_PAIR = "must be an integer or a list of two integers [h, w]"


def _pair_of(check: _Check) -> _Check:
    """One int checked by ``check`` (a square window), or ``[h, w]``, each checked by it."""
    def pair(value: object, path: str) -> object:
        if isinstance(value, list):
            if len(value) != 2:
                raise ScenarioError(_PAIR, path=path, value=value, has_value=True)
            # a list, so that an error the builder raises echoes what the user wrote
            return [check(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if not checks.is_int(value):
            raise ScenarioError(_PAIR, path=path, value=value, has_value=True)
        return check(value, path)
    return pair


# kind -> key -> (default or _REQUIRED, check(value, path) -> value)
_SPECS: dict[str, dict[str, tuple[object, _Check]]] = {
    "dense": {"units": (_REQUIRED, checks.positive_int)},
    "conv": {
        "out_channels": (_REQUIRED, checks.positive_int),
        "kernel": (_REQUIRED, _pair_of(checks.positive_int)),
        "stride": (1, _pair_of(checks.positive_int)),
        "padding": (0, _pair_of(checks.nonneg_int)),
        "groups": (1, checks.positive_int),
    },
    "pool": {
        "kernel": (_REQUIRED, checks.positive_int),
        "stride": (None, checks.positive_int),
        "padding": (0, checks.nonneg_int),
        "mode": ("max", lambda v, p: checks.choice(v, p, POOL_MODES)),
    },
    "act": {"fn": (_REQUIRED, lambda v, p: checks.choice(v, p, ACT_FNS))},
    "dropout": {"rate": (0.5, checks.fraction)},
    "norm": {},
    "lrn": {"size": (5, checks.positive_int)},
    "flatten": {},
    "softmax": {},
    "rbm": {"units": (_REQUIRED, checks.positive_int)},
}


def _parse(item: object, path: str) -> tuple[str, str | None, dict[str, Any]]:
    """Check one list item's keys and types; returns (kind, name or None, builder kwargs)."""
    if not isinstance(item, dict):
        raise ScenarioError("a layer must be a mapping with a 'kind'", path=path, value=item,
                            has_value=True)
    if "kind" not in item:
        raise ScenarioError("missing key 'kind'", path=f"{path}.kind")
    kind = item["kind"]
    if not isinstance(kind, str) or kind not in _SPECS:
        raise ScenarioError(f"unknown layer kind (known: {', '.join(sorted(_SPECS))})",
                            path=f"{path}.kind", value=kind, has_value=True)
    spec = _SPECS[kind]
    for key, value in item.items():
        if key not in spec and key not in ("kind", "name"):
            allowed = ", ".join(["kind", "name", *spec])
            raise ScenarioError(f"unknown key {key!r} for a {kind} layer (allowed: {allowed})",
                                path=f"{path}.{key}", value=value, has_value=True)
    name = checks.name(item["name"], f"{path}.name") if "name" in item else None
    kwargs: dict[str, Any] = {}
    for key, (default, check) in spec.items():
        if key in item:
            kwargs[key] = check(item[key], f"{path}.{key}")
        elif default is _REQUIRED:
            raise ScenarioError(f"missing key {key!r} for a {kind} layer", path=f"{path}.{key}")
        else:
            kwargs[key] = default
    return kind, name, kwargs


def _names(parsed: list[tuple[str, str | None, dict[str, Any]]], path: str) -> list[str]:
    """Users' names must be unique; unnamed layers get ``<kind><index>`` avoiding those."""
    taken: dict[str, int] = {}
    for i, (_, name, _) in enumerate(parsed):
        if name is None:
            continue
        if name in taken:
            raise ScenarioError(f"duplicate layer name (also layers[{taken[name]}])",
                                path=f"{path}.layers[{i}].name", value=name, has_value=True)
        taken[name] = i
    names = []
    for i, (kind, name, _) in enumerate(parsed):
        if name is None:
            name = f"{kind}{i}"
            while name in taken:
                name += "_"
            taken[name] = i
        names.append(name)
    return names


def build_custom(layers: list, input_shape: object, path: str = "model") -> nx.DiGraph:
    """Build the layer graph of a sequential ``layers`` list applied to ``input_shape``.

    ``input_shape`` is per sample: ``[C, H, W]``, ``[features]`` or ``[seq, features]``.
    ``path`` is where the model sits in the scenario, for error messages.
    """
    shape = checks.shape(input_shape, f"{path}.input_shape")
    if not isinstance(layers, list) or not layers:
        raise ScenarioError("must be a non-empty list of layers", path=f"{path}.layers",
                            value=layers, has_value=True)
    parsed = [_parse(item, f"{path}.layers[{i}]") for i, item in enumerate(layers)]
    names = _names(parsed, path)
    builder = GraphBuilder("custom", shape)
    for i, ((kind, _, kwargs), name) in enumerate(zip(parsed, names, strict=True)):
        try:
            getattr(builder, kind)(name, **kwargs)
        except LayerError as err:
            raise ScenarioError(str(err), path=f"{path}.layers[{i}].{err.field}",
                                value=err.value, has_value=True) from None
    return builder.graph

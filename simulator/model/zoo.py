"""The model zoo: classic networks by name, with strictly checked parameters.

``build_zoo("resnet50", {"input_shape": [3, 160, 160]})``. Each model's defaults live in its
builder's signature; here we only check the types of what the user gave and reject the rest.
CNNs take ``input_shape`` ([C, H, W] per sample) and ``classes``; an input too small for the
network is reported on ``model.params.input_shape``.

=============  ===================================================================
name           params (default)
=============  ===================================================================
mlp            sizes ([784, 2048, 2048, 10]), activation (relu | sigmoid | tanh)
dbn            sizes ([784, 500, 500, 2000]), classes (0: no classifier)
lenet5         input_shape ([1, 32, 32]), classes (10)
alexnet        input_shape ([3, 224, 224]), classes (1000)
alexnet_2gpu   input_shape ([3, 227, 227]), classes (1000)
vgg16          input_shape ([3, 224, 224]), classes (1000)
resnet50       input_shape ([3, 224, 224]), classes (1000)
inception      input_shape ([3, 224, 224]), classes (1000)
inception_v3   input_shape ([3, 299, 299]), classes (1000)
gpt            layers (12), hidden (768), heads (12), seq_len (1024), vocab (50257),
               dropout (0.1)
=============  ===================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from simulator.errors import ScenarioError
from simulator.model import checks
from simulator.model.layers import LayerError
from simulator.model.zoo_gpt import gpt
from simulator.model.zoo_imagenet import alexnet, alexnet_2gpu, vgg16
from simulator.model.zoo_inception import inception
from simulator.model.zoo_inception_v3 import inception_v3
from simulator.model.zoo_resnet import resnet50
from simulator.model.zoo_small import dbn, lenet5, mlp
from simulator.schema import did_you_mean

_Check = Callable[[object, str], object]

_CNN: dict[str, _Check] = {
    "input_shape": lambda v, p: checks.shape(v, p, ranks=(3,)),
    "classes": checks.positive_int,
}
_SIZES: _Check = lambda v, p: checks.int_list(v, p, min_len=2)  # noqa: E731

ZOO: dict[str, tuple[Callable[..., nx.DiGraph], dict[str, _Check]]] = {
    "mlp": (mlp, {"sizes": _SIZES,
                  "activation": lambda v, p: checks.choice(v, p, ("relu", "sigmoid", "tanh"))}),
    "dbn": (dbn, {"sizes": _SIZES, "classes": checks.nonneg_int}),
    "lenet5": (lenet5, _CNN),
    "alexnet": (alexnet, _CNN),
    "alexnet_2gpu": (alexnet_2gpu, _CNN),
    "vgg16": (vgg16, _CNN),
    "resnet50": (resnet50, _CNN),
    "inception": (inception, _CNN),
    "inception_v3": (inception_v3, _CNN),
    "gpt": (gpt, {**{key: checks.positive_int
                     for key in ("layers", "hidden", "heads", "seq_len", "vocab")},
                  "dropout": checks.fraction}),
}


def build_zoo(name: str, params: dict | None = None, path: str = "model") -> nx.DiGraph:
    """Build the named zoo model; ``path`` is where the model sits in the scenario."""
    if not isinstance(name, str) or name not in ZOO:
        raise ScenarioError(f"unknown model {name!r}{did_you_mean(name, ZOO)} (known: "
                            f"{', '.join(sorted(ZOO))})",
                            path=f"{path}.zoo", value=name, has_value=True)
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ScenarioError("must be a mapping", path=f"{path}.params", value=params,
                            has_value=True)
    builder, spec = ZOO[name]
    kwargs = {}
    for key, value in params.items():
        if key not in spec:
            known = ", ".join(spec)
            raise ScenarioError(f"unknown parameter {key!r} for model {name!r} (known: {known})",
                                path=f"{path}.params.{key}", value=value, has_value=True)
        kwargs[key] = spec[key](value, f"{path}.params.{key}")
    try:
        return builder(**kwargs)
    except LayerError as err:
        if err.field in spec:
            raise ScenarioError(str(err), path=f"{path}.params.{err.field}", value=err.value,
                                has_value=True) from None
        if "input_shape" in kwargs:
            raise ScenarioError(f"input too small for {name}: {err}",
                                path=f"{path}.params.input_shape",
                                value=params["input_shape"], has_value=True) from None
        raise

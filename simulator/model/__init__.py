"""Model graphs: a ``networkx.DiGraph`` of layers with shapes, parameters and FLOPs per sample.

Two ways in: :func:`build_zoo` builds a classic network by name, :func:`build_custom` a user's
sequential layer list from YAML. :func:`summary` and :func:`layers_in_order` read a graph. The
node contract (attribute names and meanings) is in :mod:`simulator.model.graph` and
:mod:`simulator.model.layers`. Imports only the standard library and networkx.
"""

from simulator.model.custom import build_custom
from simulator.model.graph import NODE_ATTRS, layers_in_order, summary
from simulator.model.zoo import ZOO, build_zoo

__all__ = ["NODE_ATTRS", "ZOO", "build_custom", "build_zoo", "layers_in_order", "summary"]

"""Reading a layer graph: its nodes in order and its totals.

A layer graph is a ``networkx.DiGraph``: ``graph["name"]`` (zoo name or ``"custom"``),
``graph["input_shape"]`` (per sample) and one node per layer whose attributes are listed in
``NODE_ATTRS`` (all per sample; FLOPs count a multiply-add as 2). Edges follow the data; the
first layer has no in-edge, its input is the data.
"""

from __future__ import annotations

import networkx as nx

# every node of every model carries these; kinds add their own (fn, mode, kernel, ...)
NODE_ATTRS = ("kind", "in_shape", "out_shape", "in_elems", "out_elems", "params", "fwd_flops",
              "bwd_flops", "split_dim", "groups", "tower", "cross_tower", "branch", "block",
              "order")


def layers_in_order(g: nx.DiGraph) -> list[str]:
    """Layer names in the graph's topological order (its ``order`` attribute)."""
    return sorted(g.nodes, key=lambda n: g.nodes[n]["order"])


def summary(g: nx.DiGraph) -> dict[str, int]:
    """Totals per sample: params, fwd_flops, bwd_flops, act_elems (sum of out_elems), layers."""
    nodes = g.nodes.values()
    return {
        "params": sum(n["params"] for n in nodes),
        "fwd_flops": sum(n["fwd_flops"] for n in nodes),
        "bwd_flops": sum(n["bwd_flops"] for n in nodes),
        "act_elems": sum(n["out_elems"] for n in nodes),
        "layers": g.number_of_nodes(),
    }

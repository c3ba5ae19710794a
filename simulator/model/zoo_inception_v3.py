"""Inception V3 (Szegedy et al. 2015, "Rethinking the Inception Architecture for Computer
Vision", arXiv:1512.00567) in the layout of torchvision's ``inception_v3`` and TF-slim's
``inception_v3``, layer names as torchvision's modules (``Mixed_6b.branch7x7_2``).

Modelled, at 3x299x299: the stem (3x3/2 conv 32, 3x3 conv 32, 3x3 conv 64 padded, 3x3/2 max
pool, 1x1 conv 80, 3x3 conv 192, 3x3/2 max pool: 192x35x35), then

- 3 x Inception-A at 35x35 (``Mixed_5b``-``5d``: 1x1; 1x1, 5x5; 1x1, 3x3, 3x3; 3x3 average pool,
  1x1) to 288 channels;
- reduction-A (``Mixed_6a``: 3x3/2; 1x1, 3x3, 3x3/2; 3x3/2 max pool) to 768x17x17;
- 4 x Inception-B at 17x17 (``Mixed_6b``-``6e``: 1x1; 1x1, 1x7, 7x1; 1x1, 7x1, 1x7, 7x1, 1x7;
  average pool, 1x1), the factorised 7x7s 128, 160, 160 and 192 channels wide;
- reduction-B (``Mixed_7a``: 1x1, 3x3/2; 1x1, 1x7, 7x1, 3x3/2; max pool) to 1280x8x8;
- 2 x Inception-C at 8x8 (``Mixed_7b``, ``7c``: 1x1; 1x1 then 1x3 and 3x1 side by side; 1x1,
  3x3 then 1x3 and 3x1 side by side; average pool, 1x1) to 2048x8x8;

global average pool, dropout 0.5 (torchvision's; TF-slim keeps 0.8), a dense classifier and
softmax. Every conv has no bias and is followed by batch norm (``norm``: gamma and beta) and a
ReLU. Nodes of a tower carry ``branch="<block>/<index>"`` (the towers in torchvision's
concatenation order), every node of a block ``block``; a tower that splits in two (Inception-C)
joins its halves with a ``concat`` of its own, inside the tower. 23,834,568 params (torchvision's
count without the auxiliary classifier) and 5.71 G multiply-adds.

Ignored: the auxiliary classifier on ``Mixed_6e`` (used only in training, dropped at inference;
torchvision's published parameter count leaves it out too), batch-norm running statistics
(buffers) and label smoothing. The paper's table 1 lists a slightly different stem and block
widths; we follow the released implementations, whose figures are the ones quoted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx

from simulator.model.layers import GraphBuilder

Size = int | tuple[int, int]
Tower = Callable[[GraphBuilder], str]  # builds a tower at the cursor, returns its last node


def _unit(b: GraphBuilder, name: str, out: int, kernel: Size, stride: int = 1,
          padding: Size = 0) -> str:
    """torchvision's ``BasicConv2d``: conv without bias, batch norm, ReLU."""
    b.conv(f"{name}.conv", out, kernel, stride, padding, bias=False)
    b.norm(f"{name}.bn")
    return b.act(f"{name}.relu", "relu")


def _towers(b: GraphBuilder, block: str, towers: list[Tower]) -> None:
    """One block: every tower built from the block's input, their outputs joined by a channel
    ``concat``."""
    entry = b.last
    b.block = block
    ends = []
    for index, tower in enumerate(towers):
        b.branch = f"{block}/{index}"
        b.at(entry)
        ends.append(tower(b))
    b.branch = None
    b.concat(f"{block}.concat", ends)
    b.block = None


def _chain(block: str, units: list[tuple]) -> Tower:
    """A tower of ``_unit``s: (name, out, kernel, stride, padding) each."""
    def tower(b: GraphBuilder) -> str:
        for name, *args in units:
            _unit(b, f"{block}.{name}", *args)
        return b.last  # type: ignore[return-value]
    return tower


def _pool_proj(block: str, out: int) -> Tower:
    """3x3/1 average pool (padded), 1x1 projection."""
    def tower(b: GraphBuilder) -> str:
        b.pool(f"{block}.branch_pool.pool", 3, 1, 1, mode="avg")
        return _unit(b, f"{block}.branch_pool", out, 1)
    return tower


def _max_pool(block: str) -> Tower:
    def tower(b: GraphBuilder) -> str:
        return b.pool(f"{block}.branch_pool", 3, 2)
    return tower


def _split(block: str, stem: list[tuple], name: str) -> Tower:
    """Inception-C's widened tower: ``stem`` units, then a 1x3 and a 3x1 conv side by side,
    concatenated (Szegedy et al. 2015 figure 7)."""
    def tower(b: GraphBuilder) -> str:
        root = _chain(block, stem)(b)
        halves = [_unit(b.at(root), f"{block}.{name}a", 384, (1, 3), 1, (0, 1)),
                  _unit(b.at(root), f"{block}.{name}b", 384, (3, 1), 1, (1, 0))]
        return b.concat(f"{block}.{name}.concat", halves)
    return tower


def _inception_a(b: GraphBuilder, block: str, pool_features: int) -> None:
    _towers(b, block, [
        _chain(block, [("branch1x1", 64, 1)]),
        _chain(block, [("branch5x5_1", 48, 1), ("branch5x5_2", 64, 5, 1, 2)]),
        _chain(block, [("branch3x3dbl_1", 64, 1), ("branch3x3dbl_2", 96, 3, 1, 1),
                       ("branch3x3dbl_3", 96, 3, 1, 1)]),
        _pool_proj(block, pool_features),
    ])


def _reduction_a(b: GraphBuilder, block: str) -> None:
    _towers(b, block, [
        _chain(block, [("branch3x3", 384, 3, 2)]),
        _chain(block, [("branch3x3dbl_1", 64, 1), ("branch3x3dbl_2", 96, 3, 1, 1),
                       ("branch3x3dbl_3", 96, 3, 2)]),
        _max_pool(block),
    ])


def _inception_b(b: GraphBuilder, block: str, c7: int) -> None:
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))  # kernel, stride, padding
    _towers(b, block, [
        _chain(block, [("branch1x1", 192, 1)]),
        _chain(block, [("branch7x7_1", c7, 1), ("branch7x7_2", c7, *row),
                       ("branch7x7_3", 192, *col)]),
        _chain(block, [("branch7x7dbl_1", c7, 1), ("branch7x7dbl_2", c7, *col),
                       ("branch7x7dbl_3", c7, *row), ("branch7x7dbl_4", c7, *col),
                       ("branch7x7dbl_5", 192, *row)]),
        _pool_proj(block, 192),
    ])


def _reduction_b(b: GraphBuilder, block: str) -> None:
    _towers(b, block, [
        _chain(block, [("branch3x3_1", 192, 1), ("branch3x3_2", 320, 3, 2)]),
        _chain(block, [("branch7x7x3_1", 192, 1), ("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
                       ("branch7x7x3_3", 192, (7, 1), 1, (3, 0)),
                       ("branch7x7x3_4", 192, 3, 2)]),
        _max_pool(block),
    ])


def _inception_c(b: GraphBuilder, block: str) -> None:
    _towers(b, block, [
        _chain(block, [("branch1x1", 320, 1)]),
        _split(block, [("branch3x3_1", 384, 1)], "branch3x3_2"),
        _split(block, [("branch3x3dbl_1", 448, 1), ("branch3x3dbl_2", 384, 3, 1, 1)],
               "branch3x3dbl_3"),
        _pool_proj(block, 192),
    ])


def inception_v3(input_shape: Sequence[int] = (3, 299, 299), classes: int = 1000
                 ) -> nx.DiGraph:
    b = GraphBuilder("inception_v3", input_shape)
    _unit(b, "Conv2d_1a_3x3", 32, 3, 2)
    _unit(b, "Conv2d_2a_3x3", 32, 3)
    _unit(b, "Conv2d_2b_3x3", 64, 3, 1, 1)
    b.pool("maxpool1", 3, 2)
    _unit(b, "Conv2d_3b_1x1", 80, 1)
    _unit(b, "Conv2d_4a_3x3", 192, 3)
    b.pool("maxpool2", 3, 2)
    for block, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        _inception_a(b, block, pool_features)
    _reduction_a(b, "Mixed_6a")
    for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        _inception_b(b, block, c7)
    _reduction_b(b, "Mixed_7a")
    for block in ("Mixed_7b", "Mixed_7c"):
        _inception_c(b, block)
    b.global_pool("avgpool")
    b.dropout("dropout", 0.5)
    b.flatten("flatten")
    b.dense("fc", classes)
    b.softmax("softmax")
    return b.graph

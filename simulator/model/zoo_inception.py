"""GoogLeNet (Szegedy et al. 2014, "Going deeper with convolutions", table 1 and figure 3).

Modelled: the stem (7x7/2 conv, max pool, LRN, 1x1 and 3x3 convs, LRN, max pool), nine
inception blocks of four parallel towers each, joined by a channel ``concat``:

- branch 0: 1x1 conv;
- branch 1: 1x1 reduce, 3x3 conv;
- branch 2: 1x1 reduce, 5x5 conv;
- branch 3: 3x3/1 max pool, 1x1 projection;

every conv with a bias and a ReLU, then global average pool, dropout 0.4, a dense classifier and
softmax. Nodes inside a tower carry ``branch="<block>/<index>"``; every node of a block, concat
included, carries ``block``. At 3x224x224: ~7.0 M params and ~1.6 G multiply-adds, against the
paper's ~6.8 M and ~1.5 G (its table rounds per layer).

Ignored: the two auxiliary classifiers (used only in training, dropped at inference; the paper's
parameter count leaves them out too). Pools use padding 1 in floor mode, which gives the
paper's feature-map sizes (Caffe used ceil mode without padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from simulator.model.layers import GraphBuilder

# name: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), Szegedy et al. 2014 table 1;
# None marks the max pool (3x3/2) between stages
_BLOCKS: list[tuple[str, tuple[int, int, int, int, int, int]] | None] = [
    ("inception3a", (64, 96, 128, 16, 32, 32)),
    ("inception3b", (128, 128, 192, 32, 96, 64)),
    None,
    ("inception4a", (192, 96, 208, 16, 48, 64)),
    ("inception4b", (160, 112, 224, 24, 64, 64)),
    ("inception4c", (128, 128, 256, 24, 64, 64)),
    ("inception4d", (112, 144, 288, 32, 64, 64)),
    ("inception4e", (256, 160, 320, 32, 128, 128)),
    None,
    ("inception5a", (256, 160, 320, 32, 128, 128)),
    ("inception5b", (384, 192, 384, 48, 128, 128)),
]


def _conv_relu(b: GraphBuilder, name: str, out: int, kernel: int, stride: int = 1) -> str:
    b.conv(name, out, kernel, stride, kernel // 2)
    return b.act(f"{name}.relu", "relu")


def _inception(b: GraphBuilder, block: str, widths: tuple[int, ...]) -> None:
    n1, r3, n3, r5, n5, proj = widths
    entry = b.last
    b.block = block
    ends = []
    for index in range(4):
        b.branch = f"{block}/{index}"
        b.at(entry)
        prefix = f"{block}.b{index}"
        if index == 0:
            ends.append(_conv_relu(b, f"{prefix}.conv1x1", n1, 1))
        elif index == 1:
            _conv_relu(b, f"{prefix}.reduce", r3, 1)
            ends.append(_conv_relu(b, f"{prefix}.conv3x3", n3, 3))
        elif index == 2:
            _conv_relu(b, f"{prefix}.reduce", r5, 1)
            ends.append(_conv_relu(b, f"{prefix}.conv5x5", n5, 5))
        else:
            b.pool(f"{prefix}.pool", 3, 1, 1)
            ends.append(_conv_relu(b, f"{prefix}.proj", proj, 1))
    b.branch = None
    b.concat(f"{block}.concat", ends)
    b.block = None


def inception(input_shape: Sequence[int] = (3, 224, 224), classes: int = 1000) -> nx.DiGraph:
    b = GraphBuilder("inception", input_shape)
    _conv_relu(b, "conv1", 64, 7, 2)
    b.pool("pool1", 3, 2, 1)
    b.lrn("lrn1", 5)
    _conv_relu(b, "conv2_reduce", 64, 1)
    _conv_relu(b, "conv2", 192, 3)
    b.lrn("lrn2", 5)
    b.pool("pool2", 3, 2, 1)
    stage = 3
    for entry in _BLOCKS:
        if entry is None:
            b.pool(f"pool{stage}", 3, 2, 1)
            stage += 1
        else:
            _inception(b, *entry)
    b.global_pool("avgpool")
    b.dropout("dropout", 0.4)
    b.flatten("flatten")
    b.dense("fc", classes)
    b.softmax("softmax")
    return b.graph

"""ResNet-50 (He et al. 2016) in torchvision's layout: bottleneck v1.5, stride in the 3x3 conv.

Modelled: every conv (no bias), batch norm (as ``norm`` nodes, gamma and beta), ReLU, the
projection shortcut (``downsample.0`` conv 1x1 + ``downsample.1`` norm) on each stage's first
block and the residual ``add`` with two in-edges. 25,557,032 params and 4.09 G multiply-adds at
3x224x224 (torchvision's published figures). Ignored: batch-norm running statistics (buffers).
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from simulator.model.layers import GraphBuilder

# (blocks, bottleneck width, stride of the first block) per stage; output width is 4x
_STAGES = [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)]
_EXPANSION = 4


def _bottleneck(b: GraphBuilder, name: str, width: int, stride: int, project: bool) -> None:
    entry = b.last
    for i, (out, kernel, s, pad) in enumerate(
            [(width, 1, 1, 0), (width, 3, stride, 1), (width * _EXPANSION, 1, 1, 0)], start=1):
        b.conv(f"{name}.conv{i}", out, kernel, s, pad, bias=False)
        b.norm(f"{name}.bn{i}")
        if i < 3:
            b.act(f"{name}.relu{i}", "relu")
    main = b.last
    shortcut = entry
    if project:
        b.at(entry)
        b.conv(f"{name}.downsample.0", width * _EXPANSION, 1, stride, bias=False)
        shortcut = b.norm(f"{name}.downsample.1")
    b.add(f"{name}.add", [main, shortcut])  # type: ignore[list-item]
    b.act(f"{name}.relu", "relu")


def resnet50(input_shape: Sequence[int] = (3, 224, 224), classes: int = 1000) -> nx.DiGraph:
    b = GraphBuilder("resnet50", input_shape)
    b.conv("conv1", 64, 7, 2, 3, bias=False)
    b.norm("bn1")
    b.act("relu", "relu")
    b.pool("maxpool", 3, 2, 1)
    for s, (blocks, width, stride) in enumerate(_STAGES, start=1):
        for i in range(blocks):
            b.block = f"layer{s}.{i}"
            _bottleneck(b, f"layer{s}.{i}", width, stride if i == 0 else 1, project=i == 0)
    b.block = None
    b.global_pool("avgpool")
    b.flatten("flatten")
    b.dense("fc", classes)
    b.softmax("softmax")
    return b.graph

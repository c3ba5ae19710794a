"""ImageNet classics without branches: AlexNet (one tower and Krizhevsky's two-GPU form), VGG-16.

Modelled: layer shapes, parameters and FLOPs per sample (see :mod:`simulator.model.layers`).
Ignored: torchvision's adaptive average pool before the classifier (an identity at the default
input sizes; at other sizes the first dense layer's width follows the flattened feature map, as
in the original Caffe models), and data augmentation.

Inputs (C, H, W): AlexNet and VGG-16 3x224x224. The two-GPU AlexNet defaults to 3x227x227:
the paper says 224, but only 227 gives its stated 55x55 first feature map with an 11x11 kernel
at stride 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from simulator.model.layers import GraphBuilder


def _classifier(b: GraphBuilder, widths: Sequence[int], classes: int, first: int, *,
                cross_tower: bool = False) -> None:
    """Dense-ReLU-dropout layers named fc<first>, fc<first+1>, ..., then the output and softmax."""
    b.flatten("flatten")
    for i, width in enumerate(widths, start=first):
        b.dense(f"fc{i}", width, cross_tower=cross_tower)
        b.act(f"fc{i}.relu", "relu")
        b.dropout(f"fc{i}.dropout", 0.5)
    b.dense(f"fc{first + len(widths)}", classes, cross_tower=cross_tower)
    b.softmax("softmax")


def alexnet(input_shape: Sequence[int] = (3, 224, 224), classes: int = 1000) -> nx.DiGraph:
    """Single-tower AlexNet as in torchvision (Krizhevsky 2014 widths, no LRN): 61,100,840 params.

    torchvision puts dropout before each hidden dense layer; we put it after (same cost).
    """
    b = GraphBuilder("alexnet", input_shape)
    for i, (out, kernel, stride, padding, pool) in enumerate(
            [(64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
             (256, 3, 1, 1, False), (256, 3, 1, 1, True)], start=1):
        b.conv(f"conv{i}", out, kernel, stride, padding)
        b.act(f"conv{i}.relu", "relu")
        if pool:
            b.pool(f"pool{i}", 3, 2)
    _classifier(b, [4096, 4096], classes, first=6)
    return b.graph


def alexnet_2gpu(input_shape: Sequence[int] = (3, 227, 227), classes: int = 1000) -> nx.DiGraph:
    """AlexNet as trained on two GPUs (Krizhevsky, Sutskever & Hinton 2012, figure 2).

    Each conv/dense layer is split in two halves, one per GPU. One node stands for both halves:
    ``groups=2`` marks tower-local connections (conv2, conv4, conv5 see only their own GPU's
    half of the previous layer); ``cross_tower=True`` marks layers whose input needs both towers'
    outputs (conv3, fc6, fc7, fc8), where the GPUs exchange activations. ``split_dim`` is the
    whole layer's width; each GPU holds half of it. 60,965,224 params ("60 million").
    """
    b = GraphBuilder("alexnet_2gpu", input_shape)
    b.conv("conv1", 96, 11, 4)
    b.act("conv1.relu", "relu")
    b.lrn("conv1.lrn", 5)
    b.pool("pool1", 3, 2)
    b.conv("conv2", 256, 5, 1, 2, groups=2)
    b.act("conv2.relu", "relu")
    b.lrn("conv2.lrn", 5)
    b.pool("pool2", 3, 2)
    b.conv("conv3", 384, 3, 1, 1, cross_tower=True)
    b.act("conv3.relu", "relu")
    b.conv("conv4", 384, 3, 1, 1, groups=2)
    b.act("conv4.relu", "relu")
    b.conv("conv5", 256, 3, 1, 1, groups=2)
    b.act("conv5.relu", "relu")
    b.pool("pool5", 3, 2)
    _classifier(b, [4096, 4096], classes, first=6, cross_tower=True)
    return b.graph


def vgg16(input_shape: Sequence[int] = (3, 224, 224), classes: int = 1000) -> nx.DiGraph:
    """VGG-16, configuration D (Simonyan & Zisserman 2014): 138,357,544 params."""
    b = GraphBuilder("vgg16", input_shape)
    stages = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    for s, (width, convs) in enumerate(stages, start=1):
        for j in range(1, convs + 1):
            b.conv(f"conv{s}_{j}", width, 3, 1, 1)
            b.act(f"conv{s}_{j}.relu", "relu")
        b.pool(f"pool{s}", 2, 2)
    _classifier(b, [4096, 4096], classes, first=6)
    return b.graph

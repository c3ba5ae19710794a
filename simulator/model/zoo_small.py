"""Small classic networks: a multilayer perceptron, a Deep Belief Network, LeNet-5.

Modelled: layer shapes, parameters and FLOPs per sample (see :mod:`simulator.model.layers`).
Ignored: LeNet-5's original sparse C3 connection table, trainable subsampling coefficients and
RBF output units (we use the common modern form: full C3, plain average pooling, a dense
output), and the DBN's generative top-down weights after fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from simulator.model.layers import GraphBuilder


def mlp(sizes: Sequence[int] = (784, 2048, 2048, 10), activation: str = "relu") -> nx.DiGraph:
    """Dense layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``, activations between, softmax."""
    b = GraphBuilder("mlp", (sizes[0],))
    last = len(sizes) - 1
    for i, units in enumerate(sizes[1:], start=1):
        b.dense(f"fc{i}", units)
        if i < last:
            b.act(f"{activation}{i}", activation)
    b.softmax("softmax")
    return b.graph


def dbn(sizes: Sequence[int] = (784, 500, 500, 2000), classes: int = 0) -> nx.DiGraph:
    """A stack of RBMs ``sizes[0] -> sizes[1] -> ...`` (Hinton, Osindero & Teh 2006).

    With ``classes > 0`` a dense classifier and softmax follow the top RBM, for fine-tuning.
    """
    b = GraphBuilder("dbn", (sizes[0],))
    for i, units in enumerate(sizes[1:], start=1):
        b.rbm(f"rbm{i}", units)
    if classes:
        b.dense("classifier", classes)
        b.softmax("softmax")
    return b.graph


def lenet5(input_shape: Sequence[int] = (1, 32, 32), classes: int = 10) -> nx.DiGraph:
    """LeNet-5 (LeCun et al. 1998): C1-S2-C3-S4-C5-F6-output with tanh, 61,706 params at 32x32.

    C5 is a 5x5 convolution (at 32x32 input it sees a 5x5 map, so it is fully connected).
    """
    b = GraphBuilder("lenet5", input_shape)
    b.conv("c1", 6, 5)
    b.act("c1.tanh", "tanh")
    b.pool("s2", 2, mode="avg")
    b.conv("c3", 16, 5)
    b.act("c3.tanh", "tanh")
    b.pool("s4", 2, mode="avg")
    b.conv("c5", 120, 5)
    b.act("c5.tanh", "tanh")
    b.flatten("flatten")
    b.dense("f6", 84)
    b.act("f6.tanh", "tanh")
    b.dense("output", classes)
    b.softmax("softmax")
    return b.graph

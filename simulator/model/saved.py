"""What each layer keeps in memory for its backward pass: the activation memory model.

A layer's backward needs some tensors of its forward. Per SAMPLE, each layer kind keeps:

=========  =====================================================================================
kind       kept for backward
=========  =====================================================================================
dense      its input (the weight gradient is input^T x output gradient)
conv       its input
rbm        its input and its output (the sigmoid's derivative)
attention  Q, K and V (its input); the softmax output, heads x seq x seq; with attention dropout
           also the dropout mask (1 byte per element) and the dropout's output
norm       its input (layer norm and batch norm recompute the normalised value from it)
act        ReLU, sigmoid and tanh their output; GELU its input
dropout    its mask, 1 byte per element
pool       max pooling its input (to route the gradient); average pooling nothing
lrn        its input and its output
softmax    the loss head: its probabilities, kept in fp32 whatever the training precision
embedding  nothing (token ids), flatten, add, concat nothing
=========  =====================================================================================

For a GPT layer this is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", section 4.1) term by term: per layer, with s the sequence, b the batch, h the
hidden size and a the heads, at 16-bit precision, layer norms 4sbh, the QKV input 2sbh, Q and K
4sbh, the softmax output 2as^2b, its dropout mask as^2b, the dropout output 2as^2b, V 2sbh, the
projection input 2sbh, two residual dropout masks 2sbh, the MLP input 2sbh, the GELU input 8sbh
and the second MLP input 8sbh: sbh (34 + 5as/h) bytes. Where two layers keep the same tensor (a
ReLU's output is the next convolution's input) it is one tensor: ``key`` says whose it is.

Ignored: per-row statistics of norms and softmaxes (a few floats per row), framework workspaces,
and buffers freed before backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True)
class Saved:
    """One tensor a layer keeps for backward, per sample.

    ``tensor``: the breakdown's name for it; ``elems``: elements per sample; ``nbytes``: bytes
    per element, 0 for the training precision's; ``of``: ``"in"`` for the layer's input (the
    output of the layer before it: split as the input arrives), ``"out"`` for something the
    layer makes (split as its output); ``key``: the tensor's identity, so that two layers keeping
    the same tensor count it once.
    """

    tensor: str
    elems: int
    nbytes: int
    of: str
    key: tuple[str, str]


def saved_tensors(graph: nx.DiGraph, layer: str) -> tuple[Saved, ...]:
    """What ``layer`` keeps for its backward pass (see the module docstring)."""
    node = graph.nodes[layer]
    kind = node["kind"]
    preds = list(graph.predecessors(layer))
    source = preds[0] if len(preds) == 1 else f"<input of {layer}>"

    def given(tensor: str, nbytes: int = 0) -> Saved:  # the layer's input
        return Saved(tensor, node["in_elems"], nbytes, "in", (source, "out"))

    def made(tensor: str, elems: int | None = None, nbytes: int = 0, part: str = "out") -> Saved:
        return Saved(tensor, node["out_elems"] if elems is None else elems, nbytes, "out",
                     (layer, part))

    if kind == "dense":
        return (given("linear-layer inputs"),)
    if kind == "conv":
        return (given("convolution inputs"),)
    if kind == "rbm":
        return (given("RBM inputs"), made("RBM outputs"))
    if kind == "attention":
        seq = node["out_shape"][0]
        scores = node["heads"] * seq * seq
        out = [given("attention Q, K, V"), made("attention softmax outputs", scores,
                                                part="probs")]
        if node.get("dropout", 0.0) > 0:
            out += [made("attention dropout masks", scores, 1, "mask"),
                    made("attention dropout outputs", scores, part="dropped")]
        return tuple(out)
    if kind == "norm":
        return (given("norm inputs"),)
    if kind == "act":
        return (given("GELU inputs"),) if node["fn"] == "gelu" else (made("activation outputs"),)
    if kind == "dropout":
        return (made("dropout masks", nbytes=1, part="mask"),) if node["rate"] > 0 else ()
    if kind == "pool":
        return (given("pooling inputs"),) if node["mode"] == "max" else ()
    if kind == "lrn":
        return (given("LRN inputs"), made("LRN outputs"))
    if kind == "softmax":
        return (made("loss probabilities (fp32)", nbytes=4),)
    return ()

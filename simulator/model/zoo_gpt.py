"""GPT, a decoder-only transformer in GPT-2's pre-norm layout (Radford et al. 2019).

One sample is one sequence of ``seq_len`` tokens; shapes are ``(seq, hidden)``. Per block:
``ln1 -> attn_qkv -> attn -> attn_proj -> add1 (+ block input) -> ln2 -> mlp_fc -> gelu ->
mlp_proj -> add2 (+ add1)``; around them the token + position ``embedding`` and ``ln_f``,
``lm_head``, ``softmax``. The defaults are GPT-2 small: 124,439,808 params.

Modelled: dense layers with biases, layer norms, attention as full (seq x seq) QK^T and AV
products (4 * seq^2 * hidden FLOPs per block forward). ``lm_head`` shares the token embedding's
weight (GPT-2 ties them): it owns 0 params but does its full GEMM, 2 * seq * hidden * vocab.
Ignored: the causal mask's possible halving of attention work, attention/residual dropout,
softmax and scaling inside attention, the loss.
"""

from __future__ import annotations

import networkx as nx

from simulator.model.layers import GraphBuilder, LayerError


def gpt(layers: int = 12, hidden: int = 768, heads: int = 12, seq_len: int = 1024,
        vocab: int = 50257) -> nx.DiGraph:
    if hidden % heads:
        raise LayerError(f"heads ({heads}) must divide hidden ({hidden})", "heads", heads)
    b = GraphBuilder("gpt", (seq_len,))
    b.embedding("embedding", vocab, hidden)
    for i in range(layers):
        name = f"block{i}"
        entry = b.last
        b.norm(f"{name}.ln1", "layer")
        b.dense(f"{name}.attn_qkv", 3 * hidden)
        b.attention(f"{name}.attn", heads)
        b.dense(f"{name}.attn_proj", hidden)
        mid = b.add(f"{name}.add1", [b.last, entry])  # type: ignore[list-item]
        b.norm(f"{name}.ln2", "layer")
        b.dense(f"{name}.mlp_fc", 4 * hidden)
        b.act(f"{name}.gelu", "gelu")
        b.dense(f"{name}.mlp_proj", hidden)
        b.add(f"{name}.add2", [b.last, mid])  # type: ignore[list-item]
    b.norm("ln_f", "layer")
    b.dense("lm_head", vocab, bias=False, tied_to="embedding")
    b.softmax("softmax")
    return b.graph

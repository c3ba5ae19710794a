"""GPT, a decoder-only transformer in GPT-2's pre-norm layout (Radford et al. 2019), as
Megatron-LM trains it (Shoeybi et al. 2019).

One sample is one sequence of ``seq_len`` tokens; shapes are ``(seq, hidden)``. Per block
(``block{i}``, the unit that recomputation and ZeRO-3 work on): ``ln1 -> attn_qkv -> attn ->
attn_proj -> attn_dropout -> add1 (+ block input) -> ln2 -> mlp_fc -> gelu -> mlp_proj ->
mlp_dropout -> add2 (+ add1)``; around them the token + position ``embedding`` and its
``embed_dropout``, ``ln_f``, ``lm_head``, ``softmax`` (the loss). The defaults are GPT-2 small:
124,439,808 params. ``dropout`` (0.1, GPT-2's and Megatron-LM's GPT-3 setting) is the rate of the
embedding, residual and attention-probability dropouts; 0 leaves the dropout layers out.

Modelled: dense layers with biases, layer norms, attention as full (seq x seq) QK^T and AV
products (4 * seq^2 * hidden FLOPs per block forward). ``lm_head`` shares the token embedding's
weight (GPT-2 ties them): it owns 0 params but does its full GEMM, 2 * seq * hidden * vocab.
Ignored: the causal mask's possible halving of attention work, softmax and scaling FLOPs inside
attention (their memory traffic is counted: ``layers.GraphBuilder.attention``).
"""

from __future__ import annotations

import networkx as nx

from simulator.model.layers import GraphBuilder, LayerError


def gpt(layers: int = 12, hidden: int = 768, heads: int = 12, seq_len: int = 1024,
        vocab: int = 50257, dropout: float = 0.1) -> nx.DiGraph:
    if hidden % heads:
        raise LayerError(f"heads ({heads}) must divide hidden ({hidden})", "heads", heads)
    b = GraphBuilder("gpt", (seq_len,))
    b.embedding("embedding", vocab, hidden)
    if dropout:
        b.dropout("embed_dropout", dropout)
    for i in range(layers):
        name = f"block{i}"
        b.block = name
        entry = b.last
        b.norm(f"{name}.ln1", "layer")
        b.dense(f"{name}.attn_qkv", 3 * hidden)
        b.attention(f"{name}.attn", heads, dropout)
        b.dense(f"{name}.attn_proj", hidden)
        if dropout:
            b.dropout(f"{name}.attn_dropout", dropout)
        mid = b.add(f"{name}.add1", [b.last, entry])  # type: ignore[list-item]
        b.norm(f"{name}.ln2", "layer")
        b.dense(f"{name}.mlp_fc", 4 * hidden)
        b.act(f"{name}.gelu", "gelu")
        b.dense(f"{name}.mlp_proj", hidden)
        if dropout:
            b.dropout(f"{name}.mlp_dropout", dropout)
        b.add(f"{name}.add2", [b.last, mid])  # type: ignore[list-item]
    b.block = None
    b.norm("ln_f", "layer")
    b.dense("lm_head", vocab, bias=False, tied_to="embedding")
    b.softmax("softmax")
    return b.graph

"""Model graphs: published parameter and FLOP figures, the node contract, strict custom lists."""

from __future__ import annotations

import math
import subprocess
import sys
from itertools import pairwise

import networkx as nx
import pytest

from simulator.errors import ScenarioError
from simulator.model import NODE_ATTRS, ZOO, build_custom, build_zoo, layers_in_order, summary


def macs(g: nx.DiGraph) -> int:
    """Multiply-adds of the GEMM layers, the figure papers publish."""
    return sum(d["fwd_flops"] for _, d in g.nodes(data=True)
               if d["kind"] in ("conv", "dense", "attention", "rbm")) // 2


# -- published figures -------------------------------------------------------------------------

@pytest.mark.parametrize("name, params", [
    ("alexnet", 61_100_840),  # torchvision.models.alexnet docs
    ("vgg16", 138_357_544),  # torchvision.models.vgg16 docs
    ("resnet50", 25_557_032),  # torchvision.models.resnet50 docs
    ("lenet5", 61_706),  # classic count: 156 + 2,416 + 48,120 + 10,164 + 850 (32x32 input)
    ("gpt", 124_439_808),  # GPT-2 small, Hugging Face "gpt2" (tied lm_head)
    # Krizhevsky 2012 ("60 million"); exact sum of the paper's layer sizes
    ("alexnet_2gpu", 60_965_224),
])
def test_published_param_counts(name, params):
    g = build_zoo(name, {})
    print(f"{name}: {summary(g)['params']:,} params, {macs(g):,} MACs")
    assert summary(g)["params"] == params


def test_alexnet_2gpu_is_the_papers_60_million():
    assert summary(build_zoo("alexnet_2gpu", {}))["params"] == pytest.approx(60e6, rel=0.02)


def test_resnet50_multiply_adds():
    # He et al. 2016 table 1: 3.8e9 FLOPs (multiply-adds); torchvision: 4.09 GMACs (v1.5)
    g = build_zoo("resnet50", {})
    assert macs(g) == pytest.approx(4.1e9, rel=0.03)
    assert summary(g)["fwd_flops"] == pytest.approx(8.2e9, rel=0.03)


def test_inception_against_szegedy_2014():
    # Szegedy et al. 2014 table 1: ~6.8M params (no aux classifiers), ~1.5G multiply-adds
    g = build_zoo("inception", {})
    print(f"inception: {summary(g)['params']:,} params, {macs(g):,} MACs")
    assert summary(g)["params"] == pytest.approx(6.8e6, rel=0.10)
    assert macs(g) == pytest.approx(1.5e9, rel=0.15)


def test_mlp_counts_by_hand():
    g = build_zoo("mlp", {"sizes": [4, 3, 2], "activation": "tanh"})
    assert layers_in_order(g) == ["fc1", "tanh1", "fc2", "softmax"]
    assert summary(g) == {
        "params": (4 * 3 + 3) + (3 * 2 + 2),
        "fwd_flops": 2 * 4 * 3 + 3 + 2 * 3 * 2 + 2,  # GEMMs + tanh + softmax, 1 per element
        "bwd_flops": 2 * (2 * 4 * 3) + 3 + 2 * (2 * 3 * 2) + 2,
        "act_elems": 3 + 3 + 2 + 2,
        "layers": 4,
    }
    assert summary(build_zoo("mlp", {}))["params"] == (784 * 2048 + 2048 + 2048 * 2048 + 2048
                                                       + 2048 * 10 + 10)


def test_dbn_counts_by_hand():
    g = build_zoo("dbn", {})
    sizes = [784, 500, 500, 2000]
    pairs = list(pairwise(sizes))
    assert layers_in_order(g) == ["rbm1", "rbm2", "rbm3"]
    assert summary(g)["params"] == sum(v * h + v + h for v, h in pairs) == 1_646_784
    for i, (v, h) in enumerate(pairs, start=1):
        node = g.nodes[f"rbm{i}"]
        assert (node["in_shape"], node["out_shape"], node["split_dim"]) == ((v,), (h,), h)
        assert (node["fwd_flops"], node["bwd_flops"], node["cd1_flops"]) == (
            2 * v * h, 4 * v * h, 10 * v * h)
    tuned = build_zoo("dbn", {"classes": 10})
    assert layers_in_order(tuned)[-2:] == ["classifier", "softmax"]
    assert summary(tuned)["params"] == 1_646_784 + 2000 * 10 + 10


def test_gpt_training_flops_per_token_near_6n():
    # Kaplan et al. 2020: training compute C ~ 6N per token, N = non-embedding params, valid
    # when the context term is small (seq << 6 * hidden here, since we count full attention)
    seq = 256
    g = build_zoo("gpt", {"seq_len": seq})
    core = [d for n, d in g.nodes(data=True) if n.startswith("block") or n == "ln_f"]
    n_params = sum(d["params"] for d in core)
    per_token = sum(d["fwd_flops"] + d["bwd_flops"] for d in core) / seq
    print(f"gpt seq {seq}: N={n_params:,}, training FLOPs/token = {per_token / (6 * n_params):.3f}"
          " x 6N")
    assert per_token == pytest.approx(6 * n_params, rel=0.15)


def test_gpt_attention_term_at_full_context():
    # Kaplan et al. 2020 table 1 plus attention: C_fwd = 2N + n_layer * 4 * n_ctx * d per token
    # (QK^T and AV in full); backward doubles it
    layers, hidden, seq = 12, 768, 1024
    g = build_zoo("gpt", {})
    core = [d for n, d in g.nodes(data=True) if n.startswith("block") or n == "ln_f"]
    n_params = sum(d["params"] for d in core)
    per_token = sum(d["fwd_flops"] + d["bwd_flops"] for d in core) / seq
    assert per_token == pytest.approx(6 * n_params + 3 * layers * 4 * seq * hidden, rel=0.01)
    attn = g.nodes["block0.attn"]
    assert (attn["fwd_flops"], attn["params"], attn["split_dim"]) == (
        2 * 2 * seq * seq * hidden, 0, 12)
    head = g.nodes["lm_head"]
    assert (head["params"], head["fwd_flops"]) == (0, 2 * seq * hidden * 50257)
    assert g.nodes["embedding"]["params"] == 50257 * hidden + seq * hidden


# -- node contract -----------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo_graph(request):
    return build_zoo(request.param, {})


def test_every_node_honours_the_contract(zoo_graph):
    g = zoo_graph
    assert isinstance(g.graph["name"], str) and isinstance(g.graph["input_shape"], tuple)
    for name, d in g.nodes(data=True):
        missing = [a for a in NODE_ATTRS if a not in d]
        assert not missing, (name, missing)
        assert d["in_elems"] >= math.prod(d["in_shape"]) > 0
        assert d["out_elems"] == math.prod(d["out_shape"]) > 0
        gemm = d["kind"] in ("conv", "dense", "attention", "rbm") or d["params"] > 0
        assert d["bwd_flops"] == (2 if gemm else 1) * d["fwd_flops"]
        assert isinstance(d["cross_tower"], bool) and d["tower"] is None
        if d["kind"] == "act":
            assert d["fn"] in ("relu", "sigmoid", "tanh", "gelu")
        if d["kind"] == "pool":
            assert d["mode"] in ("max", "avg")


def test_order_is_topological_and_shapes_chain(zoo_graph):
    g = zoo_graph
    order = layers_in_order(g)
    assert [g.nodes[n]["order"] for n in order] == list(range(len(order)))
    position = {n: i for i, n in enumerate(order)}
    assert all(position[u] < position[v] for u, v in g.edges)
    assert [n for n in g if g.in_degree(n) == 0] == [order[0]]
    assert g.nodes[order[0]]["in_shape"] == g.graph["input_shape"]
    for n in order[1:]:
        preds = list(g.predecessors(n))
        if len(preds) == 1:
            assert g.nodes[n]["in_shape"] == g.nodes[preds[0]]["out_shape"], n
        else:
            assert g.nodes[n]["kind"] in ("add", "concat"), n
            assert g.nodes[n]["in_elems"] == sum(g.nodes[p]["out_elems"] for p in preds)


def test_inception_blocks_have_four_branches():
    g = build_zoo("inception", {})
    blocks = {d["block"] for _, d in g.nodes(data=True) if d["block"]}
    assert len(blocks) == 9
    for block in blocks:
        branches = {d["branch"] for _, d in g.nodes(data=True) if d["block"] == block}
        assert branches == {None} | {f"{block}/{i}" for i in range(4)}
        concat = g.nodes[f"{block}.concat"]
        assert (concat["kind"], concat["branch"], g.in_degree(f"{block}.concat")) == (
            "concat", None, 4)
    assert all(d["block"] is None for n, d in g.nodes(data=True) if d["branch"] is None
               and not n.endswith(".concat"))


def test_alexnet_2gpu_towers():
    g = build_zoo("alexnet_2gpu", {})
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert [g.nodes[n]["groups"] for n in layers] == [1, 2, 1, 2, 2, 1, 1, 1]
    crossing = {n for n, d in g.nodes(data=True) if d["cross_tower"]}
    assert crossing == {"conv3", "fc6", "fc7", "fc8"}
    assert g.nodes["conv1"]["out_shape"] == (96, 55, 55)  # the paper's 55x55 at 227x227
    assert g.nodes["pool5"]["out_shape"] == (256, 6, 6)
    assert g.nodes["conv2"]["params"] == 256 * (96 // 2) * 5 * 5 + 256


def test_resnet50_residuals():
    g = build_zoo("resnet50", {})
    adds = [n for n, d in g.nodes(data=True) if d["kind"] == "add"]
    assert len(adds) == 16 and all(g.in_degree(n) == 2 for n in adds)
    assert sum(n.endswith("downsample.0") for n in g) == 4
    assert g.nodes["layer2.0.conv2"]["stride"] == (2, 2)  # v1.5: stride in the 3x3
    assert g.nodes["avgpool"]["out_shape"] == (2048, 1, 1)


def test_input_shape_override():
    g = build_zoo("resnet50", {"input_shape": [3, 160, 160]})
    assert g.graph["input_shape"] == (3, 160, 160)
    assert g.nodes["layer4.2.relu"]["out_shape"] == (2048, 5, 5)
    assert summary(g)["params"] == 25_557_032


# -- zoo errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, params, path, value", [
    ("foo", {}, "model.zoo", "'foo'"),
    ("gpt", {"hiden": 768}, "model.params.hiden", "768"),
    ("gpt", {"hidden": True}, "model.params.hidden", "True"),
    ("gpt", {"hidden": 770}, "model.params.heads", "12"),
    ("gpt", {"layers": 0}, "model.params.layers", "0"),
    ("mlp", {"sizes": [784, -1, 10]}, "model.params.sizes[1]", "-1"),
    ("mlp", {"activation": "gelu"}, "model.params.activation", "'gelu'"),
    ("alexnet", {"input_shape": [3, 32, 32]}, "model.params.input_shape", "[3, 32, 32]"),
    ("vgg16", {"input_shape": [224, 224]}, "model.params.input_shape", "[224, 224]"),
    ("vgg16", [1], "model.params", "[1]"),
])
def test_zoo_rejects_bad_input(name, params, path, value):
    with pytest.raises(ScenarioError) as info:
        build_zoo(name, params)
    assert info.value.path == path
    assert path in str(info.value) and f"(got {value})" in str(info.value)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ScenarioError, match=r"unknown model 'foo' \(known: alexnet, "):
        build_zoo("foo", {})


# -- custom layer lists ------------------------------------------------------------------------

LENET_LIKE = [
    {"kind": "conv", "out_channels": 6, "kernel": 5, "name": "c1"},
    {"kind": "act", "fn": "relu"},
    {"kind": "pool", "kernel": 2, "mode": "avg"},
    {"kind": "conv", "out_channels": 16, "kernel": 5},
    {"kind": "act", "fn": "relu"},
    {"kind": "pool", "kernel": 2},
    {"kind": "flatten"},
    {"kind": "dense", "units": 120},
    {"kind": "dropout", "rate": 0.25},
    {"kind": "norm"},
    {"kind": "dense", "units": 10},
    {"kind": "softmax"},
]


def test_custom_lenet_like():
    g = build_custom(LENET_LIKE, [1, 32, 32])
    assert g.graph["name"] == "custom"
    shapes = [g.nodes[n]["out_shape"] for n in layers_in_order(g)]
    assert shapes == [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10),
                      (16, 5, 5), (400,), (120,), (120,), (120,), (10,), (10,)]
    assert layers_in_order(g)[:3] == ["c1", "act1", "pool2"]
    assert g.nodes["c1"]["params"] == 6 * 25 + 6
    assert g.nodes["c1"]["fwd_flops"] == 2 * 6 * 28 * 28 * 25
    assert g.nodes["norm9"]["params"] == 2 * 120


def test_custom_tiny_conv_by_hand():
    g = build_custom([{"kind": "conv", "out_channels": 2, "kernel": 3, "groups": 1}], (1, 4, 4))
    assert dict((k, g.nodes["conv0"][k]) for k in ("out_shape", "params", "fwd_flops",
                                                    "bwd_flops", "split_dim")) == {
        "out_shape": (2, 2, 2), "params": 2 * 9 + 2, "fwd_flops": 2 * 8 * 9,
        "bwd_flops": 4 * 8 * 9, "split_dim": 2}


def _with(index, item):
    layers = [dict(layer) for layer in LENET_LIKE]
    layers[index] = item
    return layers


@pytest.mark.parametrize("layers, input_shape, path, value", [
    (_with(7, {"kind": "dense", "units": 0}), [1, 32, 32], "model.layers[7].units", "0"),
    (_with(7, {"kind": "dense", "units": "8"}), [1, 32, 32], "model.layers[7].units", "'8'"),
    (_with(7, {"kind": "dense", "units": True}), [1, 32, 32], "model.layers[7].units", "True"),
    (_with(7, {"kind": "dense", "unit": 8}), [1, 32, 32], "model.layers[7].unit", "8"),
    (_with(1, {"kind": "relu"}), [1, 32, 32], "model.layers[1].kind", "'relu'"),
    (_with(1, {"kind": "act", "fn": "swish"}), [1, 32, 32], "model.layers[1].fn", "'swish'"),
    (_with(2, {"kind": "pool", "kernel": 2, "mode": "sum"}), [1, 32, 32],
     "model.layers[2].mode", "'sum'"),
    (_with(6, {"kind": "act", "fn": "relu"}), [1, 32, 32], "model.layers[7].kind", "'dense'"),
    (_with(3, {"kind": "conv", "out_channels": 16, "kernel": 15}), [1, 32, 32],
     "model.layers[3].kernel", "15"),
    (_with(3, {"kind": "conv", "out_channels": 16, "kernel": 5, "groups": 4}), [1, 32, 32],
     "model.layers[3].groups", "4"),
    (_with(8, {"kind": "dropout", "rate": 1.0}), [1, 32, 32], "model.layers[8].rate", "1.0"),
    (_with(1, {"kind": "act", "fn": "relu", "name": "c1"}), [1, 32, 32],
     "model.layers[1].name", "'c1'"),
    (_with(4, "relu"), [1, 32, 32], "model.layers[4]", "'relu'"),
    ([{"kind": "conv", "out_channels": 4, "kernel": 3}], [784], "model.layers[0].kind", "'conv'"),
    ([{"kind": "rbm", "units": 4}], [1, 8, 8], "model.layers[0].kind", "'rbm'"),
    ([], [784], "model.layers", "[]"),
    ([{"kind": "dense", "units": 4}], [0], "model.input_shape[0]", "0"),
])
def test_custom_rejects_malformed(layers, input_shape, path, value):
    with pytest.raises(ScenarioError) as info:
        build_custom(layers, input_shape)
    assert info.value.path == path
    assert path in str(info.value) and f"(got {value})" in str(info.value)


def test_custom_missing_key_names_it():
    with pytest.raises(ScenarioError, match=r"model\.layers\[0\]\.units: missing key 'units'"):
        build_custom([{"kind": "dense"}], [4])


def test_custom_path_prefix():
    with pytest.raises(ScenarioError, match=r"models\[1\]\.layers\[0\]\.units"):
        build_custom([{"kind": "dense", "units": -3}], [4], path="models[1]")


# -- dependencies ------------------------------------------------------------------------------

def test_model_imports_no_engine():
    code = ("import sys, simulator.model; "
            "print(sorted({'simpy', 'mpi4py', 'numba'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_custom_lrn_layer_normalises_across_channels():
    g = build_custom([{"kind": "conv", "out_channels": 8, "kernel": 3},
                      {"kind": "lrn", "size": 3}], [3, 8, 8])
    lrn = g.nodes["lrn1"]
    assert lrn["kind"] == "lrn" and lrn["size"] == 3 and lrn["out_shape"] == (8, 6, 6)
    assert lrn["fwd_flops"] == 2 * 3 * 8 * 6 * 6  # its window sum of squares per element
    with pytest.raises(ScenarioError, match=r"model.layers\[0\].size"):
        build_custom([{"kind": "lrn", "size": 0}], [3, 8, 8])


def test_conv_and_dense_layers_say_whether_they_add_a_bias():
    g = build_zoo("resnet50")
    assert g.nodes["fc"]["bias"] and not g.nodes["conv1"]["bias"]
    assert build_zoo("vgg16").nodes["conv1_1"]["bias"]

"""Inception V3 against its published figures, and the rectangular convolutions it is built of."""

from __future__ import annotations

import pytest

from simulator.errors import ScenarioError
from simulator.model import build_custom, build_zoo, summary
from simulator.model.layers import GraphBuilder, LayerError
from simulator.strategies.branch import placement
from tests.simulator.test_model import macs
from tests.simulator.test_strategies import plan_of, zoo_scenario


@pytest.fixture(scope="module")
def v3():
    return build_zoo("inception_v3", {})


def test_parameters_are_torchvisions(v3):
    # torchvision inception_v3(aux_logits=False): 23,834,568 parameters, BN gamma and beta
    # included (running statistics are buffers); 27,161,264 with the auxiliary classifier
    print(f"inception_v3: {summary(v3)['params']:,} params, {macs(v3):,} MACs")
    assert summary(v3)["params"] == 23_834_568


def test_multiply_adds_are_the_published_5_7_g(v3):
    # torchvision's model table: 5.71 GFLOPS (counted as multiply-adds) at 3x299x299;
    # Szegedy et al. 2015, abstract: "a computational cost of 5 billion multiply-adds"
    assert macs(v3) == pytest.approx(5.71e9, rel=0.03)


@pytest.mark.parametrize("layer, shape", [
    ("Conv2d_1a_3x3.relu", (32, 149, 149)),
    ("Conv2d_2a_3x3.relu", (32, 147, 147)),
    ("Conv2d_2b_3x3.relu", (64, 147, 147)),
    ("maxpool1", (64, 73, 73)),
    ("Conv2d_3b_1x1.relu", (80, 73, 73)),
    ("Conv2d_4a_3x3.relu", (192, 71, 71)),
    ("maxpool2", (192, 35, 35)),
    ("Mixed_5b.concat", (256, 35, 35)),
    ("Mixed_5d.concat", (288, 35, 35)),
    ("Mixed_6a.concat", (768, 17, 17)),
    ("Mixed_6e.concat", (768, 17, 17)),
    ("Mixed_7a.concat", (1280, 8, 8)),
    ("Mixed_7b.concat", (2048, 8, 8)),
    ("Mixed_7c.concat", (2048, 8, 8)),
    ("avgpool", (2048, 1, 1)),
    ("fc", (1000,)),
])
def test_feature_maps(v3, layer, shape):
    # torchvision's forward comments; Szegedy et al. 2015 table 1 (35x35x288, 17x17x768,
    # 8x8x2048)
    assert v3.nodes[layer]["out_shape"] == shape


def test_every_conv_has_batch_norm_and_relu_and_no_bias(v3):
    convs = [n for n, d in v3.nodes(data=True) if d["kind"] == "conv"]
    assert len(convs) == 94  # torchvision's BasicConv2d modules without the aux classifier
    for n in convs:
        unit = n.removesuffix(".conv")
        assert list(v3.successors(n)) == [f"{unit}.bn"]
        assert list(v3.successors(f"{unit}.bn")) == [f"{unit}.relu"]
        d = v3.nodes[n]
        assert d["params"] == d["out_shape"][0] * d["in_shape"][0] * d["kernel"][0] * \
            d["kernel"][1]


def test_factorised_7x7_by_hand(v3):
    # Mixed_6b's 1x7 then 7x1 on 128 channels at 17x17, padded to keep the size
    row, col = v3.nodes["Mixed_6b.branch7x7_2.conv"], v3.nodes["Mixed_6b.branch7x7_3.conv"]
    assert (row["kernel"], row["stride"], row["padding"]) == ((1, 7), (1, 1), (0, 3))
    assert (col["kernel"], col["padding"]) == ((7, 1), (3, 0))
    assert (row["in_shape"], row["out_shape"]) == ((128, 17, 17), (128, 17, 17))
    assert row["params"] == 128 * 128 * 7
    assert row["fwd_flops"] == 2 * (128 * 17 * 17) * (128 * 7)
    assert col["out_shape"] == (192, 17, 17) and col["params"] == 192 * 128 * 7


BLOCKS = {"Mixed_5b": 4, "Mixed_5c": 4, "Mixed_5d": 4, "Mixed_6a": 3, "Mixed_6b": 4,
          "Mixed_6c": 4, "Mixed_6d": 4, "Mixed_6e": 4, "Mixed_7a": 3, "Mixed_7b": 4,
          "Mixed_7c": 4}


def test_blocks_and_towers(v3):
    blocks = {d["block"] for _, d in v3.nodes(data=True) if d["block"]}
    assert blocks == set(BLOCKS)
    for block, towers in BLOCKS.items():
        branches = {d["branch"] for _, d in v3.nodes(data=True) if d["block"] == block}
        assert branches == {None} | {f"{block}/{i}" for i in range(towers)}
        assert v3.in_degree(f"{block}.concat") == towers
        assert v3.nodes[f"{block}.concat"]["branch"] is None
    # Inception-C's widened towers join their 1x3 and 3x1 halves inside the tower
    inner = v3.nodes["Mixed_7b.branch3x3dbl_3.concat"]
    assert (inner["branch"], inner["out_shape"]) == ("Mixed_7b/2", (768, 8, 8))


def test_branch_strategy_splits_the_towers():
    ctx, plan = plan_of(zoo_scenario(
        "inception_v3", "{input_shape: [3, 75, 75], classes: 10}", per_node=4,
        strategies="[{name: b, scheme: branch, devices: 4}]"))
    where = placement(ctx, 4)
    assert where["Mixed_7c.branch3x3_2b.conv"] == 1 and where["Mixed_6a.branch_pool"] == 2
    assert where["Mixed_7c.branch_pool.conv"] == 3 and where["Mixed_7c.concat"] == 0
    assert len(plan.ranks) == 4


def test_smallest_input():
    # torchvision: "expects ... 299x299"; 75x75 is the smallest that reaches the 8x8 stage (1x1)
    assert build_zoo("inception_v3", {"input_shape": [3, 75, 75]}).nodes[
        "Mixed_7c.concat"]["out_shape"] == (2048, 1, 1)
    with pytest.raises(ScenarioError) as info:
        build_zoo("inception_v3", {"input_shape": [3, 74, 74]})
    assert info.value.path == "model.params.input_shape"


# -- rectangular convolutions ------------------------------------------------------------------

def test_rectangular_conv_by_hand():
    b = GraphBuilder("t", (1, 6, 9))
    b.conv("c", 2, (2, 3), stride=(2, 3), padding=(0, 1))
    d = b.graph.nodes["c"]
    # height (6 - 2) // 2 + 1 = 3, width (9 + 2 - 3) // 3 + 1 = 3; fan-in 1 * 2 * 3 = 6
    assert (d["out_shape"], d["params"], d["fwd_flops"], d["bwd_flops"]) == (
        (2, 3, 3), 2 * 6 + 2, 2 * (2 * 3 * 3) * 6, 4 * (2 * 3 * 3) * 6)
    assert (d["kernel"], d["stride"], d["padding"]) == ((2, 3), (2, 3), (0, 1))


def test_square_conv_is_an_equal_pair():
    nodes = []
    for kernel, stride, padding in ((3, 2, 1), ((3, 3), (2, 2), (1, 1))):
        b = GraphBuilder("t", (4, 10, 10))
        b.conv("c", 8, kernel, stride, padding)
        nodes.append(b.graph.nodes["c"])
    assert nodes[0] == nodes[1]


@pytest.mark.parametrize("kwargs, field", [
    ({"kernel": (1, 0)}, "kernel"),
    ({"kernel": (1, 2, 3)}, "kernel"),
    ({"kernel": "3"}, "kernel"),
    ({"kernel": (1, 11)}, "kernel"),  # wider than the 9 + 2 * 0 input
    ({"kernel": 1, "stride": (0, 1)}, "stride"),
    ({"kernel": 1, "stride": (1, True)}, "stride"),
    ({"kernel": 1, "padding": (0, -1)}, "padding"),
    ({"kernel": 1, "padding": -1}, "padding"),
])
def test_bad_conv_sizes_name_their_field(kwargs, field):
    b = GraphBuilder("t", (1, 6, 9))
    with pytest.raises(LayerError) as info:
        b.conv("c", 2, **kwargs)
    assert info.value.field == field and info.value.value == kwargs[field]


def test_custom_conv_takes_h_w_pairs():
    g = build_custom([{"kind": "conv", "out_channels": 4, "kernel": [1, 7], "padding": [0, 3]},
                      {"kind": "conv", "out_channels": 4, "kernel": 3, "stride": [1, 2]}],
                     [2, 5, 9])
    first, second = g.nodes["conv0"], g.nodes["conv1"]
    assert (first["out_shape"], first["params"], first["kernel"]) == ((4, 5, 9), 4 * 2 * 7 + 4,
                                                                      (1, 7))
    assert (second["out_shape"], second["stride"]) == ((4, 3, 4), (1, 2))


@pytest.mark.parametrize("item, path, value", [
    ({"kernel": [1, 0]}, "model.layers[0].kernel[1]", "0"),
    ({"kernel": [1, 7, 1]}, "model.layers[0].kernel", "[1, 7, 1]"),
    ({"kernel": [1, "7"]}, "model.layers[0].kernel[1]", "'7'"),
    ({"kernel": "7"}, "model.layers[0].kernel", "'7'"),
    ({"kernel": [1, 17]}, "model.layers[0].kernel", "[1, 17]"),  # wider than the input
    ({"kernel": 1, "stride": [1, 0]}, "model.layers[0].stride[1]", "0"),
    ({"kernel": 1, "padding": [-1, 0]}, "model.layers[0].padding[0]", "-1"),
])
def test_custom_conv_pairs_are_checked(item, path, value):
    with pytest.raises(ScenarioError) as info:
        build_custom([{"kind": "conv", "out_channels": 4, **item}], [2, 5, 9])
    assert info.value.path == path
    assert path in str(info.value) and f"(got {value})" in str(info.value)


def test_custom_pool_stays_square():
    with pytest.raises(ScenarioError) as info:
        build_custom([{"kind": "pool", "kernel": [1, 2]}], [2, 5, 9])
    assert info.value.path == "model.layers[0].kernel"

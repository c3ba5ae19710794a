"""Recomputation, sequence parallelism, ZeRO and the interleaved schedule against the papers'
closed forms: memory per device, collective volumes, the pipeline bubble; and their bad input.

Memory of a GPT layer (Korthikanti et al. 2022, eq. 1-2 and section 5), with s the sequence, b
the micro-batch, h the hidden size, a the heads, t the tensor-parallel size, at 16-bit precision:

    tensor parallel                 sbh (10 + 24/t + 5as/(ht))
    + sequence parallel             sbh/t (34 + 5as/h)
    + selective recomputation       34 sbh / t
    full recomputation              2 sbh (its input only), 2 sbh / t with sequence parallelism

Model states (Rajbhandari et al. 2020): (2 + 2 + K) Psi with K = 12 for mixed-precision Adam;
stage 1 divides the K Psi by N, stage 2 the gradients too, stage 3 everything.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from simulator.errors import ScenarioError
from simulator.plan import Collective, Compute, Recv, Send, Update
from simulator.scenario import parse_scenario
from simulator.strategies.schedules import order
from simulator.yaml_input import load_yaml
from tests.simulator.test_engine_closed_forms import FLOPS, device, link, predict_strategy
from tests.simulator.test_engine_closed_forms import scenario as mlp_scenario
from tests.simulator.test_strategies import plan_of

S, H, A, L, V = 256, 512, 8, 2, 4096  # one GPT layer's s, h, a; layers; vocabulary
T = 4


def gpt(strategy: str, *, layers: int = L, per_node: int = 8, nodes: int = 1, batch: int = 1,
        precision: str = "bf16", optimizer: str = "adam", dropout: str = "") -> object:
    return parse_scenario(load_yaml(f"""
name: techniques
model: {{zoo: gpt, params: {{layers: {layers}, hidden: {H}, heads: {A}, seq_len: {S},
         vocab: {V}{dropout}}}}}
cluster: {{nodes: {nodes}, devices_per_node: {per_node}, device: {device()},
           intra_link: {link("intra")}, inter_link: {link("inter")}}}
training: {{batch_size: {batch}, precision: {precision}, optimizer: {optimizer}}}
strategies: [{{name: s, {strategy}}}]
"""))


def outside_layers(t: int, sp: bool) -> float:
    """Bytes the layers outside the transformer layers keep (micro-batch 1, 16-bit): the
    embedding's dropout mask (sh bytes), ln_f's and lm_head's inputs (2sh each) and the loss's
    fp32 probabilities over the split vocabulary (4sv/t) (Korthikanti et al. section 4.3)."""
    seq = t if sp else 1
    return (S * H + 2 * S * H + 2 * S * H) / seq + 4 * S * V / t


@pytest.mark.parametrize("options,per_layer", [
    ("", S * H * (10 + 24 / T + 5 * A * S / (H * T))),
    ("sequence_parallel: true", S * H / T * (34 + 5 * A * S / H)),
    ("sequence_parallel: true, recompute: selective", 34 * S * H / T),
    ("recompute: full", 2 * S * H),
    ("sequence_parallel: true, recompute: full", 2 * S * H / T),
])
def test_activation_memory_is_korthikanti_et_al(options, per_layer):
    _, plan = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}, {options}"))
    sp = "sequence_parallel" in options
    for m in plan.memory:
        assert m.activations == pytest.approx(L * per_layer + outside_layers(T, sp), rel=1e-12)


def test_recomputation_holds_one_unit_or_one_attention_core_while_it_reruns():
    _, full = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}, recompute: full"))
    # one layer's activations of one micro-batch (tensor parallel, no sequence parallelism)
    assert dict(full.memory[0].detail)["one unit's activations while recomputed"] == \
        pytest.approx(S * H * (10 + 24 / T + 5 * A * S / (H * T)))
    _, sel = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}, recompute: selective"))
    assert dict(sel.memory[0].detail)["one attention core's tensors while recomputed"] == \
        pytest.approx(5 * A * S * S / T)
    assert sel.memory[0].buffers == pytest.approx(5 * A * S * S / T)


def test_the_memory_breakdown_names_the_attention_tensors():
    _, plan = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}"))
    detail = dict(plan.memory[0].detail)
    # per layer 2as^2b softmax output, as^2b mask, 2as^2b dropout output, split over t
    assert detail["attention softmax outputs"] == L * 2 * A * S * S / T
    assert detail["attention dropout masks"] == L * A * S * S / T
    assert detail["attention dropout outputs"] == L * 2 * A * S * S / T
    without = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}", dropout=", dropout: 0"))[1]
    assert "attention dropout masks" not in dict(without.memory[0].detail)


def _params() -> int:
    """Parameters of the test GPT (weights tied: the output layer owns none)."""
    block = 2 * 2 * H + (3 * H * H + 3 * H) + (H * H + H) + (4 * H * H + 4 * H) + (4 * H * H + H)
    return V * H + S * H + L * block + 2 * H


@pytest.mark.parametrize("zero,expected", [
    (0, lambda psi, n: (2 * psi, 2 * psi, 12 * psi)),
    (1, lambda psi, n: (2 * psi, 2 * psi, 12 * psi / n)),
    (2, lambda psi, n: (2 * psi, 2 * psi / n, 12 * psi / n)),
    (3, lambda psi, n: (2 * psi / n, 2 * psi / n, 12 * psi / n)),
])
def test_model_states_are_the_zero_paper_formulas(zero, expected):
    n = 8
    _, plan = plan_of(gpt(f"scheme: data_parallel, zero: {zero}", batch=n))
    psi = _params()
    for m in plan.memory:
        assert (m.weights, m.gradients, m.optimizer) == pytest.approx(expected(psi, n))
    stage3 = dict(plan.memory[0].detail)
    if zero == 3:
        # the largest unit (a transformer layer... or the embedding) gathered, twice over
        largest = max(V * H + S * H, _params() - V * H - S * H - 2 * H) / L
        biggest = max(V * H + S * H, largest)
        assert stage3["ZeRO-3 gathered parameters (unit computing + unit prefetched)"] == \
            2 * 2 * biggest
    else:
        assert plan.memory[0].buffers == 0


def _bytes(ops, collective: str | None = None) -> float:  # noqa: ANN001
    return sum(o.bytes for o in ops if isinstance(o, Collective)
               and (collective is None or o.collective == collective))


def test_zero_moves_two_psi_per_step_at_stages_1_and_2_and_three_at_stage_3():
    psi_bytes = _params() * 2
    for zero, volume in ((1, 2), (2, 2), (3, 3)):
        _, plan = plan_of(gpt(f"scheme: data_parallel, zero: {zero}", batch=8))
        for r in plan.ranks:
            assert _bytes(r.ops) == pytest.approx(volume * psi_bytes)
            # the update runs on this rank's 1/8 of the parameters
            (update,) = [o for o in r.ops if isinstance(o, Update)]
            assert update.params == _params() // 8
    _, plain = plan_of(gpt("scheme: data_parallel", batch=8))
    assert _bytes(plain.ranks[0].ops, "allreduce") == psi_bytes  # an all-reduce of Psi


def test_zero_3_gathers_each_unit_before_its_forward_and_its_backward():
    _, plan = plan_of(gpt("scheme: data_parallel, zero: 3", batch=2, per_node=2))
    ops = plan.ranks[0].ops
    gathers = [o.key for o in ops if isinstance(o, Collective) and o.collective == "allgather"]
    scatters = [o.key for o in ops if isinstance(o, Collective)
                and o.collective == "reduce_scatter"]
    units = ["embedding", "block0.ln1", "block1.ln1", "ln_f"]
    assert gathers == [f"fwd0:gather:{u}" for u in units] + \
        [f"bwd0:gather:{u}" for u in reversed(units)]
    assert scatters == [f"bwd0:scatter:{u}" for u in reversed(units)]
    by_id = {o.id: o for o in ops}
    # block1's forward waits for its parameters; their gathering starts when block0 starts
    first = next(o for o in ops if isinstance(o, Compute) and o.layer == "block1.ln1")
    gather = next(o for o in ops if getattr(o, "key", "") == "fwd0:gather:block1.ln1")
    assert gather.id in first.deps
    assert by_id[gather.deps[0]].layer == "block0.ln1"


def test_sequence_parallelism_moves_tensor_parallelisms_bytes_in_other_collectives():
    _, tp = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}"))
    _, sp = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}, sequence_parallel: true"))

    def volume(ops, drop_again: bool) -> float:  # noqa: ANN001
        # a ring moves 2(p-1)/p S for an all-reduce, (p-1)/p S for a gather or scatter
        out = 0.0
        for o in ops:
            if isinstance(o, Collective) and o.group.startswith("tp") and "xent" not in o.key \
                    and o.key != "sp_grads":
                if drop_again and o.key.endswith(":again"):
                    continue
                out += o.bytes * (2 if o.collective == "allreduce" else 1)
        return out

    tp_colls = Counter(o.collective for o in tp.ranks[0].ops if isinstance(o, Collective))
    sp_colls = Counter(o.collective for o in sp.ranks[0].ops if isinstance(o, Collective))
    assert tp_colls["reduce_scatter"] == 0 and sp_colls["reduce_scatter"] > 0
    # besides the layer norms' gradients, all-reduced once per step
    assert sp_colls["allreduce"] == 1
    assert volume(sp.ranks[0].ops, True) == volume(tp.ranks[0].ops, False)
    # and one more all-gather per column layer in backward: its kept input, sequence-split
    again = [o for o in sp.ranks[0].ops if isinstance(o, Collective) and o.key.endswith("again")]
    assert len(again) == L * 2 + 1  # attn_qkv and mlp_fc per layer, lm_head
    (ln,) = [o for o in sp.ranks[0].ops if isinstance(o, Collective) and o.key == "sp_grads"]
    assert ln.bytes == (L * 2 + 1) * 2 * H * 2  # gamma and beta of every layer norm, 16-bit


def test_layers_between_split_regions_work_on_a_slice_of_the_sequence():
    _, sp = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}, sequence_parallel: true"))
    shards = {o.layer: o.shards for o in sp.ranks[0].ops if isinstance(o, Compute)}
    assert shards["block0.ln1"] == shards["block0.add1"] == shards["embed_dropout"] == T
    assert shards["block0.attn_qkv"] == T  # split as tensor parallelism splits it


def test_full_recomputation_runs_each_layers_forward_again_before_its_backward():
    _, plan = plan_of(gpt("scheme: parallel_3d, tensor: 1, recompute: full", per_node=1))
    ops = plan.ranks[0].ops
    again = [o for o in ops if isinstance(o, Compute) and o.recompute]
    block_layers = [o.layer for o in ops if isinstance(o, Compute) and o.phase == "fwd"
                    and not o.recompute and o.layer.startswith("block")]
    assert sorted(o.layer for o in again) == sorted(block_layers)
    assert all(o.phase == "fwd" for o in again)
    seq = [(o.layer, o.phase, o.recompute) for o in ops if isinstance(o, Compute)]
    # block1's forward again, then its backward, then block0's
    i = seq.index(("block1.ln1", "fwd", True))
    assert seq.index(("block1.add2", "bwd", False)) > i
    assert seq.index(("block0.ln1", "fwd", True)) > seq.index(("block1.ln1", "bwd", False))
    _, sel = plan_of(gpt("scheme: parallel_3d, tensor: 1, recompute: selective", per_node=1))
    assert {o.layer for o in sel.ranks[0].ops if isinstance(o, Compute) and o.recompute} == {
        "block0.attn", "block1.attn"}


def test_recomputation_costs_one_more_forward_of_compute():
    mlp = "[" + ", ".join(["{kind: dense, units: 1024}"] * 4) + "]"
    times = {}
    for mode in ("none", "full"):
        sc = mlp_scenario(per_node=1, dev=device(sms=1, blocks_per_sm=1, mem_GBps=1e6),
                          layers=mlp, input_shape="[1024]", batch=1024,
                          strategies=f"[{{name: s, scheme: data_parallel, recompute: {mode}}}]")
        times[mode] = predict_strategy(sc).entry["breakdown_s"]["compute"]
    # a model without blocks: every layer is its own unit; fwd 2 x 1024^2 per sample
    assert times["full"] - times["none"] == pytest.approx(
        4 * 2 * 1024 * 1024 * 1024 / FLOPS, rel=1e-6)


def test_interleaved_schedule_order_is_megatrons():
    # p = 2, m = 4, V = 2, device 0: 2 x (2 - 0 - 1) + (2 - 1) x 2 = 4 warm-up forwards
    assert order("1f1b", 0, 2, 4, 2) == [
        ("fwd", 0, 0), ("fwd", 1, 0), ("fwd", 0, 1), ("fwd", 1, 1),
        ("fwd", 2, 0), ("bwd", 0, 1), ("fwd", 3, 0), ("bwd", 1, 1),
        ("fwd", 2, 1), ("bwd", 0, 0), ("fwd", 3, 1), ("bwd", 1, 0),
        ("bwd", 2, 1), ("bwd", 3, 1), ("bwd", 2, 0), ("bwd", 3, 0)]


MLP16 = "[" + ", ".join(["{kind: dense, units: 1024}"] * 16) + "]"


@pytest.mark.parametrize("v", [1, 2, 4])
@pytest.mark.parametrize("m", [4, 8])
def test_interleaved_bubble_is_p_minus_1_over_v(v, m):
    p, batch = 4, 1024
    sc = mlp_scenario(per_node=p, dev=device(sms=1, blocks_per_sm=1, mem_GBps=1e6),
                      intra=link("intra", 1e6, 0), layers=MLP16, input_shape="[1024]",
                      batch=batch, iterations=3, warmup=1,
                      strategies=f"[{{name: pp, scheme: pipeline, stages: {p}, "
                                 f"micro_batches: {m}, schedule: 1f1b, virtual_stages: {v}}}]")
    e = predict_strategy(sc).entry
    per_mb = 4 * 2 * (2 + 4) * 1024 * 1024 * (batch // m) / 2 / FLOPS  # 4 layers, fwd + bwd
    update = 4 * 4 * (1024 * 1024 + 1024) / FLOPS
    # Narayanan et al. 2021: the bubble is (p - 1) / V micro-batches' time
    assert e["iteration_time_s"] == pytest.approx((m + (p - 1) / v) * per_mb + update, rel=1e-5)
    assert e["breakdown_s"]["idle"] == pytest.approx((p - 1) / v * per_mb, rel=1e-4)


def test_interleaving_sends_v_times_the_messages():
    sends = {}
    for v in (1, 2):
        sc = mlp_scenario(per_node=4, layers=MLP16, input_shape="[1024]", batch=64,
                          strategies=f"[{{name: pp, scheme: pipeline, stages: 4, "
                                     f"micro_batches: 4, schedule: 1f1b, virtual_stages: {v}}}]")
        _, plan = plan_of(sc)
        sends[v] = sum(isinstance(o, Send) for r in plan.ranks for o in r.ops)
        assert sends[v] == sum(isinstance(o, Recv) for r in plan.ranks for o in r.ops)
    # each of m micro-batches crosses (pV - 1) boundaries each way
    assert (sends[1], sends[2]) == (2 * 4 * 3, 2 * 4 * 7)


def test_interleaved_first_stage_keeps_more_activations():
    # Korthikanti et al. section 4.2.3: the first stage holds L (1 + (p - 1) / (pV)) layers'
    # worth of one micro-batch (here all parts keep the same per micro-batch)
    p, v = 4, 2
    sc = mlp_scenario(per_node=p, layers=MLP16, input_shape="[1024]", batch=64,
                      strategies=f"[{{name: pp, scheme: pipeline, stages: {p}, "
                                 f"micro_batches: 8, schedule: 1f1b, virtual_stages: {v}}}]")
    _, plan = plan_of(sc)
    per_layer_mb = 1024 * 8 * 4  # a dense layer's input, micro-batch of 8, fp32
    layers = 16
    assert plan.memory[0].activations == pytest.approx(
        layers * (1 + (p - 1) / (p * v)) * per_layer_mb)


def test_a_tied_output_layer_on_another_stage_keeps_a_copy_all_reduced_with_the_embedding():
    _, plan = plan_of(gpt(f"scheme: parallel_3d, tensor: {T}, pipeline: 2, micro_batches: 2",
                          batch=2))
    table = V * H / T  # the token table's vocabulary slice
    first, last = plan.ranks[0], plan.ranks[T]
    for r in (first, last):
        (tied,) = [o for o in r.ops if isinstance(o, Collective) and o.key == "tied"]
        assert tied.bytes == table * 2 and tied.group == "emb0_0"
    assert plan.groups["emb0_0"] == (0, T)
    # the last stage's weights: its layers' and the copy
    block = (_params() - V * H - S * H - 2 * H) / L
    assert plan.memory[T].weights == pytest.approx(((L // 2) * block + 2 * H) / T * 2
                                                   + table * 2, rel=0.01)


@pytest.mark.parametrize("strategy,path,message", [
    ("scheme: parallel_3d, tensor: 2, recompute: some", "strategies[0].recompute",
     "must be one of none, selective, full"),
    ("scheme: data_parallel, devices: 1, zero: 1", "strategies[0].zero",
     "needs at least 2"),
    ("scheme: parallel_3d, tensor: 2, zero: 1", "strategies[0].zero", "needs at least 2"),
    ("scheme: parallel_3d, pipeline: 2, data: 2, zero: 2, micro_batches: 2",
     "strategies[0].zero", "stage 0 or 1 only"),
    ("scheme: parallel_3d, pipeline: 2, virtual_stages: 3, micro_batches: 2",
     "strategies[0].virtual_stages", "do not divide the model's 4 blocks"),
    ("scheme: parallel_3d, pipeline: 2, virtual_stages: 2, micro_batches: 3",
     "strategies[0].virtual_stages", "multiple of the pipeline stages"),
    ("scheme: parallel_3d, pipeline: 2, virtual_stages: 2, schedule: gpipe, micro_batches: 2",
     "strategies[0].virtual_stages", "interleave the 1F1B schedule"),
    ("scheme: parallel_3d, data: 2, sequence_parallel: true", "strategies[0].sequence_parallel",
     "needs tensor parallelism"),
    ("scheme: parallel_3d, data: 2, zero: 4", "strategies[0].zero", "must be 0, 1, 2 or 3"),
    ("scheme: parallel_3d, data: 2, tensor: 2, zero: 2, sequence_parallel: true",
     "strategies[0].zero", "use stage 1 with sequence parallelism"),
    ("scheme: parallel_3d, tensor: 3", "strategies[0].tensor", "8 attention heads"),
])
def test_bad_technique_options_name_the_field(strategy, path, message):
    with pytest.raises(ScenarioError) as err:
        gpt(strategy, layers=4, batch=6 if "micro_batches: 3" in strategy else 4)
    assert err.value.path == path and message in str(err.value)


def test_selective_recomputation_needs_attention():
    with pytest.raises(ScenarioError, match="no attention layer"):
        mlp_scenario(strategies="[{name: s, scheme: data_parallel, recompute: selective}]")


def test_a_bad_technique_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    text = ("name: bad\nmodel: {zoo: gpt, params: {layers: 2, hidden: 64, heads: 4, "
            "seq_len: 8, vocab: 64}}\ncluster: {nodes: 1, devices_per_node: 2, device: A100,"
            " intra_link: nvlink3}\ntraining: {batch_size: 2}\nstrategies:\n"
            "  - {name: s, scheme: parallel_3d, data: 2, sequence_parallel: true}\n")
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "parasim", "simulate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "strategies[0].sequence_parallel" in done.stderr and str(path) in done.stderr

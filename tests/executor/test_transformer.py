"""A small GPT run for real (mpiexec -n 1, 2, 4) under every large-model technique: tensor and
sequence parallelism, both recomputations, ZeRO stages 1 to 3, plain and interleaved 1F1B
pipelines, a tied embedding split over stages. Each ends with the one-device run's weights; the
model learns the shipped text; bad input is one clear line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.executor.test_execute import launch, weights_of

TEXT = Path(__file__).resolve().parents[2] / "scenarios" / "data" / "kjv_luke.txt"

GPT = f"""\
name: exec gpt
seed: 2
model: {{zoo: gpt, params: {{layers: 4, hidden: 32, heads: 4, seq_len: 16, vocab: 61,
        dropout: 0}}}}
cluster: {{nodes: 1, devices_per_node: 4, device: cpu_core, intra_link: shm}}
training: {{batch_size: 8, iterations: 2, warmup_iterations: 0, learning_rate: 0.1}}
data: {{kind: text, path: {TEXT}, seq_len: 16}}
strategies:
  - {{name: one, scheme: data_parallel, devices: 1}}
  - {{name: one-full, scheme: data_parallel, devices: 1, recompute: full}}
  - {{name: one-selective, scheme: data_parallel, devices: 1, recompute: selective}}
  - {{name: dp2-zero1, scheme: data_parallel, devices: 2, zero: 1}}
  - {{name: dp2-zero2-accumulate, scheme: data_parallel, devices: 2, zero: 2,
      gradient_accumulation: 2}}
  - {{name: dp2-zero3-full, scheme: data_parallel, devices: 2, zero: 3, recompute: full}}
  - {{name: tp2, scheme: parallel_3d, tensor: 2}}
  - {{name: tp2-sp-selective, scheme: parallel_3d, tensor: 2, sequence_parallel: true,
      recompute: selective}}
  - {{name: tp2-full, scheme: parallel_3d, tensor: 2, recompute: full}}
  - {{name: pp2-1f1b, scheme: parallel_3d, pipeline: 2, micro_batches: 4}}
  - {{name: pp2-interleaved, scheme: parallel_3d, pipeline: 2, micro_batches: 4,
      virtual_stages: 2}}
  - {{name: tp4-sp-full, scheme: parallel_3d, tensor: 4, sequence_parallel: true,
      recompute: full}}
  - {{name: tp2-pp2-sp, scheme: parallel_3d, tensor: 2, pipeline: 2, micro_batches: 2,
      sequence_parallel: true, recompute: selective}}
  - {{name: tp2-pp2-interleaved, scheme: parallel_3d, tensor: 2, pipeline: 2,
      micro_batches: 4, virtual_stages: 2}}
  - {{name: dp2-pp2-zero1, scheme: parallel_3d, data: 2, pipeline: 2, micro_batches: 2,
      zero: 1}}
  - {{name: dp2-tp2-zero3, scheme: parallel_3d, data: 2, tensor: 2, zero: 3,
      recompute: selective}}
  - {{name: dp4-zero3, scheme: data_parallel, devices: 4, zero: 3}}
  - {{name: dp4-zero2, scheme: data_parallel, devices: 4, zero: 2, bucket_MiB: 0.01,
      overlap: true}}
"""

RANKS = {"one-full": 1, "one-selective": 1, "dp2-zero1": 2, "dp2-zero2-accumulate": 2,
         "dp2-zero3-full": 2, "tp2": 2, "tp2-sp-selective": 2, "tp2-full": 2, "pp2-1f1b": 2,
         "pp2-interleaved": 2, "tp4-sp-full": 4, "tp2-pp2-sp": 4, "tp2-pp2-interleaved": 4,
         "dp2-pp2-zero1": 4, "dp2-tp2-zero3": 4, "dp4-zero3": 4, "dp4-zero2": 4}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, dict]:
    tmp = tmp_path_factory.mktemp("gpt")
    path = tmp / "gpt.yaml"
    path.write_text(GPT)
    out = {}
    for n in (1, 2, 4):
        res, wts = tmp / f"r{n}.json", tmp / f"w{n}.npz"
        done = launch(n, ["execute", str(path), "--backend", "reference", "--json", str(res),
                          "--weights", str(wts)], timeout=600,
                      env={"MPIR_CVAR_NUM_CLIQUES": "2"} if n == 4 else None)
        assert done.returncode == 0, done.stderr
        out[n] = {"result": json.loads(res.read_text()), "weights": dict(np.load(wts))}
    return out


@pytest.mark.parametrize("strategy", sorted(RANKS))
def test_every_technique_ends_with_the_one_device_weights(runs, strategy):
    one = weights_of(runs[1], "one")
    got = weights_of(runs[RANKS[strategy]], strategy)
    assert got.keys() == one.keys() and one
    # the tied output layer has no weight of its own: the embedding's table is the one
    assert "lm_head/w" not in got and "embedding/w" in got
    for key in one:
        np.testing.assert_allclose(got[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_the_loss_is_per_token_and_identical_under_every_technique(runs):
    one = next(e for e in runs[1]["result"]["results"] if e["strategy"] == "one")
    assert one["training"]["loss"][0] == pytest.approx(np.log(61), rel=0.02)  # untrained
    for n in (2, 4):
        for e in runs[n]["result"]["results"]:
            np.testing.assert_allclose(e["training"]["loss"], one["training"]["loss"],
                                       rtol=1e-5, err_msg=e["strategy"])


def test_a_gpt_learns_the_text(tmp_path: Path):
    path = tmp_path / "learn.yaml"
    head = GPT[:GPT.index("strategies:")]
    path.write_text(head.replace("iterations: 2", "iterations: 150")
                    .replace("layers: 4", "layers: 2").replace("batch_size: 8", "batch_size: 16")
                    + "strategies:\n  - {name: tp2-sp-selective, scheme: parallel_3d, "
                      "tensor: 2, sequence_parallel: true, recompute: selective}\n")
    res = tmp_path / "r.json"
    done = launch(2, ["execute", str(path), "--backend", "cpu", "--strategy",
                      "tp2-sp-selective", "--json", str(res)])
    assert done.returncode == 0, done.stderr
    curve = json.loads(res.read_text())["results"][0]["training"]
    # ln 61 = 4.11 nats per character at the start; letter and word statistics take it well down
    assert curve["loss"][-1] < 0.7 * curve["loss"][0]
    assert np.mean(curve["accuracy"][-10:]) > 0.2  # one symbol in 61 is chance


def test_cuda_kernels_run_a_tensor_and_sequence_parallel_gpt_under_the_simulator(tmp_path):
    head = GPT[:GPT.index("strategies:")]
    small = (head.replace("layers: 4, hidden: 32, heads: 4, seq_len: 16",
                          "layers: 1, hidden: 8, heads: 2, seq_len: 4")
             .replace("seq_len: 16}", "seq_len: 4}").replace("batch_size: 8", "batch_size: 2")
             .replace("iterations: 2", "iterations: 1")
             + "strategies:\n  - {name: tp2-sp-selective, scheme: parallel_3d, tensor: 2, "
               "sequence_parallel: true, recompute: selective}\n")
    path = tmp_path / "cuda.yaml"
    path.write_text(small)
    outs = {}
    for backend in ("reference", "cuda"):
        w = tmp_path / f"{backend}.npz"
        done = launch(2, ["execute", str(path), "--backend", backend, "--strategy",
                          "tp2-sp-selective", "--weights", str(w)], timeout=900,
                      env={"NUMBA_ENABLE_CUDASIM": "1"})
        assert done.returncode == 0, done.stderr
        outs[backend] = dict(np.load(w))
    for key, ref in outs["reference"].items():
        np.testing.assert_allclose(outs["cuda"][key], ref, rtol=1e-4, atol=1e-5, err_msg=key)


def test_a_vocabulary_smaller_than_the_text_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "v.yaml"
    path.write_text(GPT.replace("vocab: 61", "vocab: 40"))
    done = launch(1, ["execute", str(path), "--strategy", "one"], timeout=120)
    assert done.returncode == 2
    assert "model.params.vocab is 40" in done.stderr and "Traceback" not in done.stderr


def test_a_model_sequence_unlike_the_datas_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text(GPT.replace("seq_len: 16}", "seq_len: 12}"))
    done = launch(1, ["execute", str(path), "--strategy", "one"], timeout=120)
    assert done.returncode == 2
    assert "model.params.seq_len is 16" in done.stderr and "Traceback" not in done.stderr

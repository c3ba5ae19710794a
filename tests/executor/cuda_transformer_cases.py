"""Cases: the :class:`CudaBackend`'s transformer methods equal the NumPy reference on random
inputs, to the float32 accuracy of ``cuda_cases.close``.

``test_kernels_transformer.py`` runs this module in a child pytest with ``NUMBA_ENABLE_CUDASIM=1``
(as ``test_kernels_cuda.py`` runs ``cuda_cases.py``); on a machine with a GPU,
``pytest tests/executor/cuda_transformer_cases.py`` runs the same cases on it. Sizes are tiny:
the simulator runs a Python thread per GPU thread, and the row kernels' blocks synchronise.
"""

from __future__ import annotations

import numpy as np
import pytest

from executor.kernels.cuda import CudaBackend
from executor.kernels.reference import ReferenceBackend
from tests.executor.cuda_cases import close, rand

REF = ReferenceBackend()


@pytest.fixture(scope="module")
def cu() -> CudaBackend:
    return CudaBackend()


@pytest.mark.parametrize("rows,hidden", [(1, 1), (3, 70)])  # 70: past a block of 64 threads
def test_layer_norm(cu: CudaBackend, rows: int, hidden: int) -> None:
    rng = np.random.default_rng(1)
    x, gamma, beta = rand(rng, rows, hidden) * 3 + 2, rand(rng, hidden), rand(rng, hidden)
    want = REF.layer_norm_forward(x, gamma, beta)
    got = cu.layer_norm_forward(*(cu.to_device(a) for a in (x, gamma, beta)))
    for g, w in zip(got, want):
        close(g, w)
    dy = rand(rng, rows, hidden)
    for g, w in zip(cu.layer_norm_backward(*(cu.to_device(a) for a in (x, gamma, dy, *want[1:]))),
                    REF.layer_norm_backward(x, gamma, dy, *want[1:])):
        close(g, w)


def test_gelu(cu: CudaBackend) -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rand(rng, 2, 5) * 4, np.float32([[-30, -9, -6, 0, 9]])])
    dy = rand(rng, *x.shape)
    close(cu.gelu_forward(cu.to_device(x)), REF.gelu_forward(x))
    close(cu.gelu_backward(cu.to_device(x), cu.to_device(dy)), REF.gelu_backward(x, dy))


@pytest.mark.parametrize("causal", [True, False])
def test_attention(cu: CudaBackend, causal: bool) -> None:
    rng = np.random.default_rng(3)
    qkv = rand(rng, 2, 4, 3 * 2 * 2)  # N=2, S=4, heads=2, d=2
    want_out, want_probs = REF.attention_forward(qkv, 2, causal)
    out, probs = cu.attention_forward(cu.to_device(qkv), 2, causal)
    close(out, want_out)
    close(probs, want_probs)
    dout = rand(rng, *want_out.shape)
    close(cu.attention_backward(cu.to_device(qkv), probs, cu.to_device(dout), 2),
          REF.attention_backward(qkv, want_probs, dout, 2))


def test_attention_rejects_columns_that_are_not_whole_heads(cu: CudaBackend) -> None:
    with pytest.raises(ValueError, match="10 columns do not split into 2 heads"):
        cu.attention_forward(cu.zeros((1, 2, 10)), 2)


def test_embedding(cu: CudaBackend) -> None:
    rng = np.random.default_rng(4)
    ids = np.array([[5, 1, 5], [9, 5, 2]])  # id 5 three times; 1 and 9 outside [2, 7)
    table, dy = rand(rng, 5, 3), rand(rng, 2, 3, 3)
    close(cu.embedding_forward(cu.to_device(ids), cu.to_device(table), 2),
          REF.embedding_forward(ids, table, 2))
    close(cu.embedding_backward(cu.to_device(ids), cu.to_device(dy), 2, 5),
          REF.embedding_backward(ids, dy, 2, 5))


def test_xent_partial(cu: CudaBackend) -> None:
    rng = np.random.default_rng(5)
    logits, labels = rand(rng, 3, 70) * 5, np.array([69, 140, 100])  # slice [70, 140)
    want = REF.xent_partial(logits, labels, 70)
    for g, w in zip(cu.xent_partial(cu.to_device(logits), cu.to_device(labels), 70), want):
        close(g, w)
    gmax, gsum = want[0] + 0.5, want[1] * np.float32(np.exp(-0.5)) + 1  # a larger vocabulary's
    close(cu.xent_partial_grad(*(cu.to_device(a) for a in (logits, labels)), 70,
                               cu.to_device(gmax), cu.to_device(gsum), 0.25),
          REF.xent_partial_grad(logits, labels, 70, gmax, gsum, 0.25))


def test_add(cu: CudaBackend) -> None:
    rng = np.random.default_rng(6)
    a, b = rand(rng, 2, 3, 5), rand(rng, 2, 3, 5)
    close(cu.add(cu.to_device(a), cu.to_device(b)), REF.add(a, b))
    with pytest.raises(ValueError, match="differ"):
        cu.add(cu.zeros((2, 3)), cu.zeros((3,)))

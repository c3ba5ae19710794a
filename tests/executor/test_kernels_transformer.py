"""The transformer kernels (layer norm, GELU, attention, vocabulary-parallel embedding and
cross-entropy, ``add``) in all three backends.

* The reference against central finite differences of ``loss = sum(y * r)``, run in float64:
  the ``ref64`` fixture switches the reference's output type to float64, so the very code under
  test runs without float32 rounding, and a small step leaves errors far below the tolerance
  (``rtol 1e-6``). Next to those, small cases worked by hand, and the properties the callers
  rely on: the causal mask, the per-head column layout (a split of the columns is a split of the
  heads), and slices of the vocabulary that combine into the whole vocabulary's embedding and
  cross-entropy.
* The CPU backend (serial and ``prange``) against the reference at float32 accuracy, odd shapes
  included.
* The CUDA backend against the reference: ``cuda_transformer_cases.py`` in a child pytest under
  numba's CUDA simulator (see ``test_kernels_cuda.py`` for why a child), one test here per case.
"""

from __future__ import annotations

import ast
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from executor.kernels import reference
from executor.kernels.base import Backend
from executor.kernels.cpu import CpuBackend
from executor.kernels.reference import ReferenceBackend
from tests.executor.test_kernels_cuda import ChildRun, child_env, run
from tests.executor.test_reference import dot, numeric_grad, rand

REF = ReferenceBackend()
EPS64 = 1e-6  # finite-difference step in float64: truncation ~1e-12, rounding ~1e-10
CASES = Path(__file__).parent / "cuda_transformer_cases.py"


@pytest.fixture
def ref64(monkeypatch: pytest.MonkeyPatch) -> ReferenceBackend:
    """The reference backend with float64 outputs (its transformer methods compute in float64
    and cast once, to ``reference.F32``)."""
    monkeypatch.setattr(reference, "F32", np.float64)
    return REF


@pytest.fixture(params=[False, True], ids=["serial", "parallel"])
def cpu(request: pytest.FixtureRequest) -> CpuBackend:
    return CpuBackend(parallel=request.param)


def check64(analytic: np.ndarray, numeric: np.ndarray) -> None:
    assert analytic.shape == numeric.shape
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


def close(got: np.ndarray, want: np.ndarray) -> None:
    """float32 agreement: ``rtol 1e-5``, ``atol 1e-6`` times the largest reference magnitude."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)


def combine(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole vocabulary's ``(gmax, gsum, target)`` from the slices' ``xent_partial``
    (Megatron-LM's vocab-parallel cross entropy: a max-, then a sum-all-reduce)."""
    mx = np.stack([p[0] for p in parts]).astype(np.float64)
    gmax = mx.max(axis=0)
    gsum = sum(np.asarray(p[1], np.float64) * np.exp(m - gmax) for p, m in zip(parts, mx))
    return gmax, gsum, sum(np.asarray(p[2], np.float64) for p in parts)


# ---- layer norm -----------------------------------------------------------------------------

def test_layer_norm_of_one_row_by_hand() -> None:
    # x = 1, 2, 3, 4: mean 2.5, biased variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    y, mean, rstd = REF.layer_norm_forward(np.float32([[1, 2, 3, 4]]), np.float32([1, 1, 2, 2]),
                                           np.float32([0, 0, 0, 10]), eps=0.75)
    assert mean.tolist() == [2.5] and rstd.tolist() == [np.float32(1 / math.sqrt(2.0))]
    np.testing.assert_allclose(y, [[-1.5 / 2**0.5, -0.5 / 2**0.5, 1.0 / 2**0.5,
                                    3.0 / 2**0.5 + 10]], rtol=1e-6)


def test_layer_norm_gradients(ref64: ReferenceBackend) -> None:
    rng = np.random.default_rng(1)
    x, gamma, beta = rand(rng, 3, 5) * 2 + 1, rand(rng, 5), rand(rng, 5)
    r = rng.standard_normal((3, 5))
    _, mean, rstd = ref64.layer_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = ref64.layer_norm_backward(x, gamma, r, mean, rstd)

    def loss(xx: np.ndarray, gg: np.ndarray, bb: np.ndarray) -> float:
        return dot(ref64.layer_norm_forward(xx, gg, bb)[0], r)

    check64(dx, numeric_grad(lambda a: loss(a, gamma, beta), x, EPS64))
    check64(dgamma, numeric_grad(lambda a: loss(x, a, beta), gamma, EPS64))
    check64(dbeta, numeric_grad(lambda a: loss(x, gamma, a), beta, EPS64))


# ---- GELU -----------------------------------------------------------------------------------

def test_gelu_by_hand() -> None:
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): 0 at 0, 0.841192 at 1, -0.158808 at -1
    y = REF.gelu_forward(np.float32([0.0, 1.0, -1.0, 10.0]))
    np.testing.assert_allclose(y, [0.0, 0.841192, -0.158808, 10.0], atol=1e-6)


def test_gelu_gradient(ref64: ReferenceBackend) -> None:
    rng = np.random.default_rng(2)
    x = rand(rng, 4, 6) * 3
    r = rng.standard_normal(x.shape)
    check64(ref64.gelu_backward(x, r),
            numeric_grad(lambda a: dot(ref64.gelu_forward(a), r), x, EPS64))


# ---- attention ------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False])
def test_attention_gradients(ref64: ReferenceBackend, causal: bool) -> None:
    rng = np.random.default_rng(3)
    qkv = rand(rng, 2, 3, 3 * 2 * 2)  # N=2, S=3, heads=2, d=2
    out, probs = ref64.attention_forward(qkv, 2, causal)
    r = rng.standard_normal(out.shape)
    dqkv = ref64.attention_backward(qkv, probs, r, 2)
    check64(dqkv, numeric_grad(lambda a: dot(ref64.attention_forward(a, 2, causal)[0], r), qkv,
                               EPS64))


def test_attention_with_zero_queries_averages_the_values_so_far() -> None:
    # q = 0: every score is 0, so each query weighs the keys it may see equally
    v = np.float32([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]])  # S=3, d=2, one head
    qkv = np.concatenate([np.zeros((3, 2)), np.ones((3, 2)), v], axis=1)[None].astype(np.float32)
    out, probs = REF.attention_forward(qkv, 1, causal=True)
    np.testing.assert_allclose(out[0], [[1.0, 10.0], [2.0, 15.0], [3.0, 30.0]], rtol=1e-6)
    np.testing.assert_allclose(probs[0, 0], [[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]],
                               rtol=1e-6)
    out, _ = REF.attention_forward(qkv, 1, causal=False)
    np.testing.assert_allclose(out[0], np.tile([[3.0, 30.0]], (3, 1)), rtol=1e-6)


@pytest.mark.parametrize("make", [ReferenceBackend, CpuBackend], ids=["reference", "cpu"])
def test_causal_mask_hides_later_tokens(make: type[Backend]) -> None:
    be = make()
    rng = np.random.default_rng(4)
    qkv = rand(rng, 2, 5, 3 * 2 * 3)  # heads=2, d=3
    out, probs = be.attention_forward(qkv, 2, causal=True)
    later = qkv.copy()
    later[:, 3:] = rand(rng, 2, 2, 3 * 2 * 3)  # new q, k, v for positions 3 and 4
    out2, _ = be.attention_forward(later, 2, causal=True)
    np.testing.assert_array_equal(out2[:, :3], out[:, :3])
    assert not np.allclose(out2[:, 3:], out[:, 3:])
    assert np.all(np.triu(probs, 1) == 0)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("make", [ReferenceBackend, CpuBackend], ids=["reference", "cpu"])
@pytest.mark.parametrize("causal", [True, False])
def test_a_split_of_the_columns_is_a_split_of_the_heads(make: type[Backend],
                                                        causal: bool) -> None:
    """Tensor parallelism over T=2 devices: each takes half of qkv's columns (2 of 4 heads)
    and produces its half of out's columns, and of dqkv's."""
    be = make()
    rng = np.random.default_rng(5)
    heads, d = 4, 3
    qkv = rand(rng, 2, 4, 3 * heads * d)
    out, probs = be.attention_forward(qkv, heads, causal)
    dout = rand(rng, *out.shape)
    dqkv = be.attention_backward(qkv, probs, dout, heads)
    half_in, half_out = 3 * heads * d // 2, heads * d // 2
    for part in range(2):
        cols_in = slice(part * half_in, (part + 1) * half_in)
        cols_out = slice(part * half_out, (part + 1) * half_out)
        sub_out, sub_probs = be.attention_forward(np.ascontiguousarray(qkv[..., cols_in]), 2,
                                                  causal)
        np.testing.assert_allclose(sub_probs, probs[:, 2 * part:2 * part + 2], rtol=1e-6)
        np.testing.assert_allclose(sub_out, out[..., cols_out], rtol=1e-6, atol=1e-7)
        sub_dqkv = be.attention_backward(np.ascontiguousarray(qkv[..., cols_in]), sub_probs,
                                         np.ascontiguousarray(dout[..., cols_out]), 2)
        np.testing.assert_allclose(sub_dqkv, dqkv[..., cols_in], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [ReferenceBackend, CpuBackend], ids=["reference", "cpu"])
def test_attention_rejects_columns_that_are_not_whole_heads(make: type[Backend]) -> None:
    with pytest.raises(ValueError, match="10 columns do not split into 2 heads"):
        make().attention_forward(np.zeros((1, 2, 10), np.float32), 2)


# ---- vocabulary-parallel embedding ----------------------------------------------------------

def test_embedding_slices_sum_to_the_whole_lookup() -> None:
    table = np.arange(12, dtype=np.float32).reshape(6, 2)  # vocabulary 6, H = 2: row v = 2v, 2v+1
    ids = np.array([[0, 5, 3], [3, 2, 0]])
    whole = REF.embedding_forward(ids, table, 0)
    np.testing.assert_array_equal(whole[0], [[0, 1], [10, 11], [6, 7]])
    low, high = REF.embedding_forward(ids, table[:4], 0), REF.embedding_forward(ids, table[4:], 4)
    np.testing.assert_array_equal(high[0], [[0, 0], [10, 11], [0, 0]])  # only id 5 is in [4, 6)
    np.testing.assert_array_equal(low + high, whole)


def test_embedding_backward_adds_repeated_ids_and_drops_others(ref64: ReferenceBackend) -> None:
    ids = np.array([[3, 1, 3], [7, 3, 2]])
    dy = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    dtable = REF.embedding_backward(ids, dy, 1, 3)  # rows of ids 1, 2, 3
    np.testing.assert_array_equal(dtable, [dy[0, 1], dy[1, 2], dy[0, 0] + dy[0, 2] + dy[1, 1]])
    rng = np.random.default_rng(6)
    table, r = rand(rng, 3, 3), rng.standard_normal(dy.shape)
    check64(ref64.embedding_backward(ids, r, 1, 3),
            numeric_grad(lambda a: dot(ref64.embedding_forward(ids, a, 1), r), table, EPS64))


# ---- vocabulary-parallel cross-entropy ------------------------------------------------------

def test_xent_partial_of_a_uniform_row_by_hand() -> None:
    # logits all 0 over 4 ids: max 0, sum of exp 4, loss log 4; label 2 lies in the slice [2, 6)
    mx, sumexp, target = REF.xent_partial(np.zeros((1, 4), np.float32), np.array([2]), 2)
    assert (mx.tolist(), sumexp.tolist(), target.tolist()) == ([0.0], [4.0], [0.0])
    grad = REF.xent_partial_grad(np.zeros((1, 4), np.float32), np.array([2]), 2, mx, sumexp, 1.0)
    np.testing.assert_allclose(grad, [[-0.75, 0.25, 0.25, 0.25]])


@pytest.mark.parametrize("cuts", [[0, 7], [0, 3, 7], [0, 1, 5, 7]])
def test_xent_slices_combine_into_softmax_xent(cuts: list[int]) -> None:
    rng = np.random.default_rng(7)
    logits, labels = rand(rng, 5, 7) * 4, np.array([0, 6, 3, 2, 3])
    slices = [(lo, np.ascontiguousarray(logits[:, lo:hi])) for lo, hi in zip(cuts, cuts[1:])]
    gmax, gsum, target = combine([REF.xent_partial(z, labels, lo) for lo, z in slices])
    want_loss, want_grad = REF.softmax_xent(logits, labels)
    assert np.mean(np.log(gsum) + gmax - target) == pytest.approx(want_loss, rel=1e-6)
    grad = np.concatenate([REF.xent_partial_grad(z, labels, lo, gmax.astype(np.float32),
                                                 gsum.astype(np.float32), 1 / 5)
                           for lo, z in slices], axis=1)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


def test_xent_partial_gradient(ref64: ReferenceBackend) -> None:
    """The loss assembled from two slices' statistics, differentiated in one slice's logits."""
    rng = np.random.default_rng(8)
    z0, z1, labels = rand(rng, 3, 4) * 2, rand(rng, 3, 5) * 2, np.array([1, 6, 8])

    def loss(a: np.ndarray, b: np.ndarray) -> float:
        gmax, gsum, target = combine([ref64.xent_partial(a, labels, 0),
                                      ref64.xent_partial(b, labels, 4)])
        return float(np.sum(np.log(gsum) + gmax - target) * 0.5)

    gmax, gsum, _ = combine([ref64.xent_partial(z0, labels, 0), ref64.xent_partial(z1, labels, 4)])
    check64(ref64.xent_partial_grad(z0, labels, 0, gmax, gsum, 0.5),
            numeric_grad(lambda a: loss(a, z1), z0, EPS64))
    check64(ref64.xent_partial_grad(z1, labels, 4, gmax, gsum, 0.5),
            numeric_grad(lambda a: loss(z0, a), z1, EPS64))


# ---- add ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [ReferenceBackend, CpuBackend], ids=["reference", "cpu"])
def test_add(make: type[Backend]) -> None:
    be = make()
    got = be.add(np.float32([[1, 2]]), np.float32([[3, 4.5]]))
    assert got.dtype == np.float32 and got.tolist() == [[4.0, 6.5]]
    with pytest.raises(ValueError, match="differ"):
        be.add(np.zeros((2, 3), np.float32), np.zeros(3, np.float32))


# ---- the CPU backend against the reference ----------------------------------------------------

@pytest.mark.parametrize("rows,hidden", [(1, 1), (7, 13), (33, 130)])  # 130: three column blocks
def test_cpu_layer_norm(cpu: CpuBackend, rows: int, hidden: int) -> None:
    rng = np.random.default_rng(rows)
    x, gamma, beta = rand(rng, rows, hidden) * 3 + 2, rand(rng, hidden), rand(rng, hidden)
    got, want = cpu.layer_norm_forward(x, gamma, beta), REF.layer_norm_forward(x, gamma, beta)
    for g, w in zip(got, want):
        close(g, w)
    dy = rand(rng, rows, hidden)
    for g, w in zip(cpu.layer_norm_backward(x, gamma, dy, *want[1:]),
                    REF.layer_norm_backward(x, gamma, dy, *want[1:])):
        close(g, w)


@pytest.mark.parametrize("shape", [(1,), (7, 13), (2, 3, 5)])
def test_cpu_gelu(cpu: CpuBackend, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(9)
    x, dy = rand(rng, *shape) * 4, rand(rng, *shape)
    close(cpu.gelu_forward(x), REF.gelu_forward(x))
    close(cpu.gelu_backward(x, dy), REF.gelu_backward(x, dy))


def test_cpu_gelu_keeps_its_digits_far_below_zero(cpu: CpuBackend) -> None:
    """At x = -9, 1 + tanh(u) is 3e-29: 0 in float32, and in float64 too. The kernel's form,
    ``x sigmoid(2u)``, keeps the relative accuracy; the float64 value here uses the same
    identity (with ``exp(-2u)`` finite at these x)."""
    x = np.float32([-30.0, -9.0, -6.0, -3.0, -0.5])
    x64 = x.astype(np.float64)
    u = math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)
    with np.errstate(over="ignore"):  # exp(-2u) = inf at x = -30: the value is -0
        want = x64 / (1.0 + np.exp(-2.0 * u))
    np.testing.assert_allclose(cpu.gelu_forward(x), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,s,heads,d", [(1, 1, 1, 1), (2, 5, 3, 4), (3, 17, 2, 8)])
def test_cpu_attention(cpu: CpuBackend, causal: bool, n: int, s: int, heads: int,
                       d: int) -> None:
    rng = np.random.default_rng(s)
    qkv = rand(rng, n, s, 3 * heads * d)
    out, probs = cpu.attention_forward(qkv, heads, causal)
    want_out, want_probs = REF.attention_forward(qkv, heads, causal)
    close(out, want_out)
    close(probs, want_probs)
    dout = rand(rng, *out.shape)
    close(cpu.attention_backward(qkv, want_probs, dout, heads),
          REF.attention_backward(qkv, want_probs, dout, heads))


@pytest.mark.parametrize("hidden", [1, 130])
def test_cpu_embedding(cpu: CpuBackend, hidden: int) -> None:
    rng = np.random.default_rng(10)
    ids, table = rng.integers(0, 12, (3, 5)), rand(rng, 7, hidden)  # slice [4, 11) of 12 ids
    close(cpu.embedding_forward(ids, table, 4), REF.embedding_forward(ids, table, 4))
    dy = rand(rng, 3, 5, hidden)
    close(cpu.embedding_backward(ids, dy, 4, 7), REF.embedding_backward(ids, dy, 4, 7))


@pytest.mark.parametrize("rows,v,spread", [(1, 1, 1.0), (7, 13, 3.0), (33, 1000, 30.0)])
def test_cpu_xent_partial(cpu: CpuBackend, rows: int, v: int, spread: float) -> None:
    rng = np.random.default_rng(v)
    logits, labels = rand(rng, rows, v) * spread, rng.integers(0, 3 * v, rows)  # slice [v, 2v)
    got, want = cpu.xent_partial(logits, labels, v), REF.xent_partial(logits, labels, v)
    for g, w in zip(got, want):
        close(g, w)
    gmax, gsum = want[0] + 0.5, want[1] * np.float32(np.exp(-0.5)) + 1  # a larger vocabulary's
    close(cpu.xent_partial_grad(logits, labels, v, gmax, gsum, 0.25),
          REF.xent_partial_grad(logits, labels, v, gmax, gsum, 0.25))


# ---- the CUDA backend, under the simulator ------------------------------------------------

@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> ChildRun:
    """One run of all the cases in ``cuda_transformer_cases.py`` under the simulator."""
    pytest.importorskip("numba.cuda")
    report = tmp_path_factory.mktemp("cuda_transformer") / "cases.xml"
    res = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", str(CASES)], child_env(simulate=True))
    outcomes: dict[str, tuple[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            bad = [el for el in case if el.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name", "")] = (bad[0].tag, bad[0].text or "") if bad \
                else ("passed", "")
    return ChildRun(outcomes, f"exit status {res.returncode}\n{res.stdout[-20000:]}\n"
                              f"{res.stderr[-5000:]}")


CUDA_CASES = [node.name for node in ast.parse(CASES.read_text()).body
              if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


def test_cuda_cases_found() -> None:
    assert len(CUDA_CASES) >= 6, CUDA_CASES


@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_under_simulator(simulated: ChildRun, case: str) -> None:
    mine = {name: res for name, res in simulated.outcomes.items()
            if name == case or name.startswith(case + "[")}
    assert mine, f"{case} did not run in the child pytest:\n{simulated.output}"
    failed = {name: res for name, res in mine.items() if res[0] != "passed"}
    assert not failed, "\n\n".join(f"{name}: {kind}\n{text}"
                                   for name, (kind, text) in failed.items())

"""What the executor agrees to run, checked before any rank works: rectangular convolution
kernels run (the kernels read KH x KW from the weights); a stride or padding that differs
between height and width is refused up front. Neither MPI nor a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from executor.interpreter.forward import Forward
from executor.interpreter.model import ExecutorError, Layer, check_executable, init_weights
from executor.kernels import get_backend
from simulator.model import build_custom
from tests.executor.test_reference import direct_conv


def test_a_rectangular_kernel_runs_as_a_direct_convolution() -> None:
    g = build_custom([{"kind": "conv", "out_channels": 3, "kernel": [1, 3], "stride": 2,
                       "padding": 1}], [2, 5, 7])
    check_executable(g)
    node = g.nodes["conv0"]
    whole = init_weights(g, ["conv0"], seed=0)["conv0"]
    assert whole["w"].shape == (3, 2, 1, 3)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 7)).astype(np.float32)
    y, _ = Forward(get_backend("reference")).forward(Layer("conv0", node, params=whole), x)
    assert y.shape == (2, *node["out_shape"]) == (2, 3, 4, 4)
    np.testing.assert_allclose(y, direct_conv(x, whole["w"], whole["b"], 2, 1, 1), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("key, value", [("stride", [1, 2]), ("padding", [0, 3])])
def test_a_rectangular_stride_or_padding_is_refused_up_front(key: str, value: list) -> None:
    g = build_custom([{"kind": "conv", "out_channels": 3, "kernel": [1, 7], key: value}],
                     [2, 5, 9])
    with pytest.raises(ExecutorError, match=rf"layer 'conv0' has {key} \({value[0]}, "
                                            rf"{value[1]}\); the executor runs a conv only"):
        check_executable(g)


def test_a_gradient_added_while_its_reduce_scatter_takes_the_gradients_is_not_lost() -> None:
    """ZeRO-2 with accumulation reduce-scatters micro-batch 1's gradients on the comm stream
    while micro-batch 2's backward adds to them: the take and the add must not interleave."""
    import threading
    import time
    from types import SimpleNamespace

    from mpi4py import MPI

    from executor.interpreter.zero import Segment, ZeroState

    class SlowAdd(type(get_backend("reference"))):
        def axpy(self, alpha, x, y):  # noqa: ANN001, ANN201
            time.sleep(0.2)  # an add in flight when the comm stream comes for the array
            super().axpy(alpha, x, y)

    k = SlowAdd()
    layer = Layer("fc", {"kind": "dense"})
    g1, g2 = np.full(4, 1.0, np.float32), np.full(4, 2.0, np.float32)
    layer.grads["w"] = g1.copy()
    zero = ZeroState()
    zero.__dict__.update(
        fwd=Forward(k), k=k, zero=2, layers={"fc": layer},
        segments={"fc": Segment(["fc"], [("fc", "w", (4,))], 4, 0, 4)},
        groups={"dp": MPI.COMM_SELF}, _to_host=lambda a: a, _to_device=lambda a: a)
    add = threading.Thread(target=zero.fwd._accumulate, args=(layer, "w", g2))
    add.start()
    time.sleep(0.05)
    op = SimpleNamespace(tensor="wgrad:fc", group="dp")
    zero._zero_scatter(op)  # micro-batch 1's
    add.join()
    zero._zero_scatter(op)  # micro-batch 2's
    np.testing.assert_array_equal(zero.segments["fc"].grad, g1 + g2)

"""Hot and cold kernel curves: a rank whose working set fits half its share of the cache takes a
profile's ``hot:`` curves, any other rank the cold ones (``simulator.engine.hardware.runs_hot``).

A CPU core of 1 GFLOP/s with a 4 MiB cache; one dense forward of 1e5 FLOPs, its cold curve at
1 % of the peak (10 ms), its hot one at 10 % (1 ms). A rank's working set is the plan's memory
need for its device.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from simulator.catalogue import links
from simulator.cluster import Cluster, build_cluster
from simulator.engine.hardware import Device, runs_hot
from simulator.engine.simulate import predict
from simulator.model import build_custom
from simulator.plan import Compute, MemoryNeed, Plan, ProgramBuilder, RankProgram
from simulator.search.estimate import Estimator
from simulator.specs import ClusterSpec, DeviceSpec, TrainingSpec
from simulator.strategies.common import Context

MIB = 2.0**20
PEAK = 1e9  # FLOP/s
F = 1e5  # FLOPs of the kernel
COLD_S, HOT_S = F / (PEAK * 0.01), F / (PEAK * 0.1)  # 10 ms, 1 ms
COLD = {"dense.fwd": ((1e3, 0.01), (1e9, 0.01))}
HOT = {"hot:dense.fwd": ((1e3, 0.1), (1e9, 0.1))}
TRAINING = TrainingSpec(batch_size=1, precision="fp32", optimizer="sgd", iterations=1,
                        warmup_iterations=0)


def core(kernels: dict, cache: float = 4 * MIB, kind: str = "cpu") -> DeviceSpec:
    return DeviceSpec(name="core", kind=kind, sms=1, peak_flops={"fp32": PEAK}, memory=2**30,
                      memory_bandwidth=1e12, launch_overhead=0.0, compute_efficiency=1.0,
                      memory_efficiency=1.0, blocks_per_sm=1, comm_sms=0, source="test",
                      kernels=kernels, cache=cache)


def dense(shape: str = "") -> Compute:
    return Compute(id=0, stream="compute", deps=(), layer="fc", phase="fwd", micro_batch=0,
                   samples=1, shard=0, shards=1, flops=F, bytes=0.0, blocks=1,
                   layer_kind="dense", shape=shape)


def seconds(spec: DeviceSpec, hot: bool, op: Compute | None = None) -> float:
    return Device(None, "d", spec, "fp32", hot=hot).kernel_time(op or dense())


def test_a_device_that_runs_hot_takes_the_hot_curve_and_one_that_does_not_the_cold():
    spec = core(COLD | HOT)
    assert seconds(spec, hot=True) == pytest.approx(HOT_S, rel=1e-12)
    assert seconds(spec, hot=False) == pytest.approx(COLD_S, rel=1e-12)


def test_without_hot_curves_a_hot_device_takes_the_cold_one():
    assert seconds(core(COLD), hot=True) == pytest.approx(COLD_S, rel=1e-12)


def test_hot_curves_come_first_the_layer_shapes_before_the_kind():
    """hot:kind@shape, then hot:kind, then kind@shape, then kind."""
    shaped = {"dense.fwd@4>4": ((1e3, 0.02), (1e9, 0.02)),  # 5 ms
              "hot:dense.fwd@4>4": ((1e3, 0.2), (1e9, 0.2))}  # 0.5 ms
    op = dense("4>4")
    assert seconds(core(COLD | HOT | shaped), True, op) == pytest.approx(0.5e-3, rel=1e-12)
    without = {k: v for k, v in (COLD | HOT | shaped).items() if k != "hot:dense.fwd@4>4"}
    assert seconds(core(without), True, op) == pytest.approx(HOT_S, rel=1e-12)
    assert seconds(core(COLD | HOT | shaped), False, op) == pytest.approx(5e-3, rel=1e-12)


@pytest.mark.parametrize("working_mib, sharers, kind, cache_mib, hot", [
    (2.0, 1, "cpu", 4, True),     # 2 MiB: half of the 4 MiB share
    (2.5, 1, "cpu", 4, False),
    (1.0, 2, "cpu", 4, True),     # two ranks of a node: shares of 2 MiB
    (1.5, 2, "cpu", 4, False),
    (1.5, 2, "gpu", 4, True),     # a GPU's cache is its own
    (0.001, 1, "cpu", 0, False),  # no cache size (catalogue devices, older profiles)
])
def test_a_rank_runs_hot_when_its_working_set_fits_half_its_share(working_mib, sharers, kind,
                                                                   cache_mib, hot):
    spec = core(COLD | HOT, cache=cache_mib * MIB, kind=kind)
    assert runs_hot(spec, working_mib * MIB, sharers) is hot


def one_kernel_per_rank(spec: DeviceSpec, ranks: int, working_set: float
                        ) -> tuple[Plan, Cluster]:
    """Every rank of a one-node cluster runs the dense kernel; each needs ``working_set``."""
    cluster = build_cluster(ClusterSpec(nodes=1, devices_per_node=ranks, device=spec,
                                        intra_link=links()["shm"],
                                        inter_link=links()["eth_10g"]))
    programs = []
    for r in range(ranks):
        b = ProgramBuilder()
        b.add(Compute, layer="fc", phase="fwd", micro_batch=0, samples=1, shard=0, shards=1,
              flops=F, bytes=0.0, blocks=1, layer_kind="dense")
        programs.append(RankProgram(rank=r, device=cluster.devices[r], role="worker",
                                    ops=tuple(b.ops)))
    memory = tuple(MemoryNeed(device=d, weights=working_set, gradients=0.0, optimizer=0.0,
                              activations=0.0, capacity=spec.memory)
                   for d in cluster.devices[:ranks])
    plan = Plan(strategy="hand", scheme="hand", mode="sync", samples_per_period=1,
                period_steps=1, ranks=tuple(programs), memory=memory)
    return plan, cluster


@pytest.mark.parametrize("ranks, working_mib, expected", [
    (1, 1.0, HOT_S), (1, 3.0, COLD_S),  # 1 MiB and 3 MiB against half of 4 MiB
    (2, 0.5, HOT_S), (2, 1.5, COLD_S),  # shares of 2 MiB: half is 1 MiB
])
def test_the_engine_and_the_estimate_price_a_rank_hot_when_its_working_set_fits(
        ranks, working_mib, expected):
    spec = core(COLD | HOT)
    plan, cluster = one_kernel_per_rank(spec, ranks, working_mib * MIB)
    entry = predict(plan, cluster, TRAINING).entry
    assert entry["iteration_time_s"] == pytest.approx(expected, rel=1e-9)
    ctx = Context(build_custom([{"kind": "dense", "units": 4}], [4]), cluster, TRAINING)
    assert Estimator(ctx).plan(plan).seconds == pytest.approx(expected, rel=1e-9)


def test_without_a_cache_size_every_rank_is_priced_cold():
    plan, cluster = one_kernel_per_rank(replace(core(COLD | HOT), cache=0.0), 1, 1.0)
    assert predict(plan, cluster, TRAINING).entry["iteration_time_s"] == pytest.approx(
        COLD_S, rel=1e-9)

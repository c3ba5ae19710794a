"""The SimPy engine against closed forms a person can check by hand.

Every test builds a tiny cluster with round numbers (a 10 TFLOP/s device at 50 % compute
efficiency, 10 GB/s links with 5 us latency), runs a Plan built by hand with ``ProgramBuilder``
(or by a strategy on a small MLP) and compares what the engine predicts with a formula written in
the test: never with another run of the simulator.
"""

from __future__ import annotations

import math

import pytest

from simulator.cluster import Cluster, build_cluster
from simulator.engine.simulate import Prediction, predict
from simulator.plan import (
    COMM,
    Collective,
    Compute,
    Plan,
    ProgramBuilder,
    PSPull,
    PSPush,
    RankProgram,
    Recv,
    Send,
)
from simulator.scenario import build_graph, parse_scenario
from simulator.specs import Scenario
from simulator.strategies import build_plan
from simulator.strategies.common import Context
from simulator.yaml_input import load_yaml

PEAK = 10e12  # FLOP/s
EFF = 0.5  # compute efficiency
FLOPS = PEAK * EFF  # 5e12 FLOP/s achieved
MEM_BW = 1000e9  # B/s
MEM_EFF = 0.8
SMS, BLOCKS_PER_SM = 4, 2  # 8 blocks per wave
B = 10e9  # link bandwidth, B/s
ALPHA = 5e-6  # link latency, s


def device(*, sms: int = SMS, blocks_per_sm: int = BLOCKS_PER_SM, mem_GBps: float = 1000,
           launch_us: float = 0) -> str:
    return (f"{{kind: gpu, sms: {sms}, peak_TFLOPS: {{fp32: 10}}, memory_GiB: 16, "
            f"memory_bandwidth_GBps: {mem_GBps}, launch_overhead_us: {launch_us}, "
            f"compute_efficiency: {EFF}, memory_efficiency: {MEM_EFF}, "
            f"blocks_per_sm: {blocks_per_sm}, comm_sms: 0, kernel_model: roofline, "
            f"source: test}}")


def link(scope: str, GBps: float = 10, us: float = 5, eager_KiB: float | None = None) -> str:
    eager = "" if eager_KiB is None else f"eager_limit_KiB: {eager_KiB}, "
    return (f"{{scope: {scope}, bandwidth_GBps: {GBps}, latency_us: {us}, efficiency: 1.0, "
            f"{eager}source: test}}")


def scenario(*, nodes: int = 1, per_node: int = 2, dev: str | None = None,
             intra: str | None = None, inter: str | None = None, cluster_extra: str = "",
             layers: str = "[{kind: dense, units: 4}]", input_shape: str = "[4]",
             batch: int = 1024, iterations: int = 1, warmup: int = 0,
             strategies: str = "[{name: dp, scheme: data_parallel}]") -> Scenario:
    text = f"""
name: closed-form
model: {{layers: {layers}, input_shape: {input_shape}}}
cluster:
  nodes: {nodes}
  devices_per_node: {per_node}
  device: {dev or device()}
  intra_link: {intra or link("intra")}
  inter_link: {inter or link("inter")}
{cluster_extra}
training: {{batch_size: {batch}, precision: fp32, optimizer: sgd,
           iterations: {iterations}, warmup_iterations: {warmup}}}
strategies: {strategies}
"""
    return parse_scenario(load_yaml(text))


def hand_plan(cluster: Cluster, programs: list[ProgramBuilder], servers: int = 0) -> Plan:
    """Worker ``r`` runs ``programs[r]`` on device ``r``; group ``world`` holds every worker."""
    ranks = [RankProgram(rank=r, device=cluster.devices[r], role="worker", ops=tuple(b.ops))
             for r, b in enumerate(programs)]
    ranks += [RankProgram(rank=len(programs) + j, device=f"ps{j}", role="server")
              for j in range(servers)]
    return Plan(strategy="hand", scheme="hand", mode="sync", samples_per_period=1,
                period_steps=1, ranks=tuple(ranks),
                groups={"world": tuple(range(len(programs)))})


def run(sc: Scenario, build, *, trace: bool = False) -> Prediction:  # noqa: ANN001
    """``build(cluster) -> Plan``, then predict it on the scenario's cluster and training."""
    cluster = build_cluster(sc.cluster)
    return predict(build(cluster), cluster, sc.training, record_trace=trace)


def collective_only(p: int, algorithm: str, nbytes: float):  # noqa: ANN201
    """Every rank runs one all-reduce and nothing else."""
    def build(cluster: Cluster) -> Plan:
        progs = []
        for _ in range(p):
            b = ProgramBuilder()
            b.add(Collective, stream=COMM, collective="allreduce", algorithm=algorithm,
                  group="world", bytes=nbytes, key="g")
            progs.append(b)
        return hand_plan(cluster, progs)
    return build


def one_kernel(**compute):  # noqa: ANN003, ANN201
    def build(cluster: Cluster) -> Plan:
        b = ProgramBuilder()
        b.add(Compute, layer="l", phase="fwd", micro_batch=0, samples=1, shard=0, shards=1,
              **compute)
        return hand_plan(cluster, [b])
    return build


# ---- all-reduce ---------------------------------------------------------------------------------

S = 100e6  # bytes all-reduced


@pytest.mark.parametrize("nodes, per_node", [(1, 2), (1, 4), (1, 8), (2, 4)])
def test_ring_allreduce(nodes, per_node):
    p = nodes * per_node
    # Inside a node a route is gpu -> fabric -> gpu: one run of the intra link, one latency.
    # Across nodes it is intra, inter (fabric -> nic -> switch -> nic -> fabric), intra: three
    # runs, three latencies (cluster.py), even though the two link types have equal numbers.
    alpha = ALPHA if nodes == 1 else 3 * ALPHA
    # every ring edge carries one flow: the ring's node-crossing pairs (3->4, 7->0) each have a
    # NIC port to themselves, so every flow gets the full B
    expected = 2 * (p - 1) / p * S / B + 2 * (p - 1) * alpha
    pred = run(scenario(nodes=nodes, per_node=per_node), collective_only(p, "ring", S))
    assert pred.entry["iteration_time_s"] == pytest.approx(expected, rel=1e-9)
    for log in pred.engine.logs.values():
        assert log.comm == [(0.0, pytest.approx(expected, rel=1e-9))]


@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
def test_tree_allreduce(p):
    # binomial reduce then broadcast: ceil(log2 p) rounds each way, each round's pairs disjoint
    expected = 2 * math.ceil(math.log2(p)) * (ALPHA + S / B)
    pred = run(scenario(per_node=p), collective_only(p, "tree", S))
    assert pred.entry["iteration_time_s"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_mpi_allreduce(p):
    # Rabenseifner: ring bandwidth term, 2 log2 p latency terms
    expected = 2 * (p - 1) / p * S / B + 2 * math.ceil(math.log2(p)) * ALPHA
    pred = run(scenario(per_node=p), collective_only(p, "mpi", S))
    assert pred.entry["iteration_time_s"] == pytest.approx(expected, rel=1e-9)


def test_hierarchical_allreduce_two_nodes_of_four():
    n, local = 2, 4
    b_intra, a_intra = 100e9, 2e-6
    b_inter, a_inter = 10e9, 1e-6
    sc = scenario(nodes=n, per_node=local, intra=link("intra", 100, 2), inter=link("inter", 10, 1))
    # 1. intra-node ring reduce-scatter: (l-1) steps of S/l over each device's own port
    reduce_scatter = (local - 1) / local * S / b_intra + (local - 1) * a_intra
    # 2. inter-node ring all-reduce of S/l among same-index devices; the l rings of a node share
    #    its one NIC, so the NIC carries l * 2(n-1)/n * S/l = 2(n-1)/n * S. A node-crossing route
    #    pays intra + inter + intra latency.
    inter = 2 * (n - 1) / n * S / b_inter + 2 * (n - 1) * (a_intra + a_inter + a_intra)
    # 3. intra-node ring all-gather, as 1.
    expected = reduce_scatter + inter + reduce_scatter
    pred = run(sc, collective_only(n * local, "hierarchical", S))
    assert pred.entry["iteration_time_s"] == pytest.approx(expected, rel=1e-9)


# ---- parameter server ---------------------------------------------------------------------------

PS_NIC = 1e9  # B/s, much slower than the 100 GB/s intra and node NIC links
PS_MEM = 1000e9  # B/s, PS host memory bandwidth (efficiency 1)
A_INTRA, A_INTER, A_PS = 1e-6, 1e-6, 10e-6


def ps_scenario(workers: int, eager_KiB: float = 2**20) -> Scenario:
    """Workers and one parameter-server host behind a slow NIC; pushes up to ``eager_KiB``
    (default 1 GiB: every push of these tests) are sent without waiting for the shard."""
    ps_dev = ("{kind: cpu, sms: 1, peak_TFLOPS: {fp32: 1}, memory_GiB: 64, "
              "memory_bandwidth_GBps: 1000, launch_overhead_us: 0, compute_efficiency: 1.0, "
              "memory_efficiency: 1.0, blocks_per_sm: 1, comm_sms: 0, source: test}")
    return scenario(per_node=workers, intra=link("intra", 100, 1, eager_KiB),
                    inter=link("inter", 100, 1, eager_KiB),
                    cluster_extra=f"  parameter_servers: {{hosts: 1, device: {ps_dev}, "
                                  f"nic: {link('inter', 1, 10, eager_KiB)}}}")


def push_pull(workers: int, nbytes: float):  # noqa: ANN201
    def build(cluster: Cluster) -> Plan:
        progs = []
        for _ in range(workers):
            b = ProgramBuilder()
            push = b.add(PSPush, stream=COMM, shard=0, bytes=nbytes, tag="grad")
            b.add(PSPull, stream=COMM, deps=(push,), shard=0, bytes=nbytes, tag="param")
            progs.append(b)
        return hand_plan(cluster, progs, servers=1)
    return build


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_parameter_server_nic_is_the_bottleneck(workers):
    s = 10e6
    # route gpu -> fabric (intra) -> nic -> switch (inter) -> ps0 (the PS NIC): three latencies
    lat = A_INTRA + A_INTER + A_PS
    transfer = workers * s / PS_NIC  # N equal flows share the PS NIC: N times one flow's time
    # sync apply (hardware.py), serialised on the shard: 3S per push, the last adds (3 + 2*0)S
    # for the sgd update
    service = (3 * workers + 3) * s / PS_MEM
    push = lat + transfer
    # the pull sends its request (one latency) and waits for the update; the shard serves the
    # fetches one at a time, each copying S into its reply (read and write: 2S / PS_MEM), and
    # the PS NIC never idles once the first reply flows, so the last reply lands N S / B after
    # the first starts
    read = 2 * s / PS_MEM
    expected = push + max(lat, service) + read + lat + transfer
    pred = run(ps_scenario(workers), push_pull(workers, s))
    assert pred.entry["iteration_time_s"] == pytest.approx(expected, rel=1e-9)
    for log in pred.engine.logs.values():
        assert log.ps[0] == (0.0, pytest.approx(push, rel=1e-9))
        assert log.ps[1][0] == pytest.approx(push, rel=1e-9)
    assert max(log.ps[1][1] for log in pred.engine.logs.values()) == \
        pytest.approx(expected, rel=1e-9)
    # the replies were read out one after another: worker k's lands (N-1-k) reads before the
    # last, so the mean parameter-server wait is (N-1)/2 reads short of the iteration
    assert pred.entry["breakdown_s"]["ps_wait"] == pytest.approx(
        expected - (workers - 1) / 2 * read, rel=1e-9)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_messages_past_the_eager_limit_hold_the_shard_until_they_are_across(workers):
    # MPI's rendezvous: the shard takes one message at a time (receive it, apply it), so the
    # pushes cross the PS NIC one after another, each alone on it: R = lat + S / B apiece,
    # and worker k's send completes when its message is in, after k receives and applies
    s = 10e6
    lat = A_INTRA + A_INTER + A_PS
    receive, apply = lat + s / PS_NIC, 3 * s / PS_MEM
    pushed = [k * (receive + apply) + receive for k in range(workers)]
    # the last apply also updates (3S more); then the pulls, one at a time too: the shard
    # copies its parameters into the reply and its send returns once the worker has the reply
    updated = pushed[-1] + 2 * apply
    read = 2 * s / PS_MEM
    expected = updated + workers * (read + lat + s / PS_NIC)
    pred = run(ps_scenario(workers, eager_KiB=0), push_pull(workers, s))
    assert pred.entry["iteration_time_s"] == pytest.approx(expected, rel=1e-9)
    ends = sorted(log.ps[0][1] for log in pred.engine.logs.values())
    assert ends == pytest.approx(pushed, rel=1e-9)


# ---- one kernel ---------------------------------------------------------------------------------

CAPACITY = SMS * BLOCKS_PER_SM


@pytest.mark.parametrize("blocks", [CAPACITY, 2 * CAPACITY, 16 * CAPACITY])
def test_compute_bound_kernel_is_flops_over_achieved_peak(blocks):
    f = 5e9
    pred = run(scenario(per_node=1), one_kernel(flops=f, bytes=1e3, blocks=blocks))
    assert pred.entry["iteration_time_s"] == pytest.approx(f / (PEAK * EFF), rel=1e-12)  # 1 ms


def test_launch_overhead_is_paid_per_kernel():
    f, kernels, launch = 5e9, 3, 10e-6
    sc = scenario(per_node=1, dev=device(launch_us=10))
    pred = run(sc, one_kernel(flops=f, bytes=0.0, blocks=CAPACITY, kernels=kernels))
    assert pred.entry["iteration_time_s"] == pytest.approx(kernels * launch + f / FLOPS, rel=1e-12)


def test_memory_bound_kernel_is_bytes_over_achieved_bandwidth():
    nbytes = 1e9
    pred = run(scenario(per_node=1), one_kernel(flops=1e6, bytes=nbytes, blocks=1))
    assert pred.entry["iteration_time_s"] == pytest.approx(nbytes / (MEM_BW * MEM_EFF), rel=1e-12)


def test_one_block_over_a_wave_costs_a_second_wave():
    blocks = CAPACITY + 1  # 9 blocks on 8 slots: two waves, the second with one block
    per_block = 1e9  # FLOPs
    one_wave = CAPACITY * per_block / FLOPS  # 1.6 ms
    pred = run(scenario(per_node=1), one_kernel(flops=blocks * per_block, bytes=0.0,
                                                blocks=blocks))
    assert pred.entry["iteration_time_s"] == pytest.approx(2 * one_wave, rel=1e-12)


# ---- ranks sharing cores ------------------------------------------------------------------------

def kernels_of(*ms: float):  # noqa: ANN201
    """One rank per entry, each running a kernel of that many ms alone, and nothing else."""
    def build(cluster: Cluster) -> Plan:
        progs = []
        for t in ms:
            b = ProgramBuilder()
            b.add(Compute, layer="l", phase="fwd", micro_batch=0, samples=1, shard=0, shards=1,
                  flops=t * 1e-3 * FLOPS, bytes=0.0, blocks=CAPACITY)
            progs.append(b)
        return hand_plan(cluster, progs)
    return build


@pytest.mark.parametrize("cores,expected", [
    # 3 ranks, 2 cores, kernels of 1, 1 and 2 ms alone: the three run at 2/3 of a core until the
    # short ones finish (1.5 ms), then the long one has a core to itself: 1.5 + (2 - 1) ms, not
    # the 3 ms a fixed 3/2 slowdown would give
    (2, [1.5e-3, 1.5e-3, 2.5e-3]),
    (1, [3e-3, 3e-3, 4e-3]),  # one core: 1/3 each until 3 ms, then the last 1 ms alone
    (3, [1e-3, 1e-3, 2e-3]),  # a core each: no sharing
])
def test_ranks_beyond_the_cores_share_them_as_they_compute(cores, expected):
    pred = run(scenario(per_node=3, cluster_extra=f"  cores_per_node: {cores}"),
               kernels_of(1, 1, 2), trace=True)
    ends = [log.ends[0] for _, log in sorted(pred.engine.logs.items())]
    assert ends == pytest.approx(expected, rel=1e-9)
    # the trace's kernel spans last what the shared cores made them last
    spans = sorted((d, t, dur) for d, tid, _, t, dur in pred.engine.spans if tid == "compute")
    assert [t + dur for _, t, dur in spans] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("algorithm,compute_end", [
    # rank 0 runs 1 ms of kernels, rank 1 2 ms, on one core: half a core each until rank 0 is
    # done at 2 ms; MPI's own all-reduce polls from then on and keeps half the core, so rank 1's
    # last 1 ms takes 2 ms; the executor's ring waits quietly and leaves rank 1 the core
    ("mpi", 4e-3), ("ring", 3e-3),
])
def test_mpis_own_all_reduce_polls_its_core_while_it_waits(algorithm, compute_end):
    def build(cluster: Cluster) -> Plan:
        progs = []
        for ms in (1, 2):
            b = ProgramBuilder()
            c = b.add(Compute, layer="l", phase="fwd", micro_batch=0, samples=1, shard=0,
                      shards=1, flops=ms * 1e-3 * FLOPS, bytes=0.0, blocks=CAPACITY)
            b.add(Collective, stream=COMM, deps=(c,), collective="allreduce",
                  algorithm=algorithm, group="world", bytes=0.0, key="g")
            progs.append(b)
        return hand_plan(cluster, progs)

    pred = run(scenario(per_node=2, cluster_extra="  cores_per_node: 1"), build)
    compute = pred.engine.logs[1].compute
    assert compute[-1][1] == pytest.approx(compute_end, rel=1e-9)
    assert not pred.engine.cpus.flows  # the polling ended with the all-reduce


def test_a_core_left_while_ranks_queue_idles_for_the_migration_lag():
    """3 ranks on 2 cores run 1, 3 and 3 ms of kernels: 2/3 of a core each until the first is
    done at 1.5 ms; then the two others could have a core each, but one waited in the queue of
    the core it shared, and the core just left idles for the profile's 1 ms migration lag:
    half a core each until 2.5 ms, then a core each for the 1.5 ms left."""
    import dataclasses

    from simulator.specs import NodeMeasurements

    sc = scenario(per_node=3, cluster_extra="  cores_per_node: 2")
    for lag, expected in ((1e-3, [1.5e-3, 4e-3, 4e-3]), (0.0, [1.5e-3, 3.5e-3, 3.5e-3])):
        measured = NodeMeasurements(migration={1.5: lag} if lag else {})
        lagged = dataclasses.replace(sc, cluster=dataclasses.replace(sc.cluster,
                                                                     measured=measured))
        logs = run(lagged, kernels_of(1, 3, 3)).engine.logs
        ends = [log.ends[0] for _, log in sorted(logs.items())]
        assert ends == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("cores,recv_end,run_end", [
    (1, 2e-3, 3e-3),  # the copy and the run share the core: both at half speed until 2 ms
    (3, 1e-3, 2e-3),  # a core each
])
def test_a_message_between_processes_of_a_node_is_a_copy_on_its_cores(cores, recv_end, run_end):
    """Rank 0 sends 10 MB (10 GB/s, no latency: a 1 ms copy) to rank 1 while rank 2 runs 2 ms
    of kernels, on a node whose cores are shared: the receiver's core copies the message,
    taking its share of the node's cores as the run does."""
    def build(cluster: Cluster) -> Plan:
        b0, b1, b2 = ProgramBuilder(), ProgramBuilder(), ProgramBuilder()
        b0.add(Send, peer=1, bytes=10e6, tag="x")
        b1.add(Recv, peer=0, bytes=10e6, tag="x")
        b2.add(Compute, layer="l", phase="fwd", micro_batch=0, samples=1, shard=0, shards=1,
               flops=2e-3 * FLOPS, bytes=0.0, blocks=CAPACITY)
        return hand_plan(cluster, [b0, b1, b2])

    sc = scenario(per_node=3, intra=link("intra", 10, 0),
                  cluster_extra=f"  cores_per_node: {cores}")
    ends = [log.ends[0] for _, log in sorted(run(sc, build).engine.logs.items())]
    assert ends == pytest.approx([recv_end, recv_end, run_end], rel=1e-9)


# ---- an exact two-device timeline ---------------------------------------------------------------

def test_two_devices_one_link_exact_timeline():
    """gpu0 computes 1 ms, sends 10 MB (10 GB/s, 5 us) to gpu1, which then computes 2 ms."""
    def build(cluster: Cluster) -> Plan:
        b0, b1 = ProgramBuilder(), ProgramBuilder()
        kw = dict(phase="fwd", micro_batch=0, samples=1, shard=0, shards=1, bytes=0.0,
                  blocks=CAPACITY)
        c = b0.add(Compute, layer="a", flops=5e9, **kw)
        b0.add(Send, deps=(c,), peer=1, bytes=10e6, tag="x")
        r = b1.add(Recv, peer=0, bytes=10e6, tag="x")
        b1.add(Compute, deps=(r,), layer="b", flops=10e9, **kw)
        return hand_plan(cluster, [b0, b1])

    pred = run(scenario(), build, trace=True)
    spans = sorted((d, tid, name, round(t, 9), round(dur, 9))
                   for d, tid, name, t, dur in pred.engine.spans)
    assert spans == [
        ("node0.gpu0", "compute", "a.fwd", 0.0, 0.001),
        ("node0.gpu0", "p2p", "send x", 0.001, 0.001005),  # 5 us latency + 10 MB / 10 GB/s
        ("node0.gpu1", "compute", "b.fwd", 0.002005, 0.002),
        ("node0.gpu1", "p2p", "recv x", 0.001, 0.001005),
    ]
    assert pred.entry["iteration_time_s"] == pytest.approx(0.004005, rel=1e-12)
    # gpu0: 1 ms compute, 1.005 ms send, idle 2 ms; gpu1: 2 ms compute, 1.005 ms recv, idle 1 ms
    assert pred.entry["breakdown_s"] == pytest.approx(
        {"compute": 0.0015, "exposed_communication": 0.001005, "ps_wait": 0.0, "idle": 0.0015},
        rel=1e-9)


# ---- stragglers ---------------------------------------------------------------------------------

def test_straggler_doubles_a_kernel():
    f = 5e9
    sc = scenario(cluster_extra="  stragglers: [{device: 1, slowdown: 2}]")

    def build(cluster: Cluster) -> Plan:
        progs = []
        for _ in range(2):
            b = ProgramBuilder()
            b.add(Compute, layer="l", phase="fwd", micro_batch=0, samples=1, shard=0, shards=1,
                  flops=f, bytes=0.0, blocks=CAPACITY)
            progs.append(b)
        return hand_plan(cluster, progs)

    pred = run(sc, build)
    assert [log.compute for log in pred.engine.logs.values()] == [
        [(0.0, pytest.approx(f / FLOPS, rel=1e-12))],
        [(0.0, pytest.approx(2 * f / FLOPS, rel=1e-12))],
    ]


MLP = "[" + ", ".join(["{kind: dense, units: 1024}"] * 4) + "]"
MLP_PARAMS = 4 * (1024 * 1024 + 1024)


def dp_scenario(strategies: str, *, batch: int = 64, extra: str = "") -> Scenario:
    # one block per wave and a huge memory bandwidth: every kernel is FLOPs / (peak x eff)
    return scenario(dev=device(sms=1, blocks_per_sm=1, mem_GBps=1e6), layers=MLP,
                    input_shape="[1024]", batch=batch, iterations=3, warmup=1,
                    strategies=strategies, cluster_extra=extra)


def predict_strategy(sc: Scenario, index: int = 0) -> Prediction:
    cluster = build_cluster(sc.cluster)
    ctx = Context(build_graph(sc.model), cluster, sc.training)
    return predict(build_plan(ctx, sc.strategies[index]), cluster, sc.training)


CLIPPED = ("simulate.py predict() clips every rank's intervals to the global window [t0, t1], "
           "t0 = the LAST rank's end of warm-up. The fast worker ends warm-up (slowdown - 1) x "
           "update earlier and starts its first measured forward then; clipping drops that "
           "compute (the logs already hold measured iterations only) and the same span at the end "
           "counts as idle, so compute is low by (slowdown - 1) x update / (2 x iterations). "
           "Clip each rank at its own lg.ends[warm - 1] instead.")


def straggler_dp(slowdown: float) -> tuple[Prediction, float, float]:
    sc = dp_scenario("[{name: dp, scheme: data_parallel}]",
                     extra=f"  stragglers: [{{device: 1, slowdown: {slowdown}}}]")
    samples = 64 // 2
    compute = 4 * (2 + 4) * 1024 * 1024 * samples / FLOPS  # fwd 2 + bwd 4 FLOPs per weight
    update = 4 * MLP_PARAMS / FLOPS  # the update op counts 4 FLOPs per parameter
    ring = 2 * 1 / 2 * MLP_PARAMS * 4 / B + 2 * 1 * ALPHA  # fp32 gradients, p = 2
    return predict_strategy(sc), compute + update, ring


@pytest.mark.parametrize("slowdown", [1, 2, 3])
def test_sync_data_parallel_iteration_is_bounded_by_the_straggler(slowdown):
    pred, work, ring = straggler_dp(slowdown)
    assert pred.entry["iteration_time_s"] == pytest.approx(slowdown * work + ring, rel=1e-9)


@pytest.mark.parametrize("slowdown", [
    1,
    2,
    3,
])
def test_sync_data_parallel_fast_worker_idles_at_the_all_reduce(slowdown):
    pred, work, ring = straggler_dp(slowdown)
    # per iteration the fast worker computes `work` and waits (slowdown - 1) x work; averaged
    # over the two workers
    assert pred.entry["breakdown_s"] == pytest.approx({
        "compute": (1 + slowdown) / 2 * work,
        "exposed_communication": ring,
        "ps_wait": 0.0,
        "idle": (slowdown - 1) / 2 * work,
    }, rel=1e-9, abs=1e-15)


# ---- pipeline bubble ----------------------------------------------------------------------------

MLP8 = "[" + ", ".join(["{kind: dense, units: 1024}"] * 8) + "]"


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("m", [4, 8, 16])
def test_pipeline_bubble_is_p_minus_1_over_m_plus_p_minus_1(schedule, m):
    p, batch = 4, 1024
    # 8 identical layers on 4 stages (2 each); links so fast that communication is ~1e-9 s
    sc = scenario(per_node=p, dev=device(sms=1, blocks_per_sm=1, mem_GBps=1e6),
                  intra=link("intra", 1e6, 0), layers=MLP8, input_shape="[1024]", batch=batch,
                  iterations=3, warmup=1,
                  strategies=f"[{{name: pp, scheme: pipeline, stages: {p}, "
                             f"micro_batches: {m}, schedule: {schedule}}}]")
    e = predict_strategy(sc).entry
    per_mb = 2 * (2 + 4) * 1024 * 1024 * (batch // m) / FLOPS  # one stage, fwd + bwd
    update = 4 * 2 * (1024 * 1024 + 1024) / FLOPS  # every stage at once, after its last bwd
    assert e["iteration_time_s"] == pytest.approx((m + p - 1) * per_mb + update, rel=1e-5)
    assert e["breakdown_s"]["idle"] == pytest.approx((p - 1) * per_mb, rel=1e-5)
    assert e["breakdown_s"]["idle"] / e["iteration_time_s"] == pytest.approx(
        (p - 1) / (m + p - 1), rel=0.02)


# ---- the breakdown adds up ----------------------------------------------------------------------

@pytest.mark.parametrize("strategy", [
    "scheme: data_parallel, exchange: ring",
    "scheme: data_parallel, exchange: ring, overlap: true, bucket_MiB: 4",
    "scheme: data_parallel, exchange: tree, overlap: true, bucket_MiB: 1",
    "scheme: data_parallel, exchange: hierarchical, overlap: true, bucket_MiB: 2",
    "scheme: data_parallel, exchange: ps",
    "scheme: pipeline, micro_batches: 8, schedule: gpipe",
    "scheme: pipeline, micro_batches: 8, schedule: 1f1b",
    "scheme: pipeline, stages: 2, replicas: 2, micro_batches: 4",
])
def test_breakdown_adds_up_to_the_iteration(strategy):
    ps = ("  parameter_servers: {hosts: 2, device: " + device() + ", nic: "
          + link("inter", 1, 10) + "}")
    sc = scenario(nodes=2, per_node=2, layers=MLP, input_shape="[1024]", batch=64, iterations=3,
                  warmup=1, cluster_extra=ps + "\n  stragglers: [{device: 3, slowdown: 1.5}]",
                  strategies=f"[{{name: s, {strategy}}}]")
    e = predict_strategy(sc).entry
    assert sum(e["breakdown_s"].values()) == pytest.approx(e["iteration_time_s"], rel=1e-9)
    assert all(v >= 0 for v in e["breakdown_s"].values())


@pytest.mark.parametrize("shared,service_end,run_end", [(True, 2e-3, 3e-3),
                                                        (False, 1e-3, 2e-3)])
def test_a_parameter_server_on_the_workers_node_shares_its_cores(shared, service_end, run_end):
    """A shard's 1 ms of service on a node of one core while a worker's 2 ms run of kernels
    goes on: both at half a core, so the service ends at 2 ms (and counts 2 ms busy), the run
    at 3 ms; a shard on a host of its own takes its 1 ms beside the run."""
    import simpy

    from simulator.engine.hardware import ParameterServer
    from simulator.engine.network import Network
    from simulator.specs import DeviceSpec

    spec = DeviceSpec(name="host", kind="cpu", sms=1, peak_flops={"fp32": 1e9}, memory=1.0,
                      memory_bandwidth=1e9, launch_overhead=0.0, compute_efficiency=1.0,
                      memory_efficiency=1.0, blocks_per_sm=1, comm_sms=0, source="test")
    env = simpy.Environment()
    cpus = Network(env, {("core", "ps0"): 1.0, ("core", "w0"): 1.0, ("cores", 0): 1.0})
    server = ParameterServer(env, "ps0", 0, spec, workers=1, optimizer_copies=0, mode="async")
    if shared:
        server.cpu = (cpus, (("core", "ps0"), ("cores", 0)))
    ends: dict[str, float] = {}
    run = cpus.transfer((("core", "w0"), ("cores", 0)), 2e-3)
    run.callbacks.append(lambda _e: ends.setdefault("run", env.now))
    service = env.process(server.work(1e-3))
    service.callbacks.append(lambda _e: ends.setdefault("service", env.now))
    env.run()
    assert ends == {"service": pytest.approx(service_end), "run": pytest.approx(run_end)}
    assert server.busy == pytest.approx(service_end)

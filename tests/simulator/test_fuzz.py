"""Property-based fuzzing (hypothesis) of what a user hands parasim: scenario files (valid ones
with one value, key or structure mutated, and arbitrary bytes) through the loader and the
simulator, and data files through the executor's loaders. Whatever the input, the answer is a
parsed object or the one clean error (a ``UserError`` whose message is one line naming the
file), never another exception. ``benchmarks/fuzz.py`` runs the same kinds of mutants by the
ten thousand and prints the counts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.errors import UserError
from simulator.predict import simulate_scenario
from simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SMALL = """\
name: fuzzed
seed: 1
model: {zoo: mlp, params: {sizes: [64, 32, 10]}}
cluster:
  nodes: 2
  devices_per_node: 2
  device: cpu_core_modern
  intra_link: shm
  inter_link: ib_fdr
  parameter_servers: {hosts: 1, device: cpu_core_modern, nic: eth_25g}
training: {batch_size: 32, precision: fp32, optimizer: momentum, iterations: 2,
           warmup_iterations: 0}
strategies:
  - {name: dp, scheme: data_parallel, exchange: ring}
  - {name: pipe, scheme: pipeline, stages: 2, micro_batches: 4}
  - {name: down, scheme: downpour, workers: 2, n_push: 2}
"""
BASE = yaml.safe_load(SMALL)
FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

# values a user might type where another was meant: wrong types, extremes, non-finite floats
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from([0, -1, 1, 2**31, 1e308, "ring", "K40", "", "1e6", "GiB"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8)


def near(old: object) -> st.SearchStrategy:
    if isinstance(old, bool):
        return st.booleans()
    if isinstance(old, int):
        return st.integers(0, 64) | st.sampled_from([old - 1, old + 1, 2 * old, 3])
    if isinstance(old, float):
        return st.floats(0.0, 2.0 * old + 1.0)
    if isinstance(old, str):
        return st.sampled_from(["ring", "tree", "mpi", "hierarchical", "ps", "gpipe", "1f1b",
                                "K40", "cpu_core", "shm", "pcie3", "adam", "sgd", "fp16",
                                old.upper(), old + "x"])
    return values


def paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a parsed scenario."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


PATHS = paths(BASE)[1:]


@st.composite
def mutants(draw: st.DrawFn) -> dict:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        for key in path[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                break
        else:
            key = path[-1]
            action = draw(st.sampled_from(["tweak", "replace", "delete", "rename"]))
            try:
                old = parent[key]
                if action == "tweak":  # a plausible value of the same kind: runs, mostly
                    parent[key] = draw(near(old))
                elif action == "replace":
                    parent[key] = draw(values)
                elif action == "delete":
                    del parent[key]
                elif isinstance(parent, dict):
                    parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(key)
            except (KeyError, IndexError, TypeError):
                pass
    return data


def clean(error: UserError, path: Path) -> None:
    text = str(error)
    assert "\n" not in text and len(text) < 1000, text
    assert str(path) in text or "strategy" in text, text


@given(mutants())
@FAST
def test_a_mutated_scenario_loads_and_simulates_or_is_one_clean_error(tmp_path, data):
    path = tmp_path / "fuzzed.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        scenario = load_scenario(path)
    except UserError as e:
        clean(e, path)
        return
    try:
        simulate_scenario(scenario)
    except UserError as e:  # a plan that cannot be built, said in one line
        assert "\n" not in str(e), str(e)


@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
@FAST
def test_arbitrary_bytes_are_a_scenario_or_one_clean_error(tmp_path, raw):
    path = tmp_path / "bytes.yaml"
    path.write_bytes(raw)
    try:
        load_scenario(path)
    except UserError as e:
        clean(e, path)


@given(st.binary(max_size=300), st.sampled_from(["idx", "cifar", "npz", "text"]))
@FAST
def test_arbitrary_data_files_are_data_or_one_clean_error(tmp_path, raw, kind):
    pytest.importorskip("numpy")
    from executor.data import DataError
    from executor.loaders import load_cifar10, load_idx, load_npz, load_text

    path = tmp_path / f"data.{kind}"
    path.write_bytes(raw)
    read = {"idx": lambda: load_idx(path, path), "cifar": lambda: load_cifar10(path),
            "npz": lambda: load_npz(path), "text": lambda: load_text(path, 4)}[kind]
    try:
        read()
    except DataError as e:
        assert path.name in str(e) and "\n" not in str(e), str(e)

"""Hostile scenario files and outputs: what a fuzzer found, each answered with one line that
names the file (and the line and field where there is one), exit 2, never a traceback, a hang
or an exhausted memory; the limits and ``--no-limits``; outputs checked before the work and
written through a temporary file of a unique name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulator import limits
from simulator.errors import PlanError, ScenarioError, shown
from simulator.predict import simulate_scenario
from simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
BASE = """\
name: hostile
seed: 1
model: {zoo: mlp, params: {sizes: [64, 32, 10]}}
cluster: {nodes: 1, devices_per_node: 2, device: cpu_core_modern, intra_link: shm}
training: {batch_size: 32, iterations: 2, warmup_iterations: 0}
strategies:
  - {name: dp, scheme: data_parallel}
"""


def write(tmp_path: Path, data: str | bytes, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text and len(text) < 400, text
    return text


def bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nname: *a{levels}\n"


@pytest.mark.parametrize("text,expected", [
    (BASE.encode() + b"# \xff\xfe\n", "not UTF-8 text (byte 0xff"),
    (BASE + "? [a, b]\n: 1\n", "a key must be a name or a number, not a list"),
    (BASE + "? {a: 1}\n: 1\n", "a key must be a name or a number, not a mapping"),
    ("name: x\nmodel: " + "[" * 1000 + "]" * 1000 + "\n", "nested more than 64 levels deep"),
    ("name: x\n" + "".join("  " * i + "k:\n" for i in range(400)), "nested more than 64"),
    (BASE + 'description: "a\x00b"\n', "the character U+0000 is not allowed"),
    (BASE.replace("name:", "name: \ufffe", 1), "the character U+FFFE is not allowed"),
    (bomb(7), "aliases expand to more than 1,000,000 values"),
    (bomb(9), "aliases expand to more than 1,000,000 values"),
    ("name: &a [*a]\n", "an alias refers to a node that contains it"),
    ("name: x\nseed: " + "9" * 6000 + "\n", "a number with more digits than can be read"),
])
def test_a_hostile_file_is_one_line(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, text))


def test_a_huge_value_is_shown_cut():
    assert len(shown("x" * 10**6)) <= 100
    assert shown(10**5000) == "<an integer of 5,000 digits>"
    nested: list = [1]
    for _ in range(30):
        nested = [nested] * 10  # 10**30 leaves: shown by its first items only, at once
    assert len(shown(nested)) <= 100


def test_numbers_are_checked_after_unit_conversion(tmp_path):
    text = BASE.replace("device: cpu_core_modern", "device: {base: cpu_core_modern, "
                        "memory_GiB: 1.0e+308}")
    err = error_of(write(tmp_path, text))
    assert "cluster.device.memory_GiB: is out of range once converted to SI units" in err


@pytest.mark.parametrize("target,expected", [
    ("/dev/zero", "larger than 16 MiB"),
    (".", "Is a directory"),
])
def test_not_a_file(tmp_path, target, expected):
    if not Path(target).exists():
        pytest.skip(f"{target} is not on this system")
    with pytest.raises(ScenarioError, match=expected):
        load_scenario(target)


def test_limits_name_the_field_and_lift(tmp_path):
    path = write(tmp_path, BASE.replace("nodes: 1,", "nodes: 2147483648, inter_link: ib_fdr,"))
    assert "cluster.nodes: 2,147,483,648 nodes x 2 devices per node" in error_of(path)
    assert "--no-limits" in error_of(path)
    deep = write(tmp_path, BASE.replace("{zoo: mlp, params: {sizes: [64, 32, 10]}}",
                                        "{zoo: gpt, params: {layers: 100000}}"), "deep.yaml")
    assert "model.params.layers: more than 10,000 layers" in error_of(deep)
    wide = BASE.replace("nodes: 1,", "nodes: 40000, inter_link: ib_fdr,").replace(
        "{name: dp, scheme: data_parallel}", "{name: dp, scheme: data_parallel, devices: 2}")
    with limits.lifted():
        assert load_scenario(write(tmp_path, wide, "wide.yaml")).cluster.device_count == 80_000


def test_a_run_past_the_event_limit_is_refused_before_it_starts(tmp_path, monkeypatch):
    scenario = load_scenario(write(tmp_path, BASE))
    monkeypatch.setattr(limits, "EVENTS", 10)
    with pytest.raises(PlanError, match=r"strategy 'dp': about [\d,]+ events to simulate, more "
                       r"than the limit of 10 .*--no-limits"):
        simulate_scenario(scenario)
    with limits.lifted():
        result, _ = simulate_scenario(scenario)
    assert result["results"][0]["throughput_samples_per_s"] > 0


def test_a_tensor_split_wider_than_every_layer_is_an_error(tmp_path):
    text = BASE.replace("nodes: 1, devices_per_node: 2", "nodes: 1, devices_per_node: 64")
    text = text.replace("{name: dp, scheme: data_parallel}", "{name: t, scheme: tensor, "
                        "devices: 64}")
    err = error_of(write(tmp_path, text))
    assert "strategies[0].devices: no layer of the model can be split over 64 devices (the " \
           "widest splittable layer splits 32 ways)" in err


def test_dbn_pretraining_on_one_device_is_1x(tmp_path):
    text = BASE.replace("{zoo: mlp, params: {sizes: [64, 32, 10]}}",
                        "{zoo: dbn, params: {sizes: [64, 32, 16]}}")
    text = text.replace("{name: dp, scheme: data_parallel}",
                        "{name: one, scheme: dbn_pretrain, devices: 1, samples: 256, "
                        "epochs: 2}\n  - {name: two, scheme: dbn_pretrain, devices: 2, "
                        "samples: 256, epochs: 2}")
    result, _ = simulate_scenario(load_scenario(write(tmp_path, text)))
    one, two = result["results"]
    # the yardstick is the same pre-training on one device, not a training step of the net
    assert one["speedup_over_one_device"] == pytest.approx(1.0)
    assert two["speedup_over_one_device"] == pytest.approx(
        two["throughput_samples_per_s"] / one["throughput_samples_per_s"])


# ---- outputs ---------------------------------------------------------------------------------

def parasim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parasim", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_folder_as_output_is_refused_before_the_run(tmp_path):
    path = write(tmp_path, BASE)
    (tmp_path / "out").mkdir()
    done = parasim("simulate", str(path), "--json", "out", "--force", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "parasim: error: out is a folder; give a file name"
    assert done.stdout == ""  # refused before anything ran


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused_before_the_run(tmp_path):
    path = write(tmp_path, BASE)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        done = parasim("simulate", str(path), "--json", "locked/r.json", cwd=tmp_path)
    finally:
        locked.chmod(0o700)
    assert done.returncode == 2 and "is not writable" in done.stderr and done.stdout == ""


def test_a_users_tmp_file_and_a_link_there_are_left_alone(tmp_path):
    path = write(tmp_path, BASE)
    (tmp_path / "r.json.tmp").write_text("mine")
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    (tmp_path / "t.json.tmp").symlink_to(target)
    done = parasim("simulate", str(path), "--json", "r.json", "--trace", "t.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.json.tmp").read_text() == "mine"
    assert target.read_text() == "keep"
    assert (tmp_path / "r.json").read_text().startswith("{")
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_worker_processes_get_the_commands_no_limits(tmp_path, monkeypatch):
    # sweep points and search candidates run in other processes: the flag travels with them
    from simulator.errors import LimitError
    from simulator.sweep import run_point

    raw = __import__("yaml").safe_load(BASE)
    monkeypatch.setattr(limits, "EVENTS", 10)
    with pytest.raises(LimitError):
        run_point(raw, "s.yaml", {"devices": 2}, False, limited=True)
    done = run_point(raw, "s.yaml", {"devices": 2}, False, limited=False)
    assert done["entries"][0]["throughput_samples_per_s"] > 0


def test_repeats_past_the_operation_limit_are_refused_before_any_schedule(tmp_path):
    text = BASE.replace("batch_size: 32", "batch_size: 128000000").replace(
        "{name: dp, scheme: data_parallel}",
        "{name: p, scheme: pipeline, stages: 2, micro_batches: 16000000}")
    err = error_of(write(tmp_path, text))
    assert "strategies[0].micro_batches: 16,000,000 micro-batches make a rank's program " \
           "longer than the limit of 2,000,000 operations" in err
    steps = BASE.replace("{name: dp, scheme: data_parallel}",
                         "{name: avg, scheme: data_parallel, local_steps: 5000000}")
    assert "strategies[0].local_steps: 5,000,000 local steps" in error_of(
        write(tmp_path, steps, "steps.yaml"))


def test_building_a_plan_past_the_operation_limit_names_the_strategy(tmp_path, monkeypatch):
    from simulator.errors import LimitError
    from simulator.plan import ProgramBuilder
    from simulator.predict import context
    from simulator.strategies import build_plan

    scenario = load_scenario(write(tmp_path, BASE))
    monkeypatch.setattr(limits, "OPS", 3)
    monkeypatch.setattr(ProgramBuilder, "CHECK_EVERY", 1)
    with pytest.raises(LimitError, match=r"strategy 'dp': a rank's program passes 3 "):
        build_plan(context(scenario), scenario.strategies[0])



def test_a_key_with_a_newline_stays_on_one_line():
    from simulator.errors import ScenarioError

    text = str(ScenarioError("unknown parameter", path="model.params.\n", file="a\tb.yaml"))
    assert text == "a\\tb.yaml: model.params.\\n: unknown parameter"

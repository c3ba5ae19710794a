"""The ``parasim`` command line: what ``plan`` prints and writes, the Result and trace files of
``simulate``, and bad input answered with exit status 2 and one line, never a traceback.

Happy paths call ``parasim.cli.main`` in-process; error paths run ``python -m parasim``
so that stderr is exactly what a user sees.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from parasim.cli import main
from simulator.plan import Plan
from simulator.predict import context
from simulator.scenario import load_scenario
from simulator.strategies import build_plan
from tests.simulator.test_engine_closed_forms import device

# an MLP 8192 -> 8192 -> 10: big enough that its memory shows in GiB with two decimals
PARAMS = (8192 * 8192 + 8192) + (8192 * 10 + 10)  # 67,198,986
S = 4 * PARAMS  # fp32 gradient bytes
GIB = 2**30
SCENARIO = f"""\
name: cli test
seed: 3
model: {{zoo: mlp, params: {{sizes: [8192, 8192, 10]}}}}
cluster:
  nodes: 1
  devices_per_node: 2
  device: {device()}
  intra_link: pcie3
  inter_link: eth_10g
  parameter_servers: {{hosts: 1, device: cpu_core_modern, nic: eth_25g}}
training: {{batch_size: 64, precision: fp32, optimizer: momentum, iterations: 2,
           warmup_iterations: 1}}
strategies:
  - {{name: dp, scheme: data_parallel}}
  - {{name: downpour, scheme: downpour}}
  - {{name: sandblaster, scheme: sandblaster, portions: 8}}
"""


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "cli.yaml"
    path.write_text(SCENARIO)
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parasim", *args], capture_output=True,
                          text=True, timeout=120)


# ---- plan ---------------------------------------------------------------------------------------

def link_line(out: str, name: str) -> float:
    m = re.search(rf"^  {re.escape(name)}\s+([\d.]+) MB", out, re.M)
    assert m, f"no bytes line for {name} in:\n{out}"
    return float(m.group(1))


def test_plan_prints_op_counts_link_bytes_and_memory(scenario_file, tmp_path, capsys):
    out_json = tmp_path / "plan.json"
    assert main(["plan", str(scenario_file), "--strategy", "dp", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    # fc1, relu1, fc2, softmax: forward and backward each, one all-reduce, one update
    for r in (0, 1):
        assert re.search(rf"^\s+{r} node0\.gpu{r}\s+worker\s+collective 1, compute 8, update 1$",
                         out, re.M), out
    # ring all-reduce over 2 GPUs: 2 flows of 2(p-1)/p S = S bytes, each over 2 pcie3 edges
    assert link_line(out, "pcie3") == pytest.approx(4 * S / 1e6, abs=5e-4)
    assert "eth_10g" not in out
    # weights, gradients, momentum: P x 4 bytes each; activations (8192 + 8192 + 10 + 10) x 32
    acts = (8192 + 8192 + 10 + 10) * 32 * 4
    for r in (0, 1):
        m = re.search(rf"^  node0\.gpu{r}\s+([\d.]+) \+\s+([\d.]+) \+\s+([\d.]+) \+\s+([\d.]+)"
                      r" =\s+([\d.]+) / ([\d.]+)$", out, re.M)
        assert m, out
        figures = [float(x) for x in m.groups()]
        assert figures == pytest.approx([S / GIB, S / GIB, S / GIB, acts / GIB,
                                         (3 * S + acts) / GIB, 16.0], abs=0.005)
    assert f"plan written to {out_json}" in out
    plan = Plan.from_dict(json.loads(out_json.read_text()))
    sc = load_scenario(scenario_file)
    assert plan == build_plan(context(sc), sc.strategies[0])


def test_plan_of_downpour_counts_push_and_pull_bytes(scenario_file, capsys):
    assert main(["plan", str(scenario_file), "--strategy", "downpour"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+2 ps0\s+server\s+\(serves requests\)$", out, re.M), out
    # each of 2 workers pulls S and pushes S per step; gpu -> fabric (pcie3) -> nic (eth_10g)
    # -> switch (eth_10g) -> ps0 (eth_25g)
    assert link_line(out, "pcie3") == pytest.approx(4 * S / 1e6, abs=5e-4)
    assert link_line(out, "eth_10g") == pytest.approx(8 * S / 1e6, abs=5e-4)
    assert link_line(out, "eth_25g") == pytest.approx(4 * S / 1e6, abs=5e-4)


def test_plan_of_sandblaster_counts_a_push_per_portion(scenario_file, capsys):
    assert main(["plan", str(scenario_file), "--strategy", "sandblaster"]) == 0
    out = capsys.readouterr().out
    # per batch: each of 2 workers pulls S once; each of 8 portions pushes S
    assert link_line(out, "pcie3") == pytest.approx((2 + 8) * S / 1e6, abs=5e-4)


# ---- simulate -----------------------------------------------------------------------------------

ENTRY_KEYS = {"strategy", "mode", "iteration_time_s", "throughput_samples_per_s", "breakdown_s",
              "memory_bytes_per_device", "fits", "utilisation_per_device",
              "utilisation_per_link"}


def test_simulate_writes_the_result(scenario_file, tmp_path, capsys):
    out_json = tmp_path / "result.json"
    assert main(["simulate", str(scenario_file), "--strategy", "dp", "--strategy", "downpour",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert f"result written to {out_json}" in out
    result = json.loads(out_json.read_text())
    assert {"scenario", "code_version", "results"} <= set(result)
    assert result["scenario"]["name"] == "cli test" and result["scenario"]["seed"] == 3
    assert isinstance(result["code_version"], str) and result["code_version"]
    assert [e["strategy"] for e in result["results"]] == ["dp", "downpour"]
    for e in result["results"]:
        assert ENTRY_KEYS <= set(e), ENTRY_KEYS - set(e)
        assert e["mode"] == "predicted" and e["fits"] is True
        assert set(e["breakdown_s"]) == {"compute", "exposed_communication", "ps_wait", "idle"}
        assert e["iteration_time_s"] > 0 and e["throughput_samples_per_s"] > 0
        # kept for backward, per sample (simulator/model/saved.py): fc1's input (8192), the
        # ReLU's output, which fc2 reads (8192, one tensor), the loss's probabilities (10)
        need = 3 * S + (8192 + 8192 + 10) * 32 * 4
        assert e["memory_bytes_per_device"] == {"node0.gpu0": need, "node0.gpu1": need}
        assert set(e["utilisation_per_device"]) == {"node0.gpu0", "node0.gpu1"}
        assert all(0 < u <= 1 + 1e-9 for u in e["utilisation_per_device"].values())
        assert e["utilisation_per_link"]
        assert all(0 < u <= 1 + 1e-9 for u in e["utilisation_per_link"].values())
    dp, downpour = result["results"]
    assert "staleness" not in dp
    assert {"mean", "max"} <= set(downpour["staleness"])
    assert downpour["staleness"]["mean"] <= downpour["staleness"]["max"]


def test_simulate_writes_a_chrome_trace(scenario_file, tmp_path, capsys):
    trace = tmp_path / "trace.json"
    assert main(["simulate", str(scenario_file), "--strategy", "dp", "--trace", str(trace)]) == 0
    assert f"trace written to {trace}" in capsys.readouterr().out
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(names.values()) == ["dp: links", "dp: node0.gpu0", "dp: node0.gpu1"]
    spans = [e for e in events if e["ph"] == "X"]
    assert spans and all({"ts", "dur", "pid", "tid", "name"} <= set(e) for e in spans)
    assert {names[e["pid"]] for e in spans} == {"dp: node0.gpu0", "dp: node0.gpu1"}
    # fc1 forward on 32 samples: 2 x 8192 x 8192 x 32 FLOPs at 10 TFLOP/s x 50 % (compute
    # bound; 16 blocks fill two waves of 8) = 858.99 us, starting at 0
    first = next(e for e in spans if e["name"] == "fc1.fwd" and names[e["pid"]].endswith("gpu0"))
    assert first["ts"] == 0
    assert first["dur"] == pytest.approx(2 * 8192 * 8192 * 32 / 5e12 * 1e6, rel=1e-9)
    counters = [e for e in events if e["ph"] == "C"]
    assert counters and {names[e["pid"]] for e in counters} == {"dp: links"}
    assert all("->" in e["name"] and "GBps" in e["args"] for e in counters)


def test_simulate_refuses_to_overwrite_without_force(scenario_file, tmp_path):
    out_json = tmp_path / "result.json"
    out_json.write_text("keep me\n")
    r = cli("simulate", str(scenario_file), "--strategy", "dp", "--json", str(out_json))
    assert r.returncode == 2
    assert r.stderr == f"parasim: error: {out_json} exists; pass --force to overwrite it\n"
    assert out_json.read_text() == "keep me\n"
    r = cli("simulate", str(scenario_file), "--strategy", "dp", "--json", str(out_json),
            "--force")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert json.loads(out_json.read_text())["results"][0]["strategy"] == "dp"


@pytest.mark.parametrize("command", ["simulate", "plan"])
def test_unknown_strategy_exits_2(scenario_file, command):
    r = cli(command, str(scenario_file), "--strategy", "nope")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert "no strategy named 'nope'" in r.stderr and "dp, downpour, sandblaster" in r.stderr
    assert "did you mean" not in r.stderr
    r = cli(command, str(scenario_file), "--strategy", "downpor")
    assert r.returncode == 2 and "did you mean 'downpour'?" in r.stderr


def test_missing_scenario_file_exits_2(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    r = cli("simulate", str(missing))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"parasim: error: {missing}")
    assert "cannot read the scenario" in r.stderr
    assert r.stdout == ""


def test_every_argument_of_every_command_says_what_it_is():
    import argparse

    from parasim.cli import parser as _parser

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [(name, a.dest) for name, p in [("parasim", parser), *sub.choices.items()]
               for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and not (a.help or "").strip()]
    assert len(sub.choices) >= 8 and missing == []


def test_version_prints_the_package_version():
    from simulator import __version__

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"parasim {__version__}")


def test_json_to_standard_output_leaves_the_table_on_standard_error(scenario_file, tmp_path):
    r = cli("simulate", str(scenario_file), "--strategy", "dp", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["strategy"] == "dp"
    assert "samples/s" in r.stderr and not (Path.cwd() / "-").exists()
    r = cli("simulate", str(scenario_file), "--json", "-", "--report", "-")
    assert r.returncode == 2 and "only one output can be standard output" in r.stderr


def test_a_json_file_ending_in_gz_is_gzipped(scenario_file, tmp_path):
    import gzip

    out = tmp_path / "r.json.gz"
    r = cli("simulate", str(scenario_file), "--strategy", "dp", "--json", str(out))
    assert r.returncode == 0, r.stderr
    with gzip.open(out, "rt") as f:
        assert json.load(f)["results"][0]["strategy"] == "dp"


def test_steps_say_what_runs_and_how_long_is_left_only_on_a_terminal():
    import io

    from rich.console import Console

    from simulator.progress import Steps

    tty = io.StringIO()
    steps = Steps(3, console=Console(file=tty, force_terminal=True, color_system=None,
                                     width=200))
    steps("kernels")
    steps("links")
    out = tty.getvalue()
    assert "[1/3] kernels" in out and "[2/3] links" in out and "s left" in out
    pipe = io.StringIO()
    quiet = Steps(3, console=Console(file=pipe, force_terminal=False))
    quiet("kernels")
    assert pipe.getvalue() == ""

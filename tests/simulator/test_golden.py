"""Every shipped scenario is a golden test: its printed summary must equal the committed one.

A change that moves a prediction shows up here as a diff to review. To accept new figures:

    PARASIM_UPDATE_GOLDEN=1 python -m pytest tests/simulator/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from simulator.cli import format_table
from simulator.predict import simulate_scenario
from simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


def test_scenarios_are_shipped():
    assert len(SCENARIOS) >= 6


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_matches_its_golden_summary(path: Path):
    result, _ = simulate_scenario(load_scenario(path))
    # the Result file stays small without --timeline (the scale issue's bound)
    assert len(json.dumps(result, indent=1)) <= 5e6
    summary = format_table(result) + "\n"
    golden = ROOT / "scenarios" / "expected" / f"{path.stem}.txt"
    if os.environ.get("PARASIM_UPDATE_GOLDEN"):
        golden.write_text(summary)
    assert golden.exists(), f"no golden summary for {path.name}: run with PARASIM_UPDATE_GOLDEN=1"
    assert summary == golden.read_text()


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_strategy_a_shipped_scenario_names_has_a_prediction(path: Path):
    scenario = load_scenario(path)
    result, _ = simulate_scenario(scenario)
    entries = {e["strategy"]: e for e in result["results"]}
    assert list(entries) == [s.name for s in scenario.strategies]
    for e in entries.values():
        assert e["mode"] == "predicted"
        assert (e["throughput_samples_per_s"] or 0) > 0 or e["note"].startswith("does not fit")

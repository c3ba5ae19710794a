"""Without MPI: the fault-injection variables are parsed strictly (a bad value is a UserError
naming the variable and the value), and a rank's share of a resumed run's batches is the slice
of the global batch it would have read uninterrupted."""

from __future__ import annotations

import numpy as np
import pytest

from executor.data import Dataset
from executor.mpi.faults import Fault, FaultSpecError, fault_spec, slowdown, slowdown_spec


@pytest.mark.parametrize("value,expected", [
    ("kill@1", Fault("kill", 1, None)),
    ("term@0:12", Fault("term", 0, 12)),
    ("stall@3:0", Fault("stall", 3, 0)),
])
def test_a_fault_names_its_kind_rank_and_period(monkeypatch, value, expected):
    monkeypatch.setenv("PARASIM_INJECT_FAULT", value)
    assert fault_spec(4) == expected


@pytest.mark.parametrize("value,why", [
    ("kil@1", "the kind must be one of raise, stall, exit, kill, term"),
    ("kill", "expected KIND@RANK or KIND@RANK:PERIOD with a whole rank"),
    ("kill@-1", "expected KIND@RANK or KIND@RANK:PERIOD with a whole rank"),
    ("kill@1:", "the period after ':' must be a whole number"),
    ("kill@4", "rank 4 is not one of the 4 rank(s) launched"),
])
def test_a_bad_fault_is_refused_naming_variable_and_value(monkeypatch, value, why):
    monkeypatch.setenv("PARASIM_INJECT_FAULT", value)
    with pytest.raises(FaultSpecError, match=f"^PARASIM_INJECT_FAULT='{value}': ") as e:
        fault_spec(4)
    assert why in str(e.value)


@pytest.mark.parametrize("value", ["inf@1", "nan@1", "-inf@1", "0.5@1", "x@1", "2", "2@"])
def test_a_bad_slowdown_is_refused(monkeypatch, value):
    monkeypatch.setenv("PARASIM_SLOWDOWN", value)
    with pytest.raises(FaultSpecError, match=f"^PARASIM_SLOWDOWN='{value}': "):
        slowdown_spec(2)


def test_a_slowdown_applies_to_its_rank_only(monkeypatch):
    monkeypatch.setenv("PARASIM_SLOWDOWN", "2.5@1")
    assert (slowdown(0), slowdown(1)) == (1.0, 2.5)
    monkeypatch.delenv("PARASIM_SLOWDOWN")
    assert slowdown(1) == 1.0 and slowdown_spec(2) is None


def test_a_resumed_ranks_batches_are_its_slices_of_the_global_batches():
    # 7 samples, global batch 4: step 2 holds samples 1, 2, 3, 4; rank part (1, 2) of it: 2, 3
    d = Dataset(np.arange(7, dtype=np.float32)[:, None], np.arange(7), "seven")
    whole = [y.tolist() for _, y in d.batches(4, steps=5)]
    part = [y.tolist() for _, y in d.batches(4, start_step=2, steps=3, part=(1, 2))]
    assert part == [w[1:3] for w in whole[2:]] == [[2, 3], [6, 0], [3, 4]]
    assert [x.tolist() for x, _ in d.batches(4, start_step=2, steps=1, part=(1, 2))] == \
        [[[2.0], [3.0]]]
    with pytest.raises(ValueError, match="not within a batch of 4"):
        next(d.batches(4, part=(3, 2)))

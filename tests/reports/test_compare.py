"""Predicted against measured: pairing and relative errors, computed by hand."""

import pytest

from reports.compare import pairs, phases, relative_error
from tests.reports.helpers import entry, result, rows


def test_relative_error_is_predicted_minus_measured_over_measured():
    # as parasim validate prints it: positive where the prediction is above the measurement
    assert relative_error(0.5, 0.625) == pytest.approx(-0.2)
    assert relative_error(0.5, 0.4) == pytest.approx(0.25)
    assert relative_error(0.5, 0.0) is None
    assert relative_error(None, 1.0) is None and relative_error(1.0, None) is None


def test_a_measured_entry_pairs_with_the_prediction_in_another_file():
    predicted = result(entry("ring", iteration_time_s=0.5, throughput=200.0), entry("tree"))
    measured_bd = {"compute": 0.4, "exposed_communication": 0.1, "ps_wait": 0.0, "idle": 0.1,
                   "host_device_copy": 0.025}
    measured = result(entry("ring", mode="measured", iteration_time_s=0.625, throughput=160.0,
                            breakdown_s=measured_bd))
    (pair,) = pairs(rows(predicted, measured))
    assert (pair.predicted.strategy, pair.measured.mode) == ("ring", "measured")
    assert pair.iteration_error == pytest.approx((0.5 - 0.625) / 0.625)  # -20 %
    assert pair.throughput_error == pytest.approx((200 - 160) / 160)  # +25 %
    names = phases([pair.predicted, pair.measured])
    assert names == ["compute", "exposed_communication", "ps_wait", "idle", "host_device_copy"]
    got = {name: (p, m, err) for name, p, m, err in pair.phase_rows(names)}
    assert got["compute"] == pytest.approx((0.3, 0.4, -0.25))
    assert got["exposed_communication"] == pytest.approx((0.1, 0.1, 0.0))
    assert got["ps_wait"][2] is None  # measured 0: undefined
    assert got["host_device_copy"] == pytest.approx((0.0, 0.025, -1.0))  # not modelled


def test_pairing_prefers_the_same_size_and_skips_what_cannot_be_compared():
    predicted = result(entry("ring", devices=2), entry("ring", devices=4, throughput=300.0))
    measured = result(entry("ring", mode="measured", devices=4, throughput=250.0),
                      entry("ring", mode="measured", devices=8),
                      entry("other", mode="measured"),
                      entry("ring", mode="measured", devices=2, iteration_time_s=None,
                            throughput=None))
    (pair,) = pairs(rows(predicted, measured))
    assert pair.predicted.devices == 4 and pair.throughput_error == pytest.approx(50 / 250)


def test_a_comparison_says_when_the_prediction_was_not_calibrated_where_it_was_measured():
    from reports.compare import calibration_warning

    measured = {"scenario": {"hosts": ["node-a"]}}
    catalogue = {"scenario": {"cluster": {"profile": None, "profile_hosts": []}}}
    assert "catalogue's figures" in calibration_warning(catalogue, measured)
    assert "(node-a)" in calibration_warning(catalogue, measured)
    here = {"scenario": {"cluster": {"profile": "p.yaml", "profile_hosts": ["node-a"]}}}
    assert calibration_warning(here, measured) is None
    there = {"scenario": {"cluster": {"profile": "p.yaml", "profile_hosts": ["node-b"]}}}
    assert "calibrated on node-b" in calibration_warning(there, measured)

"""Comparison reports: one self-contained HTML page (plotly.js inlined, no network) built from
Result files, predicted and measured. Pure functions of the Result dicts; nothing here imports
the simulator.

    results = load_results(["a.json", "b.json"])      # ReportError on a bad file
    html = build_report(results, ["a.json", "b.json"])
"""

from reports.errors import ReportError
from reports.load import load_results
from reports.page import build_report

__all__ = ["ReportError", "build_report", "load_results"]

"""``parasim report``: writes one file atomically, refuses to overwrite without --force, and
bad input is a ReportError (exit 2 through the main command line)."""

import argparse
import json

import pytest

from reports import ReportError
from reports.cli import add_parser
from tests.reports.helpers import entry, result


def parse(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
def result_file(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(result(entry())))
    return p


def test_writes_the_report_and_nothing_else(tmp_path, result_file, capsys):
    out = tmp_path / "report.html"
    args = parse(["report", str(result_file), "-o", str(out)])
    assert args.func(args) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "report.html"]
    assert f"report written to {out}" in capsys.readouterr().out


def test_refuses_to_overwrite_without_force(tmp_path, result_file):
    out = tmp_path / "report.html"
    out.write_text("keep me")
    args = parse(["report", str(result_file), "-o", str(out)])
    with pytest.raises(ReportError, match="exists; pass --force"):
        args.func(args)
    assert out.read_text() == "keep me"
    args = parse(["report", str(result_file), "-o", str(out), "--force"])
    assert args.func(args) == 0 and out.read_text() != "keep me"


def test_bad_input_leaves_no_file(tmp_path, result_file):
    out = tmp_path / "report.html"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"mode": "measured"}]}))
    args = parse(["report", str(result_file), str(bad), "-o", str(out)])
    with pytest.raises(ReportError, match=r"bad.json: results\[0\]: missing field 'strategy'"):
        args.func(args)
    assert not out.exists()
    with pytest.raises(ReportError, match="does not exist"):
        args = parse(["report", str(result_file), "-o", str(tmp_path / "no" / "r.html")])
        args.func(args)


def test_output_is_required():
    with pytest.raises(SystemExit):
        parse(["report", "r.json"])


def test_main_command_line_exits_2_with_one_line(tmp_path, capsys):
    from parasim.cli import main

    assert main(["report", str(tmp_path / "missing.json"), "-o",
                 str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"parasim: error: {tmp_path / 'missing.json'}: no such file"

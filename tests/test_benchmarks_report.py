"""benchmarks/report.py's command line: the markdown of a run_all.py record,
printed or written to --out, and a usage error (one line, exit 2) for a record
it cannot read or render or an --out it cannot write. Nothing is measured."""

import functools
import json
import os
import subprocess
import sys

import pytest
from benchmark_usage import usage_error

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, HERE)
import report  # noqa: E402


@pytest.fixture
def record(tmp_path, monkeypatch):
    """A record file; markdown() stands in (the real one loads TensorFlow)."""
    monkeypatch.setattr(report, "markdown", lambda record: f"TABLE of {record['started']}")
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"started": "then", "cases": []}))
    return path


_usage_error = functools.partial(usage_error, report.main)


def test_help_is_a_command_line():
    run = subprocess.run([sys.executable, os.path.join(HERE, "report.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: report.py") and "RECORD" in run.stdout
    assert "--out" in run.stdout and "Exit status" in run.stdout


def test_prints_the_markdown_of_a_record(record, capsys):
    assert report.main([str(record)]) == 0
    assert capsys.readouterr().out == "TABLE of then\n"


def test_the_default_record_is_latest_json():
    assert report.DEFAULT_RECORD == os.path.join(HERE, "results", "latest.json")


def test_writes_the_markdown_to_out(record, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert report.main([str(record), "--out", str(out)]) == 0
    assert out.read_text() == "TABLE of then\n" and capsys.readouterr().out == ""


def test_a_bad_out_comes_before_reading_the_record(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    missing = str(tmp_path / "missing.json")
    says = _usage_error([missing, "--out", str(tmp_path / "afile" / "t.md")], capsys)
    assert "--out" in says


@pytest.mark.parametrize("text", [None, "{", json.dumps({"cases": {}}), json.dumps([])])
def test_a_record_it_cannot_read(tmp_path, capsys, text):
    path = tmp_path / "r.json"
    if text is not None:
        path.write_text(text)
    assert "argument RECORD: " in _usage_error([str(path)], capsys)


def test_a_record_of_another_script(tmp_path, capsys):
    # model_step.py's record has a "cases" list too, but not run_all.py's fields.
    path = tmp_path / "model_step.json"
    path.write_text(json.dumps({"machine": {}, "cases": []}))
    says = _usage_error([str(path)], capsys)
    assert "argument RECORD: " in says and "not a record of run_all.py" in says

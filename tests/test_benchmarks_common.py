"""benchmarks/common.py's command-line helpers: the argument types, the
output-path check and the atomic writer the benchmark scripts share."""

import argparse
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, HERE)
import common  # noqa: E402


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.5", ""])
def test_positive_int_refuses_what_is_not_a_count(text):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace("[", r"\[")):
        common.positive_int(text)


def test_argument_types_accept_what_they_should():
    assert common.positive_int("3") == 3
    assert common.non_negative_int("0") == 0
    assert common.positive_float("0.5") == 0.5
    assert common.regex("NL-I3D.*bfloat16") == "NL-I3D.*bfloat16"
    for bad in ("0", "-2", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.positive_float(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="regular expression"):
        common.regex("[")


def _parser_error(call, capsys):
    with pytest.raises(SystemExit) as exit_:
        call()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_check_output_names_the_option_and_the_path(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="prog")
    afile = tmp_path / "afile"
    afile.write_text("")
    line = _parser_error(lambda: common.check_output(parser, "--out", str(afile / "x.json")),
                         capsys)
    assert line.startswith("prog: error: argument --out:") and "afile" in line
    line = _parser_error(lambda: common.check_output(parser, "--out", str(tmp_path) + "/"),
                         capsys)
    assert "is a folder" in line
    # A folder still to be made is fine: the writer makes it.
    common.check_output(parser, "--out", str(tmp_path / "new" / "deeper" / "x.json"))


def test_write_json_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "r.json"
    common.write_json(str(path), {"a": 1})
    common.write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["r.json"]


def test_a_failed_write_leaves_the_file_untouched(tmp_path):
    """Under a file size limit (or a full disk) the old file stays whole and
    no temporary is left behind, where writing in place left it cut short."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"old": True}))
    code = ("import resource, sys; sys.path.insert(0, %r); import common\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
            "common.write_json(%r, {'x': 'y' * 100000})\n") % (HERE, str(path))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0 and "File too large" in run.stderr
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["r.json"]


def test_check_revision(capsys):
    parser = argparse.ArgumentParser(prog="prog")
    common.check_revision(parser, "HEAD", ["benchmarks/common.py"])
    line = _parser_error(lambda: common.check_revision(parser, "no-such-revision-x"), capsys)
    assert line.startswith("prog: error: argument REVISION: 'no-such-revision-x'")
    line = _parser_error(lambda: common.check_revision(parser, "HEAD", ["no/such.py"]), capsys)
    assert "no/such.py" in line


def test_a_closed_pipe_ends_the_script_quietly_with_sigpipes_status(tmp_path):
    """`report.py | head`: a BrokenPipeError traceback before."""
    script = tmp_path / "many_lines.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(common.__file__)!r})\n"
        "import common\n"
        "def main(argv):\n"
        "    for n in range(10 ** 6):\n"
        "        print('line', n)\n"
        "common.run_cli(main)\n")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "line 0\n"
    process.stdout.close()
    assert process.wait(timeout=60) == 141
    assert process.stderr.read() == ""

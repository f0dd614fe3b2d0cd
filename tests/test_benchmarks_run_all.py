"""benchmarks/run_all.py's command line: usage errors before any measuring,
where a subset's results go, its exit status, and that a stopped run takes its
case's process with it. No benchmark runs: run_case is replaced or its worker
is a stand-in."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from benchmark_usage import usage_error

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, HERE)
import run_all  # noqa: E402


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Default and subset outputs in tmp_path, and run_case answering from a dict."""
    answers = {"status": "ok"}
    monkeypatch.setattr(run_all, "DEFAULT_OUTPUT", str(tmp_path / "latest.json"), raising=False)
    monkeypatch.setattr(run_all, "SUBSET_OUTPUT", str(tmp_path / "subset.json"), raising=False)
    monkeypatch.setattr(run_all, "run_case", lambda case, cap, timeout: dict(answers))
    monkeypatch.setattr(run_all, "peers_installed", lambda: {})
    monkeypatch.setattr(run_all.report, "markdown", lambda record: "TABLE")
    monkeypatch.setattr(run_all.report, "summary", lambda result: result["status"])
    monkeypatch.setattr(run_all.common, "machine", lambda: {})
    monkeypatch.setattr(run_all.common, "block_flops", lambda shape: 0)  # imports TensorFlow
    monkeypatch.setattr(run_all, "rewrite_readme", lambda table: pytest.fail("README rewritten"))
    return answers


_usage_error = functools.partial(usage_error, run_all.main)


@pytest.mark.parametrize("argv, says", [
    (["--rounds", "0"], "--rounds"), (["--rounds", "-1"], "--rounds"),
    (["--timeout", "0"], "--timeout"), (["--mem-cap-gb", "0"], "--mem-cap-gb"),
    (["--only", "["], "--only"), (["--only", "no such case"], "no case matches"),
    (["--merge"], "--merge"),
])
def test_usage_errors_come_before_any_measuring(fake, monkeypatch, capsys, argv, says):
    monkeypatch.setattr(run_all, "run_case", lambda *a: pytest.fail("measured"))
    assert says in _usage_error(argv + ["--no-readme"], capsys)


def test_bad_output_paths_come_before_any_measuring(fake, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(run_all, "run_case", lambda *a: pytest.fail("measured"))
    (tmp_path / "afile").write_text("")
    for output in (tmp_path / "afile" / "x.json", str(tmp_path) + os.sep, tmp_path):
        assert "--output" in _usage_error(["--only", "res4", "--output", str(output),
                                           "--no-readme"], capsys)
    line = _usage_error(["--merge", "--only", "res4", "--output", str(tmp_path / "missing.json")],
                        capsys)
    assert "--output" in line and "missing.json" in line
    (tmp_path / "bad.json").write_text("{not json")
    assert "--output" in _usage_error(["--merge", "--only", "res4", "--output",
                                       str(tmp_path / "bad.json")], capsys)


def test_a_subset_leaves_the_default_record_alone(fake, tmp_path, capsys):
    latest = tmp_path / "latest.json"
    latest.write_text('{"cases": []}')
    assert run_all.main(["--only", "res4", "--no-readme"]) == 0
    assert latest.read_text() == '{"cases": []}'
    subset = json.loads((tmp_path / "subset.json").read_text())
    assert subset["cases"] and all("res4" in c["name"] for c in subset["cases"])
    assert str(tmp_path / "subset.json") in capsys.readouterr().out
    # --merge puts the subset into the record, --output names another file.
    assert run_all.main(["--only", "res4", "--merge", "--no-readme"]) == 0
    assert len(json.loads(latest.read_text())["cases"]) == len(subset["cases"])
    assert run_all.main(["--only", "res4", "--no-readme", "--output",
                         str(tmp_path / "mine.json")]) == 0
    assert (tmp_path / "mine.json").exists()


def test_no_result_is_a_failure_and_writes_nothing(fake, tmp_path, capsys):
    fake["status"] = "timeout"
    out = tmp_path / "mine.json"
    out.write_text("earlier")
    assert run_all.main(["--only", "res4", "--no-readme", "--output", str(out)]) == 1
    assert out.read_text() == "earlier"
    assert "no case produced a result (timeout)" in capsys.readouterr().err


_STOPPABLE = """
import sys
sys.path.insert(0, {here!r})
import common, run_all
run_all.cases = lambda quick: [{{"kind": "matmul", "size": 1, "dtype": "float32", "jit": False,
                                "warmup": 0, "repeats": 1}}]
run_all.common.machine = lambda: {{}}
run_all.common.block_flops = lambda shape: 0
run_all.run_case.__defaults__ = ({worker!r},)
common.run_cli(run_all.main, ["--only", ".", "--no-readme", "--output", {out!r}])
"""


@pytest.mark.parametrize("sig, code, says", [(signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_run_stops_its_case(tmp_path, sig, code, says):
    pid_file = tmp_path / "worker.pid"
    worker = tmp_path / "worker.py"
    worker.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                      "time.sleep(120)\n")
    script = _STOPPABLE.format(here=HERE, worker=str(worker), out=str(tmp_path / "r.json"))
    # Its own session: the signal goes to run_all alone, as `kill PID` sends it.
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        child = int(pid_file.read_text())
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"<string>: {says}"] or err.strip().endswith(says), err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:  # a zombie of init's: gone as far as running goes
            with open(f"/proc/{child}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    break
        except OSError:
            break
        assert time.monotonic() < deadline, "the case's process outlived run_all"
        time.sleep(0.05)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("script", ["run_all.py", "model_step.py", "loader.py", "report.py"])
def test_the_scripts_stop_through_run_cli(script):
    """What the test above checks of run_cli is what these scripts run."""
    with open(os.path.join(HERE, script)) as f:
        assert "common.run_cli(main)" in f.read().rsplit('if __name__ == "__main__":', 1)[1]

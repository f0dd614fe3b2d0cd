"""benchmarks/loader.py runs end to end in --quick mode on the CPU (tiny videos,
one clip setting, one round): every installed loader delivers batches of the
right shape (checked inside the script); peers that are not installed or cannot
be imported are reported as skipped. No timing is asserted."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "loader.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import loader  # noqa: E402


@pytest.mark.slow  # ~30 s on 2 cores: each loader is a fresh process importing TF or torch
def test_quick_run(tmp_path):
    out = tmp_path / "loader.json"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--clips", "8x8", "--videos", str(tmp_path / "videos"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(out.read_text())
    peers = ("decord", "torchcodec", "torch_pyav")
    expected_skipped = [n for n in peers if not loader.available(n, sys.executable)]
    assert written["skipped"] == expected_skipped
    assert set(written["measurements"]) == {"8x8"}
    for row in written["measurements"].values():
        assert set(row) == {"ours", *(set(peers) - set(expected_skipped))}
        for rounds in row.values():
            assert len(rounds) == 1
            assert rounds[0]["clips_per_s"] > 0 and rounds[0]["cpu_ms_per_clip"] > 0
    # Two markdown tables (clips/s, CPU a clip), one row per clip setting each.
    assert written["table"].count("| 8x8 |") == 2 and "| 8x8 |" in result.stdout


def test_table_ratios_favour_ours_above_one():
    # Made-up figures: ours delivers 12 clips/s on 80 CPU ms a clip; the best
    # peer 10 clips/s (decord) and 100 CPU ms (torchcodec), in each round.
    def m(rate, cpu):
        return {"clips_per_s": rate, "cpu_ms_per_clip": cpu}

    results = {"32x2": {"ours": [m(12, 80), m(6, 80)], "decord": [m(10, 120), m(5, 120)],
                        "torchcodec": [m(8, 100), m(4, 100)]}}
    loaders = ["ours", "decord", "torchcodec"]
    assert "| 32x2 | 9.0 | 7.5 | 6.0 | 1.20 | 1.20-1.20 |" in loader.table(results, loaders)
    assert "| 32x2 | 80.0 | 120.0 | 100.0 | 1.25 | 1.25-1.25 |" in loader.table(
        results, loaders, cpu=True)


def test_the_best_peer_is_the_best_of_every_peer_measured():
    # torch_pyav spends the least CPU a clip (90 ms) and decord delivers the
    # most clips/s: each is the best peer of its table.
    def m(rate, cpu):
        return {"clips_per_s": rate, "cpu_ms_per_clip": cpu}

    results = {"8x8": {"ours": [m(12, 60)], "decord": [m(10, 120)],
                       "torchcodec": [m(8, 100)], "torch_pyav": [m(6, 90)]}}
    loaders = ["ours", "decord", "torchcodec", "torch_pyav"]
    assert "| 8x8 | 12.0 | 10.0 | 8.0 | 6.0 | 1.20 | 1.20-1.20 |" in loader.table(results, loaders)
    assert "| 8x8 | 60.0 | 120.0 | 100.0 | 90.0 | 1.50 | 1.50-1.50 |" in loader.table(
        results, loaders, cpu=True)


def test_render_prints_a_saved_records_tables_and_refuses_other_files(tmp_path):
    # A record whose torchcodec was skipped: it has no column; ours 12 clips/s
    # against decord's 10, 60 CPU ms against 90.
    record = {"loaders": ["ours", "decord", "torchcodec"], "skipped": ["torchcodec"],
              "measurements": {"8x8": {"ours": [{"clips_per_s": 12, "cpu_ms_per_clip": 60}],
                                       "decord": [{"clips_per_s": 10, "cpu_ms_per_clip": 90}]}},
              "table": "what the code of its day printed"}
    path = tmp_path / "loader.json"
    path.write_text(json.dumps(record))
    result = subprocess.run([sys.executable, SCRIPT, "--render", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| 8x8 | 12.0 | 10.0 | 1.20 | 1.20-1.20 |" in result.stdout
    assert "| 8x8 | 60.0 | 90.0 | 1.50 | 1.50-1.50 |" in result.stdout
    assert "torchcodec" not in result.stdout

    for bad in (tmp_path / "missing.json", SCRIPT):
        result = subprocess.run([sys.executable, SCRIPT, "--render", str(bad)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith(
            "loader.py: error: argument --render: not a results JSON of loader.py")

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
    assert set(written["clips_per_s"]) == {"8x8"}
    for row in written["clips_per_s"].values():
        assert set(row) == {"ours", *(set(peers) - set(expected_skipped))}
        assert all(len(values) == 1 and values[0] > 0 for values in row.values())
    # The markdown table has one row per clip setting.
    assert "| 8x8 |" in result.stdout and "| 8x8 |" in written["table"]

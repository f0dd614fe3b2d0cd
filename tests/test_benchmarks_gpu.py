"""benchmarks/gpu.py runs (tiny shapes, CPU) on a backend without TensorFlow,
so that it works when a GPU machine is lent; no test needs a GPU."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "gpu.py")


@pytest.mark.parametrize("backend", ["torch"])
def test_quick_run_without_tensorflow(tmp_path, backend):
    pytest.importorskip(backend)
    out = tmp_path / "gpu.json"
    # TensorFlow made unimportable, as on the GPU machine.
    code = ("import sys, runpy; sys.modules['tensorflow'] = None; "
            f"sys.argv = ['gpu.py', '--quick', '--warmup', '0', '--repeats', '1', "
            f"'--out', {str(out)!r}]; runpy.run_path({SCRIPT!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, KERAS_BACKEND=backend), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(out.read_text())
    assert written["backend"] == backend
    cases = [(r["case"], r.get("policy"), r.get("model")) for r in written["results"]]
    assert cases == [("block", "float32", None), ("block", "mixed_bfloat16", None),
                     ("train_step", "float32", "tiny_nl0"), ("train_step", "float32", "tiny_nl5"),
                     ("train_step", "mixed_bfloat16", "tiny_nl0"),
                     ("train_step", "mixed_bfloat16", "tiny_nl5")]
    assert all(r["train_step_s"] > 0 for r in written["results"])

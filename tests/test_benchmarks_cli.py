"""The benchmark scripts' command lines other than run_all.py and model_step.py:
a bad argument is one line naming it and exit 2, before anything is measured
(nothing here measures: every call stops at the parser)."""

import os
import subprocess
import sys

import pytest
from benchmark_usage import usage_error

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, HERE)
import ab_block  # noqa: E402
import ab_memory  # noqa: E402
import ab_step  # noqa: E402
import gpu  # noqa: E402
import loader  # noqa: E402
import predict_memory  # noqa: E402
import profile_block  # noqa: E402
import profile_step  # noqa: E402


@pytest.fixture(autouse=True)
def nothing_measured(monkeypatch):
    """A check that let an argument through fails here instead of measuring
    (and writing benchmarks/results/)."""
    def measured(*args, **kwargs):
        pytest.fail("got past the argument checks")

    for module, name in ((loader, "make_videos"), (loader, "run_one"),
                         (predict_memory, "write_4k"), (gpu, "_import_from_source_tree"),
                         (ab_block, "block_and_input"), (ab_step.worker, "_tensorflow")):
        monkeypatch.setattr(module, name, measured)


@pytest.mark.parametrize("call, argv, says", [
    (loader.main, ["--rounds", "0"], "--rounds"),
    (loader.main, ["--loaders", "nosuch"], "ours, decord, torchcodec, torch_pyav"),
    (loader.main, ["--loaders", ","], "--loaders"),
    (loader.main, ["--python", "torchcodec"], "LOADER=PYTHON"),
    (loader.main, ["--python", "nosuch=/bin/python"], "--python"),
    (loader.main, ["--clips", "16x4"], "32x2, 8x8"),
    (predict_memory.main, ["--frames", "0"], "--frames"),
    (gpu.main, ["--repeats", "0"], "--repeats"), (gpu.main, ["--batch", "0"], "--batch"),
    (gpu.main, ["--warmup", "-1"], "--warmup"),
    (profile_step.parse_args, ["--steps", "0"], "--steps"),
    (profile_step.parse_args, ["--batch", "0"], "--batch"),
    (profile_step.parse_args, ["--frames", "0"], "--frames"),
    (profile_block.parse_args, ["res4", "float32", "--steps", "0"], "--steps"),
    (profile_block.parse_args, ["res4", "float32", "--trace", "0"], "--trace"),
])
def test_counts_and_names_are_checked(capsys, call, argv, says):
    assert says in usage_error(call, argv, capsys)


def test_a_bad_output_comes_before_any_measuring(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    bad = str(tmp_path / "afile" / "x.json")
    assert "--out" in usage_error(loader.main, ["--out", bad], capsys)
    assert "--output" in usage_error(predict_memory.main, ["--output", bad], capsys)
    assert "--out" in usage_error(gpu.main, ["--out", str(tmp_path)], capsys)


@pytest.mark.parametrize("parse, argv, says", [
    (ab_block.parse_args, [], "required"),
    (ab_block.parse_args, ["res9", "float32", "HEAD"], "SHAPE"),
    (ab_block.parse_args, ["res3", "float33", "HEAD"], "PRECISION"),
    (ab_block.parse_args, ["res3", "float32", "no-such-revision-x"], "REVISION"),
    (ab_block.parse_args, ["res3", "float32", "HEAD", "0"], "REPEATS"),
    (ab_memory.parse_args, ["res3", "float32", "no-such-revision-x", "8", "2"], "REVISION"),
    (ab_memory.parse_args, ["res3", "float32", "HEAD", "0"], "BATCH"),
    (ab_memory.parse_args, ["res3", "float32", "HEAD", "8", "0"], "ROUNDS"),
    (ab_step.parse_args, ["c3d", "float32", "HEAD"], "ARCH"),
    (ab_step.parse_args, ["c2d", "float32", "HEAD", "8", "Nope"], "CLASS"),
    (ab_step.parse_args, ["c2d", "float32", "no-such-revision-x"], "REVISION"),
])
def test_ab_scripts_parse_their_arguments(capsys, parse, argv, says):
    assert says in usage_error(parse, argv, capsys)


def test_ab_scripts_keep_their_documented_command_lines():
    """The command lines of benchmarks/README.md and README.md."""
    args = ab_block.parse_args(["res3", "mixed_bfloat16", "HEAD", "20"])
    assert (args.shape, args.precision, args.revision, args.repeats) == (
        "res3", "mixed_bfloat16", "HEAD", 20)
    assert ab_block.parse_args(["res4", "float32", "HEAD"]).repeats == 10
    args = ab_memory.parse_args(["res3", "mixed_bfloat16", "HEAD", "8", "2"])
    assert (args.batch, args.rounds) == (8, 2)
    args = ab_step.parse_args(["c2d", "float32", "HEAD", "8", "FusedBatchNormalization"])
    assert (args.arch, args.repeats, args.layer_class) == ("c2d", 8, "FusedBatchNormalization")
    args = ab_step.parse_args(["i3d", "float32", "keras", "20", "ConcatenatedZeroPadding3D"])
    assert args.revision == "keras"
    assert ab_step.parse_args(["c2d", "mixed_bfloat16", "HEAD"]).layer_class == "VideoConv3D"


@pytest.mark.parametrize("script", ["ab_block.py", "ab_memory.py", "ab_step.py"])
def test_ab_scripts_help(script):
    run = subprocess.run([sys.executable, os.path.join(HERE, script), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "REVISION" in run.stdout, run.stderr

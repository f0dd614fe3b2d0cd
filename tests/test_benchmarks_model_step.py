"""benchmarks/model_step.py: its FLOP count against independent counts, the
peers' block layouts against our spec, the report from made-up figures, and
a --quick run end to end (ours; a peer only where it is installed). No timing
is asserted."""

import functools
import json
import os
import subprocess
import sys

import pytest
from benchmark_usage import usage_error

from nonlocal_keras.applications import C2DResNet50, I3DResNet50, VideoResNet
from nonlocal_keras.applications.video_resnet_spec import (
    DEPTHS,
    INFLATION_RULES,
    check_spec,
)
from nonlocal_keras.utils import count_flops

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "model_step.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import model_step  # noqa: E402


@pytest.mark.parametrize("nonlocal_blocks", [0, {"res2": [0]}])
def test_step_flops_is_three_forwards_less_the_input_gradient(nonlocal_blocks):
    # 16x16 maps, 8 channels at res2: the block's plain order is the cheaper
    # one, so the graph count (count_flops) is an independent check of ours.
    model = VideoResNet((1, 1), input_shape=(4, 32, 32, 3), classes=5, width=2, conv1_time=3,
                        inflated_blocks={"res2": "all"}, pool1=False,
                        nonlocal_blocks=nonlocal_blocks)
    conv1 = (4 * 16 * 16 * 2) * (3 * 7 * 7 * 3)  # output elements x window x input channels
    assert model_step.step_flops(model) == 2 * (3 * count_flops(model) - conv1)


@pytest.mark.parametrize("constructor, giga_multiply_adds", [(C2DResNet50, 19.6),
                                                              (I3DResNet50, 28.5)])
def test_step_flops_of_the_paper_models(constructor, giga_multiply_adds):
    # fvcore's count of PyTorchVideo's c2d_r50 / i3d_r50 (PAPER.md section 3).
    conv1 = (8 * 112 * 112 * 64) * (constructor is I3DResNet50 and 5 or 1) * 7 * 7 * 3
    forward = (model_step.step_flops(constructor(input_shape=(8, 224, 224, 3))) / 2 + conv1) / 3
    assert forward == pytest.approx(giga_multiply_adds * 1e9, rel=0.03)


def _per_block(indices, blocks):
    return tuple(int(i in indices) for i in range(blocks))


def test_mmaction2_layouts_are_ours():
    spec = check_spec(stage_blocks=DEPTHS[50], width=64, conv1_time=5,
                      inflated_blocks=INFLATION_RULES["i3d"]["blocks"], inflation="3x1x1",
                      stage_strides=None, pool1=True, pool2=True, nonlocal_blocks=5,
                      nonlocal_mode="embedded_gaussian", nonlocal_affinity="spacetime",
                      dropout_rate=0.5, stem="8x8")
    stages = ("res2", "res3", "res4", "res5")
    assert model_step.MMACTION_I3D_INFLATE == tuple(
        _per_block(spec.inflated.get(s, ()), n) for s, n in zip(stages, DEPTHS[50]))
    assert model_step.MMACTION_NONLOCAL_5 == tuple(
        _per_block(spec.nonlocal_blocks.get(s, ()), n) for s, n in zip(stages, DEPTHS[50]))


def _entry(model, precision, impl, clips, nan_in_round=None):
    """A case's record: one ok round per clips/s figure, or two skipped rounds."""
    rounds = [{"status": "skipped", "skipped": "not installed"}] * 2
    if clips:
        rounds = [{"status": "ok", "peak_rss_mb": 1000.0, "clips_per_s": c,
                   "finite_losses": i != nan_in_round} for i, c in enumerate(clips)]
        if impl == "ours":
            rounds = [dict(r, gflop_per_clip=100.0) for r in rounds]
    return {"case": {"model": model, "precision": precision, "impl": impl}, "rounds": rounds}


def _record(entries):
    """A run's record of two rounds: the matmul rates (float32 300 and 500, bfloat16 1000
    GFLOP/s), then `entries`."""
    matmul = {"case": {"impl": "matmul"},
              "rounds": [{"status": "ok", "matmul": {"float32": {"gflops": g},
                                                     "bfloat16": {"gflops": 1000.0}}}
                         for g in (300.0, 500.0)]}
    return {"started": "then", "threads": 2, "loads": [[[1.0], [2.0]]],
            "machine": {"cpu_model": "cpu", "cpu_count": 2},
            "settings": dict(model_step.FULL, rounds=2), "cases": [matmul] + entries}


def test_report_from_made_up_figures():
    record = _record([
        _entry("C2D R50", "float32", "ours", [2.0, 3.0]),
        _entry("C2D R50", "float32", "pytorchvideo", [1.0, 1.5]),
        _entry("C2D R50", "bfloat16", "ours", [6.0, 6.0], nan_in_round=1),
        _entry("C2D R50", "bfloat16", "pytorchvideo", None),
    ])
    rows, rate = model_step.summarise(record)
    assert rate == {"float32": 400.0, "bfloat16": 1000.0}
    float32 = rows[("C2D R50", "float32")]
    # medians 2.5 and 1.25 clips/s; 100 GFLOP a clip at 400 GFLOP/s.
    assert float32["ours"]["gflops"] == pytest.approx(250.0)
    assert float32["ours"]["share"] == pytest.approx(0.625)
    assert float32["peer"]["share"] == pytest.approx(0.3125)
    table = model_step.markdown(record)
    assert ("| C2D R50 | float32 | 2.50 (2.00-3.00) | PyTorchVideo | 1.25 (1.00-1.50) | 2.00x "
            "| 100.0 | 250 (62%) | 125 (31%) |") in table
    assert ("| C2D R50 | bfloat16 | 6.00 (NaN loss) | PyTorchVideo | skipped | - | 100.0 "
            "| 600 (60%) | - |") in table
    assert ("NaN in some round (float32: ours in 0, the peers in 0 of 4 models; bfloat16: ours "
            "in 1, the peers in 0 of 4 models)") in table
    # 62% < 65% in float32: missed, although bfloat16's 60% is over 55%.
    assert "| C2D R50 | 62% | 60% | missed |" in table
    assert "I3D R50 |" not in table
    # One precision measured and under its goal is enough to miss it.
    record["cases"] = [c for c in record["cases"] if c["case"].get("precision") != "bfloat16"]
    assert "| C2D R50 | 62% | not measured | missed |" in model_step.markdown(record)


def test_ours_share_is_of_the_rate_measured_beside_each_round():
    """With the rate each round's process measured after its steps, ours' share
    is the median of the rounds' shares (2 x 100 / 200 and 3 x 100 / 600: 1.0 and
    0.5), not of the round rates' median (400: 62.5%); the peer keeps that."""
    record = _record([_entry("C2D R50", "float32", "ours", [2.0, 3.0]),
                      _entry("C2D R50", "float32", "pytorchvideo", [1.0, 1.5])])
    for result, beside in zip(record["cases"][1]["rounds"], (200.0, 600.0)):
        result["matmul_gflops_beside"] = beside
    rows, _ = model_step.summarise(record)
    row = rows[("C2D R50", "float32")]
    assert row["ours"]["share"] == pytest.approx(0.75)
    assert row["peer"]["share"] == pytest.approx(0.3125)
    table = model_step.markdown(record)
    assert "| 100.0 | 250 (75%) | 125 (31%) |" in table
    assert "those rates, GFLOP/s: float32 200-600)" in table
    assert "| C2D R50 | 75% | not measured | not judged (a precision is missing) |" in table
    # A round without it (an older record): the round rates, as before.
    del record["cases"][1]["rounds"][1]["matmul_gflops_beside"]
    assert model_step.summarise(record)[0][("C2D R50", "float32")]["ours"]["share"] == (
        pytest.approx(0.625))


def test_render_only_leaves_the_readme_alone_with_no_readme(tmp_path, monkeypatch, capsys):
    written = []
    monkeypatch.setattr(model_step, "_write_readme", lambda table: written.append(table) or 0)
    out = tmp_path / "model_step.json"
    out.write_text(json.dumps(_record([_entry("C2D R50", "float32", "ours", [2.0, 3.0])])))
    assert model_step.main(["--render-only", "--out", str(out), "--no-readme"]) == 0
    assert written == [] and "| C2D R50 | float32 | 2.50 (2.00-3.00) |" in capsys.readouterr().out
    assert model_step.main(["--render-only", "--out", str(out)]) == 0
    assert written == [json.loads(out.read_text())["table"]]


def test_a_run_without_the_peers_names_them():
    # main() leaves the README's peer comparison alone when this is not empty.
    record = {"cases": [_entry("C2D R50", "float32", "ours", [2.0]),
                        _entry("C2D R50", "float32", "pytorchvideo", None),
                        _entry("NL-C2D R50 (5 blocks)", "float32", "mmaction2", None)]}
    assert model_step.not_installed(record) == ["mmaction2", "pytorchvideo"]
    record["cases"][1:] = [_entry("C2D R50", "float32", "pytorchvideo", [1.0])]
    assert model_step.not_installed(record) == []


@pytest.mark.slow  # ~35 s on 2 cores: 3 fresh processes importing TF or torch
def test_quick_run(tmp_path):
    out = tmp_path / "model_step.json"
    run = subprocess.run([sys.executable, SCRIPT, "--quick", "--only", "^C2D R50 float32",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads(out.read_text())
    names = [c["name"] for c in record["cases"]]
    assert names == ["matmul 1024^2 float32 and bfloat16", "C2D R50 float32 ours",
                     "C2D R50 float32 pytorchvideo"]
    status = {c["name"]: c["rounds"][0]["status"] for c in record["cases"]}
    peer = "ok" if model_step.installed("pytorchvideo") else "skipped"
    assert status == {**dict.fromkeys(names[:2], "ok"), names[2]: peer}
    ours = record["cases"][1]["rounds"][0]
    assert ours["jit_compile"] is False  # what model.fit runs on a CPU
    assert ours["finite_losses"] and len(ours["losses"]) == 2  # 1 warm-up + 1 timed step
    assert ours["gflop_per_clip"] > 0 and ours["clips_per_s"] > 0
    assert ours["matmul_gflops_beside"] == pytest.approx(sum(ours["matmul_gflops_before_after"]) / 2)
    assert "| C2D R50 | float32 |" in record["table"] and record["table"] in run.stdout
    if peer == "ok":  # the same network: PyTorchVideo's c2d_r50 has our parameter count
        assert record["cases"][2]["rounds"][0]["trainable_params"] == ours["trainable_params"]


def test_render_only_with_no_readme_writes_nothing(tmp_path, capsys):
    """--help says "(with --no-readme: print it only)": the record is not rewritten."""
    out = tmp_path / "model_step.json"
    text = json.dumps(_record([_entry("C2D R50", "float32", "ours", [2.0, 3.0])]))
    out.write_text(text)
    os.chmod(out, 0o444)  # a write would also fail here
    assert model_step.main(["--render-only", "--out", str(out), "--no-readme"]) == 0
    assert out.read_text() == text and os.listdir(tmp_path) == ["model_step.json"]


_usage_error = functools.partial(usage_error, model_step.main)


@pytest.mark.parametrize("argv, says", [
    (["--rounds", "0"], "--rounds"), (["--rounds", "-1"], "--rounds"),
    (["--timeout", "0"], "--timeout"), (["--mem-cap-gb", "0"], "--mem-cap-gb"),
    (["--only", "["], "--only"), (["--only", "no such model"], "no case matches"),
    (["--render-only", "--out", "/nonexistent/model_step.json"], "--out"),
])
def test_usage_errors_come_before_any_measuring(monkeypatch, capsys, argv, says):
    monkeypatch.setattr(model_step, "run_round", lambda *a: pytest.fail("measured"))
    assert says in _usage_error(argv, capsys)


def test_a_bad_out_comes_before_any_measuring(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(model_step, "run_round", lambda *a: pytest.fail("measured"))
    (tmp_path / "afile").write_text("")
    assert "--out" in _usage_error(["--out", str(tmp_path / "afile" / "x.json")], capsys)


def test_a_subset_leaves_the_default_record_alone(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(model_step, "DEFAULT_OUT", str(tmp_path / "model_step.json"))
    monkeypatch.setattr(model_step, "SUBSET_OUT", str(tmp_path / "subset.json"))
    monkeypatch.setattr(model_step, "machine", lambda: {})
    monkeypatch.setattr(model_step, "markdown", lambda record: "TABLE")
    monkeypatch.setattr(model_step, "_write_readme", lambda table: pytest.fail("README"))
    monkeypatch.setattr(model_step, "run_round", lambda selected, order, *a: (
        [{"status": "skipped", "skipped": "not installed"}] * len(selected), [[0.0], [0.0]]))
    assert model_step.main(["--only", "C2D R50 float32", "--rounds", "1"]) == 0
    assert not (tmp_path / "model_step.json").exists()
    assert json.loads((tmp_path / "subset.json").read_text())["only"] == "C2D R50 float32"
    assert str(tmp_path / "subset.json") in capsys.readouterr().out


def test_the_header_names_the_mmaction2_that_was_measured():
    record = _record([_entry("C2D R50", "float32", "ours", [2.0, 3.0])])
    assert "mmaction2 version not recorded," in model_step.markdown(record)
    record["machine"]["mmaction2"] = None
    assert "mmaction2 None," in model_step.markdown(record)
    record["machine"]["mmaction2"] = "9.9.9"
    assert "mmaction2 9.9.9," in model_step.markdown(record)
    assert "1.2.0" not in model_step.markdown(record)
    assert "mmaction2" in model_step.machine()


def test_an_unrecorded_mmaction2_is_the_bench_extras_exact_pin(tmp_path, monkeypatch):
    """Runs from before machine() recorded mmaction2 (results/model_step.json)
    name the version the bench extra pins, and say where it came from."""
    record = _record([_entry("NL-C2D R50 (5 blocks)", "float32", "mmaction2", [1.0])])
    setup = tmp_path / "setup.cfg"
    monkeypatch.setattr(model_step, "SETUP_CFG", str(setup), raising=False)
    setup.write_text("[options.extras_require]\nbench =\n    torch==2.13.0\n    mmaction2==1.2.0\n")
    assert ("mmaction2 1.2.0 (the bench extra's pin; not recorded by this run),"
            in model_step.markdown(record))
    # A recorded version wins; a range or no pin names none; nor does a run without mmaction2.
    assert "mmaction2 9.9.9," in model_step.markdown(
        dict(record, machine=dict(record["machine"], mmaction2="9.9.9")))
    setup.write_text("[options.extras_require]\nbench =\n    mmaction2>=1.2.0\n")
    assert "mmaction2 version not recorded," in model_step.markdown(record)
    setup.unlink()
    assert "mmaction2 version not recorded," in model_step.markdown(record)
    setup.write_text("[options.extras_require]\nbench =\n    mmaction2==1.2.0\n")
    record["cases"][1] = _entry("NL-C2D R50 (5 blocks)", "float32", "mmaction2", None)
    assert "mmaction2 version not recorded," in model_step.markdown(record)


def test_header_says_how_ours_ran_under_bfloat16():
    from nonlocal_keras import cpu

    def header(*flags):  # none given: a record from before the flags were recorded
        record = _record([_entry("C2D R50", "bfloat16", "ours", [6.0, 6.0])])
        for result in record["cases"][1]["rounds"]:
            result.update({"tf_xla_flags": f for f in flags})
        return model_step.markdown(record).split("\n\n")[1]

    fused = "pointwise ops compiled by XLA, as `nonlocal-train` asks for"
    assert fused in header(cpu.FUSE_POINTWISE_FLAGS)
    assert fused not in header() and "TF_XLA_FLAGS" not in header()
    assert "(TF_XLA_FLAGS: '')" in header("")  # a user's own value, turning them off
    assert "(TF_XLA_FLAGS unset: no XLA)" in header(None)  # where a GPU is

"""benchmarks/profile_step.py: a tiny profiled step and its op and layer attribution."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import profile_step  # noqa: E402


@pytest.mark.parametrize("name, layer, family", [
    ("c2d_resnet50_1/res2_0_branch2a_1/MatMul:_MklMatMul", "res2_0_branch2a", "conv"),
    ("gradient_tape/c2d_resnet50_1/res5_2_branch2b_1/convolution/Conv3DBackpropFilterV2:"
     "_MklNativeConv3DBackpropFilterV2", "res5_2_branch2b", "conv"),
    ("c2d_resnet50_1/res3_0_branch1_bn_1/FusedBatchNormV3:_MklNativeFusedBatchNormV3",
     "res3_0_branch1_bn", "bn"),
    ("c2d_resnet50_1/conv1_1/convolution:_MklNativeConv3D", "conv1", "conv"),
])
def test_profiler_names_are_attributed_to_layers(name, layer, family):
    assert profile_step._LAYER.search(name).group(1) == layer
    assert profile_step._family(name.rsplit(":", 1)[1]) == family


@pytest.mark.slow  # ~30 s on 2 cores: builds, traces and profiles a ResNet-50
def test_tiny_profiled_step(capsys):
    profile_step.main(["--size", "32", "--warmup", "1", "--steps", "1", "--profile",
                       "--top", "60"])
    out = capsys.readouterr().out
    assert "c2d_resnet50 8x32x32 batch 2 float32" in out
    # Every convolution layer of ResNet-50 got some op time (pointwise ones through MatMul).
    convs = [line for line in out.splitlines() if "GFLOP/s" in line and "_branch" in line]
    assert len(convs) == 52
    assert all(float(line.split()[1]) > 0 for line in convs)


def test_step_line_names_the_xla_flags(monkeypatch):
    from nonlocal_keras import cpu

    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    assert profile_step._xla_flags() == ""
    monkeypatch.setenv("TF_XLA_FLAGS", "")
    assert profile_step._xla_flags() == ""
    monkeypatch.setenv("TF_XLA_FLAGS", cpu.FUSE_POINTWISE_FLAGS)
    assert profile_step._xla_flags() == " (XLA pointwise clusters)"
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=1")
    assert profile_step._xla_flags() == " (TF_XLA_FLAGS=--tf_xla_auto_jit=1)"

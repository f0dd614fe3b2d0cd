"""oneDNN for the console scripts, and what the CPU computes in (nonlocal_keras.cpu)."""

import os
import platform
import subprocess
import sys

import pytest

from nonlocal_keras import cpu


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_onednn_is_asked_for_on_x86_64(machine):
    environ = {}
    assert cpu.use_onednn(environ, machine) == "1"
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}


def test_onednn_left_to_the_user_and_to_other_cpus():
    environ = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert cpu.use_onednn(environ, "x86_64") == "0"
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    environ = {}
    assert cpu.use_onednn(environ, "aarch64") is None
    assert environ == {}


def _onednn_in_a_console_process(environ):
    # What a console script does before TensorFlow loads, then TensorFlow's own answer.
    code = ("from nonlocal_keras import console; console._prepare_tensorflow(); "
            "from tensorflow.python.util import _pywrap_util_port as port; "
            "print(port.IsMklEnabled())")
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout.split()[-1]


@pytest.mark.skipif(platform.machine().lower() not in cpu.X86_64, reason="x86-64 only")
def test_console_scripts_start_tensorflow_with_onednn():
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    assert _onednn_in_a_console_process(environ) == "True"
    assert _onednn_in_a_console_process(dict(environ, TF_ENABLE_ONEDNN_OPTS="0")) == "False"


def test_pointwise_fusion_is_asked_for_where_no_gpu_is():
    environ = {}
    assert cpu.fuse_pointwise_ops(environ, gpu=False) == cpu.FUSE_POINTWISE_FLAGS
    assert environ == {"TF_XLA_FLAGS": cpu.FUSE_POINTWISE_FLAGS}
    assert "--tf_xla_ops_to_cluster=PW" in cpu.FUSE_POINTWISE_FLAGS


def test_pointwise_fusion_left_to_the_user_and_to_gpus():
    for value in ("", "--tf_xla_auto_jit=-1"):  # empty: the user's way to turn it off
        environ = {"TF_XLA_FLAGS": value}
        assert cpu.fuse_pointwise_ops(environ, gpu=False) == value
        assert environ == {"TF_XLA_FLAGS": value}
    environ = {}
    assert cpu.fuse_pointwise_ops(environ, gpu=True) is None
    assert environ == {}


def test_gpu_visible(tmp_path):
    device = tmp_path / "nvidia0"
    device.write_text("")
    missing = str(tmp_path / "kfd")
    assert cpu.gpu_visible({}, (missing, str(device))) is True
    assert cpu.gpu_visible({"CUDA_VISIBLE_DEVICES": "0"}, (str(device),)) is True
    for hidden in ("", "-1", " -1 "):
        assert cpu.gpu_visible({"CUDA_VISIBLE_DEVICES": hidden}, (str(device),)) is False
    assert cpu.gpu_visible({}, (missing,)) is False
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").write_text("")  # the driver's control device, no GPU's
    assert cpu.gpu_visible({}, (str(dev / "nvidia[0-9]*"),)) is False
    (dev / "nvidia3").write_text("")  # a container given the fourth GPU only
    assert cpu.gpu_visible({}, (str(dev / "nvidia[0-9]*"),)) is True


def test_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n"
                    "flags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu\n")
    assert cpu.cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu.cpu_flags(str(tmp_path / "missing")) is None
    info.write_text("processor\t: 0\n")
    assert cpu.cpu_flags(str(info)) is None


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "avx512f"}, False),
    ({"avx512f", "avx512_bf16"}, True),
    ({"amx_tile", "amx_bf16"}, True),
    ({"avx2", "avx512_vnni"}, False),
])
def test_computes_in_bfloat16(flags, native):
    assert cpu.computes_in_bfloat16(flags) is native


@pytest.mark.parametrize("flags, takes", [
    ({"avx2", "fma"}, False),              # AVX2 only (AMD Zen 1-3): Eigen's bfloat16 ops
    ({"avx2", "avx512f"}, True),
    ({"avx2", "avx_ne_convert"}, True),
])
def test_onednn_takes_bfloat16(flags, takes):
    assert cpu.onednn_takes_bfloat16(flags) is takes


@pytest.mark.parametrize("policy, native, warned", [
    ("float32", False, False),
    ("mixed_bfloat16", True, False),
    ("mixed_bfloat16", False, True),
    ("mixed_float16", True, True),
])
def test_training_warns_of_a_precision_slower_than_float32(policy, native, warned, caplog):
    import tensorflow as tf

    from nonlocal_keras.training import runtime

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the warning is for CPUs")
    message = runtime.warn_if_slow_precision(policy, tf.distribute.get_strategy(), native)
    assert (message is not None) is warned
    if warned:
        assert f"runtime.precision={policy}" in message and "float32" in message
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [message]

"""What the CPU offers TensorFlow, read without loading TensorFlow.

TensorFlow 2.20 turns its oneDNN kernels on by default only on x86 CPUs with
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX, and reads `TF_ENABLE_ONEDNN_OPTS`
once, when it loads. On a CPU with AVX2 only (AMD Zen 1-3, Intel before
Cascade Lake) the default is Eigen's kernels, and a C2D ResNet-50 trained in
float32 at 0.46 clips/s against 0.79 with oneDNN (`benchmarks/model_step.py`,
README "Training on a CPU"). The console scripts, the tests and the benchmarks
ask for oneDNN first.
"""

import glob
import os
import platform

X86_64 = ("x86_64", "amd64")
# Instructions that compute in bfloat16; without them TensorFlow converts each
# operand to float32 and back, which is slower than float32 itself.
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
# TensorFlow's oneDNN kernels take bfloat16 tensors only with one of these;
# elsewhere its bfloat16 ops are Eigen's ("oneDNN supports DT_BFLOAT16 only on
# platforms with AVX-512").
ONEDNN_BFLOAT16_FLAGS = ("avx512f", "avx_ne_convert")


def use_onednn(environ=None, machine=None):
    """Ask TensorFlow for its oneDNN kernels on x86-64, unless the user chose.

    Has an effect only before TensorFlow is imported. Returns the value
    `TF_ENABLE_ONEDNN_OPTS` has afterwards (None where it stays unset).
    """
    environ = os.environ if environ is None else environ
    if (machine or platform.machine()).lower() in X86_64:
        environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    return environ.get("TF_ENABLE_ONEDNN_OPTS")


def cpu_flags(path="/proc/cpuinfo"):
    """The first CPU's feature flags as a set, or None where they cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def computes_in_bfloat16(flags=None):
    """True or False where the flags say, None where they cannot be read."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return any(flag in flags for flag in BFLOAT16_FLAGS)


def onednn_takes_bfloat16(flags=None):
    """True or False where the flags say, None where they cannot be read."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return any(flag in flags for flag in ONEDNN_BFLOAT16_FLAGS)


# XLA's autoclustering limited to pointwise operations (TensorFlow's `PW` set:
# ReLU and its gradient, adds, casts, ...), clusters of any size, on the CPU:
# the convolutions, products and batch norms stay oneDNN's, and each chain of
# elementwise ops between them becomes one compiled kernel. TensorFlow's own
# bfloat16 ReLU, ReLU gradient and adds take two to three times their float32
# time: with these flags the mixed_bfloat16 video ResNet-50s trained 10-17%
# more clips a second (Intel Xeon with AMX, 2 cores; README "Training on a
# CPU"). float32 gained nothing clear: they are asked for under bfloat16 only.
FUSE_POINTWISE_FLAGS = ("--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit "
                        "--tf_xla_ops_to_cluster=PW --tf_xla_min_cluster_size=1")
# Where a GPU is, TensorFlow's autoclustering would cluster its ops too, which
# was not measured: the flags are not asked for there.
_GPU_PATHS = ("/proc/driver/nvidia/gpus", "/dev/nvidia[0-9]*", "/dev/kfd")


def gpu_visible(environ=None, paths=_GPU_PATHS):
    """Whether TensorFlow may find a GPU here, read without loading it: an NVIDIA
    or AMD driver's device, unless `CUDA_VISIBLE_DEVICES` hides every one."""
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return any(glob.glob(path) for path in paths)


def fuse_pointwise_ops(environ=None, gpu=None):
    """Ask TensorFlow to compile chains of pointwise ops with XLA on the CPU
    (`FUSE_POINTWISE_FLAGS`), unless the user set `TF_XLA_FLAGS` (any value,
    empty too) or a GPU is visible.

    TensorFlow reads `TF_XLA_FLAGS` once, at its first op: call this before
    anything runs (importing TensorFlow is fine). Returns the value
    `TF_XLA_FLAGS` has afterwards (None where it stays unset).
    """
    environ = os.environ if environ is None else environ
    if not (gpu_visible(environ) if gpu is None else gpu):
        environ.setdefault("TF_XLA_FLAGS", FUSE_POINTWISE_FLAGS)
    return environ.get("TF_XLA_FLAGS")

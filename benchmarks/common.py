"""Shapes, analytic FLOP counts and the machine description shared by the benchmark scripts."""

import os
import platform
import time

from nonlocal_keras import cpu

# TensorFlow as the console scripts start it, oneDNN's kernels on x86-64
# (nonlocal_keras.cpu), in this process and the workers it starts;
# TF_ENABLE_ONEDNN_OPTS=0 measures TensorFlow's default where that is Eigen's.
cpu.use_onednn()

# name: (channels, (T, H, W), inner channels, pool window). The paper's res4
# and res3 placements in a C2D ResNet-50 on 8 x 224 x 224 clips, a long clip
# (32 frames at res2's 56 x 56), and res2 itself on 8 frames.
SHAPES = {
    "res4": (1024, (8, 14, 14), 512, (1, 2, 2)),
    "res3": (512, (8, 28, 28), 256, (1, 2, 2)),
    "long_clip": (256, (32, 56, 56), 128, (1, 2, 2)),
    # Where the plain path still fits in memory but the chunked one already
    # takes over ("auto"): the memory of both is measured, not bounded.
    "res2": (256, (8, 56, 56), 128, (1, 2, 2)),
}
BATCH = 1
THREADS = 2
# profile_block.py sets 1 (no two kernels then share the cores).
INTER_OP_THREADS = THREADS


def alternate(calls, warmup, repeats):
    """{name: [seconds]} of each call, timed in turn, each round back to back:
    other jobs on the cores then slow every call alike, and per-round ratios
    of two calls are the figures to compare."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def positions(shape):
    _, (t, h, w), _, (pt, ph, pw) = SHAPES[shape]
    return t * h * w, (t // pt) * (h // ph) * (w // pw)


def block_flops(shape, batch=BATCH, precision=None):
    """Multiply-adds x 2 of one forward of the block.

    precision None: the plain order, as the peers compute it (theta on every
    position; phi and g after pooling; the two N_q x N_k products; W_z).
    "float32" / "mixed_bfloat16": what this package computes in that policy,
    with the ends that `nonlocal_math.reassociates` picks done in the
    reassociated order (under mixed precision only the W_z end, see there).
    Pooling, softmax and batch norm are left out (not matmuls). A backward
    costs two forwards' worth of matmuls, so fwd+bwd = 3 x this.
    """
    from nonlocal_keras import nonlocal_math

    channels, _, inner, _ = SHAPES[shape]
    n_q, n_k = positions(shape)
    entries = n_q * n_k
    plain_end = n_q * channels * inner + entries * inner
    reassociated_end = n_k * inner * channels + entries * channels
    ends = [plain_end, plain_end]  # theta + logits, aggregation + W_z
    if precision and nonlocal_math.reassociates(channels, inner, n_q, n_k, entries):
        ends = [plain_end if precision != "float32" else reassociated_end, reassociated_end]
    macs = 2 * n_k * channels * inner + sum(ends)  # phi, g, the two ends
    return 2 * macs * batch


def naive_affinity_bytes(shape, batch=BATCH):
    """float32 logits plus their softmax: what the plain path holds at once."""
    n_q, n_k = positions(shape)
    return 2 * 4 * n_q * n_k * batch


def machine():
    """CPU model, cores, memory, and the versions of what was measured."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f
                                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = cpu.cpu_flags()
    if flags is not None:
        info.update({flag: flag in flags for flag in ("avx512f",) + cpu.BFLOAT16_FLAGS})
    info["TF_ENABLE_ONEDNN_OPTS"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    from importlib import metadata

    for package in ("tensorflow", "keras", "numpy", "torch", "mmcv-lite", "pytorchvideo"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info

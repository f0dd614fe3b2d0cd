"""Shapes, analytic FLOP counts and the machine description shared by the benchmark scripts,
and the argument types and the atomic file writer of their command lines."""

import argparse
import json
import os
import platform
import re
import tempfile
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


# --- command lines: argument types, output paths, atomic writes ---------------
# Kept free of TensorFlow: gpu.py imports this module on a machine without it.

def _int_at_least(least, expected):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


# argparse types: a count (rounds, repeats, steps, batch...) of at least 1, and
# one that may be 0 (warm-up steps).
positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def positive_float(text):
    """argparse type: a size or a duration above 0 (a cap of 0 GB kills every case)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def regex(text):
    """argparse type: a regular expression, compiled here so that a bad one is a usage error."""
    try:
        re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a valid regular expression: {text!r} ({error})")
    return text


def check_output(parser, option, path):
    """Exits with a usage error unless `path` can be written as a file: found
    before the measuring (which takes minutes to hours), not after it."""
    if path.endswith(os.sep) or os.path.isdir(path):
        parser.error(f"argument {option}: {path!r} is a folder, expected a file path")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        parser.error(f"argument {option}: cannot write {path!r}: {existing!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"argument {option}: cannot write {path!r}: {existing!r} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        parser.error(f"argument {option}: {path!r} is not writable")


def write_text(path, text):
    """Writes `text` to `path` atomically: a temporary file in the same folder,
    then os.replace, so that an interrupted or failed write (a full disk, a
    file size limit) leaves the earlier file whole instead of half a new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):  # mkstemp makes it 0600; keep the file's own mode
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def write_json(path, record):
    write_text(path, json.dumps(record, indent=1))


class Terminated(Exception):
    """SIGTERM, raised in the main thread: subprocess.run then kills the
    running case's process on its way out, where the default action would
    leave it running on (reparented to init) after its parent is gone."""


def _terminate(signum, frame):
    raise Terminated()


def run_cli(main, argv=None):
    """Runs `main(argv)` and exits with its status: one line and 130 on Ctrl-C
    (instead of a traceback), 143 on SIGTERM, each after the child processes
    the script started were killed; 141 without a word when the pipe it
    printed into was closed."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, _terminate)
    # Also where SIGINT came ignored (a background job of a script, pytest-xdist's
    # workers): the console commands take Ctrl-C that way too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    prog = os.path.basename(sys.argv[0])
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        code = 143
    except BrokenPipeError:
        # `report.py | head`: the reader has what it wanted. The shell's status
        # of a writer SIGPIPE ends, quietly, as `cat` has; the interpreter's
        # last flush would fail again, so the stream goes to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code if isinstance(code, int) else 0)


def check_revision(parser, revision, paths=(), root=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))):
    """Exits with a usage error unless git knows `revision` as a commit and
    each of `paths` is a file there, before minutes of building and timing."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)

    found = git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if found.returncode != 0:
        detail = found.stderr.strip().splitlines()[-1:] or ["not a commit git knows"]
        parser.error(f"argument REVISION: {revision!r}: {detail[0]}")
    for path in paths:
        if git("cat-file", "-e", f"{revision}:{path}").returncode != 0:
            parser.error(f"argument REVISION: {revision!r} has no {path}")

"""A/B of the block's tf.function fwd+bwd: a git revision's nonlocal_math against this tree's.

    .venv/bin/python benchmarks/ab_block.py SHAPE PRECISION REVISION [REPEATS]

Both versions of `nonlocal_keras/nonlocal_math.py` drive the same layer (same
weights, same input) in one process, and are timed alternately, each pair
back to back, so that other jobs on the cores slow both alike; prints the
medians and the median of the per-pair ratios (new / old). The matmuls alone
(worker.py `matmuls_only`) are timed after, in the same process.
"""

import argparse
import atexit
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import worker  # noqa: E402  (sets the thread counts and the backend)
import common  # noqa: E402

MATH = "nonlocal_keras/nonlocal_math.py"
# Keras' policy names; the benchmarks measure float32 and mixed_bfloat16.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")


def add_block_arguments(parser):
    """SHAPE PRECISION REVISION, as ab_block.py and ab_memory.py take them."""
    parser.add_argument("shape", metavar="SHAPE", choices=tuple(common.SHAPES),
                        help="one of " + ", ".join(common.SHAPES))
    parser.add_argument("precision", metavar="PRECISION", choices=PRECISIONS,
                        help="a Keras dtype policy: " + ", ".join(PRECISIONS))
    parser.add_argument("revision", metavar="REVISION",
                        help=f"a git revision whose {MATH} is the old one")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_block_arguments(parser)
    parser.add_argument("repeats", metavar="REPEATS", nargs="?", type=common.positive_int,
                        default=10, help="timed pairs (default 10)")
    args = parser.parse_args(argv)
    common.check_revision(parser, args.revision, [MATH])
    return args


def old_module(revision, path=MATH):
    """The module at `path` (in the repository) as it was at `revision`."""
    source = subprocess.run(
        ["git", "-C", os.path.dirname(HERE), "show", f"{revision}:{path}"],
        capture_output=True, text=True, check=True).stdout
    name = os.path.splitext(os.path.basename(path))[0] + "_old"
    folder = tempfile.mkdtemp(prefix="ab-")
    # Kept until the process ends: autograph reads the source of what it converts.
    atexit.register(shutil.rmtree, folder, True)
    path = os.path.join(folder, name + ".py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def block_and_input(shape, precision, batch=common.BATCH):
    """A NonLocal3D layer at `shape` (built, gamma 1) and a random input for it."""
    tf = worker._tensorflow()
    import keras

    from nonlocal_keras.layers import NonLocal3D

    channels, (t, h, w), inner, pool = common.SHAPES[shape]
    dtype = keras.mixed_precision.Policy(precision).compute_dtype
    x = tf.cast(tf.random.normal((batch, t, h, w, channels)), dtype)
    layer = NonLocal3D(inter_channels=inner, pool_size=pool, dtype=precision)
    layer.build(x.shape)
    layer.bn.gamma.assign(tf.ones_like(layer.bn.gamma))
    return layer, x


def traced(layer, x, module):
    """The layer's fwd+bwd as a tf.function traced with `module` as its
    nonlocal_math (the layer looks the module up when tracing), as a call
    that waits for the result."""
    tf = worker._tensorflow()
    from nonlocal_keras.layers import base_nonlocal

    saved, base_nonlocal.nonlocal_math = base_nonlocal.nonlocal_math, module

    @tf.function
    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x, training=True), tf.float32))
        return tape.gradient(loss, [x] + [v.value for v in layer.trainable_weights])

    try:
        train.get_concrete_function(x)
    finally:
        base_nonlocal.nonlocal_math = saved
    return lambda: float(tf.reduce_sum(tf.cast(train(x)[0][:1], tf.float32)))


def main(argv=None):
    args = parse_args(argv)
    shape, precision, revision, repeats = args.shape, args.precision, args.revision, args.repeats
    from nonlocal_keras import nonlocal_math

    layer, x = block_and_input(shape, precision)
    calls = {"old": traced(layer, x, old_module(revision)),
             "new": traced(layer, x, nonlocal_math)}
    times = common.alternate(calls, 2, repeats)
    ratios = [n / o for n, o in zip(times["new"], times["old"])]
    alone = worker.matmuls_only({"shape": shape, "precision": precision, "warmup": 2,
                                 "repeats": repeats})["fwdbwd"]
    print(f"{shape} {precision}: old ({revision}) {statistics.median(times['old']) * 1e3:.1f} ms, "
          f"new {statistics.median(times['new']) * 1e3:.1f} ms (medians of {repeats}); "
          f"per-pair new/old median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}); matmuls alone "
          f"{alone['median_s'] * 1e3:.1f} ms; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Time one training step of a video ResNet-50 and say where its time goes.

    .venv/bin/python benchmarks/profile_step.py                       # C2D, 8x224x224, batch 2
    .venv/bin/python benchmarks/profile_step.py --arch i3d --nonlocal-blocks 5 --profile
    .venv/bin/python benchmarks/profile_step.py --size 112 --steps 3  # a quick proxy
    .venv/bin/python benchmarks/profile_step.py --plain-conv3d        # before VideoConv3D

The step is what `model.fit` runs: `compile(worker.sgd())` (nonlocal-train's SGD) and
`train_on_batch`, 2 TensorFlow threads (intra- and inter-op). It prints the
median step time (and the process's CPU time, which other processes on the
same cores disturb less), clips/s and the share of the `tf.matmul` rate that
the step's FLOPs (3x the forward's, counted by `count_flops`) reach. With
`--profile` it also traces two steps with `tf.profiler` and prints the time
of each TensorFlow op type (summed over the host threads that run ops) and
its share: the table benchmarks/README.md quotes.
"""

import argparse
import collections
import glob
import math
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (asks for oneDNN before TensorFlow loads, as the CLIs do)
from nonlocal_keras import cpu  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("c2d", "i3d"), default="c2d")
    parser.add_argument("--nonlocal-blocks", type=common.non_negative_int, default=0)
    parser.add_argument("--batch", type=common.positive_int, default=2)
    parser.add_argument("--frames", type=common.positive_int, default=8)
    parser.add_argument("--size", type=common.positive_int, default=224)
    parser.add_argument("--warmup", type=common.non_negative_int, default=2)
    parser.add_argument("--steps", type=common.positive_int, default=5)
    parser.add_argument("--threads", type=common.positive_int, default=2, help="intra-op threads")
    parser.add_argument("--inter-op-threads", type=common.positive_int, default=None,
                        help="inter-op threads (default: --threads)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--jit", action="store_true", help="compile(jit_compile=True)")
    parser.add_argument("--plain-conv3d", action="store_true",
                        help="every convolution as Keras' Conv3D (the models before VideoConv3D)")
    parser.add_argument("--profile", action="store_true", help="print time per op type")
    parser.add_argument("--top", type=common.positive_int, default=20, help="op types to print")
    return parser.parse_args(argv)


def build(args):
    import keras

    from nonlocal_keras.applications import C2DResNet50, I3DResNet50
    from nonlocal_keras.applications.video_resnet_conv import VideoConv3D

    import worker

    if args.plain_conv3d:
        VideoConv3D.convolution_op = keras.layers.Conv3D.convolution_op
    keras.mixed_precision.set_global_policy(args.precision)
    constructor = {"c2d": C2DResNet50, "i3d": I3DResNet50}[args.arch]
    model = constructor(input_shape=(args.frames, args.size, args.size, 3), classes=400,
                        nonlocal_blocks=args.nonlocal_blocks)
    model.compile(optimizer=worker.sgd(), loss="sparse_categorical_crossentropy",
                  jit_compile=args.jit)
    return model


# Host events that contain op events (the executor's, a function call).
_CONTAINERS = {"Process", "Run"}


def op_events(logdir):
    """(op name, op type, seconds) of every executed op the trace in `logdir` holds,
    from the events of every host thread."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as file:
            space.ParseFromString(file.read())
        for plane in space.planes:
            if plane.name != "/host:CPU":
                continue
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    # Executor op events are named "layer/op:OpType"; the
                    # rest (function calls, Python) hold those and would
                    # count them twice.
                    kind = name.rsplit(":", 1)[-1].strip()
                    if ":" not in name or kind in _CONTAINERS or kind.startswith("__"):
                        continue
                    yield name.rsplit(":", 1)[0], kind, event.duration_ps * 1e-12


def trace(call, calls):
    """`op_events` of `calls` calls of `call`, traced with `tf.profiler`."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            call()
        tf.profiler.experimental.stop()
        return list(op_events(logdir))


def op_times(events):
    """Seconds per op type of `op_events`, and per (layer, family) of the model's
    convolution and BN layers."""
    totals, layers = collections.Counter(), collections.Counter()
    for name, kind, seconds in events:
        totals[kind] += seconds
        layer = _LAYER.search(name)
        if layer:
            layers[layer.group(1), _family(kind)] += seconds
    return totals, layers


# "model_1/res2_0_branch2a_1/convolution:..." and its gradients' names.
_LAYER = re.compile(r"/((?:res\d_\d+_(?:branch1|branch2[abc])|conv1|res_conv1)(?:_bn)?)_\d+/")


def _family(kind):
    # A VideoConv3D's pointwise kernel runs as MatMul: a convolution still.
    return ("conv" if "Conv" in kind or "MatMul" in kind
            else "bn" if "BatchNorm" in kind else "other")


def conv_rates(model, layers, batch, steps):
    """(layer, ms a step, GFLOP/s) of each convolution, slowest first."""
    import keras

    rows = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv3D):
            continue
        seconds = layers[layer.name, "conv"] / steps
        # fwd + 2 gradients, 2 FLOPs a multiply-add.
        flop = 6 * batch * math.prod(layer.output.shape[1:]) * math.prod(
            layer.kernel.shape[:-1])
        rows.append((layer.name, seconds * 1e3, flop / seconds / 1e9 if seconds else 0.0))
    return sorted(rows, key=lambda row: -row[1])


def _xla_flags():
    flags = os.environ.get("TF_XLA_FLAGS")
    if not flags:
        return ""
    if flags == cpu.FUSE_POINTWISE_FLAGS:
        return " (XLA pointwise clusters)"
    return f" (TF_XLA_FLAGS={flags})"


def main(argv=None):
    args = parse_args(argv)
    if args.precision == "mixed_bfloat16":
        cpu.fuse_pointwise_ops()  # what nonlocal-train asks for, before TensorFlow's first op
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads or args.threads)
    except RuntimeError:  # TensorFlow already runs in this process (a test): its threads stay
        pass
    from nonlocal_keras.utils import count_flops

    model = build(args)
    x = tf.random.normal((args.batch, args.frames, args.size, args.size, 3))
    y = tf.zeros((args.batch,), tf.int32)
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    step = statistics.median(times)
    gflop = 3 * 2 * count_flops(model) / 1e9
    # This machine's tf.matmul rate, measured now with the step's threads (the
    # machines differ: issue 15's goals are shares of the rate where the step runs).
    import worker

    dtype = "bfloat16" if args.precision == "mixed_bfloat16" else "float32"
    peak = worker.matmul({"size": 4096, "dtype": dtype, "warmup": 1,
                          "repeats": 5})["matmul"]["gflops"]
    rate = gflop * args.batch / step
    print(f"{model.name} {args.frames}x{args.size}x{args.size} batch {args.batch} "
          f"{args.precision}{' xla' if args.jit else ''}{_xla_flags()}: step {step * 1e3:.0f} ms "
          f"(min {min(times) * 1e3:.0f}; CPU time {statistics.median(cpu_times) * 1e3:.0f}), "
          f"{args.batch / step:.2f} clips/s, "
          f"{gflop:.1f} GFLOP/clip, {rate:.0f} GFLOP/s = "
          f"{100 * rate / peak:.0f}% of tf.matmul ({peak:.0f} GFLOP/s, measured now)")
    if args.profile:
        totals, layers = op_times(trace(lambda: model.train_on_batch(x, y), 2))
        whole = sum(totals.values())
        print(f"op time per step {whole / 2 * 1e3:.0f} ms (summed over threads)")
        for name, seconds in totals.most_common(args.top):
            print(f"  {name:32s} {seconds / 2 * 1e3:8.1f} ms  {100 * seconds / whole:5.1f}%")
        bn = sum(t for (_, family), t in layers.items() if family == "bn")
        print(f"BN layers {bn / 2 * 1e3:.0f} ms a step; convolutions (fwd + both gradients):")
        for name, ms, gflops in conv_rates(model, layers, args.batch, 2)[:args.top]:
            print(f"  {name:24s} {ms:7.1f} ms  {gflops:5.0f} GFLOP/s")


if __name__ == "__main__":
    sys.exit(main())

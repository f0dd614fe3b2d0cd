"""A/B of a whole training step: a git revision's layer class against this tree's.

    .venv/bin/python benchmarks/ab_step.py ARCH PRECISION REVISION [REPEATS [CLASS]]
    .venv/bin/python benchmarks/ab_step.py c2d mixed_bfloat16 d1a6c71~ 8
    .venv/bin/python benchmarks/ab_step.py c2d float32 HEAD 8 FusedBatchNormalization
    .venv/bin/python benchmarks/ab_step.py i3d float32 keras 20 ConcatenatedZeroPadding3D

Two copies of the same video ResNet-50 (ARCH c2d or i3d, no non-local block,
batch 2 x 8x224x224, 400 classes, `compile(SGD(0.01, momentum=0.9))`), the
same weights; in the "old" one every layer of CLASS (`VideoConv3D`, the
default, `FusedBatchNormalization` or `ConcatenatedZeroPadding3D`) is that class as its file was at
REVISION; REVISION `keras` takes the Keras layer ours replaced
(`ConcatenatedZeroPadding3D`: `keras.layers.ZeroPadding3D`). Their `train_on_batch`
steps are timed alternately in one process (2 warm-up steps each), so that
other jobs on the cores slow both alike; prints the medians and the median
of the per-pair ratios (new / old).
"""

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import worker  # noqa: E402  (sets the thread counts and the backend)
import common  # noqa: E402
from ab_block import PRECISIONS, old_module  # noqa: E402

FILES = {"VideoConv3D": "applications/video_resnet_conv.py",
         "FusedBatchNormalization": "nonlocal_keras/layers/fused_batch_normalization.py",
         "ConcatenatedZeroPadding3D": "applications/video_resnet_conv.py"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", metavar="ARCH", choices=("c2d", "i3d"), help="c2d or i3d")
    parser.add_argument("precision", metavar="PRECISION", choices=PRECISIONS,
                        help="a Keras dtype policy: " + ", ".join(PRECISIONS))
    parser.add_argument("revision", metavar="REVISION",
                        help="a git revision whose CLASS is the old one, or keras")
    parser.add_argument("repeats", metavar="REPEATS", nargs="?", type=common.positive_int,
                        default=8, help="timed pairs (default 8)")
    parser.add_argument("layer_class", metavar="CLASS", nargs="?", choices=tuple(FILES),
                        default="VideoConv3D", help="one of " + ", ".join(FILES))
    args = parser.parse_args(argv)
    if args.revision != "keras":
        common.check_revision(parser, args.revision, [FILES[args.layer_class]])
    return args


def main(argv=None):
    args = parse_args(argv)
    arch, precision, revision = args.arch, args.precision, args.revision
    repeats, layer_class = args.repeats, args.layer_class
    tf = worker._tensorflow()
    import keras

    from nonlocal_keras.applications import C2DResNet50, I3DResNet50
    from nonlocal_keras.applications.video_resnet_conv import ConcatenatedZeroPadding3D, VideoConv3D
    from nonlocal_keras.layers import FusedBatchNormalization

    current = {"VideoConv3D": VideoConv3D, "FusedBatchNormalization": FusedBatchNormalization,
               "ConcatenatedZeroPadding3D": ConcatenatedZeroPadding3D}[layer_class]
    # The old class is built unregistered: this tree's class holds its name.
    register = keras.saving.register_keras_serializable
    keras.saving.register_keras_serializable = lambda *args, **kwargs: (lambda cls: cls)
    try:
        old = (current.__base__ if revision == "keras"
               else getattr(old_module(revision, FILES[layer_class]), layer_class))
    finally:
        keras.saving.register_keras_serializable = register
    keras.mixed_precision.set_global_policy(precision)
    constructor = {"c2d": C2DResNet50, "i3d": I3DResNet50}[arch]
    new = constructor(input_shape=(8, 224, 224, 3), classes=400, nonlocal_blocks=0)

    def with_old_class(layer):
        cls = old if isinstance(layer, current) else layer.__class__
        return cls.from_config(layer.get_config())

    models = {"old": keras.models.clone_model(new, clone_function=with_old_class), "new": new}
    models["old"].set_weights(new.get_weights())
    for model in models.values():
        model.compile(optimizer=worker.sgd(), loss="sparse_categorical_crossentropy")
    x = tf.random.normal((2, 8, 224, 224, 3))
    y = tf.zeros((2,), tf.int32)
    calls = {name: (lambda m=model: m.train_on_batch(x, y)) for name, model in models.items()}
    times = common.alternate(calls, 2, repeats)
    ratios = [n / o for n, o in zip(times["new"], times["old"])]
    old_ms, new_ms = (statistics.median(times[k]) * 1e3 for k in ("old", "new"))
    print(f"{arch} {precision} {layer_class}: old ({revision}) {old_ms:.0f} ms, "
          f"new {new_ms:.0f} ms a step (medians of {repeats}); "
          f"per-pair new/old median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

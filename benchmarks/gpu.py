"""The non-local block and one video ResNet training step on JAX or PyTorch (a GPU if any).

For the lent GPU machine, which has JAX and PyTorch but no TensorFlow: the
package is imported from this source tree (nothing installed), the backend is
KERAS_BACKEND's. Prints one JSON line per case and writes them all to --out.

    KERAS_BACKEND=jax   python benchmarks/gpu.py --out gpu_jax.json
    KERAS_BACKEND=torch python benchmarks/gpu.py --out gpu_torch.json
    KERAS_BACKEND=jax   python benchmarks/gpu.py --quick     # tiny shapes, any CPU

Cases: the block at the paper's res3/res4 shapes (`common.SHAPES`, batch 8),
forward (inference) and training step (forward, gradients of a mean square
loss and an SGD update: `train_on_batch`), float32 and mixed_bfloat16; then one
`train_on_batch` of C2D and NL C2D ResNet-50 (5 blocks) on 8x224x224 clips,
float32 and mixed_bfloat16.
Keras compiles both calls (jit on JAX; eager on PyTorch). Times are the median
of --repeats after --warmup calls; each call ends in a device-to-host copy
(of the forward's output averaged over the positions, of the loss for a step),
which synchronises.
"""

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _import_from_source_tree():
    """`nonlocal_keras` and its `applications` from ROOT, as setup.cfg maps them."""
    sys.path.insert(0, ROOT)
    spec = importlib.util.spec_from_file_location(
        "nonlocal_keras.applications", os.path.join(ROOT, "applications", "__init__.py"),
        submodule_search_locations=[os.path.join(ROOT, "applications")])
    import nonlocal_keras

    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    nonlocal_keras.applications = module
    spec.loader.exec_module(module)


def _median_time(call, warmup, repeats):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _block_cases(args):
    import keras
    import numpy as np

    import common
    from nonlocal_keras.layers import NonLocal3D

    shapes = {"tiny": (32, (4, 8, 8), 16, (1, 2, 2))} if args.quick else {
        name: common.SHAPES[name] for name in ("res4", "res3")}
    for name, (channels, positions, inner, pool) in shapes.items():
        for policy in ("float32", "mixed_bfloat16"):
            keras.config.set_dtype_policy(policy)
            inputs = keras.Input(positions + (channels,))
            block = NonLocal3D(inter_channels=inner, pool_size=pool)
            model = keras.Model(inputs, block(inputs))
            model.compile(optimizer="sgd", loss="mse")
            # The forward's output pooled on the device: copying the whole output
            # to the host took longer than the training step (stop 29's figures).
            pooled = keras.Model(inputs, keras.layers.GlobalAveragePooling3D()(block(inputs)))
            x = np.random.default_rng(0).normal(
                size=(args.batch,) + positions + (channels,)).astype("float32")
            result = {"case": "block", "shape": name, "policy": policy, "batch": args.batch}
            result["forward_s"] = _median_time(lambda: pooled.predict_on_batch(x),
                                               args.warmup, args.repeats)
            result["train_step_s"] = _median_time(lambda: model.train_on_batch(x, x),
                                                  args.warmup, args.repeats)
            if not args.quick:  # the analytic count is for the paper's shapes
                flops = common.block_flops(name, batch=args.batch, precision=policy)
                result["forward_tflops"] = flops / result["forward_s"] / 1e12
            yield result
    keras.config.set_dtype_policy("float32")


def _model_cases(args):
    import keras
    import numpy as np

    from nonlocal_keras.applications import C2DResNet50, VideoResNet

    size, frames = (32, 4) if args.quick else (224, 8)
    rng = np.random.default_rng(1)
    clips = rng.normal(size=(args.batch, frames, size, size, 3)).astype("float32")
    labels = rng.integers(0, 400, args.batch)
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        for blocks in (0, 5):
            if args.quick:  # one block per stage, a non-local block in res3 when asked
                model = VideoResNet((1, 1), input_shape=clips.shape[1:], width=8,
                                    nonlocal_blocks={"res3": [0]} if blocks else 0,
                                    name=f"tiny_nl{blocks}")
            else:
                model = C2DResNet50(input_shape=clips.shape[1:], nonlocal_blocks=blocks)
            model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
            step = _median_time(lambda: model.train_on_batch(clips, labels),
                                args.warmup, args.repeats)
            yield {"case": "train_step", "model": model.name, "policy": policy,
                   "batch": args.batch, "clip": [frames, size, size], "train_step_s": step,
                   "clips_per_s": args.batch / step}
    keras.config.set_dtype_policy("float32")


def _device():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0])
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return "unknown"


def main(argv=None):
    # Here, not at the top: common imports nonlocal_keras.cpu (TensorFlow-free),
    # which this machine has only in the source tree.
    sys.path.insert(0, ROOT)
    import common

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (any CPU)")
    parser.add_argument("--batch", type=common.positive_int, default=None,
                        help="default 8 (2 with --quick)")
    parser.add_argument("--warmup", type=common.non_negative_int, default=3)
    parser.add_argument("--repeats", type=common.positive_int, default=10)
    parser.add_argument("--out", default=None, help="JSON file for every result")
    args = parser.parse_args(argv)
    if args.out:
        common.check_output(parser, "--out", args.out)
    if args.batch is None:
        args.batch = 2 if args.quick else 8
    _import_from_source_tree()
    import keras

    header = {"backend": keras.backend.backend(), "device": _device(),
              "keras": keras.__version__, "warmup": args.warmup, "repeats": args.repeats}
    print(json.dumps(header), flush=True)
    results = []
    # Each result as soon as it is measured, and the file rewritten after each:
    # a run stopped by the machine's time limit keeps what it measured.
    for result in itertools.chain(_block_cases(args), _model_cases(args)):
        print(json.dumps(result), flush=True)
        results.append(result)
        if args.out:
            common.write_json(args.out, {**header, "results": results})
    return results


if __name__ == "__main__":
    main()

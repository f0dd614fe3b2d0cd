"""Run by test_backends.py in a fresh process: `python backend_check.py DIR`.

Under the backend that KERAS_BACKEND names, with TensorFlow made unimportable
(as on the GPU machine, which has none): build the tiny C2D and I3D of
`TINY_MODELS`, load the weights the TensorFlow process saved in DIR, predict
the same clips, and run two `fit` steps. Writes DIR/<backend>.npz.
"""

import sys

if __name__ == "__main__":
    sys.modules["tensorflow"] = None  # any `import tensorflow` now fails

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nonlocal_keras.applications import VideoResNet  # noqa: E402

# Small input, one block per stage, a non-local block in res3 (and the grouped
# "time" affinity in the I3D), every BatchNormalization trained in fit.
TINY_MODELS = {
    "c2d": dict(nonlocal_blocks={"res3": [0]}),
    "i3d": dict(conv1_time=5, inflated_blocks={"res2": "all", "res3": "all"},
                nonlocal_blocks={"res2": [0], "res3": [0]}, nonlocal_affinity="time"),
}
INPUT_SHAPE = (4, 20, 20, 3)


def tiny_model(arch):
    return VideoResNet((1, 1), input_shape=INPUT_SHAPE, classes=5, width=8,
                       classifier_activation=None, name=f"tiny_{arch}", **TINY_MODELS[arch])


def float64_scores_dtypes():
    """The dtype of each mode's attention scores under the float64 policy."""
    from nonlocal_keras.layers import NonLocal2D
    from nonlocal_keras.nonlocal_math import MODES

    x = np.random.default_rng(0).normal(size=(1, 4, 4, 8))
    keras.config.set_dtype_policy("float64")
    try:
        return [keras.backend.standardize_dtype(NonLocal2D(mode=mode)(
            x, return_attention_scores=True)[1].dtype) for mode in MODES]
    finally:
        keras.config.set_dtype_policy("float32")


def empty_batch_shapes():
    """The output shapes of blocks given a batch of no example (2D, each mode;
    3D, grouped by frame)."""
    from nonlocal_keras.layers import NonLocal2D, NonLocal3D
    from nonlocal_keras.nonlocal_math import MODES

    blocks = [(NonLocal2D(mode=mode), (0, 4, 4, 8)) for mode in MODES]
    blocks.append((NonLocal3D(affinity="time"), (0, 2, 4, 4, 8)))
    return [tuple(block(np.zeros(shape, "float32")).shape) == shape for block, shape in blocks]


def main(directory):
    data = np.load(f"{directory}/inputs.npz")
    results = {}
    for arch in TINY_MODELS:
        model = tiny_model(arch)
        model.load_weights(f"{directory}/{arch}.weights.h5")
        results[f"{arch}_predictions"] = np.asarray(model.predict(data["clips"], verbose=0))
        before = [np.array(w) for w in model.weights]
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(data["clips"], data["labels"], batch_size=2, epochs=1, verbose=0)
        results[f"{arch}_loss"] = np.asarray(history.history["loss"])
        results[f"{arch}_changed"] = np.asarray(
            [not np.array_equal(b, np.array(w)) for b, w in zip(before, model.weights)])
    if keras.backend.backend() != "jax":  # JAX computes float64 only with jax_enable_x64
        results["float64_scores_dtypes"] = np.asarray(float64_scores_dtypes())
    results["empty_batch_shapes"] = np.asarray(empty_batch_shapes())
    results["tensorflow_imported"] = np.asarray(sys.modules.get("tensorflow") is not None)
    np.savez(f"{directory}/{keras.backend.backend()}.npz", **results)


if __name__ == "__main__":
    main(sys.argv[1])

"""Distribution strategy and precision policy chosen by config flags."""

import keras
import tensorflow as tf


def make_strategy(name="auto", tpu=""):
    """A `tf.distribute.Strategy` by name.

    - `auto`: `mirrored` when GPUs are visible, else `default`.
    - `default`: the current (single-device) strategy.
    - `mirrored`: `MirroredStrategy` over all local GPUs; without GPUs, over
      every logical CPU device (which is how the tests exercise it).
    - `multi_worker`: `MultiWorkerMirroredStrategy`, configured by `TF_CONFIG`.
    - `tpu`: `TPUStrategy` on the TPU named by `tpu` (empty: the local one).
    """
    if name == "auto":
        name = "mirrored" if tf.config.list_logical_devices("GPU") else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        "`strategy` must be auto, default, mirrored, multi_worker or tpu. "
        f"Received: strategy={name!r}")


def set_precision(policy):
    """Set the global Keras dtype policy (`float32`, `mixed_float16`, `mixed_bfloat16`).

    Must run before the model is built. With `mixed_float16` the training code
    wraps the optimiser in `LossScaleOptimizer` (dynamic loss scaling), which
    float16 gradients need to avoid underflow; bfloat16 has float32's range
    and needs none.
    """
    if policy not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise ValueError(
            "`precision` must be float32, mixed_float16 or mixed_bfloat16. "
            f"Received: precision={policy!r}")
    keras.mixed_precision.set_global_policy(policy)

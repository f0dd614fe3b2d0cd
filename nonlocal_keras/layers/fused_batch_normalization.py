"""Keras' BatchNormalization, trained with TensorFlow's fused kernel when it can be."""

import math

import keras
from keras import layers, ops
from keras.saving import register_keras_serializable

from nonlocal_keras.utils import checked_bool, checked_epsilon, is_real


@register_keras_serializable(package="nonlocal_keras")
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with one fused kernel each way in training.

    Keras 3 normalises with separate moment, normalisation and update ops, each
    a pass over the tensor (and as many again for their gradients). On the
    TensorFlow backend, a training call over the last axis (no mask, renorm or
    synchronized statistics) runs TensorFlow's `FusedBatchNormV3` instead: the
    same values (biased batch variance for the normalisation and the moving
    variance, as Keras; statistics in float32 whatever the compute dtype), in
    one pass forward and one backward. Everything else (inference, the other
    cases, the other backends) is Keras' own code. Same arguments, weights and
    config as `keras.layers.BatchNormalization`, and one more:

    Args:
        frozen_statistics: normalise with the moving statistics in training
            too, which then never change; gamma and beta still learn. The
            layer is then the affine map `gamma / sqrt(var + eps)`, `beta -
            mean * that`: the official video-nonlocal-net's `AffineNd`
            (`MODEL.USE_AFFINE`). (`trainable=False` would freeze gamma and
            beta as well.)
    """

    def __init__(self, *args, frozen_statistics=False, **kwargs):
        for name in ("momentum", "epsilon"):
            # Keras' float() took True and "1e-3", and None was its TypeError.
            if name in kwargs and not is_real(kwargs[name]):
                raise ValueError(f"`{name}` must be a number. Received: {name}={kwargs[name]!r}")
        super().__init__(*args, **kwargs)
        self.frozen_statistics = checked_bool("frozen_statistics", frozen_statistics)
        # Keras takes these (and the outputs or moving statistics are NaN or diverge).
        checked_epsilon("epsilon", self.epsilon)
        if not is_real(self.momentum) or not 0 <= self.momentum <= 1:
            raise ValueError("`momentum` must be a number in [0, 1]. "
                             f"Received: momentum={self.momentum!r}")

    def get_config(self):
        return {**super().get_config(), "frozen_statistics": self.frozen_statistics}

    def _fusable(self, inputs, training, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and training
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and self.axis in (-1, len(inputs.shape) - 1)
            # The kernel has no float64 version; Keras' own ops have.
            and keras.backend.standardize_dtype(inputs.dtype) in ("float16", "bfloat16", "float32")
        )

    def call(self, inputs, training=None, mask=None):
        if self.frozen_statistics or 0 in tuple(inputs.shape):
            # A batch of no example has no statistics (NaN): they would poison
            # the moving ones for good. Known here on JAX and PyTorch; the
            # fused kernel checks it at run time (a TensorFlow graph's batch).
            training = False
        if not self._fusable(inputs, training, mask):
            unknown = None in tuple(inputs.shape)  # a TensorFlow graph's: checked at run time
            if not (training and self.trainable and (mask is not None or unknown)):
                return super().call(inputs, training=training, mask=mask)
            # A batch whose every position is masked has no statistics either:
            # Keras' masked moments (0 and 0) pulled the moving ones toward 0.
            moving = (self.moving_mean, self.moving_variance)
            before = [ops.copy(variable.value) for variable in moving]
            outputs = super().call(inputs, training=training, mask=mask)
            some = ops.size(inputs) > 0 if mask is None else ops.any(mask)
            for variable, value in zip(moving, before):
                variable.assign(ops.where(some, variable.value, value))
            return outputs
        import tensorflow as tf

        shape = tf.shape(inputs)
        channels = inputs.shape[-1]
        # The kernel takes NHWC and reduces over N, H and W; it accumulates in
        # float32 (scale's dtype) for every input dtype. The positions go in N
        # and H, H of 8 (or 4, 2, 1: what divides an example's positions):
        # oneDNN's kernel splits its work over N, and with all positions in H
        # (N = 1) it took 2-3x as long fwd+bwd on 2 cores (1568 x 1024: 10.4
        # vs 3.1 ms; 50176 x 256: 54 vs 30 ms; Eigen's gains a little); with H
        # of 1 it spent 5-20% longer than with 8 on a Xeon with AMX (2 cores,
        # 2026-12-06: 50176 x 64, 8.1 vs 6.3 ms in bfloat16; benchmarks/README.md).
        x = tf.reshape(inputs, (-1, _rows_of_positions(inputs.shape), 1, channels))
        gamma = ops.cast(self.gamma, "float32") if self.scale else tf.ones((channels,))
        beta = ops.cast(self.beta, "float32") if self.center else tf.zeros((channels,))
        empty = tf.constant([], "float32")
        y, mean, unbiased_variance = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
            epsilon=self.epsilon, data_format="NHWC", is_training=True,
        )[:3]
        # The kernel returns the variance with Bessel's correction; Keras
        # keeps the biased one in moving_variance.
        count = ops.cast(tf.shape(x)[0] * tf.shape(x)[1], "float32")
        variance = unbiased_variance * (ops.maximum(count - 1.0, 1.0) / count)
        # The statistics are float32; the moving ones have the variable dtype
        # (float16 or bfloat16 under the pure low-precision policies).
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            batch = ops.cast(batch, moving.dtype)
            # An empty batch has no statistics (NaN): it would poison the
            # moving ones for good, and every later inference with them.
            moving.assign(ops.where(count > 0, moving * self.momentum
                                    + batch * (1.0 - self.momentum), moving))
        return ops.cast(tf.reshape(y, shape), self.compute_dtype)


def _rows_of_positions(shape):
    """8, 4, 2 or 1: the most of these that divides one example's positions."""
    positions = 1
    for size in shape[1:-1]:
        if size is None:
            return 1
        positions *= size
    return math.gcd(positions, 8)

"""A `tf_keras` shell around the shared non-local math, for Model Garden models.

Model Garden's models are `tf_keras` models, which cannot hold Keras 3 layers.
This layer owns only the `tf_keras` weights (theta, phi, g, W_z, BN) and calls
`nonlocal_keras.nonlocal_math.nonlocal_response` for the computation itself,
exactly as `nonlocal_keras.layers.NonLocal2D` does; `keras.ops` run on the
plain TensorFlow tensors that `tf_keras` passes in.
"""

import tensorflow as tf
import tf_keras

from nonlocal_keras import nonlocal_math
from nonlocal_keras.applications.mask_rcnn.registration import serializable
from nonlocal_keras.utils import (checked_bool, checked_choice, checked_epsilon, checked_get,
                                   checked_momentum, is_positive_int)

# As the Keras 3 layers: the official code's Gaussian(std 0.01) for the
# projections, and BN(gamma = 0) after W_z so the block starts as the identity.
_OFFICIAL_KERNEL_INITIALIZER = {"class_name": "RandomNormal", "config": {"stddev": 0.01}}


@serializable
class NonLocalBlock2D(tf_keras.layers.Layer):
    """Non-local block `z = x + BN(W_z y)` on `(batch, height, width, channels)`.

    Args:
        mode: `"gaussian"`, `"embedded_gaussian"` (default), `"dot_product"` or
            `"concatenation"`.
        inter_channels: channels of theta, phi and g; `None` means `C // 2`.
        sub_sample: max-pool (2, 2) before phi and g, as the official code.
        use_scale: divide softmax logits by sqrt(inter_channels).
        kernel_initializer, kernel_regularizer: of every projection.
        norm_momentum, norm_epsilon: of the BatchNormalization after `W_z`.
        use_sync_bn: synchronise that BatchNormalization's batch statistics
            across replicas, as Model Garden's `norm_activation.use_sync_bn`
            does for every BN of its ResNet.
        chunk_size: as for the Keras 3 layers: `"auto"` (default) slices the
            queries only when the affinity is large, an int always does, `None`
            never does; the result is the same.
    """

    def __init__(
        self,
        mode="embedded_gaussian",
        inter_channels=None,
        sub_sample=True,
        use_scale=True,
        kernel_initializer=None,
        kernel_regularizer=None,
        norm_momentum=0.9,
        norm_epsilon=1e-5,
        use_sync_bn=False,
        chunk_size="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        checked_choice("mode", mode, nonlocal_math.MODES)
        if inter_channels is not None and not is_positive_int(inter_channels):
            raise ValueError(
                "`inter_channels` must be None or an integer >= 1. "
                f"Received: inter_channels={inter_channels!r}"
            )
        self.mode = mode
        self.inter_channels = inter_channels
        # bool("False") is True: found by a walk, the opposite of what was written.
        self.sub_sample = checked_bool("sub_sample", sub_sample)
        self.use_scale = checked_bool("use_scale", use_scale)
        self.kernel_initializer = checked_get(tf_keras.initializers, "kernel_initializer",
                                              kernel_initializer, _OFFICIAL_KERNEL_INITIALIZER)
        self.kernel_regularizer = checked_get(tf_keras.regularizers, "kernel_regularizer",
                                              kernel_regularizer)
        self.norm_momentum = checked_momentum("norm_momentum", norm_momentum)
        self.norm_epsilon = checked_epsilon("norm_epsilon", norm_epsilon)
        self.use_sync_bn = checked_bool("use_sync_bn", use_sync_bn)
        self.chunk_size = nonlocal_math.check_chunk_size(chunk_size)
        self.theta = self.phi = self.g = self.w_z = self.bn = self.w_f = None

    def build(self, input_shape):
        channels = int(input_shape[-1])
        inner = self.inter_channels or max(channels // 2, 1)

        def projection(name, units, input_units, initializer=None, use_bias=True):
            # A fresh initializer per projection so theta, phi and g differ.
            initializer = tf_keras.initializers.get(
                tf_keras.initializers.serialize(initializer or self.kernel_initializer)
            )
            layer = tf_keras.layers.Dense(
                units,
                use_bias=use_bias,
                kernel_initializer=initializer,
                kernel_regularizer=self.kernel_regularizer,
                name=name,
            )
            build_in_scope(layer, (None, input_units))
            return layer

        if self.mode != "gaussian":
            self.theta = projection("theta", inner, channels)
            self.phi = projection("phi", inner, channels)
        self.g = projection("g", inner, channels)
        self.w_z = projection("w_z", channels, inner)
        self.bn = tf_keras.layers.BatchNormalization(
            momentum=self.norm_momentum,
            epsilon=self.norm_epsilon,
            gamma_initializer="zeros",
            synchronized=self.use_sync_bn,
            name="bn",
        )
        build_in_scope(self.bn, (None, None, None, channels))
        if self.mode == "concatenation":
            self.w_f = projection("w_f", 1, 2 * inner, use_bias=False)
        super().build(input_shape)

    def call(self, inputs, training=None):
        z = nonlocal_math.nonlocal_response(
            inputs,
            self.theta,
            self.phi,
            self.g,
            self.w_z,
            mode=self.mode,
            pool_size=(2, 2) if self.sub_sample else (1, 1),
            use_scale=self.use_scale,
            w_f=None if self.w_f is None else self.w_f.kernel,
            chunk_size=self.chunk_size,
        )
        return inputs + self.bn(z, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "inter_channels": self.inter_channels,
                "sub_sample": self.sub_sample,
                "use_scale": self.use_scale,
                "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": tf_keras.regularizers.serialize(self.kernel_regularizer),
                "norm_momentum": self.norm_momentum,
                "norm_epsilon": self.norm_epsilon,
                "use_sync_bn": self.use_sync_bn,
                "chunk_size": self.chunk_size,
            }
        )
        return config


def build_in_scope(layer, input_shape):
    # Built under its own name scope, a sub-layer's variables are named
    # `block/theta/kernel`, not all `block/kernel`.
    with tf.name_scope(layer.name):
        layer.build(input_shape)

"""The small C2D network of `make demo`, with or without one non-local block.

Input `(8, 32, 32, 3)` clips. Four `1x3x3` convolution + BN + ReLU layers
(strides 1, 2, 2, 2 in space, none in time) give an `8x4x4` map on which the
non-local block (`NonLocal3D`, embedded Gaussian, official defaults) relates
every position of every frame; a last `1x3x3` convolution, global average
pooling and the classifier follow. Every kernel is `1xkxk`, so without the
block the frames only meet in the global pooling: the C2D baseline.

It has the keras.applications constructor signature so that a config can
name it (`model.name: nonlocal_keras.training.demo_model:DemoC2D`).
"""

import keras
from keras import layers

from nonlocal_keras.layers import NonLocal3D
from nonlocal_keras.utils import is_positive_int


def _conv_bn_relu(x, filters, stride, name):
    x = layers.Conv3D(filters, (1, 3, 3), strides=(1, stride, stride), padding="same",
                      use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def DemoC2D(include_top=True, weights=None, input_tensor=None, input_shape=(8, 32, 32, 3),
            pooling=None, classes=10, classifier_activation="softmax", name=None,
            width=32, nonlocal_blocks=1, nonlocal_mode="embedded_gaussian",
            nonlocal_kernel_initializer="he_normal"):
    """Small (NL-)C2D; `nonlocal_blocks` is 0 (baseline) or 1.

    The block's projections start from the paper's MSRA (`he_normal`)
    initialisation rather than the official std-0.01 Gaussian: from scratch on
    this task the tiny initial logits made the attention learn several epochs
    later (measured while designing the demo).
    """
    if nonlocal_blocks not in (0, 1):
        raise ValueError(f"`nonlocal_blocks` must be 0 or 1. Received: nonlocal_blocks={nonlocal_blocks}")
    if not is_positive_int(width) or width < 2:
        # A YAML `1e9` is a string: it was "unsupported operand type(s) for //".
        raise ValueError(f"`width` must be an integer of at least 2. Received: width={width!r}")
    if not include_top or pooling is not None:
        raise ValueError("DemoC2D is a classifier: include_top=True, pooling=None. "
                         f"Received: include_top={include_top}, pooling={pooling}")
    inputs = input_tensor if input_tensor is not None else keras.Input(input_shape)
    x = inputs
    for index, (filters, stride) in enumerate(
            ((width // 2, 1), (width, 2), (2 * width, 2), (2 * width, 2))):
        x = _conv_bn_relu(x, filters, stride, f"conv{index + 1}")
    if nonlocal_blocks:
        x = NonLocal3D(mode=nonlocal_mode, kernel_initializer=nonlocal_kernel_initializer,
                       name="nonlocal")(x)
    x = _conv_bn_relu(x, 2 * width, 1, "conv5")
    x = layers.GlobalAveragePooling3D(name="avg_pool")(x)
    # float32 scores under mixed precision, so that averaging views is exact.
    outputs = layers.Dense(classes, activation=classifier_activation, dtype="float32",
                           name="predictions")(x)
    model = keras.Model(inputs, outputs,
                        name=name or ("demo_nl_c2d" if nonlocal_blocks else "demo_c2d"))
    if weights is not None:
        model.load_weights(weights)
    return model

"""A constructor with the keras.applications signature, small enough for tests.

The training tests build it through `model.name: training_tiny_model:tiny_video_net`
so that they exercise the config -> constructor path without a ResNet.
"""

import keras
from keras import layers


def tiny_video_net(include_top=True, weights=None, input_shape=None, classes=10,
                   classifier_activation="softmax", width=4):
    inputs = keras.Input(input_shape)
    x = layers.Conv3D(width, (1, 3, 3), strides=(1, 2, 2), padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    # Named as the video ResNets' head, which `data.eval_crop_size` needs.
    x = layers.GlobalAveragePooling3D(name="pool5")(x)
    outputs = layers.Dense(classes, activation=classifier_activation, dtype="float32",
                           name="pred")(x)
    model = keras.Model(inputs, outputs, name="tiny_video_net")
    if weights is not None:
        model.load_weights(weights)  # as keras.applications' constructors do
    return model


class FailsInTraining(layers.Layer):
    """Raises when a training step is traced: an error in the first step of `fit`."""

    def call(self, inputs, training=None):
        if training:
            raise RuntimeError("injected failure in the first training step")
        return inputs


def failing_video_net(include_top=True, weights=None, input_shape=None, classes=10,
                      classifier_activation="softmax"):
    inputs = keras.Input(input_shape)
    x = FailsInTraining()(inputs)
    x = layers.GlobalAveragePooling3D()(x)
    outputs = layers.Dense(classes, activation=classifier_activation)(x)
    return keras.Model(inputs, outputs, name="failing_video_net")


def headless_video_net(include_top=True, weights=None, input_shape=None, classes=10,
                       classifier_activation="softmax"):
    """Pools without the video ResNets' `pool5` and `pred` names, as a user's network may."""
    inputs = keras.Input(input_shape)
    x = layers.GlobalMaxPooling3D()(inputs)
    outputs = layers.Dense(classes, activation=classifier_activation)(x)
    return keras.Model(inputs, outputs, name="headless_video_net")

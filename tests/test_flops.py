"""`nonlocal_keras.utils.count_flops` against hand counts and the paper's models."""

import keras
import pytest

from nonlocal_keras.applications import C2DResNet50, I3DResNet50
from nonlocal_keras.layers import NonLocal3D
from nonlocal_keras.utils import count_flops


def test_convolutions_and_classifier_by_hand():
    inputs = keras.Input((4, 10, 12, 5))
    x = keras.layers.Conv3D(7, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv3D(6, (1, 3, 3), strides=(1, 2, 2))(x)  # valid -> (4, 4, 5)
    x = keras.layers.GlobalAveragePooling3D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    expected = (4 * 10 * 12 * 7) * (27 * 5) + (4 * 4 * 5 * 6) * (9 * 7) + 6 * 3
    assert count_flops(model) == expected
    assert count_flops(model, batch_size=3) == 3 * expected


def test_nonlocal_block_products_are_counted():
    t, h, w, c = 2, 4, 6, 8
    inner, queries, keys = c // 2, t * h * w, t * (h // 2) * (w // 2)
    inputs = keras.Input((t, h, w, c))
    model = keras.Model(inputs, NonLocal3D()(inputs))
    expected = (queries * c * inner          # theta
                + 2 * keys * c * inner       # phi, g on the pooled input
                + 2 * queries * keys * inner  # affinity, aggregation
                + queries * inner * c)       # W_z
    assert count_flops(model) == expected


def test_unknown_input_shape_is_an_error():
    inputs = keras.Input((None, 8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv3D(2, 1)(inputs))
    with pytest.raises(ValueError, match=r"Received: input_shape=\(None, 8, 8, 3\)"):
        count_flops(model)
    assert count_flops(model, input_shape=(2, 8, 8, 3)) == 2 * 8 * 8 * 3 * 2


@pytest.mark.slow
@pytest.mark.parametrize("constructor, giga_multiply_adds",
                         [(C2DResNet50, 19.6), (I3DResNet50, 28.5)])
def test_paper_models_at_8x224(constructor, giga_multiply_adds):
    # PyTorchVideo's c2d_r50 / i3d_r50 measured with fvcore (PAPER.md section 3).
    flops = count_flops(constructor(), input_shape=(8, 224, 224, 3))
    assert abs(flops / 1e9 - giga_multiply_adds) <= 0.03 * giga_multiply_adds

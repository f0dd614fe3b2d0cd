"""FusedBatchNormalization against batch normalisation in float64 NumPy.

Training outputs, moving statistics and the gradients (in closed form) of
sum(w * y) for a random w, in float32 and under mixed precision; inference
and the cases it leaves to Keras must match `keras.layers.BatchNormalization`.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from nonlocal_keras.layers import NonLocal3D
from nonlocal_keras.layers.fused_batch_normalization import FusedBatchNormalization

EPSILON = 1e-5
MOMENTUM = 0.9


def reference(x, gamma, beta, w):
    """Training-mode batch norm over every axis but the last, and the
    gradients of sum(w * y), in float64."""
    axes = tuple(range(x.ndim - 1))
    count = np.prod(x.shape[:-1])
    mean = x.mean(axes)
    variance = x.var(axes)  # biased, as Keras
    inv_std = 1.0 / np.sqrt(variance + EPSILON)
    x_hat = (x - mean) * inv_std
    y = x_hat * gamma + beta
    dy = w * gamma
    dx = inv_std * (dy - dy.sum(axes) / count - x_hat * (dy * x_hat).sum(axes) / count)
    return y, mean, variance, dx, (w * x_hat).sum(axes), w.sum(axes)


def _layer(dtype="float32", **kwargs):
    return FusedBatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype, **kwargs)


def _op_types(step, argument):
    """The op types of the graph a tf.function traces for `argument`."""
    return {op.type for op in step.get_concrete_function(argument).graph.get_operations()}


def _random(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) * 3.0 + 1.5


# An example's positions in rows of 4 (60), 8 (2 x 4), 2 (6) and 1 (7, 1): the
# kernel's layout (`_rows_of_positions`).
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 8), (3, 2, 4, 5), (2, 6, 3), (2, 7, 6), (1, 1, 3)])
def test_training_matches_float64_reference(shape):
    x = _random(shape, 0)
    w = _random(shape, 1)
    gamma, beta = _random(shape[-1:], 2), _random(shape[-1:], 3)
    layer = _layer()
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    moving_mean = _random(shape[-1:], 4)
    moving_variance = np.abs(_random(shape[-1:], 5))
    layer.moving_mean.assign(moving_mean)
    layer.moving_variance.assign(moving_variance)

    xt = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * tf.constant(w, tf.float32))
    dx, dgamma, dbeta = tape.gradient(loss, [xt, layer.gamma.value, layer.beta.value])

    ref_y, mean, variance, ref_dx, ref_dgamma, ref_dbeta = reference(x, gamma, beta, w)
    # float32 sums over at most 240 terms of O(10) values.
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(dgamma, ref_dgamma, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dbeta, ref_dbeta, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        layer.moving_mean, MOMENTUM * moving_mean + (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        layer.moving_variance, MOMENTUM * moving_variance + (1 - MOMENTUM) * variance,
        rtol=1e-5, atol=1e-5)


def test_mixed_precision_normalises_in_float32():
    shape = (2, 4, 4, 16)
    # Large offsets: bfloat16 statistics would lose the variance entirely.
    x = _random(shape, 0) + 300.0
    w = _random(shape, 1)
    layer = _layer("mixed_bfloat16")
    layer.build(shape)
    xt = tf.constant(x, tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
    dx = tape.gradient(loss, xt)
    assert y.dtype == tf.bfloat16 and dx.dtype == tf.bfloat16
    # The reference sees the input as rounded to bfloat16; the output is
    # rounded to bfloat16 (8 bits of mantissa).
    x_rounded = tf.cast(xt, tf.float64).numpy()
    ref_y, mean, variance, ref_dx, _, _ = reference(x_rounded, 1.0, 0.0, w)
    np.testing.assert_allclose(tf.cast(y, tf.float64), ref_y, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(tf.cast(dx, tf.float64), ref_dx, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(layer.moving_mean, (1 - MOMENTUM) * mean, rtol=1e-5)
    np.testing.assert_allclose(
        layer.moving_variance, MOMENTUM + (1 - MOMENTUM) * variance, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, training",
    [({}, False), ({"center": False, "scale": False}, True), ({"axis": 1}, True),
     ({"renorm": True}, True)],
)
def test_same_as_keras_batch_normalization(kwargs, training):
    shape = (4, 3, 5, 6)
    x = tf.constant(_random(shape, 0), tf.float32)
    ours, theirs = _layer(**kwargs), keras.layers.BatchNormalization(
        momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
    ours.build(shape)
    theirs.build(shape)
    theirs.set_weights(ours.get_weights())
    for _ in range(2):
        np.testing.assert_allclose(
            ours(x, training=training), theirs(x, training=training), rtol=1e-5, atol=1e-5)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_in_a_tf_function_runs_the_fused_kernel():
    shape = (2, 4, 8)  # rows of 4 positions
    x = _random(shape, 0)
    layer = _layer()
    layer.build(shape)
    step = tf.function(lambda t: layer(t, training=True))
    for _ in range(3):
        step(tf.constant(x, tf.float32))
    assert "FusedBatchNormV3" in _op_types(step, tf.constant(x, tf.float32))
    # Positions of unknown number (a row each): the same statistics.
    unknown = tf.function(lambda t: layer(t, training=True),
                          input_signature=[tf.TensorSpec((None, None, 8), tf.float32)])
    for _ in range(3):
        unknown(tf.constant(x, tf.float32))
    kept = MOMENTUM**6
    _, mean, variance, _, _, _ = reference(x, 1.0, 0.0, np.zeros_like(x))
    np.testing.assert_allclose(layer.moving_mean, (1 - kept) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        layer.moving_variance, kept + (1 - kept) * variance, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,expected", [
    ({"epsilon": -1.0}, "Received: epsilon=-1.0"), ({"epsilon": 0.0}, "Received: epsilon=0.0"),
    ({"momentum": 2.0}, "Received: momentum=2.0"),
    ({"momentum": float("nan")}, "Received: momentum=nan"),
    ({"epsilon": None}, "`epsilon` must be a number. Received: epsilon=None"),
    ({"epsilon": "1e-3"}, "Received: epsilon='1e-3'"), ({"momentum": True}, "momentum=True")])
def test_a_negative_epsilon_or_a_momentum_out_of_range_is_refused(kwargs, expected):
    """Found by a walk: Keras takes them; the outputs were NaN (a negative
    epsilon) or the moving statistics diverged (momentum 2)."""
    with pytest.raises(ValueError, match=re.escape(expected)):
        FusedBatchNormalization(**kwargs)
    FusedBatchNormalization(momentum=1.0, epsilon=1e-9)  # the ends that are numbers


def test_an_empty_batch_leaves_the_moving_statistics_as_they_were():
    """Found by a walk: a training call on a batch of no example made them NaN,
    and every later inference NaN with them."""
    layer = _layer()
    x = np.random.default_rng(0).normal(2, 3, (4, 3, 5)).astype("float32")
    layer(x, training=True)
    before = [v.numpy() for v in (layer.moving_mean, layer.moving_variance)]
    # A graph of any batch: the fused kernel's run-time check.
    step = tf.function(lambda t: layer(t, training=True),
                       input_signature=[tf.TensorSpec((None, 3, 5))])
    assert "FusedBatchNormV3" in _op_types(step, tf.zeros((0, 3, 5)))
    step(tf.zeros((0, 3, 5)))
    for variable, value in zip((layer.moving_mean, layer.moving_variance), before):
        np.testing.assert_array_equal(variable.numpy(), value)
    # Keras' own path (another axis; JAX and PyTorch alike), where the shape
    # is known when the layer is called (found by a re-walk).
    layer = _layer(axis=1)
    layer(np.moveaxis(x, -1, 1), training=True)
    before = [v.numpy() for v in (layer.moving_mean, layer.moving_variance)]
    assert layer(np.zeros((0, 5, 3), "float32"), training=True).shape == (0, 5, 3)
    for variable, value in zip((layer.moving_mean, layer.moving_variance), before):
        np.testing.assert_array_equal(variable.numpy(), value)
    # Keras' path in a graph of any batch, checked at run time (stop 56's walk);
    # a batch of examples still updates them.
    step = tf.function(lambda t: layer(t, training=True),
                       input_signature=[tf.TensorSpec((None, 5, 3))])
    assert "FusedBatchNormV3" not in _op_types(step, tf.zeros((0, 5, 3)))
    step(tf.zeros((0, 5, 3)))
    for variable, value in zip((layer.moving_mean, layer.moving_variance), before):
        np.testing.assert_array_equal(variable.numpy(), value)
    step(np.moveaxis(x, -1, 1))
    assert not np.allclose(layer.moving_mean.numpy(), before[0])


def test_a_batch_whose_every_position_is_masked_leaves_the_moving_statistics():
    """Found by a re-walk: Keras' masked moments of no position (0 and 0) pulled
    the moving statistics toward 0; a partly masked batch updates them as Keras'
    BatchNormalization does."""
    x = np.random.default_rng(1).normal(2, 3, (4, 3, 5)).astype("float32")
    layer, keras_layer = _layer(), keras.layers.BatchNormalization(momentum=MOMENTUM,
                                                                   epsilon=EPSILON)
    layer.build(x.shape)
    step = tf.function(lambda t, m: layer(t, training=True, mask=m))
    for mask in (np.zeros((4, 3), bool), np.arange(12).reshape(4, 3) % 5 != 0):
        before = [v.numpy() for v in (layer.moving_mean, layer.moving_variance)]
        step(x, mask)
        keras_layer(x, training=True, mask=mask)
        if not mask.any():
            for variable, value in zip((layer.moving_mean, layer.moving_variance), before):
                np.testing.assert_array_equal(variable.numpy(), value)
        else:
            np.testing.assert_allclose(layer.moving_mean.numpy(),
                                       keras_layer.moving_mean.numpy(), rtol=1e-6)


def test_config_round_trip_and_block_uses_it():
    layer = _layer(center=False)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is FusedBatchNormalization
    assert clone.get_config() == layer.get_config()
    block = NonLocal3D(pool_size=(1, 2, 2))
    block.build((None, 2, 4, 4, 8))
    assert type(block.bn) is FusedBatchNormalization
    step = tf.function(lambda t: block(t, training=True))
    assert "FusedBatchNormV3" in _op_types(step, tf.zeros((1, 2, 4, 4, 8)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_trains_under_pure_low_precision_policies(dtype):
    # As Keras' own BatchNormalization correctness test: fit on data of mean
    # 5 and std 10, then the normalised predictions have mean 0 and std 1
    # (here under a policy whose variables are float16/bfloat16 too).
    rng = np.random.default_rng(6)
    x = rng.normal(5.0, 10.0, (1000, 6)).astype("float32")
    layer = FusedBatchNormalization(momentum=0.8, dtype=dtype)
    model = keras.Sequential([keras.Input((6,)), layer])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, x, epochs=4, batch_size=100, verbose=0)
    assert layer.moving_mean.dtype == dtype
    out = keras.ops.convert_to_numpy(model(x, training=False)).astype("float64")
    gamma = np.asarray(layer.gamma, np.float64)
    beta = np.asarray(layer.beta, np.float64)
    normalised = (out - beta) / gamma
    # bfloat16 keeps 8 bits of mantissa: the statistics are good to ~1%.
    np.testing.assert_allclose(normalised.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(normalised.std(0), 1.0, atol=0.1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_nonlocal_block_trains_under_pure_low_precision(dtype):
    x = np.random.default_rng(7).normal(size=(2, 2, 4, 4, 8)).astype("float32")
    model = keras.Sequential([keras.Input(x.shape[1:]), NonLocal3D(dtype=dtype)])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, x * 0.5, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.layers[0].bn.moving_variance.dtype == dtype


def test_float64_trains_through_keras_ops_against_the_reference():
    """FusedBatchNormV3 has no float64 kernel: a float64 block or ResNet failed at
    its first training call ("Value for attr 'T' of double is not in the list")."""
    x = _random((2, 3, 4, 6), seed=5)
    layer = _layer(dtype="float64")
    w = tf.constant(_random(x.shape, seed=6))
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = layer(inputs, training=True)
        loss = tf.reduce_sum(w * y)
    dx = tape.gradient(loss, inputs)
    gamma, beta = np.ones(6), np.zeros(6)
    expected_y, mean, _, expected_dx, _, _ = reference(x, gamma, beta, w.numpy())
    assert y.dtype == tf.float64
    np.testing.assert_allclose(y.numpy(), expected_y, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx.numpy(), expected_dx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(layer.moving_mean.numpy(), MOMENTUM * 0 + (1 - MOMENTUM) * mean,
                               rtol=1e-10)
    block = NonLocal3D(dtype="float64")
    out = block(tf.constant(_random((1, 2, 4, 4, 8), seed=7)), training=True)
    assert out.dtype == tf.float64


def test_frozen_statistics_train_an_affine_map():
    """`frozen_statistics=True` (the official AffineNd): in training the layer is
    `gamma (x - mean) / sqrt(var + eps) + beta` of its moving statistics, which
    stay; gamma and beta get that map's gradients."""
    layer = _layer(frozen_statistics=True)
    x = _random((2, 3, 4, 5, 8), 7)
    layer.build(x.shape)
    rng = np.random.default_rng(8)
    gamma, beta = rng.normal(1, 0.3, 8), rng.normal(0, 0.3, 8)
    mean, variance = rng.normal(0, 1, 8), rng.uniform(0.5, 2, 8)
    layer.set_weights([gamma, beta, mean, variance])
    w = rng.normal(size=x.shape)
    inputs = tf.constant(x, "float32")
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = layer(inputs, training=True)
        loss = tf.reduce_sum(y * w)
    dx, dgamma, dbeta = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
    x_hat = (x - mean) / np.sqrt(variance + EPSILON)
    np.testing.assert_allclose(y, x_hat * gamma + beta, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, w * gamma / np.sqrt(variance + EPSILON), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dgamma, (w * x_hat).sum((0, 1, 2, 3)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbeta, w.sum((0, 1, 2, 3)), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.moving_mean, mean.astype("float32"))
    np.testing.assert_array_equal(layer.moving_variance, variance.astype("float32"))
    assert len(layer.trainable_weights) == 2
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert clone.get_config()["frozen_statistics"] is True
    with pytest.raises(ValueError, match="Received: frozen_statistics='yes'"):
        _layer(frozen_statistics="yes")

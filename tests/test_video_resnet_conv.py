"""`VideoConv3D`: Conv3D's values, weights and config, pointwise kernels as a matrix product."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nonlocal_keras.applications import VideoResNet
from nonlocal_keras.applications.video_resnet_conv import VideoConv3D
from nonlocal_keras.training import cli


def reference_conv3d(x, kernel, strides, padding="valid"):
    """float64 NumPy convolution, channels last: the sum over the window.

    "same" pads as TensorFlow does: `ceil(size / stride)` outputs, the odd
    padding position at the end.
    """
    if padding == "same":
        pads = [(0, 0)]
        for size, k, s in zip(x.shape[1:4], kernel.shape[:3], strides):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, pads + [(0, 0)])
    kt, kh, kw = kernel.shape[:3]
    st, sh, sw = strides
    batch, t, h, w, _ = x.shape
    out = np.zeros((batch, (t - kt) // st + 1, (h - kh) // sh + 1, (w - kw) // sw + 1,
                    kernel.shape[-1]))
    for i in range(kt):
        for j in range(kh):
            for k in range(kw):
                window = x[:, i:i + st * out.shape[1]:st, j:j + sh * out.shape[2]:sh,
                           k:k + sw * out.shape[3]:sw]
                out += window @ kernel[i, j, k]
    return out


@pytest.mark.parametrize("kernel, strides, padding", [
    ((1, 1, 1), (1, 1, 1), "valid"),   # the matrix product
    ((1, 1, 1), (1, 1, 1), "same"),
    ((1, 1, 1), (1, 2, 2), "valid"),   # every other position, then the product
    ((1, 1, 1), (1, 2, 2), "same"),    # (a 1x1x1 window needs no padding either way)
    ((1, 1, 1), (2, 3, 2), "same"),
    ((3, 1, 1), (1, 1, 1), "valid"),   # Keras' Conv3D
    ((3, 1, 1), (1, 1, 1), "same"),
    ((1, 3, 3), (1, 1, 1), "same"),    # per frame: a 2D convolution
    ((1, 3, 3), (1, 2, 2), "same"),
    ((1, 3, 3), (1, 2, 2), "valid"),
    ((1, 3, 3), (2, 2, 2), "same"),    # Keras' Conv3D (stride over time)
    ((1, 3, 2), (1, 3, 2), "valid")])
def test_values_match_a_float64_reference(kernel, strides, padding):
    rng = np.random.default_rng(0)
    # Odd sizes: a stride that does not divide the size keeps the last position.
    x = rng.standard_normal((2, 5, 7, 6, 5))
    layer = VideoConv3D(7, kernel, strides=strides, padding=padding, use_bias=False)
    layer.build(x.shape)
    weights = rng.standard_normal(layer.kernel.shape)
    layer.kernel.assign(weights)
    got = np.asarray(layer(x.astype("float32")))
    expected = reference_conv3d(x, weights, strides, padding)
    assert got.shape == expected.shape
    # float32 sums of at most 5 x 9 products of unit-variance terms.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)


def test_per_frame_kernel_gradient_is_not_written_into_zeros():
    """The 1xkxk kernel reaches the 2D convolution by a reshape: indexing it
    (`kernel[0]`) made its gradient a StridedSliceGrad, a copy into a zero
    tensor of the kernel's size in every step (0.8% of a C2D R50 step)."""
    layer = VideoConv3D(4, (1, 3, 3), padding="same", use_bias=False)
    layer.build((1, 2, 5, 5, 3))

    @tf.function
    def gradient(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        return tape.gradient(loss, layer.kernel)

    graph = gradient.get_concrete_function(tf.TensorSpec((1, 2, 5, 5, 3))).graph
    types = {op.type for op in graph.get_operations()}
    assert "Conv2DBackpropFilter" in types
    assert not types & {"StridedSlice", "StridedSliceGrad"}


def test_unknown_batch_and_sizes_and_config_round_trip():
    layer = VideoConv3D(3, 1, use_bias=True, name="pointwise")
    inputs = keras.Input((None, None, None, 4))
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(1).standard_normal((3, 2, 5, 3, 4)).astype("float32")
    kernel, bias = (np.asarray(w) for w in layer.weights)
    expected = np.einsum("bthwc,cf->bthwf", x.astype("float64"), kernel[0, 0, 0]) + bias
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-5)
    config = layer.get_config()
    assert config == keras.layers.Conv3D.from_config(config).get_config()
    assert VideoConv3D.from_config(config).get_config() == config


def plain_conv3d_twin(model):
    """`model` with Keras' own Conv3D layers (the model before VideoConv3D), same weights."""
    def clone(layer):
        if isinstance(layer, VideoConv3D):
            return keras.layers.Conv3D.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    assert not any(isinstance(layer, VideoConv3D) for layer in twin.layers)
    return twin


def test_logits_and_gradients_match_the_conv3d_model():
    keras.utils.set_random_seed(2)
    model = VideoResNet((1, 1), input_shape=(4, 16, 16, 3), classes=5, width=8,
                        pool1=False, inflated_blocks={"res2": "all"}, dropout_rate=0.0,
                        classifier_activation=None)
    for path in (VideoConv3D._pointwise, VideoConv3D._per_frame):
        assert any(isinstance(layer, VideoConv3D) and path(layer) for layer in model.layers)
    twin = plain_conv3d_twin(model)
    x = tf.random.normal((2, 4, 16, 16, 3))
    results = []
    for net in (model, twin):
        with tf.GradientTape() as tape:
            logits = net(x, training=True)
            loss = tf.reduce_sum(logits * tf.range(1.0, 6.0))
        results.append((logits, tape.gradient(loss, net.trainable_weights)))
    (logits, grads), (twin_logits, twin_grads) = results
    # Both are float32 sums in different orders: relative to each tensor's scale.
    scale = np.abs(np.asarray(twin_logits)).max()
    np.testing.assert_allclose(logits, twin_logits, rtol=0, atol=1e-5 * scale)
    for weight, grad, twin_grad in zip(model.trainable_weights, grads, twin_grads):
        scale = np.abs(np.asarray(twin_grad)).max()
        np.testing.assert_allclose(grad, twin_grad, rtol=0, atol=1e-4 * scale + 1e-7,
                                   err_msg=weight.path)


@pytest.mark.parametrize("padding, data_format", [
    ((1, 3, 3), "channels_last"), (((0, 2), (1, 0), (3, 1)), "channels_last"),
    (2, "channels_first")])
def test_concatenated_padding_is_zero_padding3d(tmp_path, padding, data_format):
    """Values and gradient as `np.pad` (the gradient: the upstream's middle),
    with an unknown batch, and the layer saves and loads by its config."""
    from nonlocal_keras.applications.video_resnet_conv import ConcatenatedZeroPadding3D

    layer = ConcatenatedZeroPadding3D(padding, data_format=data_format, name="pad")
    pads = keras.layers.ZeroPadding3D(padding, data_format=data_format).padding
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5, 6))
    spatial = [(0, 0), (0, 0)] if data_format == "channels_first" else [(0, 0)]
    full = [(0, 0)] + list(pads) + [(0, 0)] if data_format == "channels_last" else spatial + list(pads)
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    assert model.output.shape == (None, *np.pad(x, full).shape[1:])
    x32 = tf.constant(x, tf.float32)
    upstream = tf.random.stateless_normal(np.pad(x, full).shape, (1, 2))
    with tf.GradientTape() as tape:
        tape.watch(x32)
        y = model(x32)
        loss = tf.reduce_sum(y * upstream)
    np.testing.assert_array_equal(np.asarray(y), np.pad(x.astype("float32"), full))
    middle = tuple(slice(before, n - after) for (before, after), n in zip(full, upstream.shape))
    np.testing.assert_array_equal(np.asarray(tape.gradient(loss, x32)), np.asarray(upstream)[middle])
    config = layer.get_config()
    assert config == keras.layers.ZeroPadding3D.from_config(config).get_config()
    model.save(tmp_path / "pad.keras")
    loaded = keras.models.load_model(tmp_path / "pad.keras")
    assert type(loaded.get_layer("pad")) is ConcatenatedZeroPadding3D


def test_training_a_conv3d_stem_leaves_tensorflows_graph_rewriter_working(capfd):
    """A Pad before a Conv3D: TensorFlow's remapper fused it into the convolution,
    lost the node the input gradient reads, printed an `E ... remapper failed`
    line in every I3D run (through absl, past TF_CPP_MIN_LOG_LEVEL) and left the
    training graph without its fusions. The Keras ZeroPadding3D twin still does,
    which shows the line is caught here."""
    model = VideoResNet((1,), input_shape=(3, 16, 16, 3), classes=3, width=4, conv1_time=3,
                        stem="32x2", pool1=False, dropout_rate=0.0)
    assert type(model.get_layer("conv1_pad")).__name__ == "ConcatenatedZeroPadding3D"
    # C2D's per-frame conv1 keeps Keras' layer (a Pad, behind the 2D path's reshape).
    c2d = VideoResNet((1,), input_shape=(2, 16, 16, 3), classes=3, width=4, pool1=False)
    assert type(c2d.get_layer("conv1_pad")) is keras.layers.ZeroPadding3D

    def twin(layer):
        cls = keras.layers.ZeroPadding3D if layer.name == "conv1_pad" else layer.__class__
        return cls.from_config(layer.get_config())

    x, y = np.zeros((2, 3, 16, 16, 3), "float32"), np.array([0, 1])
    # absl's level is the process's: a command another test ran in this process
    # (training/cli.py) may have set it to TF_CPP_MIN_LOG_LEVEL's 3, fatal only.
    cli.absl_log_level_as_tensorflow(0)
    printed = []
    for net in (model, keras.models.clone_model(model, clone_function=twin)):
        net.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        capfd.readouterr()
        net.train_on_batch(x, y)
        printed.append(capfd.readouterr().err)
    assert "remapper failed" not in printed[0], printed[0][-2000:]
    assert "remapper failed" in printed[1] and "conv1_pad" in printed[1], printed[1][-2000:]

"""`inflate_weights`: 2D keras.applications ResNet weights into the video ResNets (offline)."""

import keras
import numpy as np
import pytest

from nonlocal_keras.applications import C2DResNet50, I3DResNet50, VideoResNet, inflate_weights

STAGE_BLOCKS_R50 = (3, 4, 6, 3)


@pytest.fixture(scope="module")
def resnet50():
    """Keras' ResNet50 without downloads, every weight and BN statistic random."""
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    for variable in model.weights:
        values = rng.normal(0.0, 0.05, variable.shape)
        if "variance" in variable.path:
            values = rng.uniform(0.5, 2.0, variable.shape)
        variable.assign(values.astype("float32"))
    return model


@pytest.fixture(scope="module")
def inflated(resnet50):
    models = {"c2d": C2DResNet50(), "i3d": I3DResNet50()}
    untouched = {key: inflate_weights(resnet50, model) for key, model in models.items()}
    return models, untouched


def source_name(target_name):
    branches = {"branch1": 0, "branch2a": 1, "branch2b": 2, "branch2c": 3}
    if target_name == "conv1":
        return "conv1_conv"
    stage, block, branch = target_name.split("_")
    return f"conv{stage[3:]}_block{int(block) + 1}_{branches[branch]}_conv"


@pytest.mark.parametrize("key", ["c2d", "i3d"])
def test_kernels_are_split_over_time_and_biases_folded(resnet50, inflated, key):
    model = inflated[0][key]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    assert len(convs) == 53
    for conv in convs:
        source = resnet50.get_layer(source_name(conv.name))
        kernel = np.asarray(conv.kernel, "float64")
        time = kernel.shape[0]
        for plane in kernel:
            np.testing.assert_allclose(plane, np.asarray(source.kernel, "float64") / time,
                                       rtol=1e-6, atol=1e-8)
        bn = model.get_layer("res_conv1_bn" if conv.name == "conv1" else conv.name + "_bn")
        source_bn = resnet50.get_layer(source.name[:-4] + "bn")
        np.testing.assert_allclose(np.asarray(bn.moving_mean),
                                   np.asarray(source_bn.moving_mean) - np.asarray(source.bias),
                                   rtol=1e-6, atol=1e-7)
        for attr in ("gamma", "beta", "moving_variance"):
            np.testing.assert_array_equal(np.asarray(getattr(bn, attr)),
                                          np.asarray(getattr(source_bn, attr)))
    assert inflated[1][key] == ["pred"]


@pytest.mark.parametrize("key", ["c2d", "i3d"])
def test_static_clip_gives_the_2d_stem_output(resnet50, inflated, key):
    """conv1 + BN + ReLU on a clip of one repeated image equals the 2D stem per frame."""
    image = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("float32")
    clip = np.repeat(image[:, None], 7, axis=1)
    model = inflated[0][key]
    stem = keras.Model(model.input, model.get_layer("conv1_relu").output)(clip)
    source_stem = keras.Model(resnet50.input, resnet50.get_layer("conv1_relu").output)(image)
    # 5x7x7 kernels see zero padding in the first and last two frames.
    frames = range(7) if key == "c2d" else range(2, 5)
    for frame in frames:
        np.testing.assert_allclose(np.asarray(stem[:, frame]), np.asarray(source_stem),
                                   rtol=1e-4, atol=1e-4)


def test_depth_and_width_mismatches_name_the_layer(resnet50):
    with pytest.raises(ValueError, match=r"'res5_3_branch1'|'res5_3_branch2a'.*'conv5_block4_"):
        inflate_weights(resnet50, VideoResNet(STAGE_BLOCKS_R50[:3] + (4,)))
    with pytest.raises(ValueError, match=r"the first 'conv4_block6_.*differ in depth"):
        inflate_weights(resnet50, VideoResNet(STAGE_BLOCKS_R50[:2] + (5, 3)))
    with pytest.raises(ValueError, match=r"Layer 'conv1' has a kernel \(1, 7, 7, 3, 32\).*width"):
        inflate_weights(resnet50, VideoResNet(STAGE_BLOCKS_R50, width=32))


def test_weights_imagenet_inflates_keras_resnet(resnet50, monkeypatch):
    """`weights="imagenet"` goes through `inflate_weights` (the download is replaced here)."""
    calls = []

    def offline_resnet50(include_top, weights):
        calls.append((include_top, weights))
        return resnet50

    monkeypatch.setattr(keras.applications, "ResNet50", offline_resnet50)
    model = C2DResNet50(weights="imagenet", classes=5)
    assert calls == [(False, "imagenet")]
    np.testing.assert_array_equal(np.asarray(model.get_layer("res4_2_branch2b").kernel)[0],
                                  np.asarray(resnet50.get_layer("conv4_block3_2_conv").kernel))
    with pytest.raises(ValueError, match=r"ResNet-50/101 stages with width 64.*weights='imagenet'"):
        VideoResNet((1, 1), width=8, weights="imagenet")
    # As keras.applications, before any download: it was the inflation's
    # "the two networks differ in width", naming no argument.
    calls.clear()
    with pytest.raises(ValueError, match=r"RGB clips \(3 channels\)\. "
                       r"Received: input_shape=\(4, 64, 64, 1\)"):
        C2DResNet50(weights="imagenet", input_shape=(4, 64, 64, 1))
    assert calls == []


def test_weights_imagenet_offline_is_an_os_error_saying_what_to_do(tmp_path, monkeypatch):
    """Without internet (a cluster node) Keras' download raised a bare Exception:
    `nonlocal-train --set model.weights=imagenet` ended in a traceback."""
    import urllib.error

    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    with pytest.raises(OSError, match=r"ImageNet ResNet50 weights are not in its cache and cannot"
                       r" be downloaded \(URL fetch failure .*Name or service not known\).*"
                       r"Received: weights='imagenet'"):
        C2DResNet50(weights="imagenet", classes=5)

    def bug(include_top, weights):
        raise RuntimeError("a bug keeps its type")

    monkeypatch.setattr(keras.applications, "ResNet50", bug)
    with pytest.raises(RuntimeError, match="a bug keeps its type"):
        C2DResNet50(weights="imagenet", classes=5)

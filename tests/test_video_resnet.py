"""Video ResNets: counts, shapes, where the non-local blocks and inflated kernels sit, errors."""

import json
import os
import re

import keras
import numpy as np
import pytest

from nonlocal_keras.applications import (
    C2DResNet50,
    C2DResNet101,
    I3DResNet50,
    I3DResNet101,
    VideoResNet,
)
from nonlocal_keras.layers import NonLocal3D

CONSTRUCTORS = {"c2d50": C2DResNet50, "c2d101": C2DResNet101,
                "i3d50": I3DResNet50, "i3d101": I3DResNet101}
# PyTorchVideo's c2d_r50 / i3d_r50 with 400 classes (PAPER.md section 3).
PYTORCHVIDEO_PARAMS = {"c2d50": 24_327_632, "i3d50": 28_043_472}
# torchvision's resnet101 (44,549,160 parameters) with a 400-way classifier.
C2D_R101_PARAMS = 44_549_160 - 2049 * 1000 + 2049 * 400


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def nonlocal_positions(model):
    return sorted(layer.name[: -len("_nonlocal")] for layer in model.layers
                  if isinstance(layer, NonLocal3D))


def names(stage, indices):
    return [f"{stage}_{i}" for i in indices]


def i3d_extra_params(stage_blocks):
    """Parameters an I3D 3x1x1 adds to C2D, from PAPER.md's rule, by hand."""
    extra = 4 * 7 * 7 * 3 * 64  # conv1 1x7x7 -> 5x7x7
    rules = {"res2": lambda i: True, "res3": lambda i: i % 2 == 0,
             "res4": lambda i: i % 2 == 0, "res5": lambda i: i == 1}
    channels_in = 64
    for stage, blocks, inner in zip(rules, stage_blocks, (64, 128, 256, 512)):
        for block in range(blocks):
            if rules[stage](block):
                extra += 2 * channels_in * inner  # branch2a 1x1x1 -> 3x1x1
            channels_in = 4 * inner
    return extra


@pytest.fixture(scope="module")
def r50():
    """The two ResNet-50 baselines at their defaults, built once for this module."""
    return {"c2d50": C2DResNet50(), "i3d50": I3DResNet50()}


@pytest.mark.parametrize("key", ["c2d50", "i3d50"])
def test_r50_trainable_params_match_pytorchvideo(r50, key):
    count = trainable_params(r50[key])
    assert abs(count - PYTORCHVIDEO_PARAMS[key]) <= 1e-3 * PYTORCHVIDEO_PARAMS[key]


@pytest.mark.slow
def test_r101_trainable_params():
    assert trainable_params(C2DResNet101()) == C2D_R101_PARAMS
    assert trainable_params(I3DResNet101()) == C2D_R101_PARAMS + i3d_extra_params((3, 4, 23, 3))


def test_i3d_r50_extra_params_follow_the_inflation_rule(r50):
    c2d, i3d = trainable_params(r50["c2d50"]), trainable_params(r50["i3d50"])
    assert i3d - c2d == i3d_extra_params((3, 4, 6, 3))


@pytest.mark.parametrize("key", ["c2d50", "i3d50",
                                 pytest.param("c2d101", marks=pytest.mark.slow),
                                 pytest.param("i3d101", marks=pytest.mark.slow)])
def test_shapes_top_and_feature_map(key):
    clip = np.random.default_rng(0).normal(size=(1, 4, 32, 32, 3)).astype("float32")
    scores = CONSTRUCTORS[key](classes=7)(clip)
    assert scores.shape == (1, 7)
    np.testing.assert_allclose(np.sum(scores, axis=-1), 1.0, rtol=1e-5)
    features = CONSTRUCTORS[key](include_top=False)(clip)
    # 32 -> conv1 16 -> pool1 7 -> res3 4 -> res4 2 -> res5 1; time 4 -> pool2 2.
    assert features.shape == (1, 2, 1, 1, 2048)
    pooled = CONSTRUCTORS[key](include_top=False, pooling="avg",
                               input_shape=(4, 32, 32, 3))
    assert pooled.output_shape == (None, 2048)


def test_official_spatial_sizes_at_224():
    model = C2DResNet50(input_shape=(8, 224, 224, 3))
    sizes = {name: model.get_layer(name).output.shape[1:4]
             for name in ("conv1_relu", "pool1", "res2_2", "pool2", "res3_3", "res4_5", "res5_2")}
    # Official: no padding in pool1 (112 -> 55); 28, 14, 7 after the strided stages.
    assert sizes == {"conv1_relu": (8, 112, 112), "pool1": (8, 55, 55), "res2_2": (8, 55, 55),
                     "pool2": (4, 55, 55), "res3_3": (4, 28, 28), "res4_5": (4, 14, 14),
                     "res5_2": (4, 7, 7)}


@pytest.mark.parametrize("constructor", [C2DResNet50, I3DResNet50])
def test_paper_stem_downsamples_time_before_res2(constructor):
    model = constructor(stem="32x2", input_shape=(32, 32, 32, 3))
    frames = {name: model.get_layer(name).output.shape[1]
              for name in ("conv1_relu", "pool1", "res2_2", "res3_3", "res5_2")}
    assert frames == {"conv1_relu": 16, "pool1": 8, "res2_2": 8, "res3_3": 4, "res5_2": 4}
    assert trainable_params(model) == PYTORCHVIDEO_PARAMS[
        "c2d50" if constructor is C2DResNet50 else "i3d50"]
    with pytest.raises(ValueError, match=r"smallest allowed is \(7, 5, 5, 3\)"):
        constructor(stem="32x2", input_shape=(6, 32, 32, 3))
    with pytest.raises(ValueError, match=r"Received: stem='32x4'"):
        constructor(stem="32x4")


def test_fully_convolutional_any_clip_size():
    model = VideoResNet((1, 1), width=8, classes=3, nonlocal_blocks={"res3": [0]})
    for shape in ((1, 2, 40, 48, 3), (2, 6, 64, 33, 3)):
        assert model(np.zeros(shape, "float32")).shape == (shape[0], 3)


@pytest.mark.parametrize("depth, blocks, expected", [
    (50, 1, names("res4", [4])),
    (50, 5, names("res3", [1, 3]) + names("res4", [1, 3, 5])),
    (50, 10, names("res3", range(4)) + names("res4", range(6))),
    (101, 5, names("res3", [1, 3]) + names("res4", [6, 13, 20])),
    (101, 1, names("res4", [21])),
    (50, "res2", names("res2", [1])),
    (50, "res3", names("res3", [2])),
    (50, "res4", names("res4", [4])),
    (50, "res5", names("res5", [1])),
    (50, {"res3": [0], "res5": [2]}, ["res3_0", "res5_2"]),
])
def test_nonlocal_blocks_sit_where_the_table_says(depth, blocks, expected):
    constructor = C2DResNet50 if depth == 50 else C2DResNet101
    model = constructor(nonlocal_blocks=blocks)
    assert nonlocal_positions(model) == sorted(expected)
    # Each block: theta, phi, g (C -> C/2, with bias), W_z (C/2 -> C, with bias), BN gamma/beta.
    channels = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    added = sum(2 * c * c + 4.5 * c for c in (channels[block[:4]] for block in expected))
    baseline = PYTORCHVIDEO_PARAMS["c2d50"] if depth == 50 else C2D_R101_PARAMS
    assert trainable_params(model) == baseline + added
    for block in expected:
        # Right after the residual block, and feeding the next layer.
        assert model.get_layer(f"{block}_nonlocal").input is model.get_layer(block).output


@pytest.mark.slow
def test_r101_ten_blocks_and_baseline():
    assert len(nonlocal_positions(I3DResNet101(nonlocal_blocks=10))) == 10
    assert nonlocal_positions(I3DResNet101()) == []


def test_nonlocal_mode_and_affinity_reach_every_block():
    model = I3DResNet50(nonlocal_blocks=5, nonlocal_mode="dot_product", nonlocal_affinity="space")
    blocks = [layer for layer in model.layers if isinstance(layer, NonLocal3D)]
    assert len(blocks) == 5
    assert {(b.mode, b.affinity, b.use_scale, b.inter_channels, b.effective_pool_size)
            for b in blocks} == {("dot_product", "space", True, None, (1, 2, 2))}


@pytest.mark.parametrize("inflation, branch, spatial", [("3x1x1", "branch2a", (1, 1)),
                                                        ("3x3x3", "branch2b", (3, 3))])
def test_i3d_inflates_every_other_block(r50, inflation, branch, spatial):
    model = r50["i3d50"] if inflation == "3x1x1" else I3DResNet50(inflation=inflation)
    assert tuple(model.get_layer("conv1").kernel.shape) == (5, 7, 7, 3, 64)
    inflated = sorted(layer.name[: -len(branch) - 1] for layer in model.layers
                      if isinstance(layer, keras.layers.Conv3D) and layer.kernel.shape[0] == 3)
    assert inflated == sorted(names("res2", [0, 1, 2]) + names("res3", [0, 2])
                              + names("res4", [0, 2, 4]) + names("res5", [1]))
    assert tuple(model.get_layer(f"res3_0_{branch}").kernel.shape[:3]) == (3,) + spatial
    assert all(layer.kernel.shape[0] == 1 for layer in r50["c2d50"].layers
               if isinstance(layer, keras.layers.Conv3D))


def test_stride_sits_in_the_3x3_convolution_and_layer_names_say_where(r50):
    model = r50["c2d50"]
    assert model.get_layer("res3_0_branch2a").strides == (1, 1, 1)
    assert model.get_layer("res3_0_branch2b").strides == (1, 2, 2)
    assert model.get_layer("res3_0_branch1").strides == (1, 2, 2)
    assert model.get_layer("res_conv1_bn").epsilon == 1e-5
    assert model.get_layer("pool5_dropout").rate == 0.5
    pattern = re.compile(r"^(clips|clip_size_check|conv1(_pad|_relu)?|res_conv1_bn|pool[125](_dropout)?|pred|"
                         r"res[2-5]_\d+(_branch(1|2[abc])(_bn|_relu|_pad)?|_sum|_nonlocal)?)$")
    assert all(pattern.match(layer.name) for layer in model.layers), [
        layer.name for layer in model.layers if not pattern.match(layer.name)]


def test_whole_model_keras_round_trip(tmp_path):
    model = VideoResNet((1, 2), width=8, classes=5, conv1_time=3,
                        inflated_blocks={"res2": "all", "res3": [1]},
                        nonlocal_blocks={"res3": [0]}, name="tiny_video_resnet")
    clip = np.random.default_rng(1).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    expected = model(clip, training=False)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored(clip, training=False), expected, rtol=1e-5, atol=1e-6)
    rebuilt = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]


def test_input_tensor_is_the_model_input():
    clips = keras.Input((4, 32, 32, 3), name="my_clips")
    model = VideoResNet((1, 1), width=8, include_top=False, pooling="max", input_tensor=clips)
    assert model.inputs[0] is clips
    assert model.output_shape == (None, 64)  # res3: 4 * 2 * width
    with pytest.raises(ValueError, match=r"`input_tensor` must be a Keras tensor"):
        VideoResNet((1,), input_tensor=np.zeros((1, 4, 32, 32, 3), "float32"))


def test_default_names_count_the_blocks_there_are():
    """A NumPy count was named `nl_`, a layout of no block `nl_` too."""
    assert C2DResNet50(nonlocal_blocks=np.int64(5), weights=None).name == "nl5_c2d_resnet50"
    assert C2DResNet50(nonlocal_blocks={"res3": []}).name == "c2d_resnet50"
    assert C2DResNet50(nonlocal_blocks={"res3": [0]}).name == "nl_c2d_resnet50"
    # None means the default (found by a walk: VideoResNet's was Keras' "functional").
    assert VideoResNet((1,), width=8, name=None).name == "video_resnet"
    # As C2DResNet50(name="") is; it was named '' (stop 56's walk).
    assert VideoResNet((1,), width=8, name="").name == "video_resnet"
    assert C2DResNet50(name="", include_top=False).name == "c2d_resnet50"


def test_a_stage_name_on_a_one_block_stage_follows_its_block():
    names = [layer.name for layer in VideoResNet((1, 1), width=8, nonlocal_blocks="res3").layers]
    assert names.index("res3_0_nonlocal") == names.index("res3_0") + 1


def test_demo_sized_network():
    model = VideoResNet((1, 1, 1), input_shape=(8, 32, 32, 3), classes=10, width=16,
                        pool1=False, pool2=False, nonlocal_blocks={"res4": [0]})
    assert model.get_layer("res4_0_nonlocal").input.shape[1:4] == (8, 4, 4)
    assert model(np.zeros((1, 8, 32, 32, 3), "float32")).shape == (1, 10)


@pytest.mark.parametrize("kwargs, message", [
    ({"nonlocal_blocks": {"res6": [0]}}, r"Unknown stage 'res6'.*res2, res3, res4, res5.*"
                                         r"Received: nonlocal_blocks="),
    ({"nonlocal_blocks": {3: [0]}}, r"Unknown stage 3 .*res5 \(stages are named: 'res3'\)\. "
                                    r"Received: nonlocal_blocks=\{3: \[0\]\}"),
    ({"nonlocal_blocks": {"res4": [6]}}, r"Block index 6 of res4.*6 residual blocks \(0 to 5\)"),
    ({"nonlocal_blocks": 3}, r"0, 1, 5 or 10.*Received: nonlocal_blocks=3"),
    # Found by a walk: one block (a typo for another, which had none).
    ({"nonlocal_blocks": {"res4": [0, 2, 0]}}, r"Block index 0 of res4 in `nonlocal_blocks` is "
                                               r"listed twice\. Received: nonlocal_blocks="),
    ({"nonlocal_blocks": "res9"}, r"Received: nonlocal_blocks='res9'"),
    ({"include_top": False, "classes": 10}, r"`classes` only applies with `include_top=True`"),
    ({"classes": 0}, r"Received: classes=0"),
    ({"pooling": "mean"}, r"Received: pooling='mean'"),
    # Ignored, as keras.applications does (found by a walk).
    ({"pooling": "max"}, r"only applies with `include_top=False`.*Received: pooling='max', "
                         r"include_top=True"),
    ({"weights": "missing.weights.h5"}, r"Received: weights='missing.weights.h5'"),
    ({"inflation": "3x3x1"}, r"Received: inflation='3x3x1'"),
    ({"input_shape": (8, 224, 224)}, r"Received: input_shape=\(8, 224, 224\)"),
    # Found by a walk: accepted without a word, a TypeError, or another argument named.
    ({"nonlocal_mode": "embeded_gaussian"}, r"`nonlocal_mode` must be one of .*"
                                             r"Received: nonlocal_mode='embeded_gaussian'"),
    ({"nonlocal_blocks": 5, "nonlocal_affinity": "spacetim"},
     r"Received: nonlocal_affinity='spacetim'"),
    ({"dropout_rate": "0.5"}, r"`dropout_rate` must be a number.*Received: dropout_rate='0.5'"),
    ({"dropout_rate": None}, r"Received: dropout_rate=None"),
    ({"input_shape": "8,64,64,3"}, r"Received: input_shape='8,64,64,3'"),
    ({"include_top": "False"}, r"`include_top` must be True or False"),
    # An image tensor: the message named input_shape, which the caller never wrote.
    ({"input_tensor": keras.Input((32, 32, 3))},
     r"`input_tensor` must be a batch of clips.*Received: input_tensor.shape=\(None, 32, 32, 3\)$"),
    # Keras' "Could not interpret activation function identifier: softmx".
    ({"classifier_activation": "softmx"}, r"Received: classifier_activation='softmx'$"),
    # The frozen-BN releases' arguments (an int of frames went unused without blocks).
    ({"nonlocal_frames_per_group": 4}, r"this network has none .*"
                                      r"Received: nonlocal_frames_per_group=4$"),
    ({"nonlocal_blocks": 5, "nonlocal_frames_per_group": {"res5": 4}},
     r"names 'res5', which has no non-local blocks .*res3, res4"),
    ({"nonlocal_blocks": 5, "nonlocal_frames_per_group": {"res3": 0}},
     r"Received: nonlocal_frames_per_group=\{'res3': 0\}$"),
    ({"nonlocal_blocks": 5, "nonlocal_frames_per_group": 4, "nonlocal_affinity": "space"},
     r"'spacetime' affinity. Received: nonlocal_frames_per_group=4, nonlocal_affinity='space'$"),
    ({"nonlocal_blocks": 5, "nonlocal_frames_per_group": {"res3": 4}, "input_shape": (12, 64, 64, 3)},
     r"does not suit nonlocal_frames_per_group=\{'res3': 4\}: the non-local blocks at res3 take "
     r"groups of 4 frames, and 12 frames give 6 at res3. The frame counts that work nearest to "
     r"12: 9 and 16."),
    ({"nonlocal_use_bn": "no"}, r"Received: nonlocal_use_bn='no'$"),
    ({"affine_bn": 1}, r"Received: affine_bn=1$"),
])
def test_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        I3DResNet50(**kwargs)


# At the smallest size res4's non-local block has a single key: Keras warns
# that its softmax is over one element, which is what that size means.
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")
def test_too_small_input_names_the_smallest_allowed():
    with pytest.raises(ValueError, match=r"smallest allowed is \(2, 5, 5, 3\)"):
        C2DResNet50(input_shape=(8, 4, 32, 3))
    with pytest.raises(ValueError, match=r"smallest allowed is \(2, 5, 5, 3\)"):
        C2DResNet50(input_shape=(1, 32, 32, 3))
    # res4's non-local block pools 2x2: it needs a 2x2 map there.
    with pytest.raises(ValueError, match=r"smallest allowed is \(2, 21, 21, 3\)"):
        C2DResNet50(input_shape=(8, 20, 20, 3), nonlocal_blocks=1)
    # The advertised smallest sizes do build and run.
    for blocks, size in ((0, 5), (1, 21)):
        model = C2DResNet50(input_shape=(2, size, size, 3), nonlocal_blocks=blocks)
        assert model(np.zeros((1, 2, size, size, 3), "float32")).shape == (1, 400)


def test_grouped_affinity_sizes_checked_by_the_constructor():
    # 48x48 gives res4 a 3x3 map, which the "time" affinity's 2x2 windows do
    # not tile: this failed only inside res4_1_nonlocal, naming neither
    # argument. The message names both and the sizes that work.
    kwargs = dict(nonlocal_blocks=5, nonlocal_affinity="time")
    with pytest.raises(ValueError, match=(
            r"nonlocal_affinity='time'.*height of 48 gives 3 at res4.*nearest to 48: 36 and 61\. "
            r"Received: input_shape=\(4, 48, 48, 3\), nonlocal_affinity='time'$")):
        C2DResNet50(input_shape=(4, 48, 48, 3), **kwargs)
    with pytest.raises(ValueError, match=r"width of 48 gives 3 at res4"):
        C2DResNet50(input_shape=(4, 64, 48, 3), **kwargs)
    # The sizes it names do build and run; "spacetime" takes 48, and "space"
    # pools no frames (1x2x2), so any clip length.
    model = C2DResNet50(input_shape=(4, 36, 61, 3), **kwargs)
    assert model(np.zeros((1, 4, 36, 61, 3), "float32")).shape == (1, 400)
    C2DResNet50(input_shape=(4, 48, 48, 3), nonlocal_blocks=5)
    C2DResNet50(input_shape=(3, 48, 48, 3), nonlocal_blocks=5, nonlocal_affinity="space")


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")
@pytest.mark.parametrize("affinity", ["spacetime", "space", "time"])
def test_the_smallest_clip_named_at_run_time_runs(affinity):
    """With unknown sizes, "time" named (2, 21, 21, 3), which its 2x2 windows
    do not tile: that clip then failed inside res4's block, naming a shape the
    caller never gave."""
    model = C2DResNet50(nonlocal_blocks=5, nonlocal_affinity=affinity)
    smallest = model.get_layer("clip_size_check").smallest
    C2DResNet50(input_shape=smallest, nonlocal_blocks=5, nonlocal_affinity=affinity)
    assert model(np.zeros((1, *smallest), "float32")).shape == (1, 400)
    for axis in range(3):
        smaller = np.zeros((1, *(s - (i == axis) for i, s in enumerate(smallest))), "float32")
        with pytest.raises(ValueError, match=rf"smallest allowed is \({smallest[0]}, "):
            model(smaller)


def test_a_float64_policy_and_an_unreadable_weights_file_are_named(tmp_path):
    """float64: TensorFlow's "DataType float64 not in list of allowed values" from
    inside MaxPooling3D; a file that is not HDF5: h5py's "file signature not
    found", naming neither the argument nor the file."""
    keras.config.set_dtype_policy("float64")
    try:
        with pytest.raises(ValueError, match=r"max pools do not run in float64 .*"
                           r"Received: keras.config.dtype_policy\(\)='float64'$"):
            C2DResNet50(input_shape=(4, 32, 32, 3))
        # Without the pools it runs.
        model = VideoResNet((1,), input_shape=(2, 16, 16, 3), classes=3, width=4, pool1=False,
                            pool2=False)
        assert model(np.zeros((1, 2, 16, 16, 3))).shape == (1, 3)
    finally:
        keras.config.set_dtype_policy("float32")
    page = tmp_path / "page.weights.h5"
    page.write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match=rf"Cannot read the weights file .*Received: "
                       rf"weights='{page}'$"):
        C2DResNet50(input_shape=(4, 32, 32, 3), weights=str(page))


def test_numpy_integers_and_paths_are_taken_as_python_ones(tmp_path):
    """`classes=labels.max() + 1` failed on Dense's `units`, a NumPy conv1_time on
    the padding, NumPy block indices were refused; a pathlib.Path weights file
    was refused."""
    model = VideoResNet((np.int64(1), 1), width=np.int64(8), conv1_time=np.int64(3),
                        classes=np.int64(7), stage_strides=(np.int64(1), np.int64(2)),
                        nonlocal_blocks={"res3": [np.int64(0)]},
                        input_shape=(4, 32, 32, np.int64(3)))
    assert model.output_shape == (None, 7)
    model.save_weights(str(tmp_path / "w.weights.h5"))
    again = VideoResNet((1, 1), width=8, conv1_time=3, classes=7,
                        nonlocal_blocks={"res3": [0]}, input_shape=(4, 32, 32, 3),
                        weights=tmp_path / "w.weights.h5")
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_weights_file_of_another_network_is_refused_naming_what_differs(tmp_path):
    """Found by a walk: a file with a non-local block loaded into the network
    without it, the block's weights dropped without a word; another class count
    was Keras' error naming neither `classes` nor a shape. Without the top, a
    whole network's file gives its backbone (the classifier left out)."""
    def network(**kwargs):
        return VideoResNet((1, 1), width=4, input_shape=(4, 32, 32, 3), **kwargs)

    full = network(nonlocal_blocks={"res3": [0]}, classes=5)
    path = str(tmp_path / "full.weights.h5")
    full.save_weights(path)
    with pytest.raises(ValueError, match=r"^The weights file is another network's .*: 12 weight "
                       r"array\(s\) of the file have no place in the model: layers/non_local3d/"
                       rf".* and 7 more\. Received: weights='{re.escape(path)}'$"):
        network(classes=5, weights=path)
    with pytest.raises(ValueError, match=r"2 weight\(s\) differ in shape: pred/kernel: \(32, 5\) "
                       r"in the file, \(32, 7\) in the model; pred/bias: \(5,\) in the file, "
                       r"\(7,\) in the model\. Received: weights="):
        network(nonlocal_blocks={"res3": [0]}, classes=7, weights=path)
    with pytest.raises(ValueError, match=r"12 weight array\(s\) of the model are not in the file"):
        plain = str(tmp_path / "plain.weights.h5")
        network(classes=5).save_weights(plain)
        network(nonlocal_blocks={"res3": [0]}, classes=5, weights=plain)
    backbone = network(nonlocal_blocks={"res3": [0]}, include_top=False, weights=path)
    clip = np.random.default_rng(0).random((1, 4, 32, 32, 3), "float32")
    features = keras.Model(full.input, full.get_layer("pool5").input)
    np.testing.assert_array_equal(backbone.predict(clip, verbose=0),
                                  features.predict(clip, verbose=0))


def test_blocks_without_their_bn_in_the_file_are_refused_naming_the_argument(tmp_path):
    """Found by a walk: a converted frozen-BN release (blocks without the BN
    after W_z) fine-tuned into blocks with it, exit 0, the blocks' BN left new;
    from Python the error named no argument."""
    from nonlocal_keras.training import errors, models

    def network(use_bn, **kwargs):
        return VideoResNet((1, 1), width=4, input_shape=(4, 32, 32, 3), classes=5,
                           nonlocal_blocks={"res3": [0]}, nonlocal_use_bn=use_bn, **kwargs)

    for file_bn, message in ((False, r"the file's non-local blocks have no BN after W_z, the "
                                     r"model's have one: build it with nonlocal_use_bn=False"),
                             (True, r"the file's non-local blocks have a BN after W_z, the "
                                    r"model's have none: build it with nonlocal_use_bn=True")):
        path = str(tmp_path / f"bn_{file_bn}.weights.h5")
        network(file_bn).save_weights(path)
        with pytest.raises(ValueError, match=message):
            network(not file_bn, weights=path)
        with pytest.raises(errors.ConfigError, match=message):
            models.load_matching_weights(network(not file_bn), path)
    # Blocks the file lacks altogether (a C2D run into NL-C2D) still start new.
    plain = str(tmp_path / "plain.weights.h5")
    VideoResNet((1, 1), width=4, input_shape=(4, 32, 32, 3), classes=5).save_weights(plain)
    restored, left_new = models.load_matching_weights(network(True), plain)
    assert len(left_new) == 12 and restored


def test_blocks_the_file_has_at_other_places_are_refused(tmp_path):
    """Found by a walk: a run's blocks after res3_1, res3_3 and res4_1/3/5 loaded
    into blocks after res3_0, res3_2 and res4_0/2/4 (`Loaded 327 of 327 weight
    arrays`), in fine-tuning, evaluation and export alike: a weights file places
    the n-th block at `layers/non_local3d_<n>`, whatever its place."""
    from nonlocal_keras.applications import h5_weights
    from nonlocal_keras.training import errors, models

    def network(blocks, **kwargs):
        return VideoResNet((2, 2), width=4, input_shape=(4, 32, 32, 3), classes=5,
                           nonlocal_blocks=blocks, **kwargs)

    source = network({"res2": [0], "res3": [1]})
    path, unnamed = str(tmp_path / "named.weights.h5"), str(tmp_path / "unnamed.weights.h5")
    source.save_weights(path)
    source.save_weights(unnamed)
    h5_weights.write_block_names(path, source)
    # The file's order is the model's: its n-th block's arrays are the n-th name's.
    arrays = h5_weights.layer_arrays(path)
    for index, name in enumerate(["res2_0_nonlocal", "res3_1_nonlocal"]):
        group = "layers/non_local3d" + (f"_{index}" if index else "")
        theta = source.get_layer(name).theta.kernel
        assert any(np.array_equal(value, np.asarray(theta)) for key, value in arrays.items()
                   if key.startswith(group + "/")), name
    said = (r"its non-local blocks are res2_0, res3_1, the model's res2_0, res3_0, and a weights "
            r"file places blocks by their order")
    elsewhere = {"res2": [0], "res3": [0]}
    with pytest.raises(errors.ConfigError, match=said):
        models.load_matching_weights(network(elsewhere), path)
    with pytest.raises(errors.ConfigError, match=said):
        models._refuse_other_architecture(network(elsewhere), path, "it", "model.weights=x")
    with pytest.raises(ValueError, match=said):
        network(elsewhere, weights=path)
    restored, left_new = models.load_matching_weights(network({"res2": [0], "res3": [1]}), path)
    assert restored and not left_new
    # A block the file lacks, after those it has, still starts new.
    one, first = str(tmp_path / "one.weights.h5"), network({"res2": [0]})
    first.save_weights(one)
    h5_weights.write_block_names(one, first)
    restored, left_new = models.load_matching_weights(network({"res2": [0], "res3": [1]}), one)
    assert restored and left_new
    # Keras' own files name no block: placed by order, as before.
    models.load_matching_weights(network(elsewhere), unnamed)


def test_a_temporary_folder_that_takes_no_more_is_named(tmp_path, monkeypatch):
    """The check above writes the model's own weights in the temporary folder:
    a full /tmp (or a file size limit) was h5py's OSError or RuntimeError, a
    traceback, exit 1, in nonlocal-evaluate and nonlocal-export."""
    import errno
    import tempfile

    from nonlocal_keras.applications import h5_weights
    from nonlocal_keras.training import models
    from nonlocal_keras.training.errors import FolderError

    model = VideoResNet((1, 1), width=4, input_shape=(4, 32, 32, 3), classes=5)
    weights = str(tmp_path / "its.weights.h5")
    model.save_weights(weights)
    temporary = tmp_path / "tmp"
    temporary.mkdir()

    def full(path, **kwargs):  # as h5py says it when the file is closed
        raise RuntimeError("Can't decrement id ref count (file write failed: errno = 28, "
                           "error message = 'No space left on device')")

    monkeypatch.setattr(model, "save_weights", full)
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    expected = (rf"in the temporary folder '{re.escape(str(temporary))}' \(No space left on "
                r"device\); free space there, or set TMPDIR")
    with pytest.raises(OSError, match=expected) as raised:
        h5_weights.model_arrays(model)
    assert raised.value.errno == errno.ENOSPC
    # The commands' one line (exit 2), from evaluation and export.
    with pytest.raises(FolderError, match=expected):
        models._refuse_other_architecture(model, weights, "it", "x")
    assert os.listdir(temporary) == []


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")
def test_an_input_tensor_is_checked_with_its_own_shape():
    """The clip-size check ran on `input_shape` (or its default) while the model
    was built on `input_tensor`: a too small tensor failed inside a pool."""
    import keras

    with pytest.raises(ValueError, match=r"smallest allowed is \(2, 5, 5, 3\)"):
        C2DResNet50(input_tensor=keras.Input((8, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"must agree with `input_tensor`'s shape"):
        C2DResNet50(input_tensor=keras.Input((8, 32, 32, 3)), input_shape=(8, 64, 64, 3))
    model = C2DResNet50(input_tensor=keras.Input((8, 32, 32, 3)), input_shape=(8, None, 32, 3))
    assert model.input_shape == (None, 8, 32, 32, 3)


def test_video_resnet_argument_errors():
    with pytest.raises(ValueError, match=r"Received: stage_blocks=\(1, 0\)"):
        VideoResNet((1, 0))
    with pytest.raises(ValueError, match=r"Received: stage_strides=\(1,\)"):
        VideoResNet((1, 1), stage_strides=(1,))
    with pytest.raises(ValueError, match=r"Received: conv1_time=2"):
        VideoResNet((1,), conv1_time=2)
    with pytest.raises(ValueError, match=r"`inflated_blocks\['res2'\]`"):
        VideoResNet((1,), inflated_blocks={"res2": "some"})
    with pytest.raises(ValueError, match=r"`pool1` must be True or False. Received: pool1='no'"):
        VideoResNet((1,), pool1="no")  # bool("no") is True


# The `make demo` network with inputs of unknown size: a clip smaller than
# the network takes fails at run time with the words of the build-time check.
def _small_net(input_shape):
    return VideoResNet((1, 1, 1), input_shape=input_shape, classes=10, width=8,
                       pool1=False, pool2=False, nonlocal_blocks={"res4": [0]})


@pytest.mark.parametrize("clip", [(2, 8, 9), (1, 9, 1), (2, 4, 4)])
def test_too_small_clip_at_run_time(clip):
    import tensorflow as tf

    with pytest.raises(ValueError) as built:
        _small_net(clip + (3,))
    message = str(built.value).split(" Received:")[0]
    assert "smallest allowed is (1, 9, 9, 3)" in message
    model = _small_net((None, None, None, 3))
    x = np.zeros((1,) + clip + (3,), "float32")
    with pytest.raises(ValueError, match=re.escape(message)):
        model(x)  # eager
    with pytest.raises(ValueError, match=re.escape(message)):
        model.predict(x, verbose=0)  # traced at the call's shape
    graph = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, None, 3))])
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        graph(x)  # sizes known only when the graph runs
    assert graph(np.zeros((1, 1, 9, 9, 3), "float32")).shape == (1, 10)


# affinity="time" with unknown sizes: a clip the network cannot tile failed
# inside the block ("affinity='time' needs position axis 1 to be a multiple
# of the pool size there (2). Received: input_shape=(1, 2, 3, 3, 16)"),
# where a known input_shape is refused with the clip's own sizes.
def _time_net(input_shape=None):
    return VideoResNet((1, 1), input_shape=input_shape, classes=5, width=4, pool1=False,
                       pool2=False, nonlocal_blocks={"res3": [0]}, nonlocal_affinity="time")


@pytest.mark.parametrize("clip,name", [((2, 12, 16), "height"), ((2, 16, 12), "width")])
def test_untiled_clip_at_run_time_named_as_at_build_time(clip, name):
    import tensorflow as tf

    with pytest.raises(ValueError, match=f"{name} of 12 gives 3 at res3") as built:
        _time_net(clip + (3,))
    model = _time_net()
    layer = model.get_layer("clip_size_check")
    clone = type(layer).from_config(json.loads(json.dumps(layer.get_config())))
    x = np.zeros((1,) + clip + (3,), "float32")
    for run in (model, layer, clone, lambda x: model.predict(x, verbose=0),
                tf.function(model)):  # eager, and traced at the clip's shape
        with pytest.raises(ValueError, match=re.escape(str(built.value))):
            run(x)
    # Traced with unknown sizes, the block's own assertion still fires.
    graph = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, None, 3))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiple of the pool size") as ran:
        graph(x)
    # The whole shape: TensorFlow's assertion printed "[1 2 3...]".
    assert re.search(r"Received: input_shape=\] \[1 2 \d \d \d+\]", str(ran.value)), ran.value
    assert model(np.zeros((1, 2, 16, 16, 3), "float32")).shape == (1, 5)


def test_channels_first_setting_is_refused():
    keras.config.set_image_data_format("channels_first")
    try:
        with pytest.raises(ValueError, match="channels-last clips .* only.*"
                                             "Received: image_data_format='channels_first'"):
            _small_net((8, 16, 16, 3))
    finally:
        keras.config.set_image_data_format("channels_last")


def test_spec_is_frozen_and_builders_take_keywords():
    import dataclasses

    from nonlocal_keras.applications import video_resnet, video_resnet_spec

    spec = video_resnet_spec.check_spec(
        stage_blocks=(1, 1), width=8, conv1_time=1, inflated_blocks=None, inflation="3x1x1",
        stage_strides=None, pool1=True, pool2=True, nonlocal_blocks={"res3": [0]},
        nonlocal_mode="embedded_gaussian", nonlocal_affinity="spacetime", dropout_rate=0.5,
        stem="8x8")
    assert spec.nonlocal_blocks == {"res3": {0}} and spec.strides == (1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.depth = 50
    with pytest.raises(TypeError):
        video_resnet_spec.check_spec((1, 1), 8, 1, None, "3x1x1", None, True, True, 0, 0.5, "8x8")
    with pytest.raises(TypeError):
        video_resnet._named_resnet("c2d", 50, "3x1x1")


@pytest.mark.parametrize("policy", ["float16", "bfloat16"])
def test_trains_under_pure_low_precision_policies(policy):
    # Every variable in float16/bfloat16 (BN moving statistics included), as
    # Keras' BatchNormalization allows; the classifier stays float32.
    keras.config.set_dtype_policy(policy)
    try:
        model = VideoResNet((1, 1), input_shape=(2, 20, 20, 3), classes=3, width=8,
                            conv1_time=3, inflated_blocks={"res2": "all"},
                            nonlocal_blocks={"res2": [0], "res3": [0]})
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("res2_0_nonlocal").bn.moving_mean.dtype == policy
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(2, 2, 20, 20, 3)).astype("float32")
    history = model.fit(x, np.array([0, 2]), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def _in_a_fresh_process(script, *args):
    """Run `script` in a new Python (nothing imported or registered yet); it must exit 0."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_saved_video_resnet_loads_after_importing_the_applications(tmp_path):
    """As the README says: `import nonlocal_keras.applications` registers every
    layer of the video ResNets (it said `nonlocal_keras.layers`, which lacks
    VideoConv3D and ConcatenatedZeroPadding3D: "Could not locate class")."""
    model = VideoResNet((1,), input_shape=(3, 16, 16, 3), classes=3, width=4, conv1_time=3,
                        stem="32x2", pool1=False, nonlocal_blocks={"res2": [0]},
                        dropout_rate=0.0)
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(model(x)))
    script = ("import sys, numpy as np, keras, nonlocal_keras.applications\n"
              "m = keras.models.load_model(sys.argv[1] + '/m.keras', compile=False)\n"
              "y = np.asarray(m(np.load(sys.argv[1] + '/x.npy')))\n"
              "np.testing.assert_allclose(y, np.load(sys.argv[1] + '/y.npy'), rtol=1e-6)\n")
    _in_a_fresh_process(script, str(tmp_path))


def test_importing_the_training_package_registers_the_video_resnets_layers():
    """The README says `import nonlocal_keras.training` lets `load_model` restore a
    run's model.keras; it registered the non-local layers only ("Could not locate
    class 'VideoConv3D'")."""
    _in_a_fresh_process("import keras, nonlocal_keras.training\n"
                        "from keras.saving import get_registered_object as get\n"
                        "for name in ('VideoConv3D', 'ConcatenatedZeroPadding3D', 'NonLocal3D'):\n"
                        "    assert get('nonlocal_keras>' + name) is not None, name\n")


def test_affine_bn_trains_the_batch_norms_as_fixed_affine_maps():
    """`affine_bn=True` (the official MODEL.USE_AFFINE): a training step keeps
    every network BN's statistics and learns its scale; the non-local block's
    BN still trains on the batch; precise BN leaves the affine ones alone."""
    import tensorflow as tf

    from nonlocal_keras.training import precise_bn

    model = VideoResNet((1, 1), input_shape=(4, 32, 32, 3), classes=3, width=8,
                        nonlocal_blocks={"res3": [0]}, affine_bn=True, dropout_rate=0)
    batch_norms = [layer for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and all(bn.frozen_statistics for bn in batch_norms)
    block = model.get_layer("res3_0_nonlocal")
    assert not block.bn.frozen_statistics
    before = {bn.name: (bn.moving_mean.numpy().copy(), bn.gamma.numpy().copy())
              for bn in batch_norms}
    block_mean = block.bn.moving_mean.numpy().copy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    clips = np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    model.fit(clips, np.array([0, 1]), epochs=1, verbose=0)
    for bn in batch_norms:
        np.testing.assert_array_equal(bn.moving_mean.numpy(), before[bn.name][0])
        assert not np.array_equal(bn.gamma.numpy(), before[bn.name][1]), bn.name
    assert not np.array_equal(block.bn.moving_mean.numpy(), block_mean)
    # The block's BN, with batch statistics in training, back to the identity: the
    # rest of the network then computes the same in training as in inference (with
    # the block's gamma as the step left it, the two differed by up to 6e-5).
    block.bn.gamma.assign(np.zeros(block.bn.gamma.shape, "float32"))
    np.testing.assert_allclose(model(clips, training=True), model(clips, training=False),
                               rtol=1e-5, atol=1e-6)
    dataset = tf.data.Dataset.from_tensor_slices((clips, np.array([0, 1]))).batch(2)
    assert precise_bn.recompute_statistics(model, dataset, 1) == 1
    for bn in batch_norms:
        np.testing.assert_array_equal(bn.moving_mean.numpy(), before[bn.name][0])
    with pytest.raises(ValueError, match="Received: affine_bn='true'"):
        VideoResNet((1, 1), affine_bn="true")

"""Keypoint R-CNN with non-local blocks on TF Model Garden: targets, loss, decoding, head.

Every numerical check compares with an independent float64 NumPy computation
written here from the Mask R-CNN paper's definitions (section 5), not with
values the code produced.
"""

import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("official")
tf_keras = pytest.importorskip("tf_keras")

import smaller_detection  # noqa: E402
from nonlocal_keras.applications.mask_rcnn import keypoints as kp  # noqa: E402
from nonlocal_keras.applications.mask_rcnn.keypoint_head import KeypointHead  # noqa: E402
from nonlocal_keras.applications.mask_rcnn.nonlocal_block import NonLocalBlock2D  # noqa: E402


# --- NumPy references ----------------------------------------------------------


def reference_targets(keypoints, visibility, rois, size):
    """Loop over every keypoint: its bin in the RoI's M x M grid, Detectron's rules."""
    keypoints = np.asarray(keypoints, np.float64)
    rois = np.asarray(rois, np.float64)
    targets = np.zeros(keypoints.shape[:-1], np.int64)
    weights = np.zeros(keypoints.shape[:-1], np.float64)
    for index in np.ndindex(*keypoints.shape[:-1]):
        y, x = keypoints[index]
        ymin, xmin, ymax, xmax = rois[index[:-1]]
        row = size - 1 if y == ymax else int(np.floor((y - ymin) / (ymax - ymin) * size))
        col = size - 1 if x == xmax else int(np.floor((x - xmin) / (xmax - xmin) * size))
        if visibility[index] > 0 and 0 <= row < size and 0 <= col < size:
            targets[index] = row * size + col
            weights[index] = 1.0
    return targets, weights


def reference_loss(logits, targets, weights):
    """Sum over counted keypoints of -log softmax(logits)[target], over their count."""
    logits = np.asarray(logits, np.float64)
    total, count = 0.0, 0.0
    for index in np.ndindex(*targets.shape):
        if not weights[index]:
            continue
        heatmap = logits[index[:-1]][..., index[-1]].reshape(-1)  # (M*M,)
        log_z = np.log(np.sum(np.exp(heatmap - heatmap.max()))) + heatmap.max()
        total += log_z - heatmap[targets[index]]
        count += 1
    return total / count if count else 0.0


# --- targets ---------------------------------------------------------------------


def test_targets_match_the_numpy_reference_on_random_rois_and_keypoints():
    rng = np.random.default_rng(0)
    batch, rois, k, size = 2, 5, 7, 56
    corner = rng.uniform(0, 100, size=(batch, rois, 2))
    extent = rng.uniform(5, 80, size=(batch, rois, 2))
    boxes = np.concatenate([corner, corner + extent], -1)  # [ymin, xmin, ymax, xmax]
    # Keypoints mostly inside, some outside the RoI; a few on its edges.
    points = corner[:, :, None] + rng.uniform(-0.2, 1.2, size=(batch, rois, k, 2)) * extent[:, :, None]
    points[0, 0, 0] = boxes[0, 0, 2:]  # exactly on the far corner: last bin
    points[0, 0, 1] = boxes[0, 0, :2]  # exactly on the near corner: bin 0
    visibility = rng.integers(0, 3, size=(batch, rois, k))
    visibility[0, 0, :2] = 2
    expected_t, expected_w = reference_targets(points, visibility, boxes, size)
    targets, weights = kp.keypoint_targets(
        points.astype("float32"), visibility, boxes.astype("float32"), size)
    # float32 rounding can move a point sitting on a bin edge; none is here.
    np.testing.assert_array_equal(weights.numpy(), expected_w)
    np.testing.assert_array_equal(targets.numpy(), expected_t)
    assert targets.numpy()[0, 0, 0] == size * size - 1 and targets.numpy()[0, 0, 1] == 0
    assert 0 < expected_w.sum() < expected_w.size  # both kinds occur


def test_unlabelled_and_outside_keypoints_do_not_count():
    boxes = np.array([[10.0, 20.0, 66.0, 76.0]], "float32")  # 56 x 56: one pixel per bin
    points = np.array([[[30.0, 40.0], [30.0, 40.0], [5.0, 40.0], [30.0, 90.0]]], "float32")
    targets, weights = kp.keypoint_targets(points, np.array([[2, 0, 2, 1]]), boxes, 56)
    np.testing.assert_array_equal(weights.numpy(), [[1, 0, 0, 0]])
    assert targets.numpy()[0, 0] == (30 - 10) * 56 + (40 - 20)


# --- loss ------------------------------------------------------------------------


def test_loss_on_a_2x2_heatmap_by_hand():
    # One RoI, two keypoints on a 2x2 grid; the second is not labelled.
    logits = np.zeros((1, 2, 2, 2), "float32")
    logits[0, :, :, 0] = [[1.0, 2.0], [3.0, 4.0]]
    logits[0, :, :, 1] = [[9.0, 0.0], [0.0, 0.0]]
    targets = np.array([[3, 1]])  # keypoint 0 at (row 1, col 1)
    weights = np.array([[1.0, 0.0]])
    # -log(e^4 / (e + e^2 + e^3 + e^4)), by hand.
    expected = -4.0 + np.log(np.e + np.e**2 + np.e**3 + np.e**4)
    loss = kp.keypoint_loss(logits, targets, weights)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)


def test_loss_matches_the_reference_and_is_normalised_by_counted_keypoints():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 8, 8, 4)).astype("float32") * 3
    targets = rng.integers(0, 64, size=(2, 3, 4))
    weights = (rng.uniform(size=(2, 3, 4)) > 0.4).astype("float32")
    expected = reference_loss(logits, targets, weights)
    got = kp.keypoint_loss(logits, targets, weights).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Doubling every logit of the uncounted keypoints changes nothing.
    moved = logits.copy()
    moved[..., :][np.broadcast_to(weights[:, :, None, None, :] == 0, logits.shape)] *= 2
    np.testing.assert_allclose(kp.keypoint_loss(moved, targets, weights).numpy(), expected, rtol=1e-5)
    assert kp.keypoint_loss(logits, targets, np.zeros_like(weights)).numpy() == 0.0


# --- decoding --------------------------------------------------------------------


def test_encode_then_decode_returns_each_keypoint_within_half_a_bin():
    rng = np.random.default_rng(2)
    size, k = 56, 17
    corner = rng.uniform(0, 200, size=(3, 2))
    extent = rng.uniform(20, 150, size=(3, 2))
    boxes = np.concatenate([corner, corner + extent], -1).astype("float32")
    points = (corner[:, None] + rng.uniform(0.01, 0.99, size=(3, k, 2)) * extent[:, None]).astype("float32")
    targets, weights = kp.keypoint_targets(points, np.full((3, k), 2), boxes, size)
    assert weights.numpy().all()
    # A heatmap whose only peak is the target bin.
    heatmaps = np.full((3, size * size, k), -5.0, "float32")
    for r in range(3):
        for j in range(k):
            heatmaps[r, targets.numpy()[r, j], j] = 5.0
    heatmaps = heatmaps.reshape(3, size, size, k)
    decoded, scores = kp.heatmaps_to_keypoints(heatmaps, boxes)
    half_bin = extent[:, None, :] / size / 2
    assert decoded.shape == (3, k, 2)
    assert (np.abs(decoded.numpy() - points) <= half_bin + 1e-3).all()
    # Score: the softmax probability of the peak, e^5 / (e^5 + (M*M - 1) e^-5).
    expected = np.exp(5.0) / (np.exp(5.0) + (size * size - 1) * np.exp(-5.0))
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)


def test_decoding_puts_the_argmax_bin_centre_in_image_space():
    heatmaps = np.zeros((1, 4, 4, 1), "float32")
    heatmaps[0, 1, 3, 0] = 1.0  # row 1, col 3
    box = np.array([[100.0, 40.0, 108.0, 60.0]], "float32")  # bins 2 px high, 5 px wide
    decoded, _ = kp.heatmaps_to_keypoints(heatmaps, box)
    np.testing.assert_allclose(decoded.numpy(), [[[100.0 + 1.5 * 2, 40.0 + 3.5 * 5]]])


# --- the head ----------------------------------------------------------------------


def test_head_output_shapes_and_layers():
    head = KeypointHead(num_keypoints=5, num_convs=4, num_filters=8, head_nonlocal=(2, 4))
    out = head(tf.random.stateless_normal((2, 3, 14, 14, 6), seed=(1, 1)))
    assert out.shape == (2, 3, 56, 56, 5)
    assert head.compute_output_shape((2, 3, 14, 14, 6)) == (2, 3, 56, 56, 5)
    assert [c.kernel.shape for c in head.convs] == [(3, 3, 6, 8)] + [(3, 3, 8, 8)] * 3
    assert [b.name for b in head.blocks] == ["keypoint_nonlocal_2", "keypoint_nonlocal_4"]
    assert head.deconv.kernel.shape == (4, 4, 5, 8)  # 4x4 transposed conv to K channels
    default = KeypointHead()
    assert (default.num_keypoints, default.num_convs, default.num_filters) == (17, 8, 512)


def test_head_nonlocal_blocks_are_the_identity_at_init_and_live_after():
    x = tf.random.stateless_normal((1, 2, 14, 14, 4), seed=(3, 4))
    plain = KeypointHead(num_keypoints=3, num_convs=8, num_filters=8)
    with_nl = KeypointHead(num_keypoints=3, num_convs=8, num_filters=8, head_nonlocal=(2, 4, 6, 8))
    plain(x)
    with_nl(x)
    assert len(with_nl.blocks) == 4 and all(isinstance(b, NonLocalBlock2D) for b in with_nl.blocks)
    for source, target in zip(plain.convs + [plain.deconv], with_nl.convs + [with_nl.deconv]):
        target.set_weights(source.get_weights())
    expected = plain(x, training=False).numpy()
    np.testing.assert_allclose(with_nl(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)
    for block in with_nl.blocks:
        block.bn.gamma.assign(tf.ones_like(block.bn.gamma))
    assert np.abs(with_nl(x, training=False).numpy() - expected).max() > 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head_nonlocal": [9]}, "Received: head_nonlocal=[9]"),
        ({"head_nonlocal": [2, 2]}, "Received: head_nonlocal=[2, 2]"),
        ({"head_nonlocal": [0]}, "Received: head_nonlocal=[0]"),
        ({"num_keypoints": 0}, "Received: num_keypoints=0"),
        ({"nonlocal_mode": "softmax"}, "Received: nonlocal_mode='softmax'"),
    ],
)
def test_head_rejects_bad_arguments_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        KeypointHead(**kwargs)


SEVEN = "task.model.keypoint_head.num_keypoints=7,"
SEVEN_FLIP = "task.model.keypoint_head.flip_permutation=[0,2,1,4,3,6,5],"


@pytest.mark.parametrize("override, message", [
    # COCO's 17 flips for 7 keypoints: a traceback at the first flipped image.
    (SEVEN + "task.model.keypoint_head.oks_sigmas=[0.1,0.1,0.1,0.1,0.1,0.1,0.1]",
     "a permutation of 0..6 that undoes itself (unset, it is COCO's 17)"),
    ("task.model.keypoint_head.flip_permutation=[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]",
     "Received: task.model.keypoint_head.flip_permutation=[0, 0, 0"),
    (SEVEN + "task.model.keypoint_head.flip_permutation=[0,2,1,4,3,6,9]", "undoes itself."),
    (SEVEN + "task.model.keypoint_head.flip_permutation=[0,2,3,4,1,6,5]", "undoes itself."),
    # COCO's 17 OKS constants for 7 keypoints: failed at the first evaluation.
    (SEVEN + SEVEN_FLIP[:-1], "`task.model.keypoint_head.oks_sigmas` must give the OKS constant "
                              "of each of the 7 keypoints"),
    ("task.model.keypoint_head.oks_sigmas=[0.1]", "must be 17 positive numbers"),
    (SEVEN + SEVEN_FLIP + "task.model.keypoint_head.oks_sigmas=[0.1,0.1,0.1,0.0,0.1,0.1,0.1]",
     "must be 7 positive numbers, one a keypoint. Received: "),
    ("task.model.keypoint_head.loss_weight=-1.0", "`task.model.keypoint_head.loss_weight` must "
                                                 "be at least 0. Received: "),
    ("task.model.keypoint_head.num_sampled_rois=0", "must be 1 to "
                                                    "task.model.roi_sampler.num_sampled_rois (512)"),
    ("task.model.keypoint_head.num_sampled_rois=600", "Received: "
                                                      "task.model.keypoint_head.num_sampled_rois=600"),
    ("task.model.keypoint_head.roi_size=0", "`task.model.keypoint_head.roi_size` must be at least 1"),
])
def test_keypoint_settings_that_disagree_are_refused_before_anything_runs(override, message):
    """Each failed mid-training or at the first evaluation (a traceback, or a
    3,000-character line), or trained something else, exit 0 (an audit)."""
    from official.core import exp_factory
    from official.modeling import hyperparams

    from nonlocal_keras.applications.mask_rcnn import keypoint_experiment, trainer

    for name in keypoint_experiment.EXPERIMENTS:
        params = hyperparams.override_params_dict(exp_factory.get_exp_config(name), override,
                                                  is_strict=True)
        with pytest.raises(ValueError, match=re.escape(message)):
            trainer.check_value_ranges(params)
    # The stick figures' settings (written beside their records) pass.
    trainer.check_value_ranges(hyperparams.override_params_dict(
        exp_factory.get_exp_config(name), SEVEN + SEVEN_FLIP
        + "task.model.keypoint_head.oks_sigmas=[0.1,0.1,0.1,0.1,0.1,0.1,0.1]", is_strict=True))


def test_head_config_round_trips():
    head = KeypointHead(num_keypoints=4, num_convs=2, num_filters=8, head_nonlocal=[2])
    config = head.get_config()
    assert set(config) - {"name", "trainable", "dtype"} == {
        "num_keypoints", "num_convs", "num_filters", "head_nonlocal", "nonlocal_mode",
        "nonlocal_sub_sample", "use_sync_bn", "norm_momentum", "norm_epsilon", "kernel_regularizer",
    }
    clone = KeypointHead.from_config(config)
    x = tf.random.stateless_normal((1, 1, 14, 14, 3), seed=(5, 6))
    head(x)
    clone(x)
    clone.set_weights(head.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), head(x).numpy(), rtol=1e-6)


# --- data: records, decoder, parser transforms ---------------------------------------------


def test_flip_mirrors_x_and_swaps_left_and_right():
    from nonlocal_keras.applications.mask_rcnn import keypoint_data

    points = np.array([[[0.1, 0.2, 2], [0.3, 0.9, 1], [0.5, 0.4, 0]]], "float32")
    flipped = keypoint_data.flip_keypoints(points, (0, 2, 1)).numpy()
    expected = np.array([[[0.1, 0.8, 2], [0.5, 0.6, 0], [0.3, 0.1, 1]]])
    np.testing.assert_allclose(flipped, expected, rtol=1e-6)


def test_scaling_maps_keypoints_like_box_corners_and_drops_those_cropped_out():
    from nonlocal_keras.applications.mask_rcnn import keypoint_data
    from official.vision.ops import preprocess_ops

    # A 200x100 (h x w) image scaled by 1.5 then cropped at offset (30, 10) to 256x256.
    points = np.array([[[0.5, 0.5, 2], [0.05, 0.5, 2], [0.5, 0.99, 1]]], "float32")
    scale, offset, size = np.array([1.5, 1.5]), np.array([30.0, 10.0]), np.array([256.0, 256.0])
    got = keypoint_data.scale_keypoints(points, np.array([200, 100]), scale.astype("float32"),
                                        offset.astype("float32"), size.astype("float32")).numpy()
    pixels = points[0, :, :2] * [200, 100] * scale - offset  # float64 reference
    np.testing.assert_allclose(got[0, :, :2], pixels, rtol=1e-6)
    # (0.05 * 200) * 1.5 - 30 = -15: above the crop, no longer labelled.
    np.testing.assert_array_equal(got[0, :, 2], [2, 0, 1])
    # The same mapping Model Garden applies to a box's corners.
    corner = preprocess_ops.resize_and_crop_boxes(
        tf.constant([[100.0, 50.0, 100.0, 50.0]]), scale.astype("float32"), size.astype("float32"),
        offset.astype("float32")).numpy()
    np.testing.assert_allclose(got[0, 0, :2], corner[0, :2], rtol=1e-6)


@pytest.fixture(scope="module")
def stick_figures(tmp_path_factory):
    from nonlocal_keras.applications.mask_rcnn import synthetic_keypoints

    return synthetic_keypoints.build(str(tmp_path_factory.mktemp("figures")), num_train=3, num_val=2)


def test_synthetic_figures_are_coco_keypoints_and_records_decode_to_them(stick_figures):
    import json

    from PIL import Image

    from nonlocal_keras.applications.mask_rcnn import keypoint_data, synthetic_keypoints

    with open(stick_figures["train_json"]) as f:
        coco = json.load(f)
    (category,) = coco["categories"]
    assert category["keypoints"] == list(synthetic_keypoints.KEYPOINTS)
    for annotation in coco["annotations"]:
        values = np.array(annotation["keypoints"]).reshape(-1, 3)
        x, y, w, h = annotation["bbox"]
        assert (values[:, 2] == 2).all() and annotation["num_keypoints"] == len(values)
        assert ((values[:, 0] >= x) & (values[:, 0] <= x + w)).all()
        assert ((values[:, 1] >= y) & (values[:, 1] <= y + h)).all()
        assert values[3, 0] <= values[4, 0] and values[5, 0] <= values[6, 0]  # left has smaller x
    # Every keypoint is drawn: a bright pixel where it lies.
    first = coco["images"][0]
    pixels = np.asarray(Image.open(
        f"{stick_figures['train_json'][:-5]}/{first['file_name']}")).max(-1)
    for annotation in (a for a in coco["annotations"] if a["image_id"] == first["id"]):
        for x, y, _ in np.array(annotation["keypoints"]).reshape(-1, 3):
            assert pixels[int(y), int(x)] >= 120
    # The records carry the same keypoints, normalised.
    record = next(iter(tf.data.TFRecordDataset(tf.io.gfile.glob(stick_figures["train_tfrecords"]))))
    decoded = keypoint_data.KeypointDecoder(num_keypoints=7).decode(record)
    image = next(i for i in coco["images"] if i["id"] == int(decoded["source_id"].numpy()))
    annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    expected = np.array([np.array(a["keypoints"]).reshape(-1, 3) for a in annotations])
    expected[..., 0] /= image["width"]
    expected[..., 1] /= image["height"]
    np.testing.assert_allclose(decoded["groundtruth_keypoints"].numpy(),
                               expected[..., [1, 0, 2]], rtol=1e-5)


def test_records_without_keypoints_or_of_another_count_are_named(stick_figures):
    """Model Garden's converter writes no keypoints ("indices[0] = 0 is not in [0, 0)")
    and records of 7 keypoints read as 17 ("Input to reshape is a tensor with 21
    values"): tracebacks mid-training; now one line naming the data and the count."""
    from official.core import exp_factory

    from nonlocal_keras.applications.mask_rcnn import keypoint_data, trainer

    record = next(iter(tf.data.TFRecordDataset(tf.io.gfile.glob(stick_figures["train_tfrecords"]))))
    example = tf.train.Example.FromString(record.numpy())
    for key in list(example.features.feature):
        if key.startswith("image/object/keypoint/"):
            del example.features.feature[key]
    params = exp_factory.get_exp_config("keypoint_rcnn_resnetfpn_coco")
    params.task.train_data.input_path = "/data/train*"
    for serialized, count in ((example.SerializeToString(), 7), (record, 17)):
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            keypoint_data.KeypointDecoder(num_keypoints=count).decode(serialized)
        params.task.model.keypoint_head.num_keypoints = count
        with pytest.raises(ValueError, match=(
                rf"^The training data's records do not hold {count} keypoints an object .*"
                rf"Received: task.train_data.input_path='/data/train\*', "
                rf"task.model.keypoint_head.num_keypoints={count}$")):
            with trainer.damaged_files_named(params, "run", "train"):
                raise raised.value
    assert keypoint_data.KeypointDecoder(num_keypoints=7).decode(record)[
        "groundtruth_keypoints"].shape[1:] == (7, 3)


# --- experiments, model, task ----------------------------------------------------------


def _configs():
    import os

    import nonlocal_keras.training
    from nonlocal_keras.applications import mask_rcnn  # noqa: F401  (registers)

    return os.path.join(os.path.dirname(nonlocal_keras.training.__file__), "configs")


def tiny_keypoint_config(experiment_name="keypoint_rcnn_resnetfpn_nonlocal_coco", input_size=128,
                         data=None):
    import os

    from official.core import exp_factory
    from official.modeling.hyperparams import params_dict

    from nonlocal_keras.applications.mask_rcnn import synthetic_keypoints

    config = exp_factory.get_exp_config(experiment_name)
    params_dict.override_params_dict(config, os.path.join(_configs(), "maskrcnn_keypoint_tiny.yaml"),
                                     is_strict=True)
    config.task.override(synthetic_keypoints.task_override(), is_strict=True)
    config.task.model.input_size = [input_size, input_size, 3]
    if data:
        config.task.train_data.input_path = data["train_tfrecords"]
        config.task.validation_data.input_path = data["val_tfrecords"]
        config.task.annotation_file = data["val_json"]
    return config


@pytest.mark.parametrize(
    "name, head, backbone",
    [
        ("keypoint_rcnn_resnetfpn_coco", [], []),
        ("keypoint_rcnn_resnetfpn_nonlocal_head_coco", [2, 4, 6, 8], []),
        ("keypoint_rcnn_resnetfpn_nonlocal_coco", [2, 4, 6, 8], ["res4:-1"]),
    ],
)
def test_the_three_experiments_are_table_6s_rows_on_the_nonlocal_mask_rcnn(name, head, backbone):
    from official.core import exp_factory

    ours = exp_factory.get_exp_config(name)
    model = ours.task.model
    assert list(model.keypoint_head.head_nonlocal) == head
    assert list(model.backbone.resnet_nonlocal.nonlocal_placements) == backbone
    assert (model.include_mask, model.num_classes, model.keypoint_head.num_keypoints) == (False, 2, 17)
    assert (model.keypoint_head.num_convs, model.keypoint_head.num_filters,
            model.keypoint_head.roi_size) == (8, 512, 14)
    assert ours.task.annotation_file.endswith("person_keypoints_val2017.json")
    # Everything else is the non-local Mask R-CNN experiment's.
    theirs = exp_factory.get_exp_config("maskrcnn_resnetfpn_nonlocal_coco").as_dict()
    ours = ours.as_dict()
    for config in (ours, theirs):
        config["task"]["model"]["backbone"]["resnet_nonlocal"].pop("nonlocal_placements")
        for key in ("include_mask", "num_classes", "keypoint_head"):
            config["task"]["model"].pop(key, None)
        config["task"].pop("annotation_file")
    assert ours == theirs
    # The tiny YAML serves all three.
    tiny = tiny_keypoint_config(name)
    tiny.validate()
    assert list(tiny.task.model.keypoint_head.head_nonlocal) == head


@pytest.mark.slow
def test_training_call_samples_foreground_rois_with_their_objects_keypoints():
    from official.core import task_factory

    tf_keras.utils.set_random_seed(0)
    config = tiny_keypoint_config()
    config.task.model.keypoint_head.num_sampled_rois = 6
    task = task_factory.get_task(config.task)
    model = task.build_model()
    assert [b.name for b in model.keypoint_head.blocks] == [f"keypoint_nonlocal_{i}" for i in (2, 4, 6, 8)]
    assert [layer.name for layer in model.backbone.layers if "nonlocal" in layer.name] == ["nonlocal_res4_5"]
    # One person per image, two padding rows (-1); keypoints inside its box.
    boxes = np.array([[[20.0, 30.0, 100.0, 80.0], [-1] * 4, [-1] * 4]] * 2, "float32")
    classes = np.array([[1, -1, -1]] * 2, "int32")
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.uniform([25, 35], [95, 75], size=(2, 3, 7, 2)),
                             np.full((2, 3, 7, 1), 2.0)], -1).astype("float32")
    points[:, 1:] = -1
    images = tf.random.stateless_uniform((2, 128, 128, 3), seed=(1, 2))
    from official.vision.ops import anchor

    anchors = anchor.Anchor(min_level=2, max_level=6, num_scales=1, aspect_ratios=[0.5, 1.0, 2.0],
                            anchor_size=8, image_size=(128, 128)).multilevel_boxes
    anchors = {k: tf.tile(v[None], [2, 1, 1, 1]) for k, v in anchors.items()}
    outputs = model(images, image_shape=tf.constant([[128.0, 128.0]] * 2), anchor_boxes=anchors,
                    gt_boxes=boxes, gt_classes=classes, gt_keypoints=points, training=True)
    assert outputs["keypoint_outputs"].shape == (2, 6, 56, 56, 7)
    weights = outputs["keypoint_weights"].numpy()
    targets = outputs["keypoint_targets"].numpy()
    rois = outputs["keypoint_rois"].numpy()
    assert weights.shape == targets.shape == (2, 6, 7) and rois.shape == (2, 6, 4)

    def iou(a, b):
        inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
        return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)

    # Model Garden's RoI sampler mixes the ground-truth box into the proposals,
    # so each image has a foreground RoI (IoU >= 0.5, its foreground threshold).
    assert all(iou(rois[b, 0], boxes[b, 0]) >= 0.5 for b in range(2))
    for b in range(2):
        foreground = np.array([iou(roi, boxes[b, 0]) >= 0.5 for roi in rois[b]], bool)
        expected_t, expected_w = reference_targets(
            points[b, 0, None].repeat(6, 0)[..., :2], points[b, 0, None].repeat(6, 0)[..., 2],
            rois[b], 56)
        expected_w *= foreground[:, None]
        np.testing.assert_array_equal(weights[b], expected_w)
        np.testing.assert_array_equal(targets[b][expected_w > 0], expected_t[expected_w > 0])


# --- evaluation --------------------------------------------------------------------------


def _ground_truth_as_predictions(json_path, scale, shift=0.0):
    """The JSON's own objects as one batch of predictions, in pixels of an input resized by `scale`."""
    import json

    with open(json_path) as f:
        coco = json.load(f)
    image = coco["images"][0]
    objects = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    boxes = np.array([[y, x, y + h, x + w] for x, y, w, h in (a["bbox"] for a in objects)])
    points = np.array([np.array(a["keypoints"]).reshape(-1, 3)[:, [1, 0]] for a in objects]) + shift
    info = np.array([[[image["height"], image["width"]], [image["height"] * scale] * 2,
                      [scale, scale], [0, 0]]], "float32")
    return {
        "source_id": np.array([image["id"]]),
        "detection_boxes": (boxes * scale)[None].astype("float32"),
        "detection_scores": np.ones((1, len(objects)), "float32"),
        "detection_classes": np.ones((1, len(objects)), "int32"),
        "num_detections": np.array([len(objects)]),
        "detection_keypoints": (points * scale)[None].astype("float32"),
        "image_info": info,
    }


def test_evaluator_gives_keypoint_ap_1_for_the_ground_truth_and_less_when_shifted(stick_figures):
    from nonlocal_keras.applications.mask_rcnn import synthetic_keypoints
    from nonlocal_keras.applications.mask_rcnn.keypoint_eval import KeypointCOCOEvaluator

    evaluator = KeypointCOCOEvaluator(stick_figures["val_json"], synthetic_keypoints.OKS_SIGMAS)
    # Predictions in an input resized by 2: the evaluator must scale them back.
    evaluator.update_state(None, _ground_truth_as_predictions(stick_figures["val_json"], 2.0))
    exact = evaluator.result()
    assert exact["keypoint_AP"] == pytest.approx(1.0) and exact["AP"] == pytest.approx(1.0)
    # 6 px off in x and y: OKS = exp(-72 / (2 * area * (2 sigma)^2)) per keypoint.
    evaluator.update_state(None, _ground_truth_as_predictions(stick_figures["val_json"], 2.0, 6.0))
    shifted = evaluator.result()
    assert shifted["AP"] == pytest.approx(1.0)  # boxes unchanged
    assert 0.0 <= shifted["keypoint_AP"] < 0.9


def test_evaluator_keeps_keypoints_in_fractions_of_a_pixel(stick_figures, monkeypatch):
    """Model Garden's conversion to COCO results truncates them (`.astype(int)`):
    keypoint AP of the README run 0.8702 against 0.8735 unrounded (an audit)."""
    from nonlocal_keras.applications.mask_rcnn import synthetic_keypoints
    from nonlocal_keras.applications.mask_rcnn.keypoint_eval import KeypointCOCOEvaluator

    evaluator = KeypointCOCOEvaluator(stick_figures["val_json"], synthetic_keypoints.OKS_SIGMAS)
    predictions = _ground_truth_as_predictions(stick_figures["val_json"], 2.0, 0.7)
    expected = predictions["detection_keypoints"][0].astype(np.float64) / 2.0  # [y, x]
    seen, load = [], evaluator.ground_truth.loadRes
    monkeypatch.setattr(evaluator.ground_truth, "loadRes",
                        lambda predictions: load(predictions=seen.extend(predictions) or predictions))
    evaluator.update_state(None, predictions)
    evaluator.result()
    got = np.array([result["keypoints"] for result in seen]).reshape(expected.shape[:2] + (3,))
    np.testing.assert_allclose(got[..., 0], expected[..., 1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[..., 1], expected[..., 0], rtol=0, atol=1e-5)
    assert (got[..., 2] == 1).all()


@pytest.mark.slow
def test_cli_trains_evaluates_and_exports_keypoints_that_load_without_the_package(tmp_path):
    import os
    import subprocess
    import sys

    from savedmodel_without_package import check_serves_without_the_package

    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    run = subprocess.run(
        [sys.executable, "-m", "nonlocal_keras.training.train_detection",
         "--experiment", "keypoint_rcnn_resnetfpn_nonlocal_coco",
         "--config_file", os.path.join(_configs(), "maskrcnn_keypoint_tiny.yaml"),
         "--synthetic_coco_dir", str(tmp_path / "data"),
         "--params_override", smaller_detection.OVERRIDES + "trainer.train_steps=2,"
         "trainer.steps_per_loop=1,trainer.checkpoint_interval=2,trainer.validation_interval=2,"
         "trainer.validation_steps=1",
         "--mode", "train_and_eval", "--model_dir", str(model_dir), "--export_dir", str(export_dir)],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "'keypoint_AP'" in run.stdout + run.stderr  # the evaluator ran
    assert (export_dir / "saved_model.pb").exists()
    check_serves_without_the_package(export_dir, tmp_path, {
        "detection_boxes": (1, 20, 4), "detection_keypoints": (1, 20, 7, 2),
        "detection_keypoint_scores": (1, 20, 7)})


@pytest.mark.parametrize("yaml_name, depth", [("maskrcnn_keypoint_r50_coco.yaml", 50),
                                              ("maskrcnn_keypoint_r101_coco.yaml", 101)])
def test_coco_recipes_apply_to_all_three_experiments(yaml_name, depth):
    import os

    from official.core import exp_factory
    from official.modeling.hyperparams import params_dict

    for name in ("keypoint_rcnn_resnetfpn_coco", "keypoint_rcnn_resnetfpn_nonlocal_head_coco",
                 "keypoint_rcnn_resnetfpn_nonlocal_coco"):
        config = exp_factory.get_exp_config(name)
        params_dict.override_params_dict(config, os.path.join(_configs(), yaml_name), is_strict=True)
        config.validate()
        assert config.task.model.backbone.resnet_nonlocal.model_id == depth
        assert config.task.model.keypoint_head.num_keypoints == 17
    with open(os.path.join(_configs(), yaml_name)) as f:
        assert "65.1" in f.read()  # the paper's numbers in the header


@pytest.mark.slow
def test_model_fit_wrapper_trains_the_keypoint_task(stick_figures):
    from official.core import task_factory

    from nonlocal_keras.applications.mask_rcnn import keras_fit

    tf_keras.utils.set_random_seed(2)
    config = tiny_keypoint_config("keypoint_rcnn_resnetfpn_coco", input_size=256, data=stick_figures)
    task = task_factory.get_task(config.task)
    model = task.build_model()
    trainer = keras_fit.TaskModel(task, model)
    trainer.compile(optimizer=task.create_optimizer(config.trainer.optimizer_config, config.runtime))
    history = trainer.fit(task.build_inputs(config.task.train_data), steps_per_epoch=2, epochs=3,
                          verbose=0).history
    assert "mask_loss" not in history
    assert min(history["labelled_keypoints"]) > 0  # an epoch's count, logged by fit
    assert all(np.isfinite(history["keypoint_loss"]))
    assert history["keypoint_loss"][-1] < history["keypoint_loss"][0]
    metrics = keras_fit.evaluate(task, model, steps=1)
    assert -1.0 <= metrics["keypoint_AP"] <= 1.0 and "AP" in metrics


def test_writing_records_stops_where_the_converter_would_drop_an_object(stick_figures, tmp_path):
    import json
    import os

    from nonlocal_keras.applications.mask_rcnn import keypoint_data

    with open(stick_figures["val_json"]) as f:
        coco = json.load(f)
    coco["annotations"][0]["bbox"][2] = 0.0  # an empty box: Model Garden's converter skips it
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco))
    image_dir = os.path.join(os.path.dirname(stick_figures["val_json"]), "val")
    with pytest.raises(ValueError, match="Received: image='000001.png'"):
        keypoint_data.write_keypoint_tfrecords(str(path), image_dir, str(tmp_path / "bad.tfrecord"))
    # Found by a walk: 20 and 24 numbers were written misaligned, and the
    # training then blamed the whole dataset ("do not hold 7 keypoints").
    for change, had in ((lambda a: a["keypoints"].pop(), "20 keypoint numbers"),
                        (lambda a: a["keypoints"].extend([1.0, 1.0, 2]),
                         "24 keypoint numbers \\(21 in annotation")):
        with open(stick_figures["val_json"]) as f:
            changed = json.load(f)
        change(changed["annotations"][-1])
        path.write_text(json.dumps(changed))
        identity = changed["annotations"][-1]["id"]
        with pytest.raises(ValueError, match=f"Annotation {identity} of .* has {had}.*Received: "
                                             "json_path="):
            keypoint_data.write_keypoint_tfrecords(str(path), image_dir,
                                                   str(tmp_path / "bad.tfrecord"))
    assert not list(tmp_path.glob("bad.tfrecord*"))


def test_keypoint_training_and_evaluation_settings_keep_the_same_network(tmp_path):
    """A finished keypoint run evaluated with another loss weight, sampling or OKS
    constants was refused as "another model"; none of them makes a variable."""
    from official.core import exp_factory

    from nonlocal_keras.applications.mask_rcnn import keypoint_experiment, trainer

    name = next(iter(keypoint_experiment.EXPERIMENTS))
    folder = tmp_path / "run"
    trainer._serialize_config(exp_factory.get_exp_config(name), str(folder))
    tf.train.Checkpoint(step=tf.Variable(1)).save(str(folder / "ckpt"))
    changed = exp_factory.get_exp_config(name)
    head = changed.task.model.keypoint_head
    head.loss_weight, head.num_sampled_rois = 2.0, 8
    head.oks_sigmas = [0.1] * head.num_keypoints
    trainer.check_model_dir(changed, str(folder), "eval")
    head.num_filters = 64
    with pytest.raises(ValueError, match=r"keypoint_head\.num_filters: 512 -> 64"):
        trainer.check_model_dir(changed, str(folder), "eval")


def test_validation_keypoints_that_cannot_be_scored_are_refused_before_training(
        stick_figures, tmp_path):
    """A validation JSON without one labelled keypoint trained the whole run,
    then scored keypoint AP -1, exit 0; one of another keypoint count failed in
    the evaluation, after the training."""
    import json
    import os
    import subprocess
    import sys

    from nonlocal_keras.applications.mask_rcnn import trainer

    task = tiny_keypoint_config(data=stick_figures).task
    trainer.check_annotation_file(task, "train_and_eval")  # labelled: fine
    with open(stick_figures["val_json"]) as handle:
        coco = json.load(handle)
    def variant(name, change):
        changed = json.loads(json.dumps(coco))
        for annotation in changed["annotations"]:
            change(annotation)
        (tmp_path / name).write_text(json.dumps(changed))
        return tmp_path / name

    def unlabel(annotation):  # pycocotools ignores ground truth of num_keypoints 0
        annotation["num_keypoints"] = 0

    unlabelled = variant("unlabelled.json", unlabel)
    bad = "must give each annotation `keypoints`, 7 .x, y, visibility. numbers"
    cases = [(unlabelled, "has no labelled keypoint")] + [
        (variant(name, change), bad) for name, change in (
            ("eight.json", lambda a: a["keypoints"].extend([1.0, 1.0, 2])),
            ("one_more_number.json", lambda a: a["keypoints"].append(1.0)),
            ("no_count.json", lambda a: a.pop("num_keypoints")),
            ("text.json", lambda a: a["keypoints"].__setitem__(2, "2")))]
    (tmp_path / "no_list.json").write_text(json.dumps({**coco, "annotations": {"a": 1}}))
    cases.append((tmp_path / "no_list.json", "holds no COCO `images` and `annotations` lists"))
    for path, message in cases:
        task.annotation_file = str(path)
        with pytest.raises(ValueError, match=f"{message}.*Received: task.annotation_file="):
            trainer.check_annotation_file(task, "train_and_eval")
        trainer.check_annotation_file(task, "train")  # not read
    model_dir = tmp_path / "model"
    run = subprocess.run(
        [sys.executable, "-m", "nonlocal_keras.training.train_detection",
         "--experiment", "keypoint_rcnn_resnetfpn_nonlocal_coco",
         "--config_file", os.path.join(_configs(), "maskrcnn_keypoint_tiny.yaml"),
         "--synthetic_coco_dir", str(tmp_path / "data"),
         "--params_override", f"task.annotation_file={unlabelled}",
         "--mode", "train_and_eval", "--model_dir", str(model_dir)],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "has no labelled keypoint" in run.stderr.splitlines()[-1], run.stderr[-3000:]
    assert not model_dir.exists() or not os.listdir(model_dir)


def _unlabelled_copy(records, path):
    """The records with every keypoint's visibility 0, written to `path`."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in tf.data.TFRecordDataset(tf.io.gfile.glob(records)):
            example = tf.train.Example.FromString(record.numpy())
            visibility = example.features.feature["image/object/keypoint/visibility"].int64_list
            assert any(visibility.value)
            visibility.value[:] = [0] * len(visibility.value)
            writer.write(example.SerializeToString())
    return str(path)


def test_training_counts_labelled_keypoints_and_warns_after_a_loop_without_any(
        stick_figures, tmp_path, caplog):
    """Records whose every keypoint is unlabelled (visibility 0) trained the
    boxes with a keypoint loss of 0 the whole run, exit 0, without a word. Each
    loop now logs how many labelled keypoints its ground truth held
    (`labelled_keypoints`), and the first loop with none warns, once."""
    import os
    import subprocess
    import sys

    from official.core import task_factory

    from nonlocal_keras.applications.mask_rcnn import keypoint_experiment

    name = keypoint_experiment.LABELLED_KEYPOINTS
    tf_keras.utils.set_random_seed(4)
    config = tiny_keypoint_config("keypoint_rcnn_resnetfpn_coco", data=stick_figures)
    task = task_factory.get_task(config.task)
    model = task.build_model()
    optimizer = task.create_optimizer(config.trainer.optimizer_config, config.runtime)
    images, labels = next(iter(task.build_inputs(config.task.train_data)))
    visibility = labels["gt_keypoints"].numpy()[..., 2]
    for expected in (np.sum(visibility > 0), 0):
        metrics = task.build_metrics(training=True)
        task.train_step((images, labels), model, optimizer, metrics=metrics)
        assert {m.name: float(m.result()) for m in metrics}[name] == expected
        # Unlabelled as the pipeline marks them: 0; padding objects stay -1.
        labels["gt_keypoints"] = tf.concat([
            labels["gt_keypoints"][..., :2],
            tf.minimum(labels["gt_keypoints"][..., 2:], 0.0)], -1)
    assert np.sum(visibility > 0) > 0 and np.any(visibility < 0)

    warning = keypoint_experiment.UnlabelledKeypointsWarning(config.task)
    for output in ({name: 3.0}, {"total_loss": 1.0}, {name: np.float32(0.0)}, {name: 0.0}):
        warning(output)
    said = [r.getMessage() for r in caplog.records if "No labelled keypoint" in r.getMessage()]
    assert len(said) == 1 and "Received: task.train_data.input_path=" in said[0], said

    unlabelled = _unlabelled_copy(stick_figures["train_tfrecords"], tmp_path / "unlabelled.tfrecord")
    run = subprocess.run(
        [sys.executable, "-m", "nonlocal_keras.training.train_detection",
         "--experiment", "keypoint_rcnn_resnetfpn_coco",
         "--config_file", os.path.join(_configs(), "maskrcnn_keypoint_tiny.yaml"),
         "--synthetic_coco_dir", str(tmp_path / "data"),
         "--params_override", smaller_detection.OVERRIDES +
         f"task.train_data.input_path={unlabelled},trainer.train_steps=2,"
         "trainer.steps_per_loop=1,trainer.checkpoint_interval=2",
         "--mode", "train", "--model_dir", str(tmp_path / "model")],
        capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, run.stderr[-3000:]
    assert log.count("No labelled keypoint") == 1, log[-3000:]
    assert f"task.train_data.input_path='{unlabelled}'" in log
    assert len(re.findall(rf"'{name}': (?:np\.float32\()?0\.0\b", log)) == 2, log[-3000:]

"""Person keypoints through Model Garden's COCO pipeline: records, decoder, parser.

Model Garden's COCO converter and decoder know boxes, classes and masks, not
keypoints. Here each piece is extended, not copied:

- `create_keypoint_tf_example` is the converter's `create_tf_example` plus three
  features per image, `image/object/keypoint/{y,x,visibility}` (K values per
  object; coordinates normalised by the image height and width, as boxes are);
- `KeypointDecoder` is Model Garden's `TfExampleDecoder` plus
  `groundtruth_keypoints` `(objects, K, 3)`: normalised `[y, x]` and COCO's `v`;
- `KeypointParser` is Model Garden's Mask R-CNN parser whose training parse
  carries the keypoints through the same crowd filter, horizontal flip (with
  the left/right permutation), resize-and-crop and empty-box filter as the
  boxes, giving `labels["gt_keypoints"]` `(max_instances, K, 3)` in pixels of
  the network input, padded with -1 (never counted). Evaluation reads the
  ground truth from the COCO JSON (`annotation_file`), so the evaluation parse
  is Model Garden's.
"""

import tensorflow as tf
from official.vision.data import create_coco_tf_record, tfrecord_lib
from official.vision.dataloaders import maskrcnn_input, tf_example_decoder
from official.vision.ops import anchor, box_ops, preprocess_ops

from nonlocal_keras.applications.mask_rcnn import synthetic_coco

# COCO's 17 person keypoints and the index each one becomes under a
# horizontal flip (left and right swap; the nose stays).
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_FLIP_PERMUTATION = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

_KEYS = ("image/object/keypoint/y", "image/object/keypoint/x", "image/object/keypoint/visibility")
# What the decoder's check says (`trainer.damaged_files_named` finds it in the error).
KEYPOINTS_NOT_IN_RECORDS = "a record does not hold num_keypoints keypoints an object"


def create_keypoint_tf_example(image, image_dirs, *args, **kwargs):
    """Model Garden's `create_tf_example` for one image, with its objects' keypoints.

    Takes the arguments `create_coco_tf_record.generate_annotations` yields.
    Every annotation must have `keypoints` (COCO's flat `[x, y, v] * K`).

    Raises:
        ValueError: when the converter skipped an annotation (an empty or
            out-of-image box): its keypoints would pair with the wrong object.
    """
    example, skipped = create_coco_tf_record.create_tf_example(image, image_dirs, *args, **kwargs)
    annotations = args[1] if len(args) > 1 else kwargs.get("bbox_annotations")
    annotations = annotations or []
    if skipped:
        raise ValueError(
            f"The converter skipped {skipped} annotation(s) of image {image['id']} (empty or "
            "out-of-image boxes); remove them from the JSON so keypoints stay paired with "
            f"their objects. Received: image={image['file_name']!r}")
    ys, xs, visibility = [], [], []
    for annotation in annotations:
        values = annotation["keypoints"]
        xs += [float(x) / image["width"] for x in values[0::3]]
        ys += [float(y) / image["height"] for y in values[1::3]]
        visibility += [int(v) for v in values[2::3]]
    features = example.features.feature
    for key, values in zip(_KEYS, (ys, xs, visibility)):
        features[key].CopyFrom(tfrecord_lib.convert_to_feature(values))
    return example, skipped


def write_keypoint_tfrecords(json_path, image_dir, output_prefix, num_shards=1):
    """Write a COCO person-keypoints JSON and its images as TFRecords; returns their file pattern."""
    images, image_to_annotations, id_to_name = synthetic_coco.load_coco(json_path)
    _check_keypoint_lengths(json_path, image_to_annotations)
    examples = create_coco_tf_record.generate_annotations(
        images=images, image_dirs=[image_dir], img_to_obj_annotation=image_to_annotations,
        id_to_name_map=id_to_name, include_masks=False)
    return synthetic_coco.write_shards(output_prefix, examples, create_keypoint_tf_example,
                                       num_shards)


def _check_keypoint_lengths(json_path, image_to_annotations):
    """Every annotation's `keypoints` as many (x, y, visibility) numbers as the
    first one's. Found by a walk: 20 and 24 numbers were written as they were,
    misaligned, and training then blamed the whole dataset."""
    lengths = {}
    for annotations in image_to_annotations.values():
        for annotation in annotations:
            keypoints = annotation.get("keypoints")
            length = len(keypoints) if isinstance(keypoints, list) else None
            lengths.setdefault(length, annotation.get("id"))
            if length is None or length == 0 or length % 3 or len(lengths) > 1:
                first, first_id = next(iter(lengths.items()))
                had = "no keypoints list" if length is None else f"{length} keypoint numbers"
                other = f" ({first} in annotation {first_id!r})" if len(lengths) > 1 else ""
                raise ValueError(
                    f"Annotation {annotation.get('id')!r} of {json_path!r} has {had}{other}: "
                    "each annotation needs (x, y, visibility) for every keypoint, as many as "
                    f"the others. Received: json_path={json_path!r}")


class KeypointDecoder(tf_example_decoder.TfExampleDecoder):
    """Model Garden's decoder plus `groundtruth_keypoints` `(objects, K, 3)`."""

    def __init__(self, num_keypoints, **kwargs):
        super().__init__(**kwargs)
        self.num_keypoints = num_keypoints
        self.keypoint_features = {key: tf.io.VarLenFeature(
            tf.int64 if key.endswith("visibility") else tf.float32) for key in _KEYS}

    def decode(self, serialized_example):
        decoded = super().decode(serialized_example)
        parsed = tf.io.parse_single_example(serialized_example, self.keypoint_features)
        y, x, v = (tf.cast(tf.sparse.to_dense(parsed[key]), tf.float32) for key in _KEYS)
        # Records without keypoints (Model Garden's COCO converter writes none) or
        # of another count failed deep in the parser ("indices[0] = 0 is not in
        # [0, 0)", a reshape of 21 values into 51s): a traceback.
        expected = tf.size(decoded["groundtruth_classes"]) * self.num_keypoints
        check = tf.debugging.assert_equal(
            tf.stack([tf.size(y), tf.size(x), tf.size(v)]), tf.fill([3], expected),
            message=KEYPOINTS_NOT_IN_RECORDS)
        with tf.control_dependencies([check]):
            keypoints = tf.stack([y, x, v], axis=-1)
        decoded["groundtruth_keypoints"] = tf.reshape(keypoints, [-1, self.num_keypoints, 3])
        return decoded


def flip_keypoints(keypoints, permutation):
    """Mirror normalised `[y, x, v]` keypoints left-right and swap left and right ones."""
    keypoints = tf.gather(keypoints, list(permutation), axis=-2)
    return tf.concat([keypoints[..., :1], 1.0 - keypoints[..., 1:2], keypoints[..., 2:]], -1)


class KeypointParser(maskrcnn_input.Parser):
    """Model Garden's Mask R-CNN parser (no masks) whose training labels carry keypoints.

    Args:
        flip_permutation: the keypoint index each keypoint becomes under a
            horizontal flip (`COCO_FLIP_PERMUTATION` for COCO persons).
        **kwargs: Model Garden's `maskrcnn_input.Parser` arguments, except
            `include_mask` (always False) and `aug_rand_vflip` (a vertical
            flip has no keypoint permutation; it must be False).
    """

    def __init__(self, flip_permutation, **kwargs):
        if kwargs.pop("aug_rand_vflip", False):
            raise ValueError(
                "Keypoints have no vertical-flip permutation; turn the vertical flip off. "
                "Received: aug_rand_vflip=True")
        kwargs["include_mask"] = False
        super().__init__(**kwargs)
        self.flip_permutation = tuple(flip_permutation)
        self.settings = dict(kwargs)

    def _parse_train_data(self, data):
        s = self.settings
        classes, boxes = data["groundtruth_classes"], data["groundtruth_boxes"]
        keypoints = data["groundtruth_keypoints"]
        if s.get("skip_crowd_during_training", True):
            keep = tf.logical_not(tf.cast(data["groundtruth_is_crowd"], tf.bool))
            classes, boxes, keypoints = (tf.boolean_mask(t, keep) for t in (classes, boxes, keypoints))

        image = data["image"]
        image_shape = tf.shape(image)[0:2]
        image = preprocess_ops.normalize_image(image)
        if s.get("aug_rand_hflip", False):
            flip = tf.random.uniform([]) < 0.5
            image, boxes, keypoints = tf.cond(
                flip,
                lambda: (preprocess_ops.horizontal_flip_image(image),
                         box_ops.horizontal_flip_boxes(boxes),
                         flip_keypoints(keypoints, self.flip_permutation)),
                lambda: (image, boxes, keypoints))

        boxes = box_ops.denormalize_boxes(boxes, image_shape)
        image, image_info = preprocess_ops.resize_and_crop_image(
            image, s["output_size"],
            padded_size=preprocess_ops.compute_padded_size(s["output_size"], 2 ** s["max_level"]),
            aug_scale_min=s.get("aug_scale_min", 1.0), aug_scale_max=s.get("aug_scale_max", 1.0))
        image_scale, offset, scaled_size = image_info[2, :], image_info[3, :], image_info[1, :]
        boxes = preprocess_ops.resize_and_crop_boxes(boxes, image_scale, scaled_size, offset)
        keypoints = scale_keypoints(keypoints, image_shape, image_scale, offset, scaled_size)
        indices = box_ops.get_non_empty_box_indices(boxes)
        boxes, classes, keypoints = (tf.gather(t, indices) for t in (boxes, classes, keypoints))

        height, width, _ = image.get_shape().as_list()
        anchor_boxes = anchor.build_anchor_generator(
            min_level=s["min_level"], max_level=s["max_level"], num_scales=s["num_scales"],
            aspect_ratios=s["aspect_ratios"], anchor_size=s["anchor_size"],
        )(image_size=(height, width))
        labeler = anchor.RpnAnchorLabeler(
            s.get("rpn_match_threshold", 0.7), s.get("rpn_unmatched_threshold", 0.3),
            s.get("rpn_batch_size_per_im", 256), s.get("rpn_fg_fraction", 0.5))
        rpn_score_targets, rpn_box_targets = labeler.label_anchors(
            anchor_boxes, boxes, tf.cast(tf.expand_dims(classes, -1), tf.float32))
        size = s.get("max_num_instances", 100)
        labels = {
            "anchor_boxes": anchor_boxes,
            "image_info": image_info,
            "rpn_score_targets": rpn_score_targets,
            "rpn_box_targets": rpn_box_targets,
            "gt_boxes": preprocess_ops.clip_or_pad_to_fixed_size(boxes, size, -1),
            "gt_classes": preprocess_ops.clip_or_pad_to_fixed_size(classes, size, -1),
            "gt_keypoints": preprocess_ops.clip_or_pad_to_fixed_size(keypoints, size, -1),
        }
        return tf.cast(image, s.get("dtype", "float32")), labels


def scale_keypoints(keypoints, image_shape, image_scale, offset, scaled_size):
    """Normalised `[y, x, v]` keypoints to pixels of the resized, cropped image.

    The same mapping as `resize_and_crop_boxes` applies to box corners; a
    keypoint that leaves the crop is marked unlabelled (`v = 0`).
    """
    points = keypoints[..., :2] * tf.cast(image_shape, tf.float32) * image_scale - offset
    inside = tf.reduce_all((points >= 0) & (points < scaled_size), axis=-1)
    visibility = tf.where(inside, keypoints[..., 2], 0.0)
    return tf.concat([points, visibility[..., tf.newaxis]], -1)

"""Keypoint R-CNN: Model Garden's R-CNN for the person boxes, plus the keypoint branch.

The box branch (backbone, FPN, RPN, RoI sampling, box head, detection
generator) is Model Garden's `MaskRCNNModel` without a mask head. On top:

- training: up to `num_sampled_rois` foreground RoIs of each image (those the
  RoI sampler matched to a ground-truth object, as Model Garden's mask sampler
  picks them) are RoI-aligned, run through the keypoint head, and given
  targets from the keypoints of their matched object;
- inference: the final detections are RoI-aligned and their heatmaps decoded
  to `detection_keypoints` `(batch, boxes, K, 2)` (`[y, x]` in input-image
  pixels, Model Garden's box convention) and `detection_keypoint_scores`.
"""

import tensorflow as tf
from official.vision.modeling import maskrcnn_model

from nonlocal_keras.applications.mask_rcnn import keypoints as kp
from nonlocal_keras.applications.mask_rcnn.registration import serializable


@serializable
class KeypointRCNNModel(maskrcnn_model.MaskRCNNModel):
    """Model Garden's R-CNN (no mask head) with a keypoint head.

    Args:
        keypoint_head: a `KeypointHead`.
        keypoint_roi_aligner: Model Garden's `MultilevelROIAligner` (14x14 crops).
        num_sampled_rois: foreground RoIs per image that train the keypoint head.
        **kwargs: `MaskRCNNModel`'s arguments, without the mask ones.
    """

    def __init__(self, keypoint_head, keypoint_roi_aligner, num_sampled_rois=128, **kwargs):
        if kwargs.get("mask_head") is not None:
            raise ValueError(
                "Keypoint R-CNN here has no mask branch (the paper's keypoint setting); "
                "set model.include_mask=False. Received: mask_head="
                f"{type(kwargs['mask_head']).__name__}")
        super().__init__(**kwargs)
        self.keypoint_head = keypoint_head
        self.keypoint_roi_aligner = keypoint_roi_aligner
        self.num_sampled_rois = num_sampled_rois
        self._config_dict.update(
            keypoint_head=keypoint_head, keypoint_roi_aligner=keypoint_roi_aligner,
            num_sampled_rois=num_sampled_rois)

    def call(self, images, image_shape, anchor_boxes=None, gt_boxes=None, gt_classes=None,
             gt_keypoints=None, training=None):
        outputs, matched = self._call_box_outputs(
            images=images, image_shape=image_shape, anchor_boxes=anchor_boxes,
            gt_boxes=gt_boxes, gt_classes=gt_classes, training=training)
        features = outputs["decoder_features"]
        if training:
            # Without ground truth (as when Keras traces the training call for
            # a SavedModel) there is nothing to train the keypoints on, as
            # Model Garden's box branch skips its targets without gt_boxes.
            if gt_keypoints is not None:
                rois, targets, weights = self._sample_keypoint_targets(matched, gt_keypoints)
                outputs.update(
                    keypoint_outputs=self._heatmaps(features, rois, training), keypoint_rois=rois,
                    keypoint_targets=targets, keypoint_weights=weights)
            return outputs
        boxes = outputs["detection_boxes"]
        keypoints, scores = kp.heatmaps_to_keypoints(self._heatmaps(features, boxes, training), boxes)
        outputs.update(detection_keypoints=keypoints, detection_keypoint_scores=scores)
        return outputs

    def _heatmaps(self, features, rois, training):
        return self.keypoint_head(self.keypoint_roi_aligner(features, rois), training=training)

    def _sample_keypoint_targets(self, matched, gt_keypoints):
        # Foreground first (top_k of a 0/1 indicator), as Model Garden's mask sampler.
        classes = matched["matched_gt_classes"]
        _, picked = tf.nn.top_k(tf.cast(classes > 0, tf.int32), k=self.num_sampled_rois)
        rois = tf.gather(matched["current_rois"], picked, batch_dims=1)
        foreground = tf.gather(classes, picked, batch_dims=1) > 0
        objects = tf.maximum(tf.gather(matched["matched_gt_indices"], picked, batch_dims=1), 0)
        keypoints = tf.gather(gt_keypoints, objects, batch_dims=1)  # (batch, rois, K, 3)
        targets, weights = kp.keypoint_targets(
            keypoints[..., :2], keypoints[..., 2], rois, self.heatmap_size())
        weights *= tf.cast(foreground, weights.dtype)[..., tf.newaxis]
        return tf.stop_gradient(rois), tf.stop_gradient(targets), tf.stop_gradient(weights)

    def heatmap_size(self):
        """The heatmap side M: four times the RoI crop (14 -> 56)."""
        return 4 * self.keypoint_roi_aligner.get_config()["crop_size"]

    @property
    def checkpoint_items(self):
        items = dict(super().checkpoint_items)
        items.update(keypoint_head=self.keypoint_head)
        return items

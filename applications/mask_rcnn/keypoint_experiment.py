"""Keypoint R-CNN configs, task and the three experiments of the paper's Table 6.

- `keypoint_rcnn_resnetfpn_coco`: the baseline (no non-local block);
- `keypoint_rcnn_resnetfpn_nonlocal_head_coco`: 4 blocks in the keypoint head
  (after its convolutions 2, 4, 6 and 8);
- `keypoint_rcnn_resnetfpn_nonlocal_coco`: those 4 plus 1 in res4 of the
  backbone (before its last block), as `maskrcnn_resnetfpn_nonlocal_coco`.

All three use the `resnet_nonlocal` backbone (the baseline with no
placements, which is Model Garden's ResNet layer for layer), so one YAML
serves the three. Everything else is `maskrcnn_resnetfpn_coco`'s, with two
classes (background, person) and no mask branch.
"""

import dataclasses
import math
from typing import List, Optional

import tensorflow as tf
import tf_keras
from absl import logging
from official.common import dataset_fn as dataset_fn_lib
from official.core import exp_factory, task_factory
from official.modeling import hyperparams
from official.vision.dataloaders import input_reader, input_reader_factory
from official.vision.modeling import factory
from official.vision.modeling.layers import roi_aligner

from nonlocal_keras.applications.mask_rcnn import experiment
from nonlocal_keras.applications.mask_rcnn import keypoints as kp
from nonlocal_keras.applications.mask_rcnn.keypoint_data import (
    COCO_FLIP_PERMUTATION,
    KeypointDecoder,
    KeypointParser,
)
from nonlocal_keras.applications.mask_rcnn.keypoint_eval import KeypointCOCOEvaluator
from nonlocal_keras.applications.mask_rcnn.keypoint_head import PAPER_HEAD_NONLOCAL, KeypointHead
from nonlocal_keras.applications.mask_rcnn.keypoint_model import KeypointRCNNModel
from nonlocal_keras.applications.mask_rcnn.registration import once
from nonlocal_keras.utils import is_real

# The training metric that counts the labelled keypoints (visibility above 0,
# inside the crop) of the ground truth a loop trained on, and logs the sum.
LABELLED_KEYPOINTS = "labelled_keypoints"

EXPERIMENTS = {
    # name: (keypoint-head blocks, backbone placements); paper Table 6, R101.
    "keypoint_rcnn_resnetfpn_coco": ((), ()),
    "keypoint_rcnn_resnetfpn_nonlocal_head_coco": (PAPER_HEAD_NONLOCAL, ()),
    "keypoint_rcnn_resnetfpn_nonlocal_coco": (PAPER_HEAD_NONLOCAL, ("res4:-1",)),
}


@dataclasses.dataclass
class KeypointHeadConfig(hyperparams.Config):
    """The keypoint branch. `head_nonlocal`: convolutions (1-based) followed by a non-local block.

    `oks_sigmas`: per-keypoint OKS constants of the evaluation; `None` means
    COCO's 17. `flip_permutation`: the index each keypoint takes in a
    horizontally flipped image.
    """

    num_keypoints: int = 17
    num_convs: int = 8
    num_filters: int = 512
    head_nonlocal: List[int] = dataclasses.field(default_factory=list)
    nonlocal_mode: str = "embedded_gaussian"
    nonlocal_sub_sample: bool = True
    roi_size: int = 14
    num_sampled_rois: int = 128
    loss_weight: float = 1.0
    flip_permutation: List[int] = dataclasses.field(
        default_factory=lambda: list(COCO_FLIP_PERMUTATION))
    oks_sigmas: Optional[List[float]] = None


def check_keypoint_head(model):
    """The keypoint head's settings that must agree with `num_keypoints` and the
    RoI sampler, checked before anything runs. Each was taken as given: a flip
    map of another length failed mid-training (a traceback), COCO's 17 OKS
    constants for other keypoints failed at the first evaluation, after the
    training, and a flip map that is no permutation or a negative loss weight
    trained something else, exit 0."""
    head, field = model.keypoint_head, "task.model.keypoint_head."
    count, flip, sigmas = head.num_keypoints, list(head.flip_permutation), head.oks_sigmas
    if sorted(flip) != list(range(count)) or any(flip[flip[i]] != i for i in range(count)):
        unset = " (unset, it is COCO's 17)" if len(flip) != count else ""
        raise ValueError(
            f"`{field}flip_permutation` must give each of the {count} keypoints the index it "
            f"takes in a horizontally flipped image: a permutation of 0..{count - 1} that undoes "
            f"itself{unset}. Received: {field}flip_permutation={flip}, "
            f"{field}num_keypoints={count}")
    if sigmas is None and count != len(COCO_FLIP_PERMUTATION):
        raise ValueError(
            f"`{field}oks_sigmas` must give the OKS constant of each of the {count} keypoints "
            f"for the evaluation (unset, they are COCO's 17). Received: {field}oks_sigmas=None, "
            f"{field}num_keypoints={count}")
    if sigmas is not None and (len(sigmas) != count or not all(
            math.isfinite(sigma) and sigma > 0 for sigma in sigmas)):
        raise ValueError(f"`{field}oks_sigmas` must be {count} positive numbers, one a keypoint. "
                         f"Received: {field}oks_sigmas={list(sigmas)}")
    if not head.loss_weight >= 0:  # NaN too
        raise ValueError(f"`{field}loss_weight` must be at least 0. "
                         f"Received: {field}loss_weight={head.loss_weight!r}")
    most = model.roi_sampler.num_sampled_rois
    if not 1 <= head.num_sampled_rois <= most:
        raise ValueError(
            f"`{field}num_sampled_rois` must be 1 to task.model.roi_sampler.num_sampled_rois "
            f"({most}): the keypoint head trains on foreground RoIs of that sample. "
            f"Received: {field}num_sampled_rois={head.num_sampled_rois}")


def check_keypoint_annotations(task, annotations):
    """For a command that evaluates (`trainer.check_annotation_file` calls it with
    the validation JSON's `annotations`): each must hold `num_keypoints`
    keypoint triples and the count pycocotools scores by (`num_keypoints`; 0:
    ignored), and some annotation must count. Without one, keypoint AP is -1:
    it trained the whole run, then scored -1, exit 0; another length or no
    count failed in the evaluation, after the training."""
    path, field = task.annotation_file, "task.annotation_file"
    count = task.model.keypoint_head.num_keypoints
    for annotation in annotations:
        keypoints = annotation.get("keypoints") if isinstance(annotation, dict) else None
        if (not isinstance(keypoints, list) or len(keypoints) != 3 * count
                or not all(is_real(v) for v in keypoints)
                or not is_real(annotation.get("num_keypoints"))):
            identity = annotation.get("id") if isinstance(annotation, dict) else annotation
            raise ValueError(
                f"{field} must give each annotation `keypoints`, {count} (x, y, visibility) "
                f"numbers ({3 * count} in all, task.model.keypoint_head.num_keypoints={count}), "
                f"and `num_keypoints`; annotation {identity!r} does not. "
                f"Received: {field}={path!r}")
    if not any(annotation["num_keypoints"] > 0 for annotation in annotations):
        raise ValueError(
            f"{field} has no labelled keypoint ({len(annotations)} annotations, every "
            "`num_keypoints` 0: the evaluation ignores such ground truth): keypoint AP cannot "
            f"be scored on it (it is -1). Received: {field}={path!r}")


@dataclasses.dataclass
class KeypointRCNN(experiment.MaskRCNN):
    include_mask: bool = False
    keypoint_head: KeypointHeadConfig = dataclasses.field(default_factory=KeypointHeadConfig)


@dataclasses.dataclass
class KeypointRCNNTaskConfig(experiment.MaskRCNNTask):
    model: KeypointRCNN = dataclasses.field(default_factory=KeypointRCNN)


@once(task_factory.register_task_cls(KeypointRCNNTaskConfig))
class KeypointRCNNTask(experiment.NonLocalMaskRCNNTask):
    """The non-local Mask R-CNN task with a keypoint branch instead of masks."""

    def build_network(self):
        config = self.task_config.model
        if config.include_mask:
            raise ValueError("Keypoint R-CNN has no mask branch. Received: model.include_mask=True")
        head = config.keypoint_head
        decay = self.task_config.losses.l2_weight_decay
        # Halved as Model Garden does, to match tf.nn.l2_loss.
        regularizer = tf_keras.regularizers.l2(decay / 2.0) if decay else None
        input_specs = tf_keras.layers.InputSpec(shape=[None] + list(config.input_size))
        box_model = factory.build_maskrcnn(input_specs, config, l2_regularizer=regularizer)
        model = KeypointRCNNModel(
            keypoint_head=KeypointHead(
                num_keypoints=head.num_keypoints, num_convs=head.num_convs,
                num_filters=head.num_filters, head_nonlocal=list(head.head_nonlocal),
                nonlocal_mode=head.nonlocal_mode, nonlocal_sub_sample=head.nonlocal_sub_sample,
                use_sync_bn=config.norm_activation.use_sync_bn,
                norm_momentum=config.norm_activation.norm_momentum,
                norm_epsilon=config.norm_activation.norm_epsilon,
                kernel_regularizer=regularizer, name="keypoint_head"),
            keypoint_roi_aligner=roi_aligner.MultilevelROIAligner(crop_size=head.roi_size),
            num_sampled_rois=head.num_sampled_rois,
            **box_model.get_config(),
        )
        if self.task_config.freeze_backbone:
            model.backbone.trainable = False
        # Builds every layer, as Model Garden's task does.
        model(tf_keras.Input(config.input_size), image_shape=tf_keras.layers.Input([2]), training=False)
        return model

    def build_dataset(self, params, input_context=None, dataset_fn=None):
        model = self.task_config.model
        decoder = KeypointDecoder(
            num_keypoints=model.keypoint_head.num_keypoints,
            regenerate_source_id=params.decoder.simple_decoder.regenerate_source_id)
        p = params.parser
        parser = KeypointParser(
            flip_permutation=model.keypoint_head.flip_permutation,
            output_size=model.input_size[:2], min_level=model.min_level, max_level=model.max_level,
            num_scales=model.anchor.num_scales, aspect_ratios=model.anchor.aspect_ratios,
            anchor_size=model.anchor.anchor_size, rpn_match_threshold=p.rpn_match_threshold,
            rpn_unmatched_threshold=p.rpn_unmatched_threshold,
            rpn_batch_size_per_im=p.rpn_batch_size_per_im, rpn_fg_fraction=p.rpn_fg_fraction,
            aug_rand_hflip=p.aug_rand_hflip, aug_rand_vflip=p.aug_rand_vflip,
            aug_scale_min=p.aug_scale_min, aug_scale_max=p.aug_scale_max,
            skip_crowd_during_training=p.skip_crowd_during_training,
            max_num_instances=p.max_num_instances, dtype=params.dtype)
        reader = input_reader_factory.input_reader_generator(
            params,
            dataset_fn=dataset_fn or dataset_fn_lib.pick_dataset_fn(params.file_type),
            decoder_fn=decoder.decode,
            combine_fn=input_reader.create_combine_fn(params),
            parser_fn=parser.parse_fn(params.is_training))
        return reader.read(input_context=input_context)

    def build_losses(self, outputs, labels, aux_losses=None):
        losses = super().build_losses(outputs, labels, aux_losses)
        keypoint_loss = kp.keypoint_loss(
            outputs["keypoint_outputs"], outputs["keypoint_targets"], outputs["keypoint_weights"])
        weighted = self.task_config.model.keypoint_head.loss_weight * keypoint_loss
        losses["model_loss"] += weighted
        losses["total_loss"] += self.task_config.losses.loss_weight * weighted
        losses["keypoint_loss"] = keypoint_loss
        return losses

    def build_metrics(self, training=True):
        if training:
            metrics = super().build_metrics(training=True)
            return [m for m in metrics if m.name != "mask_loss"] + [
                tf_keras.metrics.Mean("keypoint_loss", dtype=tf.float32),
                tf_keras.metrics.Sum(LABELLED_KEYPOINTS, dtype=tf.float32)]
        if not self.task_config.annotation_file:
            raise ValueError(
                "Keypoint AP needs the COCO keypoint JSON of the validation data. "
                f"Received: task.annotation_file={self.task_config.annotation_file!r}")
        self.instance_box_perclass_metrics = self.instance_mask_perclass_metrics = None
        self.coco_metric = KeypointCOCOEvaluator(
            self.task_config.annotation_file, self.task_config.model.keypoint_head.oks_sigmas)
        return []

    def train_step(self, inputs, model, optimizer, metrics=None):
        images, labels = inputs
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            outputs = model(
                images, image_shape=labels["image_info"][:, 1, :],
                anchor_boxes=labels["anchor_boxes"], gt_boxes=labels["gt_boxes"],
                gt_classes=labels["gt_classes"], gt_keypoints=labels["gt_keypoints"],
                training=True)
            outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), outputs)
            losses = self.build_losses(outputs, labels, aux_losses=model.losses)
            loss = losses["total_loss"] / replicas
            if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
                loss = optimizer.get_scaled_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(list(zip(grads, variables)))
        # Padding objects have visibility -1, keypoints cropped out 0.
        losses[LABELLED_KEYPOINTS] = tf.math.count_nonzero(
            labels["gt_keypoints"][..., 2] > 0, dtype=tf.float32)
        for metric in metrics or []:
            metric.update_state(losses[metric.name])
        return {self.loss: losses["total_loss"]}

    def validation_step(self, inputs, model, metrics=None):
        images, labels = inputs
        outputs = model(images, anchor_boxes=labels["anchor_boxes"],
                        image_shape=labels["image_info"][:, 1, :], training=False)
        keys = ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
                "detection_keypoints")
        predictions = {key: outputs[key] for key in keys}
        predictions.update(source_id=labels["groundtruths"]["source_id"],
                           image_info=labels["image_info"])
        return {self.loss: 0, self.coco_metric.name: (labels["groundtruths"], predictions)}


class UnlabelledKeypointsWarning:
    """An Orbit train action: a warning after the first loop whose training
    images held no labelled keypoint (`LABELLED_KEYPOINTS` 0). Records whose
    every visibility is 0 (a converter that drops it, another convention) train
    the boxes and leave the keypoint loss at 0: the whole run trained, keypoint
    AP stayed at chance, exit 0, and nothing said why. Once a command; the
    count of every loop is in its log line and its summaries."""

    def __init__(self, task):
        self.input_path = task.train_data.input_path
        self.warned = False

    def __call__(self, output):
        count = output.get(LABELLED_KEYPOINTS)
        if self.warned or count is None or float(count) > 0:
            return
        self.warned = True
        logging.warning(
            "No labelled keypoint (visibility above 0, inside the crop) in the training "
            "images of this loop: the keypoint loss is 0 and the keypoint head learns nothing "
            "from them. Check the records' image/object/keypoint/visibility. Received: "
            "task.train_data.input_path=%r", self.input_path)


def keypoint_experiment(head_nonlocal, backbone_placements):
    """`maskrcnn_resnetfpn_nonlocal_coco` made a person-keypoint experiment."""
    config = exp_factory.get_exp_config(experiment.EXPERIMENT)
    task = KeypointRCNNTaskConfig()
    task.override(config.task.as_dict(), is_strict=True)
    task.model.include_mask = False
    task.model.num_classes = 2  # background, person
    task.model.keypoint_head.head_nonlocal = list(head_nonlocal)
    task.model.backbone.resnet_nonlocal.nonlocal_placements = list(backbone_placements)
    task.annotation_file = config.task.annotation_file.replace(
        "instances_val2017.json", "person_keypoints_val2017.json")
    config.task = task
    return config


for _name, (_head, _backbone) in EXPERIMENTS.items():
    once(exp_factory.register_config_factory(_name))(
        lambda head=_head, backbone=_backbone: keypoint_experiment(head, backbone))

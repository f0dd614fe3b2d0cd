"""The experiment `maskrcnn_resnetfpn_nonlocal_coco` and its task.

It is Model Garden's `maskrcnn_resnetfpn_coco` with the backbone switched to
`resnet_nonlocal` (same ResNet settings). The task class differs from Model
Garden's only in `initialize`: an ImageNet ResNet checkpoint is restored into
every backbone layer but the non-local blocks, which keep their identity init.
"""

import dataclasses

import tensorflow as tf
import tf_keras
from absl import logging
from official.core import exp_factory, task_factory
from official.vision.configs import maskrcnn as maskrcnn_config
from official.vision.tasks import maskrcnn as maskrcnn_task

from nonlocal_keras.applications.mask_rcnn import backbone as nl_backbone
from nonlocal_keras.applications.mask_rcnn.registration import once
from nonlocal_keras.applications.mask_rcnn.undecodable_images import UndecodableImages

EXPERIMENT = "maskrcnn_resnetfpn_nonlocal_coco"


@dataclasses.dataclass
class MaskRCNN(maskrcnn_config.MaskRCNN):
    """Model Garden's Mask R-CNN config whose backbone one-of knows `resnet_nonlocal`."""

    backbone: nl_backbone.Backbone = dataclasses.field(
        default_factory=lambda: nl_backbone.Backbone(type=nl_backbone.BACKBONE_TYPE)
    )


@dataclasses.dataclass
class MaskRCNNTask(maskrcnn_config.MaskRCNNTask):
    model: MaskRCNN = dataclasses.field(default_factory=MaskRCNN)


_without_autograph = tf.autograph.experimental.do_not_convert


@once(task_factory.register_task_cls(MaskRCNNTask))
class NonLocalMaskRCNNTask(maskrcnn_task.MaskRCNNTask):
    """Model Garden's Mask R-CNN task; `initialize` maps a plain ResNet checkpoint,
    and its data leave out records whose image does not decode (`undecodable_images`)."""

    def __init__(self, params, logging_dir=None, name=None):
        super().__init__(params, logging_dir=logging_dir, name=name)
        self.undecodable_images = UndecodableImages()

    # The network, its losses and its input pipeline are graph code (no Python
    # control flow on tensors; the parser's autoaug and randaug were tried too):
    # AutoGraph's conversion of their functions was about 20 s of each command's
    # start on 2 cores, for the same losses bit for bit. The rest of the steps is
    # converted: an optimizer's may need it (Model Garden's EMA branches on a tensor).
    def build_model(self):
        model = _without_autograph(self.build_network)()
        model.call = _without_autograph(model.call)
        return model

    def build_network(self):
        """The task's model, built (Model Garden's `build_model`)."""
        return super().build_model()

    def build_losses(self, outputs, labels, aux_losses=None):
        return _without_autograph(super().build_losses)(outputs, labels, aux_losses)

    def build_inputs(self, params, input_context=None, dataset_fn=None):
        dataset_fn = dataset_fn or self.undecodable_images.reader(params)
        return _without_autograph(self.build_dataset)(params, input_context, dataset_fn)

    def build_dataset(self, params, input_context=None, dataset_fn=None):
        """The task's `tf.data.Dataset` (Model Garden's `build_inputs`)."""
        return super().build_inputs(params, input_context, dataset_fn)

    def initialize(self, model):
        modules = self.task_config.init_checkpoint_modules
        if (not self.task_config.init_checkpoint or modules == "all"
                or self.task_config.model.backbone.type != nl_backbone.BACKBONE_TYPE):
            return super().initialize(model)
        path = self.task_config.init_checkpoint
        if tf.io.gfile.isdir(path):
            path = tf.train.latest_checkpoint(path)
        if "backbone" in modules:
            restore_plain_backbone(model.backbone, path, self.task_config.model)
        if "decoder" in modules:
            checkpoint = tf.train.Checkpoint(decoder=model.decoder)
            checkpoint.read(path).expect_partial().assert_existing_objects_matched()
        logging.info("Finished loading pretrained checkpoint from %s", path)


def restore_plain_backbone(backbone, checkpoint_path, model_config):
    """Restore a plain Model Garden ResNet checkpoint into `backbone` (with NL blocks).

    The checkpoint (`tf.train.Checkpoint(backbone=ResNet)`, as Model Garden's
    ImageNet classification checkpoints are) is read into a plain ResNet with
    the same settings; its weights are then copied layer by layer onto the
    non-local backbone's other layers. Inserting layers renumbers a functional
    model's checkpoint keys, so a direct read would pair the wrong weights.

    Returns:
        `(restored, left_new)`: the number of variables restored, and the names
        of the variables left at their initial values (the non-local blocks').
    """
    plain = nl_backbone.build_plain_resnet(
        tf_keras.layers.InputSpec(shape=[None] + list(model_config.input_size)),
        model_config.backbone,
        model_config.norm_activation,
    )
    status = tf.train.Checkpoint(backbone=plain).read(checkpoint_path)
    status.expect_partial().assert_existing_objects_matched()
    restored = copy_plain_weights(plain, backbone)
    left_new = [
        w.name for layer in backbone.layers if nl_backbone.is_nonlocal_layer(layer)
        for w in layer.weights
    ]
    logging.info(
        "init_checkpoint %s: restored %d backbone variables; left %d new "
        "(non-local blocks, identity at init): %s",
        checkpoint_path, restored, len(left_new), ", ".join(left_new),
    )
    return restored, left_new


def copy_plain_weights(plain, backbone):
    """Copy a plain ResNet's weights onto the same layers of a non-local backbone.

    Returns the number of variables copied. Raises ValueError when the two
    do not line up (different depth or width).
    """
    targets = [layer for layer in backbone.layers if not nl_backbone.is_nonlocal_layer(layer)]
    sources = plain.layers
    if len(sources) != len(targets):
        raise ValueError(
            f"The plain ResNet has {len(sources)} layers and the non-local backbone "
            f"{len(targets)} besides its non-local blocks; they are not the same ResNet."
        )
    count = 0
    for source, target in zip(sources, targets):
        for s, t in zip(source.weights, target.weights, strict=True):
            if s.shape != t.shape:
                raise ValueError(
                    f"Checkpoint variable {s.name} has shape {s.shape}, the backbone's "
                    f"{t.name} {t.shape}: the checkpoint is not this ResNet."
                )
            t.assign(s)
            count += 1
    return count


@once(exp_factory.register_config_factory(EXPERIMENT))
def maskrcnn_resnetfpn_nonlocal_coco():
    """Model Garden's `maskrcnn_resnetfpn_coco`, backbone ResNet + 1 NL block in res4."""
    config = exp_factory.get_exp_config("maskrcnn_resnetfpn_coco")
    base_task = config.task.as_dict()
    resnet_settings = base_task["model"].pop("backbone")["resnet"]
    task = MaskRCNNTask()
    task.override(base_task, is_strict=True)
    task.model.backbone.resnet_nonlocal.override(resnet_settings, is_strict=True)
    config.task = task
    return config

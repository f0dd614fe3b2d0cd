"""Export the non-local Mask R-CNN or Keypoint R-CNN with Model Garden's detection export module.

Model Garden's `DetectionModule` owns the preprocessing (resize, pad,
normalise) and returns named outputs (`detection_boxes`, `detection_scores`,
`detection_classes`, `detection_masks`, `num_detections`, `image_info`).
`KeypointDetectionModule` is that module for `KeypointRCNNModel`: the same
preprocessing, the model built by its task, and `detection_keypoints`
`(batch, boxes, K, 2)` (`[y, x]` in pixels of the resized input, like
`detection_boxes`) and `detection_keypoint_scores` `(batch, boxes, K)` added.
The SavedModel is a plain TensorFlow graph: loading it needs neither Model
Garden nor this package.
"""

import contextlib

import tensorflow as tf
from official.core import task_factory
from official.vision.serving import detection, export_saved_model_lib
from tf_keras.src.saving.legacy.saved_model import utils as tf_keras_saving

from nonlocal_keras.applications.mask_rcnn import keypoint_experiment
from nonlocal_keras.training import atomic

_KEYPOINT_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
                     "detection_keypoints", "detection_keypoint_scores")


class KeypointDetectionModule(detection.DetectionModule):
    """Model Garden's detection export module for Keypoint R-CNN."""

    def __init__(self, params, **kwargs):
        model = task_factory.get_task(params.task).build_model()
        super().__init__(params, model=model, **kwargs)

    def serve(self, images):
        images, anchor_boxes, image_info = self.preprocess(images)
        # `model.call`, as Model Garden's module does: Keras' __call__ would
        # trace the multi-input layers in a way SavedModel cannot save.
        detections = self.model.call(images=images, image_shape=image_info[:, 1, :],
                                     anchor_boxes=anchor_boxes, training=False)
        outputs = {key: detections[key] for key in _KEYPOINT_OUTPUTS}
        outputs["image_info"] = image_info
        return outputs


def export_saved_model(params, checkpoint_path, export_dir, batch_size=1,
                       input_type="image_tensor"):
    """Write `export_dir` (SavedModel, `params.yaml`) from a trained checkpoint.

    Args:
        params: the experiment config (`maskrcnn_resnetfpn_nonlocal_coco`, a
            `keypoint_rcnn_*` experiment, ... with the overrides it was trained with).
        checkpoint_path: a checkpoint file or a `model_dir`; `None` exports the
            freshly initialised model.
        export_dir: where the SavedModel goes.
        batch_size: fixed batch size of the serving signature, or `None`.
        input_type: `image_tensor` (uint8 `(batch, height, width, 3)`),
            `image_bytes` or `tf_example`.

    Returns:
        `export_dir`.
    """
    if (checkpoint_path is not None and tf.io.gfile.isdir(checkpoint_path)
            and not tf.train.latest_checkpoint(checkpoint_path)):
        # Model Garden's export then writes the initial weights without a word.
        raise ValueError("The folder holds no checkpoint: the export would hold an untrained "
                         f"model. Received: checkpoint_path={checkpoint_path!r}")
    image_size = list(params.task.model.input_size[:2])
    module_class = (KeypointDetectionModule
                    if isinstance(params.task.model, keypoint_experiment.KeypointRCNN)
                    else detection.DetectionModule)
    module = module_class(
        params=params, batch_size=batch_size, input_image_size=image_size,
        input_type=input_type,
    )
    # By default tf.saved_model.save also traces every TF-Keras layer's call
    # so that the model could be revived as Keras layers, which serving never
    # does. Skipping it leaves the signatures' graphs as they were (same
    # outputs) and, on the tiny Keypoint R-CNN, cut the export from 78 s to
    # 36 s on 2 cores and its size from 26 to 12 MB (653 of 1,072 graph
    # functions were those traces).
    # A local folder is written beside and renamed into place (Model Garden
    # writes into it: a kill left an earlier export half overwritten).
    local = "://" not in export_dir
    with (atomic.replace_folder(export_dir) if local else contextlib.nullcontext(export_dir)) \
            as folder, tf_keras_saving.keras_option_scope(save_traces=False):
        export_saved_model_lib.export_inference_graph(
            input_type=input_type,
            batch_size=batch_size,
            input_image_size=image_size,
            params=params,
            checkpoint_path=checkpoint_path,
            export_dir=folder,
            export_module=module,
        )
    return export_dir

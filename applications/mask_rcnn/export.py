"""Export the non-local Mask R-CNN with Model Garden's detection export module.

Model Garden's `DetectionModule` owns the preprocessing (resize, pad,
normalise) and returns named outputs (`detection_boxes`, `detection_scores`,
`detection_classes`, `detection_masks`, `num_detections`, `image_info`). The
SavedModel is a plain TensorFlow graph: loading it needs neither Model Garden
nor this package.
"""

from official.vision.serving import detection, export_saved_model_lib


def export_saved_model(params, checkpoint_path, export_dir, batch_size=1,
                       input_type="image_tensor"):
    """Write `export_dir` (SavedModel, `params.yaml`) from a trained checkpoint.

    Args:
        params: the experiment config (`maskrcnn_resnetfpn_nonlocal_coco` with
            the overrides it was trained with).
        checkpoint_path: a checkpoint file or a `model_dir`; `None` exports the
            freshly initialised model.
        export_dir: where the SavedModel goes.
        batch_size: fixed batch size of the serving signature, or `None`.
        input_type: `image_tensor` (uint8 `(batch, height, width, 3)`),
            `image_bytes` or `tf_example`.

    Returns:
        `export_dir`.
    """
    image_size = list(params.task.model.input_size[:2])
    module = detection.DetectionModule(
        params=params, batch_size=batch_size, input_image_size=image_size,
        input_type=input_type,
    )
    export_saved_model_lib.export_inference_graph(
        input_type=input_type,
        batch_size=batch_size,
        input_image_size=image_size,
        params=params,
        checkpoint_path=checkpoint_path,
        export_dir=export_dir,
        export_module=module,
    )
    return export_dir

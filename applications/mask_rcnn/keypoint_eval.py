"""COCO box and keypoint AP (pycocotools, `iouType="keypoints"`, OKS) for Keypoint R-CNN.

Model Garden's `COCOEvaluator(include_keypoint=True)` passes `kpt_oks_sigmas`
to `COCOeval`'s constructor, which only Google's pycocotools fork accepts; the
released pycocotools takes them as `params.kpt_oks_sigmas`. This evaluator
has the interface Model Garden's tasks use (`name`, `reset_states`,
`update_state`, `result`) and Model Garden's conversion to COCO results,
and runs pycocotools itself.
"""

import numpy as np
from official.vision.evaluation import coco_utils
from pycocotools import cocoeval

_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1", "ARmax10", "ARmax100",
               "ARs", "ARm", "ARl")
_KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


class KeypointCOCOEvaluator:
    """Box AP (`AP`, ...) and keypoint AP (`keypoint_AP`, ...) against a COCO keypoint JSON.

    Args:
        annotation_file: the COCO person-keypoints JSON of the evaluated images.
        oks_sigmas: the per-keypoint OKS constants; `None` means COCO's 17.
    """

    name = "coco_metric"

    def __init__(self, annotation_file, oks_sigmas=None):
        self.annotation_file = annotation_file
        self.oks_sigmas = None if oks_sigmas is None else np.asarray(oks_sigmas, np.float64)
        self.ground_truth = coco_utils.COCOWrapper(eval_type="box", annotation_file=annotation_file)
        self.reset_states()

    def reset_states(self):
        self.predictions = {}

    def update_state(self, groundtruths, predictions):
        """Store one batch of predictions, in original-image pixels.

        `detection_boxes` `[ymin, xmin, ymax, xmax]` and `detection_keypoints`
        `[y, x]` come in pixels of the resized input; `image_info[:, 2]`
        holds the `(y, x)` scale that resize applied.
        """
        del groundtruths  # read from annotation_file
        batch = {key: _numpy(value) for key, value in predictions.items()}
        scale = batch["image_info"][:, 2, :].astype(np.float32)  # (batch, 2): y, x
        batch["detection_boxes"] = batch["detection_boxes"] / np.tile(scale, 2)[:, None, :]
        batch["detection_keypoints"] = batch["detection_keypoints"] / scale[:, None, None, :]
        for key, value in batch.items():
            self.predictions.setdefault(key, []).append(value)

    def result(self):
        keypoints = list(_coco_keypoints(self.predictions["detection_keypoints"]))
        results = coco_utils.convert_predictions_to_coco_annotations(self.predictions)
        # Model Garden's conversion truncates the keypoints to whole pixels
        # (`.astype(int)`: half a pixel to the top left on average); pycocotools
        # and Detectron keep them as they are. One result per detection, in order.
        for result, points in zip(results, keypoints, strict=True):
            result["keypoints"] = points
        detections = self.ground_truth.loadRes(predictions=results)
        image_ids = sorted({r["image_id"] for r in results})
        metrics = {}
        for iou_type, prefix, names in (("bbox", "", _STAT_NAMES),
                                        ("keypoints", "keypoint_", _KEYPOINT_STAT_NAMES)):
            evaluation = cocoeval.COCOeval(self.ground_truth, detections, iouType=iou_type)
            evaluation.params.imgIds = image_ids
            if iou_type == "keypoints" and self.oks_sigmas is not None:
                evaluation.params.kpt_oks_sigmas = self.oks_sigmas
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            metrics.update({prefix + name: np.float32(value)
                            for name, value in zip(names, evaluation.stats)})
        self.reset_states()
        return metrics


def _coco_keypoints(batches):
    """Each detection's COCO `[x1, y1, v1, x2, ...]` (v = 1) from `(batch, detections,
    K, 2)` `[y, x]` arrays, batch by batch."""
    for batch in batches:
        xyv = np.concatenate([batch[..., 1:], batch[..., :1], np.ones_like(batch[..., :1])], -1)
        yield from xyv.reshape(-1, xyv.shape[-2] * 3).astype(np.float64).tolist()


def _numpy(value):
    # Under a tf.distribute strategy a batch arrives as one tensor per replica.
    if isinstance(value, (tuple, list)):
        return np.concatenate([np.asarray(v) for v in value])
    return np.asarray(value)

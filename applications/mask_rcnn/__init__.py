"""Mask R-CNN with a non-local ResNet backbone, registered with TF Model Garden.

Importing this package registers, once per process (re-imports are no-ops):

- the backbone `resnet_nonlocal` (`backbone.ResNetNonLocalModel`, config
  `backbone.ResNetNonLocal`, in the one-of `backbone.Backbone`);
- the task config `experiment.MaskRCNNTask` with its task class
  `experiment.NonLocalMaskRCNNTask`;
- the experiment `maskrcnn_resnetfpn_nonlocal_coco`;
- Keypoint R-CNN (`keypoint_experiment.KeypointRCNNTask`, a keypoint head with
  optional non-local blocks) and its experiments `keypoint_rcnn_resnetfpn_coco`,
  `keypoint_rcnn_resnetfpn_nonlocal_head_coco`, `keypoint_rcnn_resnetfpn_nonlocal_coco`.

Only this package imports Model Garden (`official`) and `tf_keras`.
"""

from official.vision import registry_imports  # noqa: F401  (Model Garden's own experiments)

from nonlocal_keras.applications.mask_rcnn.backbone import (  # noqa: F401
    BACKBONE_TYPE,
    Backbone,
    ResNetNonLocal,
    ResNetNonLocalModel,
)
from nonlocal_keras.applications.mask_rcnn.experiment import (  # noqa: F401
    EXPERIMENT,
    MaskRCNNTask,
    NonLocalMaskRCNNTask,
)
from nonlocal_keras.applications.mask_rcnn.nonlocal_block import NonLocalBlock2D  # noqa: F401
from nonlocal_keras.applications.mask_rcnn.keypoint_experiment import (  # noqa: F401
    EXPERIMENTS as KEYPOINT_EXPERIMENTS,
    KeypointRCNNTask,
    KeypointRCNNTaskConfig,
)
from nonlocal_keras.applications.mask_rcnn.keypoint_head import KeypointHead  # noqa: F401
from nonlocal_keras.applications.mask_rcnn.keypoint_model import KeypointRCNNModel  # noqa: F401

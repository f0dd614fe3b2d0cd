"""Video ResNets with non-local blocks, and the non-local Mask R-CNN.

The Mask R-CNN lives in `nonlocal_keras.applications.mask_rcnn` and is not
imported here (it needs `tf-models-official`).
"""

from nonlocal_keras.applications.caffe2_weights import (
    convert_caffe2_weights,
    load_caffe2_weights,
)
from nonlocal_keras.applications.inflation import inflate_weights
from nonlocal_keras.applications.video_resnet import (
    C2DResNet50,
    C2DResNet101,
    I3DResNet50,
    I3DResNet101,
    VideoResNet,
)
from nonlocal_keras.applications.video_resnet_preprocessing import MEAN, STD, preprocess_input

__all__ = [
    "C2DResNet50",
    "C2DResNet101",
    "I3DResNet50",
    "I3DResNet101",
    "MEAN",
    "STD",
    "VideoResNet",
    "convert_caffe2_weights",
    "inflate_weights",
    "load_caffe2_weights",
    "preprocess_input",
]

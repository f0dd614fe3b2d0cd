"""Keras 3 non-local blocks for sequences, images and video, and the batch
normalisation they and the video ResNets train with."""

from nonlocal_keras.layers.base_nonlocal import BaseNonLocal
from nonlocal_keras.layers.fused_batch_normalization import FusedBatchNormalization
from nonlocal_keras.layers.nonlocal_1d import NonLocal1D
from nonlocal_keras.layers.nonlocal_2d import NonLocal2D
from nonlocal_keras.layers.nonlocal_3d import NonLocal3D

__all__ = ["BaseNonLocal", "FusedBatchNormalization", "NonLocal1D", "NonLocal2D", "NonLocal3D"]

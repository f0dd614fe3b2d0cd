"""Helpers shared by the export, serving-example and predict tests (no tests here).

A tiny NL video ResNet (one non-local block in res3) stands in for the real
networks; its classifier weights are enlarged so that the class scores are
a few units apart: top-k orders are not decided by round-off, and the
softmax is not saturated, so a change of preprocessing (another crop) still
moves the probabilities well above the comparison tolerances.
"""

import numpy as np

from nonlocal_keras.applications import VideoResNet

NUM_FRAMES = 8
CROP = 32
SCALE = 36
CLASS_NAMES = ["archery", "bowling", "cycling", "diving", "juggling"]
# The settings a config's `data` section gives the exporter.
DATA_CONFIG = {"num_frames": NUM_FRAMES, "sampling_rate": 1, "crop_size": CROP,
               "eval_scale": SCALE, "num_clips": 2, "num_crops": 3, "class_names": CLASS_NAMES}
# The paper's normalisation (official video-nonlocal-net), written out here
# rather than imported, so that the tests check the exported graph against it.
PAPER_MEAN, PAPER_STD = 114.75, 57.375


def tiny_model(input_shape=(NUM_FRAMES, CROP, CROP, 3), name="tiny_nl", seed=0):
    model = VideoResNet((1, 1), input_shape=input_shape, classes=len(CLASS_NAMES), width=4,
                        nonlocal_blocks={"res3": [0]}, name=name)
    sharpen(model, seed)
    return model


def sharpen(model, seed=0):
    kernel = model.get_layer("pred").kernel
    rng = np.random.default_rng(seed)
    kernel.assign(rng.normal(0.0, 0.1, kernel.shape).astype("float32"))


def normalize(clips):
    return (np.asarray(clips, np.float32) - PAPER_MEAN) / PAPER_STD


def random_clips(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def centre_crop(clips, size):
    """The centred `size` square of frames `(..., H, W, C)`, by slicing."""
    height, width = clips.shape[-3:-1]
    top, left = (height - size) // 2, (width - size) // 2
    return clips[..., top:top + size, left:left + size, :]

"""Model Garden's vision trainer with the non-local Mask R-CNN registered.

The logic behind `nonlocal-train-detection` (`nonlocal_keras.training.train_detection`),
kept here because only this package imports Model Garden.
"""

import json
import os

import tensorflow as tf
import tf_keras
from absl import flags

from nonlocal_keras.applications.mask_rcnn import experiment  # noqa: F401  (registers)
from nonlocal_keras.applications.mask_rcnn import (
    export,
    keypoint_experiment,
    synthetic_coco,
    synthetic_keypoints,
)

FLAGS = flags.FLAGS


def define_flags():
    """Every flag of `official/vision/train.py`, plus --synthetic_coco_dir and --export_dir."""
    from official.common import flags as tfm_flags
    # Its module defines the trainer's own flags (--enable_async_checkpointing)
    # at import time; they must exist before the command line is parsed.
    from official.vision import train as vision_train  # noqa: F401

    tfm_flags.define_flags()
    flags.DEFINE_string(
        "synthetic_coco_dir", None,
        "Generate the embedded synthetic COCO dataset here (if missing) and use it "
        "as train and validation data: shapes with masks for Mask R-CNN, stick "
        "figures with keypoints (in DIR/keypoints) for the keypoint_rcnn_* experiments.")
    flags.DEFINE_string(
        "export_dir", None,
        "After the --mode run, export the latest checkpoint of --model_dir here as a SavedModel.")
    flags.mark_flags_as_required(["experiment", "mode", "model_dir"])


def synthetic_data_config(directory, keypoints=False):
    """A YAML override pointing the task's data and evaluator at a synthetic dataset.

    The dataset (`synthetic_coco`, or `synthetic_keypoints` in `directory/keypoints`
    with the keypoint settings it implies) is generated on the first call; the
    override file is written next to it and returned, to be applied after the
    user's config files.
    """
    if keypoints:
        directory = os.path.join(directory, "keypoints")
    paths_file = os.path.join(directory, "paths.json")
    if not os.path.exists(paths_file):
        paths = (synthetic_keypoints if keypoints else synthetic_coco).build(directory)
        with open(paths_file, "w") as f:
            json.dump(paths, f)
    with open(paths_file) as f:
        paths = json.load(f)
    task = synthetic_keypoints.task_override() if keypoints else {}
    task.update({
        "train_data": {"input_path": paths["train_tfrecords"]},
        "validation_data": {"input_path": paths["val_tfrecords"]},
        "annotation_file": paths["val_json"],
    })
    override_file = os.path.join(directory, "data_override.yaml")
    with open(override_file, "w") as f:
        json.dump({"task": task}, f)  # JSON is YAML
    return override_file


def seed_everything(params):
    """Seed Python, NumPy and TensorFlow from `task.train_data.seed`, if it is set.

    Model Garden uses that seed for the input pipeline only; weight
    initialisation and the RoI samplers draw from TensorFlow's global seed.
    With both seeded and deterministic ops, a CPU run repeats exactly.
    """
    seed = params.task.train_data.seed
    if seed is None:
        return
    tf_keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def run(argv):
    """`official.vision.train`'s main, then the optional export."""
    from official.core import train_utils
    from official.vision import train as vision_train

    if FLAGS.synthetic_coco_dir:
        keypoints = FLAGS.experiment in keypoint_experiment.EXPERIMENTS
        FLAGS.config_file = list(FLAGS.config_file or []) + [
            synthetic_data_config(FLAGS.synthetic_coco_dir, keypoints=keypoints)]
    params = train_utils.parse_configuration(FLAGS)
    seed_everything(params)
    vision_train.main(argv)
    if not FLAGS.export_dir:
        return
    export.export_saved_model(params, FLAGS.model_dir, FLAGS.export_dir)
    print(f"Exported the SavedModel to {FLAGS.export_dir}")


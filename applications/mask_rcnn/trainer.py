"""Model Garden's vision trainer with the non-local Mask R-CNN registered.

The logic behind `nonlocal-train-detection` (`nonlocal_keras.training.train_detection`),
kept here because only this package imports Model Garden.
"""

import contextlib
import dataclasses
import difflib
import functools
import json
import math
import os
import re
import time
import typing
import uuid

import orbit
import tensorflow as tf
import tf_keras
import yaml
from absl import flags, logging
from official.core import input_reader, train_lib

from nonlocal_keras import console
from nonlocal_keras.applications.mask_rcnn import experiment  # also registers
from nonlocal_keras.applications.mask_rcnn import (
    backbone as nonlocal_backbone,
    export,
    keypoint_data,
    keypoint_experiment,
    synthetic_coco,
    synthetic_keypoints,
    undecodable_images,
)
from nonlocal_keras.training import atomic, cluster_stop, run_state, runtime
from nonlocal_keras.utils import is_real

FLAGS = flags.FLAGS


def define_flags():
    """Every flag of `official/vision/train.py`, plus --synthetic_coco_dir and --export_dir
    (once a process: absl refuses a flag defined twice)."""
    if "synthetic_coco_dir" in flags.FLAGS:
        return
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
    if not os.path.exists(paths_file):  # written last, atomically: the dataset is complete
        paths = (synthetic_keypoints if keypoints else synthetic_coco).build(directory)
        atomic.write_json(paths_file, paths)
    with open(paths_file) as f:
        paths = json.load(f)
    task = synthetic_keypoints.task_override() if keypoints else {}
    task.update({
        "train_data": {"input_path": paths["train_tfrecords"]},
        "validation_data": {"input_path": paths["val_tfrecords"]},
        "annotation_file": paths["val_json"],
    })
    override_file = os.path.join(directory, "data_override.yaml")
    override = {"task": task}
    try:
        with open(override_file) as f:
            written = json.load(f)
    except (OSError, ValueError):
        written = None
    # Written only where it differs: a whole dataset on read-only storage was
    # refused ("Cannot write .../data_override.yaml") by a write that changed nothing.
    if written != override:
        atomic.write_json(override_file, override)  # JSON is YAML; every worker writes it
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


# Steps between two looks at the signals inside an Orbit loop: Model Garden's
# COCO Mask R-CNN loops over 500 steps at batch 64 (its `steps_per_epoch`),
# which a scheduler's grace after SIGTERM (30 s for Slurm's and Kubernetes'
# defaults) does not wait for.
PIECE_STEPS = 10
# On one worker a piece is also cut to about this long: ten steps of a large
# model on a CPU outlast that grace, and the watchdog's (`cli`).
PIECE_SECONDS = 5.0


class CommittingController(orbit.Controller):
    """Orbit's controller with the command's signal handling (`signals`, e.g.
    `cli.LoopSignals`) around each loop of `trainer.steps_per_loop` steps and
    each evaluation: a SIGTERM or SIGHUP saves a checkpoint of the steps trained
    before the process leaves, so that a preempted or hung-up run resumes where
    it was rather than at its last `checkpoint_interval`.

    Inside a loop the signals are looked at every PIECE_STEPS steps, or every
    PIECE_SECONDS of steps on one worker (the workers of a cluster must stop at
    the same points): the trainer's loop function (one `tf.function`, whose step
    count is a tensor) is called for a piece of steps at a time, between the
    loop's one `train_loop_begin` and `train_loop_end`, so metrics and summaries
    are those of the whole loop. Not on TPUs, where each call costs a round trip
    to the host."""

    def __init__(self, *args, signals, before_first_save=None, phase=None, **kwargs):
        self._before_first_save = before_first_save  # called before the first save
        # Whether it trains or evaluates ("train", "eval"), under "now": which data
        # an error names (`damaged_files_named`).
        self._phase = {} if phase is None else phase
        super().__init__(*args, **kwargs)
        self._signals = signals
        # Several workers stop together, at the same step: each saves its part of
        # the checkpoint (a collective), which one alone cannot do.
        self._cluster = cluster_stop.for_strategy(self.strategy,
                                                  lambda: int(self.global_step.numpy()))
        if self.trainer is not None and not isinstance(self.strategy, tf.distribute.TPUStrategy):
            build = self.trainer.create_train_loop_fn
            seconds = None if self._cluster else PIECE_SECONDS
            self.trainer.create_train_loop_fn = lambda: in_pieces(
                build(), PIECE_STEPS, lambda: signals.check(self._commit, self._cluster),
                seconds)

    def train(self, steps, checkpoint_at_completion=True):
        # Between two loops (summaries, a periodic save) a signal is only recorded
        # too, and met at the next piece's end or, on one worker, after the last
        # loop: raised there, it left without the loop just trained, and one worker
        # of a cluster left alone (its peers failed). Not after a cluster's last
        # loop: no collective follows that holds the chief, and a worker reading the
        # agreed step there found it gone (exit 2 at the end of a finished run).
        with self._signals.steps(self._commit, self._cluster,
                                 check_after=self._cluster is None):
            return super().train(steps, checkpoint_at_completion)

    def _train_n_steps(self, num_steps):
        self._phase["now"] = "train"
        with self._signals.steps(self._commit, self._cluster):
            super()._train_n_steps(num_steps)

    def evaluate(self, steps=-1):
        self._phase["now"] = "eval"
        with self._signals.evaluation(self._commit, self._cluster):
            return super().evaluate(steps)

    def train_and_evaluate(self, train_steps, eval_steps=-1, eval_interval=None):
        # Resumed at its last step (a SIGTERM during the final evaluation commits
        # that step; or the run had finished), Orbit's loop trains nothing and
        # evaluates nothing: exit 0 without the evaluation the command is for.
        step = int(self.global_step.numpy())
        if step < train_steps:
            return super().train_and_evaluate(train_steps, eval_steps, eval_interval)
        message = (f"Training is done (step {step} of {train_steps}): evaluating the latest "
                   "checkpoint.")
        logging.info(message)
        print(message, flush=True)  # beside Orbit's own lines, which it prints too
        return self.evaluate(eval_steps)

    def _maybe_save_checkpoint(self, check_interval=True):
        if self._before_first_save is not None and self.checkpoint_manager:
            call, self._before_first_save = self._before_first_save, None
            call()
        return super()._maybe_save_checkpoint(check_interval)

    def _commit(self):
        if self.checkpoint_manager:
            self.save_checkpoint()
            self._sync_on_async_checkpointing()


class ExperimentRunner(train_lib.OrbitExperimentRunner):
    """Model Garden's experiment runner, whose workers other than the chief
    restore the chief's checkpoint.

    In a multi-worker run every worker saves (reading some variables is a
    collective), the others each into a new temporary folder, from which they
    also restore: nothing. A rerun (after a kill, a preemption, or to train on)
    then had the chief restore its step while the others started from step 0,
    and the first collective failed on both ("Collective instance 535 expected
    type 1 and data_type 1 but got ... data_type 9")."""

    def _build_trainer(self, task, train, evaluate):
        trainer = super()._build_trainer(task, train, evaluate)
        if trainer.optimizer is not None and isinstance(task, experiment.NonLocalMaskRCNNTask):
            with self.strategy.scope():
                create_optimizer_variables(trainer.optimizer, trainer.model.trainable_variables)
        return trainer

    def _maybe_build_checkpoint_manager(self):
        manager = super()._maybe_build_checkpoint_manager()
        if manager is None or self.strategy.extended.should_checkpoint:
            return manager
        # Model Garden's arguments for these workers, and where to restore from.
        return ChiefRestoringCheckpointManager(
            self.trainer.checkpoint, directory=manager.directory, max_to_keep=1,
            step_counter=self.trainer.global_step,
            checkpoint_interval=self.params.trainer.checkpoint_interval,
            init_fn=self.trainer.initialize, chief_directory=self.model_dir)


def create_optimizer_variables(optimizer, variables):
    """Creates `optimizer`'s slots (momentum, ...) for `variables` now, as Keras'
    `fit` does before its first step: made by the first step, they had
    `tf.function` trace the training loop twice (about 10 of a tiny model's
    40 s to its first loop). They are the variables, and have the names, that
    the first step made."""
    # A loss-scale wrapper's inner optimizer makes them, in its own name scope.
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    with tf.name_scope(inner.get_config()["name"]):
        if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
            optimizer._create_all_weights(variables)  # what its apply_gradients calls
        elif isinstance(optimizer, tf_keras.optimizers.Optimizer):
            optimizer.build(variables)


class ChiefRestoringCheckpointManager(tf.train.CheckpointManager):
    """Saves into its own `directory`, restores the latest checkpoint of
    `chief_directory` (or initialises, when there is none)."""

    def __init__(self, *args, chief_directory, **kwargs):
        super().__init__(*args, **kwargs)
        self._chief_directory = chief_directory

    def restore_or_initialize(self):
        latest = tf.train.latest_checkpoint(self._chief_directory)
        if latest is None:
            return super().restore_or_initialize()
        self.checkpoint.restore(latest)
        if self.checkpoint_interval is not None:
            # As the base class does after a restore: the next save is due when
            # the chief's is (saving is a collective; a worker that saved alone,
            # its folder being empty, failed the cluster).
            self._last_checkpoint_step = int(self._step_counter.numpy())
        return latest


def in_pieces(loop_fn, piece_steps, between, seconds=None, clock=time.monotonic):
    """Orbit's `loop_fn(iterator, num_steps)` run `piece_steps` steps at a time,
    `between()` called between two pieces. With `seconds`, the first piece is
    one step and each next one as many steps as took about `seconds` in the
    piece before (at least one, at most `piece_steps`)."""
    size = 1 if seconds else piece_steps

    def run(iterator, num_steps):
        nonlocal size
        left = int(num_steps)
        if left < 0:  # until the data ends
            return loop_fn(iterator, num_steps)
        while left > 0:
            piece = min(left, size)
            started = clock()
            loop_fn(iterator, tf.constant(piece, num_steps.dtype))
            if seconds:
                per_step = (clock() - started) / piece
                size = piece_steps if per_step <= 0 else max(
                    1, min(piece_steps, int(seconds / per_step)))
            left -= piece
            if left:
                between()
        return None

    return run


# The sections of `task.model` that make the network's variables. The others
# (detection_generator's NMS, the samplers, input_size, norm_activation with
# synchronised BN) may change between two commands on one run.
ARCHITECTURE = ("backbone", "decoder", "rpn_head", "detection_head", "mask_head",
                "keypoint_head", "anchor", "num_classes", "include_mask", "min_level",
                "max_level")
# In those sections, what trains or evaluates the network without making it.
NOT_ARCHITECTURE = ("keypoint_head.num_sampled_rois", "keypoint_head.loss_weight",
                    "keypoint_head.flip_permutation", "keypoint_head.oks_sigmas")
# The --mode values Model Garden's runner implements (its flag also offers
# continuous_train_and_eval and train_and_validate, which raise NotImplementedError).
MODES = ("train", "eval", "train_and_eval", "continuous_eval", "train_and_post_eval")


def check_flags(model_dir, mode, export_dir, config_files):
    """The command line, before anything is read or written: each mistake was a
    traceback after training (an --export_dir that is a file), a run written into
    the working directory (an empty --model_dir), or another run's folder changed.
    Returns `{path: mapping}` of the config files, read once (`check_sections`)."""
    if not model_dir:
        raise ValueError("--model_dir must name a folder (an empty value, an unset shell "
                         f"variable, would write into the working directory). Received: "
                         f"--model_dir={model_dir!r}")
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)} (Model Garden's runner "
                         f"implements no other). Received: --mode={mode!r}")
    for flag, path in (("--model_dir", model_dir), ("--export_dir", export_dir)):
        if path and "://" not in path:
            _check_folder(flag, path)
    if export_dir:
        _check_export_dir(export_dir, model_dir)
    contents = {}
    for path in config_files or ():
        if tf.io.gfile.isdir(path):
            raise ValueError(f"--config_file is a folder, not a YAML file. Received: "
                             f"--config_file={path!r}")
        if not tf.io.gfile.exists(path):
            # Model Garden's words named no flag: "x.yaml; No such file or directory".
            raise ValueError(f"--config_file is not there (no such file). "
                             f"Received: --config_file={path!r}")
        with tf.io.gfile.GFile(path) as handle:
            try:
                content = yaml.safe_load(handle)
            except yaml.YAMLError as error:
                raise ValueError(f"--config_file is not valid YAML ({' '.join(str(error).split())})."
                                 f" Received: --config_file={path!r}") from None
        if not isinstance(content, dict) or not content:
            # Found by a walk: an empty one (or comments only) was Model
            # Garden's "'NoneType' object has no attribute 'items'" traceback.
            raise ValueError(f"--config_file must hold a mapping (task: ..., trainer: ...); "
                             f"this one is {'empty' if content is None else 'not'}. Received: "
                             f"--config_file={path!r}")
        contents[path] = content
    return contents


def tensorflow_log_as_absl():
    """TensorFlow's Python log at absl's level (`--verbosity`): importing Model
    Garden's COCO converter (which the keypoint data use) sets TensorFlow's
    logger to INFO, and under a log kept to warnings its INFO lines came (each
    twice: its own handler's and absl's)."""
    from absl import logging as absl_logging

    tf.get_logger().setLevel(absl_logging.get_absl_logger().getEffectiveLevel())


def check_experiment(name):
    """An unknown `--experiment` named with the ones there are (Model Garden's
    registry said "collection path nosuch at position 0 is never registered.
    Please make sure the nosuch and its library is imported and linked to the
    trainer binary")."""
    from official.core import exp_factory

    try:
        exp_factory.get_exp_config(name)
        return
    except LookupError as error:
        if "never registered" not in str(error):
            raise
    ours = [experiment.EXPERIMENT, *keypoint_experiment.EXPERIMENTS]
    theirs = sorted(set(getattr(exp_factory, "_REGISTERED_CONFIGS", ())) - set(ours))
    close = difflib.get_close_matches(name, ours + theirs, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"Unknown --experiment {name!r}{hint}. This package's experiments: "
                     f"{', '.join(ours)}; Model Garden's: {', '.join(theirs)}. "
                     f"Received: --experiment={name!r}")


def override_mapping(text):
    """`--params_override` as Model Garden reads it (`override_params_dict`): pairs
    (`a.b=1,c=2`), a YAML mapping, else a YAML file's name; the mapping, or None
    where Model Garden's own reading fails (its errors are named in `_run`)."""
    from official.modeling.hyperparams import params_dict

    if not text:
        return {}
    given = text
    try:
        text = params_dict.nested_csv_str_to_json_str(text)
    except ValueError:
        pass
    try:
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            if not tf.io.gfile.exists(text) or tf.io.gfile.isdir(text):
                return None
            with tf.io.gfile.GFile(text) as handle:
                value = yaml.safe_load(handle)
    except yaml.YAMLError:
        return None
    if not isinstance(value, dict) or not value:
        # Found by a walk: an empty file was the traceback of an empty
        # --config_file, a list "'list' object has no attribute 'items'".
        raise ValueError("--params_override must be KEY=VALUE pairs, a YAML mapping or a "
                         f"YAML file holding one; this is {'empty' if value is None else 'not'}."
                         f" Received: --params_override={given!r}")
    return value


def check_sections(given, defaults, argument):
    """A section given something else than its fields: `task: null` or `trainer:
    5` in an override or a config file were tracebacks in Model Garden's
    override ("'NoneType' object is not subscriptable")."""
    def walk(given, expected, prefix):
        for name, value in given.items():
            if not isinstance(expected.get(name), dict):
                continue  # a field, or no such key: Model Garden's strict override names it
            key = f"{prefix}{name}"
            if value is None:
                raise ValueError(f"`{key}` is empty (null) where a section is needed. "
                                 f"Received: {key}=None")
            if not isinstance(value, dict):
                raise ValueError(f"`{key}` is a section: give its fields ({key}.<field>: ...). "
                                 f"Received: {argument}: {key}={value!r}")
            walk(value, expected[name], f"{key}.")

    walk(given, defaults.as_dict(), "")


def _check_export_dir(export_dir, model_dir):
    """The export replaces `export_dir` whole: it must be new, empty, or an earlier
    export. A folder above --model_dir, or one of other files, was deleted with
    the run or the files in it, exit 0."""
    # Real paths: a --model_dir that is a symbolic link into --export_dir (or an
    # --export_dir that links above the run) was deleted by the export, exit 0.
    export, run = (os.path.realpath(path) if "://" not in path else path.rstrip("/")
                   for path in (export_dir, model_dir))
    if export == run or run.startswith(export.rstrip(os.sep) + os.sep):
        raise ValueError("--export_dir must be another folder than --model_dir and not one "
                         "above it: the export replaces the folder whole. "
                         f"Received: --export_dir={export_dir!r}, --model_dir={model_dir!r}")
    if not tf.io.gfile.isdir(export_dir):
        check_can_write("--export_dir", export_dir)
        return
    held, checkpoint = tf.io.gfile.listdir(export_dir), tf.train.latest_checkpoint(export_dir)
    if not held or (tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb"))
                    and not checkpoint):
        return
    what = ("a training run (checkpoints)" if checkpoint
            else f"no SavedModel but {', '.join(sorted(held)[:3])}"
                 f"{f' and {len(held) - 3} more' if len(held) > 3 else ''}")
    raise ValueError(f"--export_dir holds {what}, which the export would replace: give a new or "
                     f"empty folder, or an earlier export's. Received: --export_dir={export_dir!r}")


def _check_folder(flag, path):
    """`path` can be a folder: neither it nor a folder above it is a file."""
    here = os.path.abspath(path)
    while True:
        if os.path.exists(here) and not os.path.isdir(here):
            where = "is a file" if here == os.path.abspath(path) else f"is in {here!r}, a file"
            raise ValueError(f"{flag} {where}, not a folder. Received: {flag}={path!r}")
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent


def check_value_types(params, defaults):
    """An override of the wrong type (`trainer.train_steps=abc`) is kept as given by
    Model Garden, and failed after the model was built; here it names the field."""
    given, expected = _flat(params.as_dict()), _flat(defaults.as_dict())
    for key, value in given.items():
        # An empty value (`trainer.train_steps=`, an unset shell variable) is
        # null: a number's or a whole section's was a traceback once built.
        section = value is None and any(name.startswith(f"{key}.") for name in expected)
        number = (value is None and isinstance(expected.get(key), (int, float))
                  and not isinstance(expected.get(key), bool))
        if section or number:
            what = "a section" if section else f"a number (default {expected[key]!r})"
            raise ValueError(f"`{key}` is empty (null) where {what} is needed. "
                             f"Received: {key}=None")
    for key, default in expected.items():
        value = given.get(key)
        if default is None or value is None:
            continue
        if _wrong_type(default, value):
            raise ValueError(f"`{key}` must be {type(default).__name__}, as its default "
                             f"{default!r}. Received: {key}={value!r}")
    # A field of no default is typed by its annotation: `task.train_data.seed=abc`
    # failed in Keras' words, "Expected `seed` argument to be an integer".
    for key, kind in _optional_numbers(defaults).items():
        value = given.get(key)
        if value is not None and _wrong_type(kind(), value):
            raise ValueError(f"`{key}` must be {kind.__name__} or null (its default). "
                             f"Received: {key}={value!r}")


def _optional_numbers(config, prefix=""):
    """`{key: int, float or bool}` of the fields of `config` (a Model Garden config)
    whose default is None and whose annotation is `Optional` of that type."""
    found = {}
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, key = getattr(config, field.name), f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            found.update(_optional_numbers(value, f"{key}."))
            continue
        kinds = [kind for kind in typing.get_args(hints.get(field.name))
                 if kind is not type(None)]
        if value is None and len(kinds) == 1 and kinds[0] in (int, float, bool):
            found[key] = kinds[0]
    return found


def floats_as_floats(params, defaults):
    """A whole number where the default is a float (`nms_iou_threshold=1`) is kept
    as an int by Model Garden, and failed in the model's trace ("Input 'y' of
    'Less' Op has type int32 that does not match type float32"): made a float."""
    given, expected = _flat(params.as_dict()), _flat(defaults.as_dict())
    for key, default in expected.items():
        value = given.get(key)
        if isinstance(default, float) and type(value) is int:
            nested = float(value)
            for name in reversed(key.split(".")):
                nested = {name: nested}
            params.override(nested, is_strict=True)


def _wrong_type(default, value):
    """Whether an override `value` cannot stand where Model Garden's `default` is."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) != isinstance(value, bool)
    if isinstance(default, int):  # 1.5 steps: Orbit's loop waits forever for the step
        return not isinstance(value, int)
    if isinstance(default, float):
        return not isinstance(value, (int, float))
    # Model Garden failed with a TypeError once the model was built. A string
    # field may take a list (`init_checkpoint_modules`).
    if isinstance(default, str):
        return isinstance(value, (int, float))
    return isinstance(default, (list, tuple)) and isinstance(value, (str, int, float))


# Values below these make no run: `trainer.train_steps=0` (or -5) wrote an untrained
# checkpoint, exit 0; `task.model.num_classes` counts the background.
# `trainer.checkpoint_interval=0` trained and saved nothing, exit 0. A negative
# `trainer.validation_interval` hung Orbit's train_and_evaluate (it trained
# min(steps left, interval) steps at a time); 0 is Orbit's "no interval": one
# evaluation, after the training. Batch sizes and shuffle buffers of 0 were
# tracebacks, -1 a cryptic "Dimension -1 must be >= 0".
AT_LEAST = {"trainer.train_steps": 1, "trainer.steps_per_loop": 1,
            "trainer.checkpoint_interval": 1, "trainer.validation_interval": 0,
            "task.model.num_classes": 2,
            "task.train_data.global_batch_size": 1, "task.validation_data.global_batch_size": 1,
            "task.train_data.shuffle_buffer_size": 1,
            "task.validation_data.shuffle_buffer_size": 1,
            # Keypoint R-CNN's: 0 failed in the first step (a traceback).
            "task.model.keypoint_head.roi_size": 1,
            # Found by a walk: -10 was a 3,000-character graph trace after the
            # build, -5 detections TopKV2's "must be non-negative", naming no key.
            **dict.fromkeys(
                ("task.model.roi_generator.pre_nms_top_k", "task.model.roi_generator.num_proposals",
                 "task.model.roi_generator.test_pre_nms_top_k",
                 "task.model.roi_generator.test_num_proposals",
                 "task.model.roi_sampler.num_sampled_rois",
                 "task.model.detection_generator.pre_nms_top_k",
                 "task.model.detection_generator.max_num_detections",
                 "task.model.mask_sampler.num_sampled_masks"), 1),
            # Found by a walk: 0 filters or scales were Keras' "Invalid value for
            # argument `filters`", -1 convolutions built none (exit 0), 0
            # keypoints "a permutation of 0..-1".
            **dict.fromkeys(
                ("task.model.decoder.fpn.num_filters", "task.model.rpn_head.num_filters",
                 "task.model.detection_head.num_filters", "task.model.mask_head.num_filters",
                 "task.model.anchor.num_scales", "task.model.keypoint_head.num_keypoints",
                 # "`summary_interval` (0) must be larger than 0", no section named.
                 "trainer.summary_interval"), 1),
            # "Seed must be between 0 and 2**32 - 1", naming no key.
            "task.train_data.seed": 0, "task.validation_data.seed": 0,
            **dict.fromkeys(
                ("task.model.rpn_head.num_convs", "task.model.detection_head.num_convs",
                 "task.model.detection_head.num_fcs", "task.model.mask_head.num_convs"), 0)}
# Orbit evaluates `steps` > 0, or the whole set for -1; with 0, train_and_eval
# trained the whole run, then failed with Orbit's ValueError.
STEPS_OR_ALL = ("trainer.validation_steps",)


def check_value_ranges(params):
    given = _flat(params.as_dict())
    for key, least in AT_LEAST.items():
        value = given.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            meaning = (" (0: one evaluation, after the training)"
                       if key == "trainer.validation_interval" else "")
            raise ValueError(f"`{key}` must be at least {least}{meaning}. "
                             f"Received: {key}={value!r}")
    for key in STEPS_OR_ALL:
        value = given.get(key)
        if (isinstance(value, int) and not isinstance(value, bool) and value < 1
                and value != -1):
            raise ValueError(f"`{key}` must be at least 1, or -1 (the whole validation set). "
                             f"Received: {key}={value!r}")
    _check_rates_and_scales(given)
    _check_thresholds_and_anchors(given)
    _check_choices(given)
    if hasattr(params.task.model, "keypoint_head"):
        keypoint_experiment.check_keypoint_head(params.task.model)
    _check_input_size(params.task.model)
    backbone = params.task.model.backbone
    depth = getattr(backbone.get(), "model_id", None)
    if backbone.type in ("resnet", nonlocal_backbone.BACKBONE_TYPE) and depth not in resnet_depths():
        key = f"task.model.backbone.{backbone.type}.model_id"
        raise ValueError(f"`{key}` must be one of the ResNet depths "
                         f"{', '.join(map(str, resnet_depths()))} (a bare KeyError before). "
                         f"Received: {key}={depth!r}")


def _check_rates_and_scales(given):
    """Found by a walk: a negative learning rate trained (gradient ascent), exit
    0; a negative scale of the training images failed mid-training in the
    resize ("output dimensions must be positive"), a traceback."""
    for key, value in given.items():
        numbers = value if isinstance(value, list) else [value]
        if (key.startswith("trainer.optimizer_config.") and key.rsplit(".", 1)[-1] in (
                "learning_rate", "initial_learning_rate", "warmup_learning_rate", "values",
                "end_learning_rate")
                and any(is_real(v) and not 0 <= v < math.inf for v in numbers)):
            raise ValueError(f"`{key}` must be learning rates >= 0 (finite). "
                             f"Received: {key}={value!r}")
    for data in ("task.train_data.parser", "task.validation_data.parser"):
        low, high = given.get(f"{data}.aug_scale_min"), given.get(f"{data}.aug_scale_max")
        if is_real(low) and is_real(high) and not 0 < low <= high < math.inf:
            raise ValueError(f"`{data}.aug_scale_min` and `aug_scale_max` must be scales with "
                             f"0 < min <= max. Received: {data}.aug_scale_min={low!r}, "
                             f"{data}.aug_scale_max={high!r}")


def _check_thresholds_and_anchors(given):
    """Found by a walk: a negative or NaN IoU or score threshold trained, exit 0;
    `min_level` above `max_level` was a bare KeyError ("'5'"); a depth multiplier
    of 0 or no aspect ratio Keras' "Invalid value for argument `filters`"."""
    for key, value in given.items():
        name = key.rsplit(".", 1)[-1]
        values = value if isinstance(value, list) else [value]
        if (name.endswith(("_threshold", "_thresholds")) and "min_size" not in name
                and any(not (is_real(v) and 0 <= v <= 1) for v in values if v is not None)):
            raise ValueError(f"`{key}` must be a fraction in [0, 1] (an IoU or a score). "
                             f"Received: {key}={value!r}")
    low, high = given.get("task.model.min_level"), given.get("task.model.max_level")
    if is_real(low) and is_real(high) and not 2 <= low <= min(high, 5):
        # 6 of 6 was a bare KeyError ("'5'"), 1 "Backbone min level should be
        # less or equal to FPN min level": the FPN starts at a ResNet level.
        raise ValueError("`task.model.min_level` must be a level of the ResNet backbone, 2 to "
                         "5 (the FPN starts from one), and at most `task.model.max_level`. "
                         f"Received: task.model.min_level={low!r}, "
                         f"task.model.max_level={high!r}")
    sampler = {name: given.get(f"task.model.roi_sampler.{name}") for name in (
        "background_iou_low_threshold", "background_iou_high_threshold",
        "foreground_iou_threshold")}
    if all(is_real(v) for v in sampler.values()) and sorted(sampler.values()) != list(
            sampler.values()):
        # "`threshold` must be sorted, got [0.0, 0.5, 0.0]", naming no key.
        raise ValueError("The RoI sampler's IoU thresholds must run background_iou_low <= "
                         "background_iou_high <= foreground_iou. Received: " + ", ".join(
                             f"task.model.roi_sampler.{k}={v!r}" for k, v in sampler.items()))
    for key, value in given.items():
        if key.endswith(".depth_multiplier") and is_real(value) and not 0 < value < math.inf:
            raise ValueError(f"`{key}` must be a number > 0 (it scales the channels). "
                             f"Received: {key}={value!r}")
    ratios = given.get("task.model.anchor.aspect_ratios")
    if isinstance(ratios, list) and (not ratios or not all(
            is_real(r) and 0 < r < math.inf for r in ratios)):
        raise ValueError("`task.model.anchor.aspect_ratios` must be one or more numbers > 0. "
                         f"Received: task.model.anchor.aspect_ratios={ratios!r}")


# Model Garden's words named the value, not the key: "Unrecognized Distribution
# Strategy: 'bogus'", "Unexpected dtype: float64".
CHOICES = {"runtime.distribution_strategy": ("off", "one_device", "mirrored", "parameter_server",
                                             "multi_worker_mirrored", "tpu"),
           "runtime.mixed_precision_dtype": ("float32", "float16", "bfloat16")}


def _check_choices(given):
    for key, choices in CHOICES.items():
        value = given.get(key)
        if value is not None and str(value).lower() not in choices:
            raise ValueError(f"`{key}` must be one of {', '.join(choices)}. "
                             f"Received: {key}={value!r}")


def _check_input_size(model):
    """Model Garden's input pipeline asks for sides "divided by the largest
    feature stride 2^max_level"; others failed in the FPN's build with Keras'
    "Dimensions must be equal, but are 64 and 63"."""
    size, stride = list(model.input_size), 2 ** model.max_level
    if not (len(size) == 3 and size[2] == 3 and all(
            isinstance(side, int) and side >= stride and side % stride == 0 for side in size[:2])):
        raise ValueError(f"`task.model.input_size` must be [height, width, 3] with sides that are "
                         f"multiples of 2^task.model.max_level = {stride} (the coarsest level's "
                         f"stride). Received: task.model.input_size={size}")


def resnet_depths():
    from official.vision.modeling.backbones import resnet

    return sorted(resnet.RESNET_SPECS)


# What TensorFlow says of a damaged file the run reads (a TFRecord, an image in
# one, a checkpoint): a traceback before, as from a bug. A truncated checkpoint
# index, or a task.init_checkpoint that is no checkpoint (a text file), says
# "file is too short to be an sstable" (an OpError of code UNKNOWN, or DataLossError).
DAMAGED = re.compile(r"(?:corrupted|truncated) record at \d+|Unknown image file format|Invalid "
                     r"(?:PNG|JPEG)|Checksum does not match|Read less bytes than requested|not an "
                     r"sstable|(?:file is )?too short to be an sstable")
CHECKPOINT_DAMAGE = re.compile(r"sstable")
NO_DECODABLE_IMAGE = re.compile(rf"{undecodable_images.NoDecodableImage.__name__}: (.*)")
# What TensorFlow says of data that are no COCO tf.Examples: an empty TFRecord
# (OutOfRangeError), records that are not tf.Example, tf.Examples without the keys
# of Model Garden's decoder. Tracebacks before.
UNUSABLE = re.compile(r"End of sequence|Could not parse example input|Feature: \S+ "
                      r"\(data type: \w+\) is required but could not be found")


@contextlib.contextmanager
def damaged_files_named(params, model_dir, mode=None, phase=None):
    """A damaged input or checkpoint, or data that are no COCO tf.Examples, is a
    user error (ValueError) naming where the run reads them; any other error of
    those types stays a bug's. `phase` (a dict) holds under "now" whether the
    controller was training or evaluating ("train", "eval") when it raised."""
    try:
        yield
    except (tf.errors.OpError, IndexError) as error:
        text = str(getattr(error, "message", error))
        data = params.task
        undecodable = NO_DECODABLE_IMAGE.search(text)
        if undecodable:  # raised inside the data's tf.numpy_function
            raise ValueError(undecodable.group(1)) from None
        found = DAMAGED.search(text)
        if found and CHECKPOINT_DAMAGE.search(found.group(0)):
            latest = tf.train.latest_checkpoint(model_dir) if model_dir else None
            named = re.search(r"table file (\S+?):", text)
            raise ValueError(
                f"A checkpoint this command reads is damaged or no checkpoint "
                f"({found.group(0)}"
                f"{f': {named.group(1)}' if named else ''}): the latest of --model_dir "
                f"({latest or 'none'}) or task.init_checkpoint; write it again or remove it. "
                f"Received: task.init_checkpoint={data.init_checkpoint!r}, "
                f"--model_dir={model_dir!r}") from None
        if found:
            raise ValueError(
                f"A file this command reads is damaged ({found.group(0)}): a record or image of "
                "the training or validation data, or a checkpoint (the latest of --model_dir, "
                "task.init_checkpoint); write it again. Received: task.train_data.input_path="
                f"{data.train_data.input_path!r}, task.validation_data.input_path="
                f"{data.validation_data.input_path!r}, --model_dir={model_dir!r}") from None
        unusable = UNUSABLE.search(text)
        lacking = keypoint_data.KEYPOINTS_NOT_IN_RECORDS in text
        if not (unusable or lacking) or isinstance(error, IndexError):
            raise
        now = (phase or {}).get("now") or (
            "eval" if mode in ("eval", "continuous_eval")
            else "train" if mode in ("train", "train_and_post_eval") else None)
        which = {"train": ("training", ["train_data"]),
                 "eval": ("validation", ["validation_data"])}.get(
                     now, ("training or validation", ["train_data", "validation_data"]))
        received = ", ".join(f"task.{name}.input_path={getattr(data, name).input_path!r}"
                             for name in which[1])
        if lacking:
            count = data.model.keypoint_head.num_keypoints
            raise ValueError(
                f"The {which[0]} data's records do not hold {count} keypoints an object "
                "(image/object/keypoint/x, y, visibility): records written without keypoints "
                "(Model Garden's COCO converter writes none), or with another count than "
                f"task.model.keypoint_head.num_keypoints. Received: {received}, "
                f"task.model.keypoint_head.num_keypoints={count}") from None
        raise ValueError(
            f"The {which[0]} data are not COCO tf.Examples Model Garden can read "
            f"({unusable.group(0)}): an empty TFRecord file, records that are not tf.Example, "
            f"or tf.Examples without the COCO keys (image/encoded, image/object/bbox/...). "
            f"Received: {received}") from None


@contextlib.contextmanager
def unwritable_model_dir_named(model_dir):
    """TensorFlow's PermissionDeniedError writing into --model_dir (params.yaml,
    the summaries) is the user's folder, not a bug: one line. Any other stays."""
    try:
        yield
    except tf.errors.PermissionDeniedError as error:
        text = str(getattr(error, "message", error))
        if not model_dir or "://" in model_dir or not any(
                place in text for place in {model_dir.rstrip("/"),
                                            os.path.abspath(model_dir),
                                            os.path.realpath(model_dir)}):
            raise
        raise ValueError(f"Cannot write in --model_dir ({' '.join(text.split())}). "
                         f"Received: --model_dir={model_dir!r}") from None


@contextlib.contextmanager
def other_init_checkpoint_named(task, model_dir):
    """Found by a re-walk: a `task.init_checkpoint` of another backbone (a
    non-local run's, whose blocks' weights come first by order) failed in
    TensorFlow's words only ("Received incompatible tensor with shape (1, 1,
    256, 64) when attempting to restore variable with shape (1, 1, 256,
    128)"), naming no setting."""
    first = _starts_from_init_checkpoint(task, model_dir)
    try:
        yield
    except ValueError as error:
        if not first or "Received incompatible tensor" not in str(error):
            raise
        raise ValueError(
            f"task.init_checkpoint is not of this backbone ({' '.join(str(error).split())}): "
            "it must be a checkpoint of the same plain ResNet (such as Model Garden's ImageNet "
            "one), which a run with non-local blocks is not; such a run goes on with its folder "
            "as --model_dir. "
            f"Received: task.init_checkpoint={task.init_checkpoint!r}") from None


def check_can_write(flag, path):
    """Before anything is written: the local folder `flag` names, or where there
    is none yet the nearest folder above it (where it would be made), takes new
    files. A read-only --model_dir was a PermissionDeniedError traceback
    (params.yaml, the summaries); an --export_dir under /proc failed after the
    whole evaluation."""
    if not path or "://" in path:
        return
    here = atomic.existing_folder(path)
    reason = atomic.why_not_writable(here)
    if reason:
        where = "" if here == os.path.abspath(path) else f" ({here!r}, where it would be made)"
        raise ValueError(f"Cannot write in {flag}{where}: it takes no new file ({reason}). "
                         f"Received: {flag}={path!r}")


def check_data_files(params, mode):
    """Before the network is built: the data files the mode reads are there and hold
    records. A pattern that matched nothing (Model Garden's "does not match any
    files") or a path that is not there was found after the build and the first
    trace (39 s of the plain COCO config on 2 cores, minutes of a real one); local
    files that are all empty (0 bytes: a TFRecord of no record) made training a
    traceback ("End of sequence") and --mode eval evaluate nothing (validation_loss
    0.0, no AP), exit 0. Remote paths (`gs://...`) and TFDS datasets are not checked."""
    reads = (["train_data"] if "train" in mode else []) + (
        ["validation_data"] if "eval" in mode else [])
    for name in reads:
        data = getattr(params.task, name)
        given = data.input_path
        if (getattr(data, "tfds_name", None) or not isinstance(given, (str, list, tuple))
                or not given or "://" in str(given)):
            continue
        try:
            # Model Garden's own reading: its patterns with a wildcard must match.
            files = input_reader.match_files(given)
        except ValueError as error:
            raise ValueError(f"{error} Received: task.{name}.input_path={given!r}") from None
        # The paths without a wildcard it reads as they are.
        for path in files:
            if not tf.io.gfile.exists(path):
                raise ValueError(f"{path} does not match any files. Received: "
                                 f"task.{name}.input_path={given!r}")
        if all(not tf.io.gfile.isdir(f) and tf.io.gfile.stat(f).length == 0 for f in files):
            raise ValueError(
                f"task.{name}.input_path names only empty files (TFRecords of no record): "
                f"there is nothing to {'train on' if name == 'train_data' else 'evaluate'}. "
                f"Received: task.{name}.input_path={given!r}")


def check_annotation_file(task, mode):
    """Before anything runs, for a command that evaluates: the COCO JSON the
    metrics read (`task.annotation_file`) must be one, with some annotation
    and, where masks are scored, polygons of 3 points or more (keypoints:
    `check_keypoint_annotations`). Found by a walk,
    each after the whole evaluation: `{}` said "error: images", a file of no
    annotation scored AP -1 with exit 0, a polygon of 2 points was a
    pycocotools traceback, text that is no JSON a JSONDecodeError's words."""
    path, field = task.annotation_file, "task.annotation_file"
    if "eval" not in mode or not path or "://" in path:
        return  # none: the metrics take the validation data's; a remote one is read there
    if not os.path.isfile(path):
        # Found by a walk: "[Errno 2] No such file or directory", naming no field.
        what = "a folder, not a COCO JSON file" if os.path.isdir(path) else "not there"
        raise ValueError(f"{field} is {what}. Received: {field}={path!r}")
    try:
        with open(path, encoding="utf-8") as handle:
            coco = json.load(handle)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{field} is no JSON ({error}). Received: {field}={path!r}") from None
    annotations = coco.get("annotations") if isinstance(coco, dict) else None
    if not (isinstance(annotations, list) and isinstance(coco.get("images"), list)):
        raise ValueError(f"{field} holds no COCO `images` and `annotations` lists. "
                         f"Received: {field}={path!r}")
    if not annotations:
        raise ValueError(f"{field} has no annotation: its AP cannot be scored (it is -1). "
                         f"Received: {field}={path!r}")
    if hasattr(task.model, "keypoint_head"):
        keypoint_experiment.check_keypoint_annotations(task, annotations)
    if not getattr(task.model, "include_mask", False):
        return
    bad = synthetic_coco.short_polygon(annotations)
    if bad is not None:
        raise ValueError(f"{field}: the `segmentation` of annotation {bad!r} holds a polygon of "
                         f"fewer than 3 (x, y) points or an odd count of numbers. "
                         f"Received: {field}={path!r}")


def _starts_from_init_checkpoint(task, model_dir):
    """Whether a training reads `task.init_checkpoint`: one is set and the run
    has no checkpoint of its own yet (a resumed run reads its own)."""
    return bool(task.init_checkpoint) and not tf.train.latest_checkpoint(model_dir)


def check_init_checkpoint(task, model_dir, mode):
    """A `task.init_checkpoint` that is not there failed after the model was
    built, in TensorFlow's words ("Unsuccessful TensorSliceReader constructor").
    Read only by a run's first training (a resumed one reads its own)."""
    path, field = task.init_checkpoint, "task.init_checkpoint"
    if "train" not in mode or not _starts_from_init_checkpoint(task, model_dir) or "://" in path:
        return
    if os.path.isdir(path):
        if not tf.train.latest_checkpoint(path):
            raise ValueError(f"{field} is a folder that holds no checkpoint. "
                             f"Received: {field}={path!r}")
    elif not (os.path.isfile(path) or tf.io.gfile.exists(path + ".index")):
        # A prefix (`ckpt-28080`, whose `.index` is the file), or a file of
        # TensorFlow's first format: neither is there.
        raise ValueError(f"{field} is no checkpoint: neither it nor {path + '.index'!r} is "
                         f"there. Received: {field}={path!r}")


def check_model_dir(params, model_dir, mode, export_dir=None):
    """Before anything is written: `model_dir` must hold a checkpoint to evaluate,
    and a checkpoint there must be of the network `params` describes (its
    `ARCHITECTURE` sections as in the folder's params.yaml).

    Model Garden evaluated the initial weights of an empty `model_dir` (and the
    export wrote them), exit 0. Over another model's run it overwrote
    `params.yaml`, then restored what fitted: a shape error, or, for a model
    that only adds variables (a non-local block), the other model's weights
    with the block left at its initial identity, trained on or evaluated as if
    it were this experiment.
    """
    if model_dir and tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise ValueError(f"--model_dir is a file, not a folder. Received: --model_dir={model_dir!r}")
    checkpoint = tf.train.latest_checkpoint(model_dir or "")
    if mode == "eval" and not checkpoint:
        raise ValueError(
            f"--model_dir holds no checkpoint, so --mode eval would evaluate an untrained model"
            f"{' and --export_dir export it' if export_dir else ''}. Give the --model_dir of a "
            f"trained run, or train first (--mode train_and_eval). "
            f"Received: --model_dir={model_dir!r}")
    saved = os.path.join(model_dir or "", "params.yaml")
    if not checkpoint or not tf.io.gfile.exists(saved):
        return
    with tf.io.gfile.GFile(saved) as handle:
        before = _flat((yaml.safe_load(handle) or {}).get("task", {}).get("model", {}))
    now = _flat(params.task.model.as_dict())
    keys = [key for key in set(before) | set(now) if key.split(".")[0] in ARCHITECTURE
            and not key.startswith(NOT_ARCHITECTURE)]
    changed = [f"task.model.{key}: {before.get(key)!r} -> {now.get(key)!r}"
               for key in sorted(keys, key=lambda k: (not k.endswith(".type"), k))
               if before.get(key) != now.get(key)]
    if changed:
        raise ValueError(
            f"--model_dir holds the checkpoints of another model ({'; '.join(changed[:4])}"
            f"{'; ...' if len(changed) > 4 else ''}). Choose another --model_dir, or give this "
            f"one's experiment and config. Received: --model_dir={model_dir!r}")


def _flat(config, prefix=""):
    """`{"backbone.type": "resnet", ...}`, tuples as lists (as params.yaml holds them)."""
    if isinstance(config, dict):
        return {key: value for name, item in config.items()
                for key, value in _flat(item, f"{prefix}{name}.").items()}
    return {prefix[:-1]: _lists(config)}


def _lists(value):
    if isinstance(value, (list, tuple)):
        return [_lists(item) for item in value]
    if isinstance(value, dict):
        return {name: _lists(item) for name, item in value.items()}
    return value


def _serialize_config(params, model_dir):
    """Model Garden's `train_utils.serialize_config`, atomically: every worker of a
    cluster writes params.yaml, and another one reads it (`check_model_dir`)."""
    from official.modeling import hyperparams

    tf.io.gfile.makedirs(model_dir)
    path = os.path.join(model_dir, "params.yaml")
    temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    hyperparams.save_params_dict_to_yaml(params, temporary)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def run(argv, signals):
    """`official.vision.train`'s main, then the optional export.

    Its steps are taken here (not by calling that main) to hand Model Garden's
    `run_experiment` a `CommittingController` with `signals`; the TPU-preemption
    retry loop around it is not kept (it only acts on TPU pods).
    """
    import gin
    from official.core import exp_factory, train_utils

    model_dir = FLAGS.model_dir
    tensorflow_log_as_absl()
    check_experiment(FLAGS.experiment)
    config_files = check_flags(model_dir, FLAGS.mode, FLAGS.export_dir, FLAGS.config_file)
    if FLAGS.synthetic_coco_dir:
        keypoints = FLAGS.experiment in keypoint_experiment.EXPERIMENTS
        FLAGS.config_file = list(FLAGS.config_file or []) + [
            synthetic_data_config(FLAGS.synthetic_coco_dir, keypoints=keypoints)]
    gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_params)
    defaults = exp_factory.get_exp_config(FLAGS.experiment)
    for path, content in config_files.items():
        check_sections(content, defaults, f"--config_file {path}")
    overrides = override_mapping(FLAGS.params_override)
    if overrides:
        check_sections(overrides, defaults, "--params_override")
    params = train_utils.parse_configuration(FLAGS, lock_return=False)
    check_value_types(params, defaults)
    floats_as_floats(params, defaults)
    params.lock()
    check_value_ranges(params)
    seed_everything(params)
    check_model_dir(params, model_dir, FLAGS.mode, FLAGS.export_dir)
    check_can_write("--model_dir", model_dir)
    check_data_files(params, FLAGS.mode)
    check_annotation_file(params.task, FLAGS.mode)
    check_init_checkpoint(params.task, model_dir, FLAGS.mode)
    local_chief = _writes_the_run(model_dir)
    writer = "train" in FLAGS.mode and local_chief
    # --mode eval writes its summaries (validation/events...) into the run folder.
    evaluator = FLAGS.mode == "eval" and local_chief
    before = atomic.entries(model_dir) if writer or evaluator else None
    checkpoint = tf.train.latest_checkpoint(model_dir)
    phase = {}
    with contextlib.ExitStack() as held:
        if writer:
            # As nonlocal-train's: a second command on the folder trained beside
            # the first, both writing ckpt-N over each other, both exit 0.
            held.enter_context(run_state.folder_lock(model_dir, "--model_dir"))
        try:
            with unwritable_model_dir_named(model_dir), \
                    other_init_checkpoint_named(params.task, model_dir), \
                    damaged_files_named(params, model_dir, FLAGS.mode, phase):
                _run_and_export(params, model_dir, signals, phase)
        except BaseException:
            if writer and tf.train.latest_checkpoint(model_dir) == checkpoint:
                _remove_new_entries(model_dir, before)
            elif evaluator and before is not None and not _held_by_a_trainer(model_dir):
                # Only what it wrote: the new files of its summary folder.
                _remove_new_entries(model_dir, before, under=os.path.join(
                    model_dir, params.trainer.validation_summary_subdir or ""))
            raise


def _remove_new_entries(model_dir, before, under=None):
    """What a command that failed before saving a checkpoint wrote (params.yaml,
    summaries, the lock file; the folder itself where there was none) describes
    nothing trained: a failed command leaves the folder as it found it. With
    `under`, only what is new in that folder (or the folder itself, if new)."""
    atomic.remove_new_entries(model_dir if before is None else under or model_dir, before)


def _held_by_a_trainer(model_dir):
    """Whether a training command holds `model_dir`'s lock (`run_state.folder_lock`)."""
    return atomic.is_held(os.path.join(model_dir, run_state.LOCK_FILE))


def _writes_the_run(model_dir):
    """Whether this process writes `model_dir` and can lock it: a local folder,
    and the chief of a cluster (the others save into folders of their own)."""
    return "://" not in model_dir and runtime.is_chief(
        tf.distribute.cluster_resolver.TFConfigClusterResolver())


def _run_and_export(params, model_dir, signals, phase=None):
    from official.common import distribute_utils
    from official.core import task_factory, train_utils
    from official.modeling import performance
    from official.vision.utils import summary_manager

    # A folder's params.yaml is replaced once the command has worked: a command
    # that failed (a data path that matches nothing, a shape) changed it before.
    replace_params = "train" in FLAGS.mode and tf.io.gfile.exists(
        os.path.join(model_dir, "params.yaml"))
    if "train" in FLAGS.mode and not replace_params:
        _serialize_config(params, model_dir)
    # Without a checkpoint it describes nothing trained (a first command that
    # failed wrote it): it is replaced before this command's first checkpoint.
    # Kept until the end, it made this run "another model" once killed and resumed.
    before_first_save = (functools.partial(_serialize_config, params, model_dir)
                         if replace_params and not tf.train.latest_checkpoint(model_dir) else None)
    if params.runtime.mixed_precision_dtype:
        performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)
    strategy = distribute_utils.get_distribution_strategy(
        distribution_strategy=params.runtime.distribution_strategy,
        all_reduce_alg=params.runtime.all_reduce_alg,
        num_gpus=params.runtime.num_gpus,
        tpu_address=params.runtime.tpu)
    console.take_back_signals()  # a multi-worker strategy takes SIGTERM over
    with strategy.scope():
        task = task_factory.get_task(params.task, logging_dir=model_dir)
    # `train_lib.run_experiment`, with a runner whose other workers resume too.
    train_actions = ([keypoint_experiment.UnlabelledKeypointsWarning(params.task)]
                     if isinstance(task, keypoint_experiment.KeypointRCNNTask) else [])
    skipped = getattr(task, "undecodable_images", None)  # Model Garden's own tasks lack it
    try:
        ExperimentRunner(
            distribution_strategy=strategy, task=task, mode=FLAGS.mode, params=params,
            model_dir=model_dir, train_actions=train_actions,
            controller_cls=functools.partial(CommittingController, signals=signals,
                                             before_first_save=before_first_save, phase=phase),
            eval_summary_manager=summary_manager.maybe_build_eval_summary_manager(
                params=params, model_dir=model_dir),
            enable_async_checkpointing=FLAGS.enable_async_checkpointing).run()
    except tf.errors.OutOfRangeError:
        if skipped:
            skipped.check_some_decoded("training")
        raise
    finally:
        # Each was logged when first skipped, far up a long log.
        if skipped and skipped.records:
            logging.warning("%s, %d time(s) in all.", skipped.summary(), skipped.count)
    if skipped:
        skipped.check_some_decoded("validation")
    train_utils.save_gin_config(FLAGS.mode, model_dir)
    if replace_params:
        _serialize_config(params, model_dir)
    if not FLAGS.export_dir:
        return
    if not runtime.is_chief(tf.distribute.cluster_resolver.TFConfigClusterResolver()):
        # One export of the checkpoint, the chief's: every worker wrote the same
        # folder, and now each would remove the others' staging folder as a killed one's.
        return
    export.export_saved_model(params, FLAGS.model_dir, FLAGS.export_dir)
    print(f"Exported the SavedModel to {FLAGS.export_dir}")

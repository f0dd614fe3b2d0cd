r"""`nonlocal-train`: train a video classifier from a YAML experiment.

    nonlocal-train --config kinetics_nl_c2d_r50 \
        --set data.train_csv=kinetics/train.csv --set data.val_csv=kinetics/val.csv \
        --set runtime.output_dir=runs/nl_c2d_r50

`--config` takes a path or the name of a shipped config (see `--list`).

Everything is checked before anything is written: the config, every row of
the data, the class names against the class count, the model (built once). A
failed command leaves an existing run folder as it was.

The run folder (see `run_state`) receives `config.yaml`, `state/` (the resume
state, committed every `runtime.backup_freq`), `checkpoints/last.weights.h5`,
`logs/` (TensorBoard), `history.csv`, then `final.weights.h5`, `model.keras`
and `results.json`. Rerun the same command after a crash, a kill or Ctrl-C: it
resumes from the last commit with exactly the steps that were left. Rerun it
after the run finished: it says so and trains nothing. With more
`schedule.epochs` it continues from the end (the final files are written again at
the new end); `--restart` moves the old folder
aside (`<folder>.old-<time>`) and starts over.
"""

import contextlib
import json
import logging
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
import yaml

from nonlocal_keras.applications import h5_weights
from nonlocal_keras import command_lines, cpu
from nonlocal_keras.training import (atomic, cli, cluster_stop, data, evaluate, models, optim,
                                     precise_bn, progress, run_state, runtime)
from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training.errors import ClusterError, DatasetError, FolderError

logger = logging.getLogger(__name__)

# What the final evaluation scores (of a finished run: `nonlocal-evaluate`).
EVALUATION_FIELDS = (("data", "val_csv"), ("data", "eval_scale"), ("data", "eval_crop_size"),
                     ("data", "num_clips"), ("data", "num_crops"))
# Fields a rerun may change without making it another experiment.
RESUMABLE_CHANGES = {
    *EVALUATION_FIELDS, ("schedule", "epochs"), ("model", "weights"),
    ("data", "num_parallel_calls"), ("train", "eval_batch_size"), ("runtime", "verbose"),
    ("runtime", "tensorboard"), ("runtime", "strategy"), ("runtime", "tpu"),
    ("runtime", "steps_per_execution"), ("runtime", "backup_freq"),
    ("train", "precise_bn_steps"),
    # Where the folder is does not make another experiment: it may have been
    # moved, renamed, or named another way (`./runs/x`, an absolute path).
    ("runtime", "output_dir"),
}


def _loss_and_metrics(multi_label, num_classes):
    if multi_label:
        return (keras.losses.BinaryCrossentropy(),
                [keras.metrics.AUC(curve="PR", multi_label=True,
                                   name=run_state.MULTI_LABEL_METRIC)])
    return (keras.losses.SparseCategoricalCrossentropy(),
            [keras.metrics.SparseCategoricalAccuracy(name=run_state.SINGLE_LABEL_METRIC),
             keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5")])


def _training_input(strategy, records, data_config, multi_label, global_batch, seed, skipped):
    """The repeated training dataset.

    Single-host strategies get one pipeline of global batches, which
    `model.fit` splits across replicas. Multi-host ones (`multi_worker`,
    `tpu`) get one pipeline per host through `distribute_datasets_from_function`,
    each decoding only its own share of the videos (`records[i::n]`) into
    per-replica batches; auto-sharding would make every host decode every video.
    """
    options = data.train_options(data_config)

    def make(host_records, batch, shard_seed):
        return data.train_dataset(host_records, data_config["num_classes"], multi_label, batch,
                                  seed=shard_seed, skipped=skipped, repeat=True, **options)

    if not _multi_host(strategy):
        return make(records, global_batch, seed)

    def host_dataset(context):
        shard = records[context.input_pipeline_id::context.num_input_pipelines]
        return make(shard, context.get_per_replica_batch_size(global_batch),
                    seed + context.input_pipeline_id)

    return strategy.distribute_datasets_from_function(host_dataset)


def _session_seed(seed, step):
    """`train.seed` for a run that starts at step 0, else one drawn from it and the
    step it resumes at: with the same seed, a run preempted every epoch trained
    every epoch on the same clips (the first epoch's order, starts and crops)."""
    if not step:
        return seed
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _multi_host(strategy):
    return isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                                 tf.distribute.TPUStrategy))


def _is_chief(strategy):
    """Whether this process writes the run folder (every worker trains)."""
    return not _multi_host(strategy) or runtime.is_chief(getattr(strategy, "cluster_resolver", None))


def build_optimizer(config, steps_per_epoch):
    """SGD + (Nesterov) momentum, L2 on all but BatchNorm, step schedule over the whole run."""
    schedule_config, optimizer_config = config["schedule"], config["optimizer"]
    total_steps = steps_per_epoch * schedule_config["epochs"]
    schedule = optim.StepDecay(
        optimizer_config["learning_rate"], total_steps, schedule_config["boundaries"],
        schedule_config["decay"],
        warmup_steps=int(round(schedule_config["warmup_epochs"] * steps_per_epoch)))
    optimizer = optim.SGDWithL2(l2=optimizer_config["weight_decay"], learning_rate=schedule,
                                momentum=optimizer_config["momentum"],
                                nesterov=optimizer_config["nesterov"],
                                scale_momentum=optimizer_config["scale_momentum"])
    if config["runtime"]["precision"] == "mixed_float16":
        # float16 gradients underflow without a (dynamic) loss scale.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _check_same_experiment(run_dir, config, chief=True):
    """An existing run folder must hold this experiment (up to RESUMABLE_CHANGES).

    Only the chief refuses a non-empty folder without config.yaml: in a
    cluster the other workers can look while the chief is creating the run
    (its state folder and the temporary name of config.yaml come first), and
    the chief, which checks the same folder, stops the run if it is not one.
    """
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        if chief and run_state.holds_anything(run_dir):
            raise run_state.RunFolderError(
                "The output folder is not empty and holds no run (no config.yaml); choose another "
                f"runtime.output_dir. Received: runtime.output_dir={run_dir!r}")
        return None
    if not os.path.isfile(os.path.join(run_dir, run_state.STATE_DIR, run_state.STATE_FILE)):
        # Nothing was ever committed there (a first command that failed, on data
        # none of whose videos decode, say): the corrected command was refused
        # as another experiment. This one takes the folder over.
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            previous = yaml.safe_load(handle)
    except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError: not UTF-8
        previous = error
    if not (isinstance(previous, dict)
            and all(isinstance(fields, dict) for fields in previous.values())):
        # Edited by hand, or another program's file: a YAML traceback, exit 1.
        said = (f" ({' '.join(str(previous).split())[:200]})"
                if isinstance(previous, Exception) else "")
        raise run_state.RunFolderError(
            f"The run folder's config.yaml cannot be read as a run's config{said}, so nothing "
            f"tells which experiment the folder holds. Rerun with --restart to move the folder "
            f"aside and start over, or choose another runtime.output_dir. "
            f"Received: runtime.output_dir={run_dir!r}")
    # A folder written before the paths were saved absolute holds them as given,
    # relative to the working directory, as they were read then.
    previous = _absolute_paths(previous)
    # A constructor's default written out (`--set model.affine_bn=false`) is
    # the same experiment as the argument left out: it was refused as another.
    before, now = ({**fields, "model": models.with_default_arguments(fields.get("model", {}))}
                   for fields in (previous, config))
    changed = [f"{section}.{field}: {before.get(section, {}).get(field)!r} -> {value!r}"
               for section, fields in now.items() for field, value in fields.items()
               if (section, field) not in RESUMABLE_CHANGES
               and before.get(section, {}).get(field) != value]
    changed += [f"{section}.{field}: {value!r} -> (absent)"
                for section, fields in before.items() for field, value in fields.items()
                if field not in now.get(section, {})]
    changed += _other_start_weights(previous, config)
    if changed:
        raise run_state.RunFolderError(
            f"The run folder {run_dir!r} holds another experiment ({'; '.join(changed[:5])}). "
            "Rerun with --restart to move it aside and start over, or choose another "
            "runtime.output_dir.")
    return previous


def _other_start_weights(previous, config):
    """`model.weights` may change where the run started from has gone (moved,
    deleted: the run goes on from its own weights); other weights named where
    it is still there, or weights named for a run that started from none (or
    the reverse), are another experiment. A rerun took them without a word and
    wrote them into config.yaml as the run's start."""
    before = previous.get("model", {}).get("weights")
    after = config.get("model", {}).get("weights")
    if before == after or (models.names_a_file(before) and models.names_a_file(after) and (
            not os.path.exists(before)  # moved: its new place, or another name for it
            or os.path.exists(after) and os.path.samefile(before, after))):
        return []
    still = (", which is still there" if models.names_a_file(before) and os.path.exists(before)
             else "")
    return [f"model.weights: {before!r} -> {after!r} (the run started from the first{still})"]


def _absolute_paths(config):
    """`config` with the files it reads (`config_lib.INPUT_FIELDS`) made absolute
    where they exist, so that the run's config.yaml means the same files from any
    working directory (`nonlocal-evaluate --run-dir`, a rerun from elsewhere)
    instead of whatever `val.csv` is there; a `model.weights` path also where it
    is gone (a continued run needs no start weights, and its config.yaml kept a
    relative path to nowhere)."""
    located = {section: dict(fields) for section, fields in config.items()}
    for section, field in config_lib.INPUT_FIELDS:
        value = located.get(section, {}).get(field)
        if isinstance(value, str) and (os.path.exists(value) or (
                (section, field) == ("model", "weights") and models.names_a_file(value))):
            located[section][field] = os.path.abspath(value)
    return located


def _steps_per_epoch(config, num_records, strategy):
    batch_size = config["train"]["batch_size"]
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise config_lib.ConfigError(
            f"`train.batch_size` (global) must be divisible by the {replicas} replicas. "
            f"Received: train.batch_size={batch_size}")
    if num_records < batch_size:
        raise DatasetError(
            f"The training set lists {num_records} video(s), fewer than one global batch, so no "
            f"step can be made. Received: data.train_csv={config['data']['train_csv']!r}, "
            f"train.batch_size={batch_size}")
    return config["schedule"]["steps_per_epoch"] or num_records // batch_size


def _check_steps_per_execution(config, steps_per_epoch, step_in_epoch):
    """`runtime.steps_per_execution` must divide the epoch's steps and, in a run
    resumed mid-epoch, the steps left in it. Keras' `fit` runs whole executions
    on the repeated dataset: with 4 steps an execution, an epoch of 10 steps
    trained 12 (and the run counted 10), so the schedule and the step count of a
    resumed run drifted from what the config says."""
    per_execution = config["runtime"]["steps_per_execution"]
    whole = math.gcd(steps_per_epoch, step_in_epoch)
    if whole % per_execution == 0:
        return
    fits = max(d for d in range(1, per_execution) if whole % d == 0)
    if steps_per_epoch % per_execution:
        below = steps_per_epoch - steps_per_epoch % per_execution
        multiples = f"{below} or {below + per_execution}" if below else str(per_execution)
        source = ("schedule.steps_per_epoch" if config["schedule"]["steps_per_epoch"]
                  else "one pass over the training videos; schedule.steps_per_epoch")
        what = (f"the {steps_per_epoch} steps of an epoch ({source})",
                f"Use {fits}, or set schedule.steps_per_epoch to a multiple ({multiples})")
    else:
        what = (f"the {steps_per_epoch - step_in_epoch} steps left in the epoch this run "
                f"stopped in (committed at its step {step_in_epoch} of {steps_per_epoch})",
                f"Finish that epoch with {fits}, then set it back")
    raise config_lib.ConfigError(
        f"`runtime.steps_per_execution` must divide {what[0]}: Keras' fit runs whole "
        f"executions, so an epoch would train more steps than it counts. {what[1]}. "
        f"Received: runtime.steps_per_execution={per_execution}")


def _move_aside(run_dir):
    # A folder holding only the lock file and what a start left (`holds_anything`) has
    # nothing to keep.
    if not run_state.holds_anything(run_dir):
        return None
    stamp = f"{run_dir.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    # A second --restart in the same second takes the next free name.
    target = next(name for name in (stamp, *(f"{stamp}-{i}" for i in range(2, 1000)))
                  if not os.path.lexists(name))
    try:
        os.rename(run_dir, target)
    except OSError as error:  # its parent folder read-only, say: the run stays where it is
        raise FolderError(f"Cannot move the run folder aside for --restart ({error.strerror}); "
                          f"it is left as it was. Received: runtime.output_dir={run_dir!r}"
                          ) from None
    logger.info("Moved the previous run folder to %s", target)
    return target


def run(config, strategy=None, restart=False):
    """Train (resuming from the run folder's state if there is one) and evaluate.

    `strategy` overrides `runtime.strategy` (pass the one already in use: two
    strategies in one process would allocate the same collective keys).
    `restart` moves an existing run folder aside first. Returns `(model,
    results)`; the results are also in `results.json`. A finished run is not
    trained again: its results are returned with the model rebuilt from it.
    """
    run_dir = config["runtime"]["output_dir"]
    keras.utils.set_random_seed(config["train"]["seed"])
    runtime.set_precision(config["runtime"]["precision"])
    if strategy is None:
        strategy = runtime.make_strategy(config["runtime"]["strategy"], config["runtime"]["tpu"])
    runtime.warn_if_slow_precision(config["runtime"]["precision"], strategy)
    chief = _is_chief(strategy)

    # Everything is checked before anything is written.
    data_config, train_records, val_records, multi_label = data.load_training_data(config["data"])
    config = dict(config, data=data_config)
    if val_records:  # its evaluation comes after the training
        data.check_view_memory(min(config["train"]["eval_batch_size"], len(val_records)),
                               **data.eval_options(data_config))
    steps_per_epoch = _steps_per_epoch(config, len(train_records), strategy)
    _check_steps_per_execution(config, steps_per_epoch, 0)
    epochs = config["schedule"]["epochs"]
    # A run that resumes (or has finished) takes every weight from its commit:
    # the `model.weights` it started from may be gone (moved, deleted) by now.
    start_from = config["model"]
    if not restart and run_state.has_commit(run_dir):
        start_from = dict(start_from, weights=None)
    with strategy.scope():
        model = models.build_model(start_from, data_config, multi_label, fine_tune=True)
        models.check_evaluation_head(model, config["model"], data_config)
        loss, metrics = _loss_and_metrics(multi_label, data_config["num_classes"])
        model.compile(optimizer=build_optimizer(config, steps_per_epoch), loss=loss,
                      metrics=metrics,
                      steps_per_execution=config["runtime"]["steps_per_execution"])
    # After the checks, whose messages show the paths as given.
    config = _absolute_paths(config)
    previous = None if restart else _check_same_experiment(run_dir, config, chief)
    started_from = (previous or {}).get("model", {}).get("weights")
    if previous is not None and started_from != config["model"].get("weights"):
        # Accepted because the weights it started from are gone; a new name
        # (their new place, or any file) was written into config.yaml as its start.
        logger.info("The run started from %s (gone) and resumes from its own weights; "
                    "config.yaml keeps that start, not model.weights=%s.", started_from,
                    config["model"].get("weights"))
        config = dict(config, model=dict(config["model"], weights=started_from))

    def refuse_undecodable():
        for records, field in ((train_records, "train_csv"), (val_records, "val_csv")):
            if records:
                clip_bytes = data.check_a_video_decodes(
                    records, data_config["num_frames"], data_config["sampling_rate"],
                    data_config[field], f"data.{field}")
                if field == "train_csv" and data_config["cache_decoded"]:
                    data.warn_of_cache_size(clip_bytes, len(records), data_config[field])

    # Before a new run's folder is made; a committed one's after its finished
    # check (a finished run answers without its videos).
    fresh = restart or not run_state.has_commit(run_dir)
    if fresh:
        refuse_undecodable()
    # Held until the run's last file is written (see run_state.folder_lock).
    with contextlib.ExitStack() as held:
        if chief:
            held.enter_context(run_state.folder_lock(run_dir))
        labels = run_state.labels_of(data_config, multi_label)
        state = run_state.RunState(run_dir, steps_per_epoch, labels)
        if not restart and state.read():
            if state.step > epochs * steps_per_epoch:  # a part of an epoch counts too
                raise run_state.RunFolderError(
                    f"The run folder has {state.step} steps done ({state.epoch} finished epochs "
                    f"of {steps_per_epoch} steps), more than this command asks for. "
                    f"Received: schedule.epochs={epochs}")
            if state.finished and state.epoch == epochs:
                finished = _finished(run_dir, model, state, previous, config, strategy)
                if finished is not None:
                    return finished
        # A run stopped mid-epoch with another steps_per_execution.
        _check_steps_per_execution(config, steps_per_epoch, state.step_in_epoch)
        list_changed = chief and (restart or not state.step or run_state.check_training_list(
            run_dir, train_records, data_config["train_csv"]))

        if not fresh:
            refuse_undecodable()

        # Writing starts here.
        held.enter_context(_resume_hint())
        if chief:
            if restart and _move_aside(run_dir):
                held.enter_context(run_state.folder_lock(run_dir))
                state = run_state.RunState(run_dir, steps_per_epoch, labels)
            atomic.check_writable(os.path.join(run_dir, "config.yaml"))
            os.makedirs(state.folder, exist_ok=True)
            state.clean()

            def start_writing(stale=run_state.FINAL_FILES):
                run_state.remove_final_files(run_dir, stale)
                config_lib.save_config(config, os.path.join(run_dir, "config.yaml"))
                if list_changed:
                    run_state.write_training_list(run_dir, train_records)

            if fresh:  # its folder is a run once config.yaml is there
                start_writing()
            else:
                state.before_first_commit = start_writing
        with strategy.scope():
            state.restore(model)
        if chief and state.epoch and not state.step_in_epoch:
            # Killed between an epoch's commit and these two files, which only
            # `fit` writes: a run resumed after its last epoch never wrote them.
            state.make_epoch_files_good()
        if state.epoch == epochs:
            # Stopped (or failed) after its last epoch: in the final evaluation, say.
            logger.info("Training is done (%d epoch(s), %d steps); evaluating and writing the "
                        "final files.", state.epoch, state.step)
        elif state.step:
            logger.info("Resuming at epoch %d, step %d of %d (%d steps done).", state.epoch + 1,
                        state.step_in_epoch, steps_per_epoch, state.step)

        # The run's skipped videos go on from its commit's.
        skipped = state.skipped = data.SkippedVideos(state.skipped_paths, state.skipped_in_epoch)
        seed = _session_seed(config["train"]["seed"], state.step)
        keras.utils.set_random_seed(seed)  # the clips' temporal starts, crops and flips
        dataset = _training_input(strategy, train_records, data_config, multi_label,
                                  config["train"]["batch_size"], seed, skipped)
        cluster = cluster_stop.for_strategy(strategy, lambda: state.step)
        start_step, start = state.step, time.perf_counter()
        try:
            with _logs_go_unless_committed(state):
                _fit(model, dataset, state, config, steps_per_epoch, skipped, chief, cluster,
                     metrics=not _multi_host(strategy))
        except tf.errors.OpError as error:
            if data.NoDecodableVideo.__name__ in str(error):  # raised inside tf.numpy_function
                raise DatasetError(
                    f"None of the {len({r.path for r in train_records})} training videos could be "
                    "decoded (see the warnings above); nothing was trained. "
                    f"Received: data.train_csv={data_config['train_csv']!r}") from None
            raise
        train_seconds = time.perf_counter() - start

        precise_steps = config["train"]["precise_bn_steps"]
        results = {
            "model": models.describe(config["model"]),
            "params": int(model.count_params()),
            "steps": int(state.step),
            "replicas": int(strategy.num_replicas_in_sync),
            "epochs_run_this_session": state.epoch - start_step // steps_per_epoch,
            "steps_run_this_session": state.step - start_step,
            "train_seconds_this_session": round(train_seconds, 1),
            "final_train_metrics": state.history[-1] if state.history else {},
            "precise_bn_steps": precise_steps,
        }
        if precise_steps:
            logger.info("Recomputing the BatchNorm statistics over %d training steps "
                        "(train.precise_bn_steps).", precise_steps)
            started = time.perf_counter()
            results["precise_bn_batches"] = precise_bn.recompute_statistics(
                model, dataset, precise_steps, strategy)
            if results["precise_bn_batches"]:
                logger.info("BatchNorm statistics recomputed over %d batches in %.0f s.",
                            results["precise_bn_batches"], time.perf_counter() - started)
            else:
                logger.warning("train.precise_bn_steps=%d: the model has no BatchNorm statistics "
                               "to recompute (none, or all fixed by model.affine_bn); nothing "
                               "was done.", precise_steps)
        # After the pass, which reads the same pipeline (and meets its unreadable videos).
        results["skipped_training_videos"] = skipped.total
        if val_records:
            with strategy.scope():
                scorer = models.evaluation_model(config["model"], data_config, multi_label, model)
            results["eval"] = evaluate.evaluate_records(
                scorer, val_records, data_config, multi_label, config["train"]["eval_batch_size"],
                verbose=runtime.keras_verbose(config["runtime"]["verbose"]), strategy=strategy)
        if chief:
            # A session that trained no step (a final pass made again, say) keeps
            # the final files there were until each is replaced; results.json, which
            # says the run has finished with them, goes first.
            with run_state.writing_in_held(run_dir):
                state.write_held_back(stale=(run_state.RESULTS,))
                size = atomic.model_size(model)
                final = os.path.join(run_dir, run_state.FINAL_WEIGHTS)
                with atomic.replace(final, size) as temporary:
                    model.save_weights(temporary)
                    h5_weights.write_block_names(temporary, model)
                    run_state.write_labels(temporary, labels)
                with atomic.replace(os.path.join(run_dir, run_state.FINAL_MODEL), size) as temporary:
                    model.save(temporary)
                atomic.write_json(os.path.join(run_dir, run_state.RESULTS), results)
            # The commit keeps the weights of the last step (the step's own file):
            # the BatchNorm statistics the pass recomputed are the final files' only,
            # so more epochs continue from the trained ones, and a rerun asking for
            # another pass (or none) starts from them too.
            state.commit(model, finished=True)
        return model, results


@contextlib.contextmanager
def _resume_hint():
    """A write the storage refused (a full disk, say) also says what becomes of the run."""
    try:
        yield
    except FolderError as error:
        raise FolderError(f"{error}. The run keeps its last commit: free space (or fix the "
                          "permissions) and run the same command again to resume.") from None


@contextlib.contextmanager
def _logs_go_unless_committed(state):
    """TensorBoard's files of a session that fails before it commits go with it:
    a failed command leaves a committed run's folder as it was."""
    logs = os.path.join(state.run_dir, "logs")
    before = atomic.entries(logs)
    try:
        yield
    except BaseException:
        if state.before_first_commit is not None:
            atomic.remove_new_entries(logs, before)
        raise


def _fit(model, dataset, state, config, steps_per_epoch, skipped, chief, cluster=None,
         metrics=True):
    """`model.fit` from the committed step to the last epoch's end.

    A run resumed mid-epoch finishes that epoch in a `fit` of its own (with
    the steps that were left), then runs the remaining epochs. `cluster`: a
    `cluster_stop.ClusterStop` for a run of several workers. `metrics`: see
    `run_state.CommitState` (False for several hosts).
    """
    runtime_config = config["runtime"]
    epochs = config["schedule"]["epochs"]
    verbose = runtime.keras_verbose(runtime_config["verbose"])
    # First: its count reaches the logs the others write.
    callbacks = [data.SkippedVideoSummary(skipped)]
    if runtime_config["tensorboard"] and chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(state.run_dir, "logs"),
                                                     write_graph=False, update_freq="epoch"))
    # Between two `fit`s a signal is only recorded too, and met at the next one's
    # first step or, on one worker, after the last one: raised there, one worker of
    # a cluster left alone and its peers failed. Every epoch's end is committed:
    # nothing to commit. (Not after a cluster's last `fit`: there a worker reading
    # the agreed step could find the chief gone; see `CommittingController.train`.)
    with cli.LoopSignals.steps(lambda: None, cluster, check_after=cluster is None):
        while state.epoch < epochs:
            offset = state.step_in_epoch
            commit = run_state.CommitState(state, runtime_config["backup_freq"], offset, chief,
                                           metrics)
            lines = [progress.StepLines(steps_per_epoch, epochs, offset)] if verbose == 2 else []
            # After the commit: it stops the process once the step is counted (and, on
            # SIGTERM, committed).
            stop = cli.StopWhenInterrupted(on_terminate=commit.commit_now, cluster=cluster)
            try:
                model.fit(dataset, initial_epoch=state.epoch,
                          epochs=state.epoch + 1 if offset else epochs,
                          steps_per_epoch=steps_per_epoch - offset if offset else steps_per_epoch,
                          callbacks=callbacks + lines + [commit, stop, progress.EpochBar(epochs)],
                          verbose=verbose,
                          shuffle=False)  # tf.data shuffles
            except tf.errors.UnavailableError as error:
                raise ClusterError.peer_left(error.message, "its last commit") from None


def _finished(run_dir, model, state, previous, config, strategy):
    """`(model, results)` of a finished run, or None where its final pass is to be
    made again (a final file is gone, or `train.precise_bn_steps` changed)."""
    evaluate_with = (f"nonlocal-evaluate --run-dir {run_dir} evaluates it (with --set for another "
                     "data.val_csv, eval_scale, eval_crop_size, num_clips or num_crops)")
    changed = [f"{section}.{field}={config[section].get(field)!r}"
               for section, field in EVALUATION_FIELDS
               if previous and _evaluation(previous, section, field) != _evaluation(
                   config, section, field)]
    if changed:
        raise run_state.RunFolderError(
            f"The run in {run_dir!r} has finished, and nonlocal-train does not evaluate it again "
            f"another way: {evaluate_with}. Received: {', '.join(changed)}")
    missing = [name for name in run_state.FINAL_FILES
               if not os.path.isfile(os.path.join(run_dir, name))]
    if missing:
        logger.info("The run in %s has finished, but its %s %s missing: evaluating it again and "
                    "writing its final files.", run_dir, " and ".join(missing),
                    "is" if len(missing) == 1 else "are")
        return None
    with open(os.path.join(run_dir, run_state.RESULTS), encoding="utf-8") as handle:
        results = json.load(handle)
    asked = config["train"]["precise_bn_steps"]
    # Results written before they recorded it: the pass was made with the setting of then.
    made = results.get("precise_bn_steps", (previous or {}).get("train", {}).get(
        "precise_bn_steps", asked) if "precise_bn_batches" in results else 0)
    if made != asked:
        logger.info("The run in %s has finished with train.precise_bn_steps=%d; making its final "
                    "pass again with %d (from its last step's weights).", run_dir, made, asked)
        return None
    logger.info("The run in %s has finished (%d epochs, %d steps); nothing to train. Add epochs "
                "(--set schedule.epochs=N) to continue it, or --restart to start over.",
                run_dir, state.epoch, state.step)
    with strategy.scope():  # where the optimiser was made (a traceback under mirrored)
        state.restore(model)
        if made:  # the statistics the results were computed with
            model.load_weights(os.path.join(run_dir, run_state.FINAL_WEIGHTS))
    return model, results


def _evaluation(config, section, field):
    """An evaluation field's value as it evaluates (`eval_crop_size` null: `crop_size`)."""
    value = config[section].get(field)
    return value or config["data"]["crop_size"] if field == "eval_crop_size" else value


def main(argv=None):
    args = command_lines.train_parser().parse_args(argv)
    if args.list:  # the console script answers it before TensorFlow loads
        return command_lines.answer_without_tensorflow("nonlocal-train", argv)
    config = config_lib.load_config(args.config, args.set)
    runtime_config = config["runtime"]
    if (runtime_config["precision"] == "mixed_bfloat16" and runtime_config["strategy"] != "tpu"
            and "TF_XLA_FLAGS" not in os.environ):
        # Before TensorFlow's first op, which reads the flags (README "Training on a CPU").
        if cpu.fuse_pointwise_ops():
            logger.info("runtime.precision=mixed_bfloat16 without a GPU: XLA compiles "
                        "TensorFlow's pointwise ops (TF_XLA_FLAGS= turns it off)")
    _, results = run(config, restart=args.restart)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run("nonlocal-train", "nonlocal_keras.training.train"))

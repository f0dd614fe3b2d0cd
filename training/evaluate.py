r"""Multi-clip, multi-crop video evaluation and the `nonlocal-evaluate` CLI.

The protocol of the paper and the official code: `num_clips` clips evenly
spaced in time x `num_crops` spatial crops at shorter side `eval_scale`; the
model's softmax (single-label) or sigmoid (multi-label) scores are averaged
over a video's views; top-1 / top-5 accuracy or mAP over videos.

    nonlocal-evaluate --run-dir runs/my_experiment
    nonlocal-evaluate --config runs/my_experiment/config.yaml \
        --weights runs/my_experiment/final.weights.h5 --set data.val_csv=val.csv
"""

import json
import logging
import os
import sys
import time

import numpy as np
import tensorflow as tf

from nonlocal_keras import command_lines
from nonlocal_keras.training import atomic, data, export, metrics, progress, runtime
from nonlocal_keras.training.run_state import DivergedError
from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training.errors import (ConfigError, DatasetError, FolderError,
                                           MissingFileError, UserError)

logger = logging.getLogger(__name__)


def predict_videos(model, dataset, num_videos, num_classes, bar=None):
    """Average view scores per video (`bar`: a `progress.VideoProgress` to update).

    Returns `(scores, seen)`: `(num_videos, num_classes)` mean scores and a
    boolean mask of the videos that were decoded (skipped ones stay NaN).
    `model`: a Keras model or any callable (`nonlocal-predict` passes a
    SavedModel's signature). A Keras model built under a `MirroredStrategy`
    (several GPUs) scores each batch's views split over its replicas, as
    `model.predict` would; called directly, it ran every view on the first
    device alone.
    """
    strategy = getattr(model, "distribute_strategy", None)
    mirrored = isinstance(strategy, tf.distribute.MirroredStrategy)
    per_call = CLIPS_PER_CALL * (strategy.num_replicas_in_sync if mirrored else 1)

    def clip_scores(clips):
        return tf.cast(model(clips, training=False), tf.float32)

    # Graph code: AutoGraph's conversion only costs time. A last, shorter part
    # of a batch traces once more, then shapes are relaxed.
    @tf.function(autograph=False, reduce_retracing=True)
    def part_scores(clips):
        return _over_replicas(strategy, clip_scores, clips) if mirrored else clip_scores(clips)

    scores = np.full((num_videos, num_classes), np.nan, np.float32)
    seen = np.zeros(num_videos, bool)
    for views, _, index in (bar.wrap(dataset) if bar else dataset):
        seen[index.numpy()] = True
        shape = tf.shape(views)
        flat = tf.reshape(views, tf.concat([[-1], shape[2:]], axis=0))
        parts = [part_scores(flat[start:start + per_call])
                 for start in range(0, int(tf.shape(flat)[0]), per_call)]
        scores[index.numpy()] = tf.reduce_mean(
            tf.reshape(tf.concat(parts, 0), [shape[0], shape[1], -1]), axis=1).numpy()
    return scores, seen


# At most this many clips (a replica) go through the network at once: a batch's
# views all at once (4 videos x 2 clips x 1000 crops) overflowed a TensorFlow
# kernel's int32 index, a segmentation fault with no word after minutes of
# work, and their activations, not the views, set the memory a batch needs.
CLIPS_PER_CALL = 32


def _over_replicas(strategy, fn, clips):
    """`fn(clips)`, the rows split into equal parts, one a replica (the last row
    repeated to a multiple of the replicas, its copies' results dropped)."""
    count, replicas = tf.shape(clips)[0], strategy.num_replicas_in_sync
    padded = tf.concat([clips, tf.repeat(clips[-1:], (-count) % replicas, axis=0)], 0)
    parts = tf.split(padded, replicas)
    shares = strategy.experimental_distribute_values_from_function(
        lambda context: parts[context.replica_id_in_sync_group])
    results = strategy.experimental_local_results(strategy.run(fn, args=(shares,)))
    return tf.concat(results, 0)[:count]


def score_metrics(scores, records, num_classes, multi_label):
    """top1/top5 (single-label) or mAP (multi-label) of per-video scores."""
    if multi_label:
        targets = data.multi_hot([r.labels for r in records], num_classes)
        return {"mAP": metrics.mean_average_precision(scores, targets),
                "mAP_classes": int(np.count_nonzero(targets.sum(axis=0)))}
    labels = np.array([r.labels[0] for r in records])
    return {
        "top1": metrics.top_k_accuracy(scores, labels, 1),
        "top5": metrics.top_k_accuracy(scores, labels, min(5, num_classes)),
    }


def evaluate_records(model, records, data_config, multi_label, batch_size=4, skipped=None,
                     verbose=1, strategy=None):
    """Run the protocol on `records`; returns the metrics dict (also counts, time).

    Under a `MultiWorkerMirroredStrategy` (`strategy`, which every worker
    passes) each worker scores its share of the videos (`records[i::n]`) and
    every worker returns the metrics of all of them; before, every worker
    scored every video.

    Raises `DatasetError` when no video could be decoded: there is nothing to
    measure, and a NaN score is not a result.
    """
    skipped = skipped if skipped is not None else data.SkippedVideos()
    num_classes = data_config["num_classes"]
    index, count = runtime.worker_share(strategy)
    share = records[index::count]
    if count > 1:
        logger.info("Worker %d of %d evaluates %d of the %d videos.", index, count, len(share),
                    len(records))
    dataset = data.eval_dataset(share, num_classes, multi_label, batch_size,
                                skipped=skipped, **data.eval_options(data_config))
    start = time.perf_counter()
    bar = progress.VideoProgress(len(share), lambda: skipped.total, verbose)
    scores, seen = predict_videos(model, dataset, len(share), num_classes, bar)
    # Scores that are no numbers were "videos that could not be decoded".
    diverged = seen & ~np.isfinite(scores).all(axis=1)
    if count > 1:
        mine = np.zeros((len(records), num_classes + 2), np.float32)
        mine[index::count, :-2] = np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
        mine[index::count, -2] = seen
        mine[index::count, -1] = diverged
        every = runtime.sum_over_workers(strategy, mine)
        scores, seen, diverged = every[:, :-2], every[:, -2] > 0, every[:, -1] > 0
    if diverged.any():
        raise DivergedError(
            f"The model's scores of {int(diverged.sum())} of the {int(seen.sum())} evaluation "
            "videos decoded are not numbers (NaN or infinite): its weights have diverged or "
            "hold NaN. A run that trained them needs a lower optimizer.learning_rate (or "
            "optimizer.weight_decay) and --restart.")
    if not seen.any():
        raise DatasetError(f"None of the {len(records)} evaluation videos could be decoded "
                           "(see the warnings above); nothing was evaluated.")
    kept = [r for r, s in zip(records, seen) if s]
    results = score_metrics(scores[seen], kept, num_classes, multi_label)
    if results.get("mAP_classes", num_classes) < num_classes:
        # As Charades' own scoring: a class of no positive has no AP.
        present = {label for r in kept for label in r.labels}
        absent = [i for i in range(num_classes) if i not in present]
        names = data_config.get("class_names")
        logger.warning("mAP is the mean over the %d of %d classes that have a video among the "
                       "%d evaluated; %d have none (%s), and no AP.", results["mAP_classes"],
                       num_classes, len(kept), len(absent), data.first_few(
                           [repr(names[i]) if names else str(i) for i in absent], 10))
    results.update({
        "num_videos": int(seen.sum()),
        "skipped_videos": int(len(records) - seen.sum()),
        "views_per_video": data_config["num_clips"] * data_config["num_crops"],
        "seconds": round(time.perf_counter() - start, 2),
    })
    return results


def _check_replaceable_results(path, received):
    """Results replace earlier results only: `--output` naming a run's
    final.weights.h5 or a SavedModel's saved_model.pb replaced it with JSON."""
    if not os.path.lexists(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            earlier = json.load(handle)
    except (OSError, ValueError):
        earlier = None
    if not (isinstance(earlier, dict) and "num_videos" in earlier):
        raise FolderError(f"{path!r} is there and holds no earlier evaluation's results, "
                          f"which alone an evaluation replaces: give --output another file. "
                          f"Received: {received}")


EVALUATED_FIELDS = ("val_csv", "num_frames", "sampling_rate", "num_clips", "num_crops",
                    "eval_scale", "eval_crop_size")


def main(argv=None):
    from nonlocal_keras.training import models

    args = command_lines.evaluate_parser().parse_args(argv)
    if not (args.config or args.run_dir):
        raise UserError("give --run-dir or --config")
    if args.run_dir and not os.path.isdir(args.run_dir):
        raise MissingFileError(f"No such run folder. Received: --run-dir={args.run_dir!r}")
    config_path = args.config or os.path.join(args.run_dir, "config.yaml")
    if not args.config and not os.path.isfile(config_path):
        raise MissingFileError("The folder holds no nonlocal-train run (no config.yaml); give "
                               f"a run folder, or --config. Received: --run-dir={args.run_dir!r}")
    config = config_lib.load_config(config_path, args.set)
    output = args.output or (args.run_dir and os.path.join(args.run_dir, "eval.json"))
    if output:
        received = (f"--output={args.output!r}" if args.output
                    else f"--run-dir={args.run_dir!r}")
        try:
            atomic.check_writable(output)
        except FolderError as error:
            raise FolderError(f"{error}{'' if args.output else '; give --output'}. "
                              f"Received: {received}") from None
        _check_replaceable_results(output, received)
    # --config alone: the weights that run trained (as nonlocal-export finds them),
    # never the untrained model that config.yaml's model.weights: null builds.
    config["model"]["weights"] = args.weights or args.run_dir or export.find_weights(
        config_path, config["model"].get("weights"), doing="evaluate")[0]
    data_config = data.resolve_classes(config["data"])
    # The scores are the trained classifier's (softmax or sigmoid): a CSV of the other
    # kind was scored with the other one, and reported top-1 or mAP of it, exit 0.
    # Told before its rows are read: they failed as unknown labels (a walk).
    trained, evidence = export.trained_multi_label(
        data_config.get("train_csv"), args.run_dir or export.run_folder(config_path))
    multi_label = data.labels_are_multi(data_config.get("val_csv"))
    if None not in (trained, multi_label) and trained != multi_label:
        how, why = ("multi-label", evidence[0]) if trained else ("single-label", evidence[1])
        kind = ("multi-label (a 'labels' column)" if multi_label
                else "single-label (a folder per class)" if os.path.isdir(data_config["val_csv"])
                else "single-label (a 'label' column)")
        raise ConfigError(
            f"The run was trained {how} ({why}) and the evaluation CSV is {kind}: evaluate it "
            f"on a CSV of the kind it was trained on. "
            f"Received: data.val_csv={data_config.get('val_csv')!r}")
    records, multi_label = data.load_val_records(
        data_config, names_from_labels=data.names_sorted_from_labels(config["data"])
        and not any(field.split("=", 1)[0].strip() == "data.class_names" for field in args.set))
    given = "--weights" if args.weights else "--run-dir" if args.run_dir else "model.weights"
    with runtime.make_strategy("auto").scope():  # several GPUs: the views split over them
        model = models.evaluation_model(config["model"], data_config, multi_label, argument=given)
    # What was evaluated, as the config's fields: a run's eval.json is replaced
    # by each evaluation, and told nothing of which set or views it scored.
    # Paths absolute, as in a run's config.yaml: results read from elsewhere name them.
    evaluated = {key: data_config.get(key) for key in EVALUATED_FIELDS}
    evaluated.update(val_csv=os.path.abspath(evaluated["val_csv"]),
                     eval_crop_size=evaluated["eval_crop_size"] or data_config["crop_size"])
    weights = config["model"]["weights"]
    results = dict(model=models.describe(config["model"]),
                   weights=(os.path.abspath(weights) if isinstance(weights, str)
                            and os.path.exists(weights) else weights),
                   data=evaluated, **evaluate_records(model, records, data_config, multi_label,
                                      config["train"]["eval_batch_size"],
                                      verbose=0 if args.no_progress else 1))
    print(json.dumps(results, indent=2))  # first: a write refused now loses nothing
    if output:
        atomic.write_json(output, results)
    return 0


if __name__ == "__main__":
    from nonlocal_keras.training import cli

    sys.exit(cli.run("nonlocal-evaluate", "nonlocal_keras.training.evaluate"))

"""Multi-clip, multi-crop video evaluation and the `nonlocal-evaluate` CLI.

The protocol of the paper and the official code: `num_clips` clips evenly
spaced in time x `num_crops` spatial crops at shorter side `eval_scale`; the
model's softmax (single-label) or sigmoid (multi-label) scores are averaged
over a video's views; top-1 / top-5 accuracy or mAP over videos.

    nonlocal-evaluate --run-dir runs/my_experiment
    nonlocal-evaluate --config runs/my_experiment/config.yaml \
        --weights runs/my_experiment/final.weights.h5 --set data.val_csv=val.csv
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training import data, metrics


def predict_videos(model, dataset, num_videos, num_classes):
    """Average view scores per video.

    Returns `(scores, seen)`: `(num_videos, num_classes)` mean scores and a
    boolean mask of the videos that were decoded (skipped ones stay NaN).
    """

    @tf.function
    def video_scores(views):
        shape = tf.shape(views)
        flat = tf.reshape(views, tf.concat([[-1], shape[2:]], axis=0))
        scores = tf.cast(model(flat, training=False), tf.float32)
        return tf.reduce_mean(tf.reshape(scores, [shape[0], shape[1], -1]), axis=1)

    scores = np.full((num_videos, num_classes), np.nan, np.float32)
    for views, _, index in dataset:
        scores[index.numpy()] = video_scores(views).numpy()
    return scores, ~np.isnan(scores[:, 0])


def score_metrics(scores, records, num_classes, multi_label):
    """top1/top5 (single-label) or mAP (multi-label) of per-video scores."""
    if multi_label:
        targets = np.zeros((len(records), num_classes), np.float32)
        for i, record in enumerate(records):
            targets[i, list(record.labels)] = 1.0
        return {"mAP": metrics.mean_average_precision(scores, targets)}
    labels = np.array([r.labels[0] for r in records])
    return {
        "top1": metrics.top_k_accuracy(scores, labels, 1),
        "top5": metrics.top_k_accuracy(scores, labels, min(5, num_classes)),
    }


def evaluate_records(model, records, data_config, multi_label, batch_size=4, skipped=None):
    """Run the protocol on `records`; returns the metrics dict (also counts, time)."""
    skipped = skipped if skipped is not None else data.SkippedVideos()
    _, options = data.dataset_options(data_config)
    num_classes = data_config["num_classes"]
    dataset = data.eval_dataset(records, num_classes, multi_label, batch_size,
                                skipped=skipped, **options)
    start = time.perf_counter()
    scores, seen = predict_videos(model, dataset, len(records), num_classes)
    kept = [r for r, s in zip(records, seen) if s]
    results = score_metrics(scores[seen], kept, num_classes, multi_label)
    results.update({
        "num_videos": int(seen.sum()),
        "skipped_videos": int(len(records) - seen.sum()),
        "views_per_video": data_config["num_clips"] * data_config["num_crops"],
        "seconds": round(time.perf_counter() - start, 2),
    })
    return results


def load_eval_records(config, source=None):
    """`(records, multi_label)` of `source` (default `data.val_csv`), checked."""
    data_config = config["data"]
    source = source or data_config["val_csv"]
    if not source:
        raise ValueError("Nothing to evaluate on. Received: data.val_csv=None")
    return data.load_records(source, data_config["num_classes"],
                             data.class_names_from_config(data_config), argument="data.val_csv")


def write_json(results, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)


def main(argv=None):
    from nonlocal_keras.training import models

    parser = argparse.ArgumentParser(prog="nonlocal-evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="a nonlocal-train output folder (its config.yaml "
                        "and final.weights.h5 are used unless given)")
    parser.add_argument("--config", help="experiment YAML (default: RUN_DIR/config.yaml)")
    parser.add_argument("--weights", help="a .weights.h5 file (default: RUN_DIR/final.weights.h5)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set data.num_clips=1")
    parser.add_argument("--output", help="results JSON (default: RUN_DIR/eval.json or stdout)")
    args = parser.parse_args(argv)
    if not (args.config or args.run_dir):
        parser.error("give --run-dir or --config")
    config_path = args.config or os.path.join(args.run_dir, "config.yaml")
    config = config_lib.load_config(config_path, args.set)
    weights = args.weights or (args.run_dir and os.path.join(args.run_dir, "final.weights.h5"))
    if weights:
        config["model"]["weights"] = weights
    records, multi_label = load_eval_records(config)
    model = models.build_model(config["model"], config["data"], multi_label)
    results = evaluate_records(model, records, config["data"], multi_label,
                               config["train"]["eval_batch_size"])
    output = args.output or (args.run_dir and os.path.join(args.run_dir, "eval.json"))
    if output:
        write_json(results, output)
    print(json.dumps(results, indent=2))
    # The console script passes this to sys.exit: 0, not the results.
    return 0


if __name__ == "__main__":
    from nonlocal_keras.training import cli

    sys.exit(cli.run("nonlocal-evaluate", "nonlocal_keras.training.evaluate"))

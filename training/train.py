"""`nonlocal-train`: train a video classifier from a YAML experiment.

    nonlocal-train --config training/configs/kinetics_nl_c2d_r50_5blocks.yaml \
        --set data.train_csv=kinetics/train.csv --set data.val_csv=kinetics/val.csv \
        --set runtime.output_dir=runs/nl_c2d_r50

`--config` takes a path or the name of a shipped config (see `--list`).
The run folder receives `config.yaml` (the resolved config), `checkpoints/`
(last epoch's weights), `backup/` (BackupAndRestore: rerun the same command
after a crash or kill to resume), `logs/` (TensorBoard), `history.csv`,
`final.weights.h5`, `model.keras` and `results.json` (steps, time, and with a
validation set the multi-clip x multi-crop evaluation).
"""

import argparse
import json
import os
import sys
import time

import keras
import tensorflow as tf

from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training import data, evaluate, models, optim, runtime


def _loss_and_metrics(multi_label, num_classes):
    if multi_label:
        return (keras.losses.BinaryCrossentropy(),
                [keras.metrics.AUC(curve="PR", multi_label=True, name="pr_auc")])
    return (keras.losses.SparseCategoricalCrossentropy(),
            [keras.metrics.SparseCategoricalAccuracy(name="top1"),
             keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5")])


def _callbacks(run_dir, runtime_config, skipped):
    callbacks = [
        # First, so that the count is in the logs the other callbacks write.
        data.SkippedVideoSummary(skipped),
        # Restores weights, optimiser state and the epoch of an interrupted run.
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"),
                                         save_freq=runtime_config["backup_freq"]),
        keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "checkpoints", "last.weights.h5"),
                                        save_weights_only=True),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
    ]
    if runtime_config["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"),
                                                     write_graph=True, update_freq="epoch"))
    return callbacks


def _training_input(strategy, records, data_config, multi_label, global_batch, seed, skipped):
    """The repeated training dataset (repeated, so that skipped videos never
    end an epoch early).

    Single-host strategies get one pipeline of global batches, which
    `model.fit` splits across replicas. Multi-host ones (`multi_worker`,
    `tpu`) get one pipeline per host through `distribute_datasets_from_function`,
    each decoding only its own share of the videos (`records[i::n]`) into
    per-replica batches; auto-sharding would make every host decode every video.
    """
    options, _ = data.dataset_options(data_config)

    def make(host_records, batch, shard_seed):
        return data.train_dataset(host_records, data_config["num_classes"], multi_label, batch,
                                  seed=shard_seed, skipped=skipped, **options).repeat()

    multi_host = isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                                       tf.distribute.TPUStrategy))
    if not multi_host:
        return make(records, global_batch, seed)

    def host_dataset(context):
        shard = records[context.input_pipeline_id::context.num_input_pipelines]
        return make(shard, context.get_per_replica_batch_size(global_batch),
                    seed + context.input_pipeline_id)

    return strategy.distribute_datasets_from_function(host_dataset)


def build_optimizer(config, steps_per_epoch):
    """SGD + momentum, L2 on kernels, step schedule over the whole run."""
    schedule_config, optimizer_config = config["schedule"], config["optimizer"]
    total_steps = steps_per_epoch * schedule_config["epochs"]
    schedule = optim.StepDecay(
        optimizer_config["learning_rate"], total_steps, schedule_config["boundaries"],
        schedule_config["decay"],
        warmup_steps=int(round(schedule_config["warmup_epochs"] * steps_per_epoch)))
    optimizer = optim.SGDWithL2(l2=optimizer_config["weight_decay"], learning_rate=schedule,
                                momentum=optimizer_config["momentum"],
                                nesterov=optimizer_config["nesterov"])
    if config["runtime"]["precision"] == "mixed_float16":
        # float16 gradients underflow without a (dynamic) loss scale.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def run(config, strategy=None):
    """Train (resuming from `backup/` if present) and evaluate.

    `strategy` overrides `runtime.strategy` (pass the one already in use: two
    strategies in one process would allocate the same collective keys).
    Returns `(model, results)`; the results are also in `results.json`.
    """
    run_dir = config["runtime"]["output_dir"]
    data_config = config["data"]
    keras.utils.set_random_seed(config["train"]["seed"])
    runtime.set_precision(config["runtime"]["precision"])
    if strategy is None:
        strategy = runtime.make_strategy(config["runtime"]["strategy"], config["runtime"]["tpu"])

    # Every row of both sets is checked before any training starts.
    class_names = data.class_names_from_config(data_config)
    if not data_config["train_csv"]:
        raise ValueError("Nothing to train on. Received: data.train_csv=None")
    train_records, multi_label = data.load_records(
        data_config["train_csv"], data_config["num_classes"], class_names,
        argument="data.train_csv")
    val_records = None
    if data_config["val_csv"]:
        val_records, _ = evaluate.load_eval_records(dict(config, data=dict(
            data_config, class_names=class_names)))
    resolved = dict(config, data=dict(data_config, class_names=class_names))
    config_lib.save_config(resolved, os.path.join(run_dir, "config.yaml"))

    batch_size = config["train"]["batch_size"]
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"`train.batch_size` (global) must be divisible by the "
                         f"{replicas} replicas. Received: train.batch_size={batch_size}")
    steps_per_epoch = (config["schedule"]["steps_per_epoch"]
                       or max(len(train_records) // batch_size, 1))
    skipped = data.SkippedVideos()
    dataset = _training_input(strategy, train_records, data_config, multi_label, batch_size,
                              config["train"]["seed"], skipped)

    with strategy.scope():
        model = models.build_model(config["model"], data_config, multi_label)
        loss, metrics = _loss_and_metrics(multi_label, data_config["num_classes"])
        model.compile(optimizer=build_optimizer(config, steps_per_epoch), loss=loss,
                      metrics=metrics,
                      steps_per_execution=config["runtime"]["steps_per_execution"])

    start = time.perf_counter()
    history = model.fit(dataset, epochs=config["schedule"]["epochs"],
                        steps_per_epoch=steps_per_epoch, shuffle=False,  # tf.data shuffles
                        callbacks=_callbacks(run_dir, config["runtime"], skipped),
                        verbose=config["runtime"]["verbose"])
    train_seconds = time.perf_counter() - start
    model.save_weights(os.path.join(run_dir, "final.weights.h5"))
    model.save(os.path.join(run_dir, "model.keras"))

    results = {
        "model": config["model"]["name"],
        "params": int(model.count_params()),
        "steps": int(_iterations(model.optimizer)),
        "replicas": int(replicas),
        "epochs_run_this_session": len(history.epoch),
        "train_seconds_this_session": round(train_seconds, 1),
        "skipped_training_videos": skipped.total,
        "final_train_metrics": {k: float(v[-1]) for k, v in history.history.items()} if history.epoch else {},
    }
    if val_records:
        results["eval"] = evaluate.evaluate_records(model, val_records, data_config, multi_label,
                                                    config["train"]["eval_batch_size"])
    evaluate.write_json(results, os.path.join(run_dir, "results.json"))
    return model, results


def _iterations(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return keras.ops.convert_to_numpy(inner.iterations)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nonlocal-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="experiment YAML file or shipped config name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set runtime.precision=mixed_float16")
    parser.add_argument("--list", action="store_true", help="list the shipped configs")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(config_lib.list_configs()))
        return 0
    config = config_lib.load_config(args.config, args.set)
    _, results = run(config)
    print(json.dumps(results, indent=2))
    # The console script passes this to sys.exit: 0, not the results.
    return 0


if __name__ == "__main__":
    from nonlocal_keras.training import cli

    sys.exit(cli.run("nonlocal-train", "nonlocal_keras.training.train"))

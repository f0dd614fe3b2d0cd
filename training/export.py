"""SavedModel export for TF Serving, and the `nonlocal-export` CLI.

    nonlocal-export --config runs/nl_c2d/config.yaml \
        --checkpoint runs/nl_c2d/final.weights.h5 --output exported/nl_c2d/1

The SavedModel lands in `<base>/<model_name>/<version>/`, the layout TF
Serving watches, and holds two signatures:

- `serving_default`: uint8 clips `(batch, T, height, width, 3)` of any frame
  size. The graph does the evaluation preprocessing of training (shorter side
  resized to `data.eval_scale`, centre crop of `data.crop_size` unless the
  model is fully convolutional, per-channel normalisation) and returns
  `probabilities`, `top_k_classes`, `top_k_probabilities` and, when the config
  has class names, `top_k_class_names` (looked up in the `class_names.txt`
  asset).
- `serving_normalized`: float32 clips already normalised, shaped exactly as
  the model's input; returns the same outputs.

Both check their input in the graph (rank, frames, channels) so that a bad
request, even one that reaches the graph through TF Serving, fails with a
message that states the expected shape and dtype. The graph holds only
TensorFlow ops: loading needs neither Keras nor this package.
`assets.extra/nonlocal_keras.json` records the preprocessing settings for
`nonlocal-predict` (TF Serving ignores that folder).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import keras
import tensorflow as tf

from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training import data, preprocessing
from nonlocal_keras.utils import is_positive_int

DEFAULT_SIGNATURE = "serving_default"
NORMALIZED_SIGNATURE = "serving_normalized"
INPUT_NAME = "clips"
CLASS_NAMES_ASSET = "class_names.txt"
METADATA_FILE = os.path.join("assets.extra", "nonlocal_keras.json")


def resolve_export_path(export_dir, model_name):
    """`<base>/<name>/<version>` as given, or `export_dir/<model_name>/<next version>`.

    A path whose last part is a number is taken as the version folder; any
    other path is a base folder, inside which the next free version of
    `model_name` is used (TF Serving serves the highest version).
    """
    export_dir = os.path.abspath(os.fspath(export_dir))
    if os.path.basename(export_dir).isdigit():
        if int(os.path.basename(export_dir)) < 1:
            raise ValueError("The version folder must be a number >= 1 (TF Serving ignores 0). "
                             f"Received: export_dir={export_dir!r}")
        return export_dir
    model_dir = os.path.join(export_dir, model_name)
    versions = [int(v) for v in os.listdir(model_dir) if v.isdigit()] if os.path.isdir(model_dir) else []
    return os.path.join(model_dir, str(max(versions, default=0) + 1))


def serving_settings(model, data_config=None):
    """Evaluation preprocessing of the exported graph, checked against the model's input.

    Taken from a config's `data` section when given; otherwise the clip
    length and crop are the model's own and the shorter side is resized to
    the crop size (the `make demo` setting).
    """
    shape = tuple(model.input_shape)
    if len(shape) != 5 or shape[-1] != 3:
        raise ValueError("The model must take channels-last RGB clips (batch, T, H, W, 3). "
                         f"Received: model.input_shape={shape}")
    frames, height, width = shape[1:4]
    if height != width:
        raise ValueError("Exported models take square crops (or any size when fully "
                         f"convolutional). Received: model.input_shape={shape}")
    settings = dict(config_lib.DEFAULTS["data"])
    if data_config is not None:
        settings.update(data_config)
    else:
        settings.update(num_frames=frames or settings["num_frames"],
                        crop_size=height or settings["crop_size"],
                        eval_scale=height or settings["eval_scale"])
    for field, fixed in (("num_frames", frames), ("crop_size", height)):
        if fixed is not None and settings[field] != fixed:
            raise ValueError(f"`data.{field}` must match the model's input shape {shape}. "
                             f"Received: data.{field}={settings[field]}")
    keys = ("num_frames", "sampling_rate", "crop_size", "eval_scale", "num_clips", "num_crops")
    result = {key: int(settings[key]) for key in keys}
    result.update(mean=[float(m) for m in settings["mean"]], std=[float(s) for s in settings["std"]],
                  fully_convolutional=height is None)
    return result


def _checked(clips, expected_shape, dtype_name):
    """`clips`, once its rank and fixed sizes are asserted at run time.

    The signature's shape is not enforced when a signature is called (TF
    Serving feeds whatever the request holds), so the graph checks it.
    """
    actual = tf.shape(clips)
    rank = len(expected_shape)
    # Padded to `rank` entries, so that a lower-rank input reaches the assert.
    padded = tf.concat([actual, tf.zeros([rank], tf.int32)], axis=0)[:rank]
    ok = tf.equal(tf.size(actual), rank)
    for axis, size in enumerate(expected_shape):
        if size is not None:
            ok = tf.logical_and(ok, tf.equal(padded[axis], size))
    names = ["batch"] + [str(s) if s else "any" for s in expected_shape[1:]]
    message = (f"`{INPUT_NAME}` must be a {dtype_name} tensor of shape ({', '.join(names)}). "
               f"Received: {INPUT_NAME}.shape=")
    check = tf.debugging.Assert(ok, [message, actual], summarize=rank + 1)
    with tf.control_dependencies([check]):
        return tf.identity(clips)


def _checked_class_names(class_names, num_classes):
    # One name per line in the asset file: a name may not hold a line break.
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes or any(not n.strip() or "\n" in n for n in class_names):
        raise ValueError(f"`class_names` must be {num_classes} non-empty one-line names, one per "
                         f"class. Received: class_names={class_names[:10]!r} "
                         f"({len(class_names)} names)")
    return class_names


def _class_name_table(class_names, folder):
    """Index -> name lookup initialised from `class_names.txt`, which becomes an asset."""
    path = os.path.join(folder, CLASS_NAMES_ASSET)
    with open(path, "w") as handle:
        handle.write("\n".join(class_names) + "\n")
    initializer = tf.lookup.TextFileInitializer(
        path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        tf.string, tf.lookup.TextFileIndex.WHOLE_LINE)
    return tf.lookup.StaticHashTable(initializer, default_value="")


def _endpoints(model, settings, top_k, table):
    """(uint8 endpoint, normalised endpoint) as plain functions of `clips`."""

    def outputs(clips):
        probabilities = tf.cast(model(clips, training=False), tf.float32)
        values, indices = tf.math.top_k(probabilities, k=top_k)
        result = {"probabilities": probabilities, "top_k_classes": indices,
                  "top_k_probabilities": values}
        if table is not None:
            result["top_k_class_names"] = table.lookup(tf.cast(indices, tf.int64))
        return result

    frames = model.input_shape[1]

    def from_uint8(clips):
        clips = _checked(clips, (None, frames, None, None, 3), "uint8")
        if settings["fully_convolutional"]:
            resized = preprocessing.resize_shorter_side(clips, settings["eval_scale"])
            views = preprocessing.normalize(resized, settings["mean"], settings["std"])
        else:
            # The evaluation transform of training with one (centre) crop per clip.
            views = preprocessing.eval_transform(clips, settings["crop_size"], settings["eval_scale"],
                                                 1, settings["mean"], settings["std"])
        return outputs(views)

    def from_normalized(clips):
        return outputs(_checked(clips, tuple(model.input_shape), "float32"))

    return from_uint8, from_normalized


def _check_model(model, top_k):
    output_shape = model.output_shape
    if not isinstance(output_shape, tuple) or len(output_shape) != 2 or not output_shape[1]:
        raise ValueError("The model must output class scores (batch, classes). "
                         f"Received: model.output_shape={output_shape}")
    if not is_positive_int(top_k):
        raise ValueError(f"`top_k` must be an integer >= 1. Received: top_k={top_k!r}")
    return min(top_k, output_shape[1])


def export_saved_model(model, export_dir, *, data_config=None, class_names=None, top_k=5,
                       model_name=None, overwrite=False):
    """Write `model` as a TF Serving SavedModel; returns the version folder.

    Args:
        model: a Keras video classifier, input `(batch, T, H, W, 3)` (None
            sizes when fully convolutional), output `(batch, classes)` scores.
        export_dir: `<base>/<model_name>/<version>`, or a base folder in
            which `<model_name>/<next version>` is created.
        data_config: the config's `data` section (`eval_scale`, `crop_size`,
            `mean`, `std`, clip sampling, class names); see `serving_settings`
            for the default.
        class_names: one name per class; default: the config's class names
            (`data.class_names`, or the names in its training CSV), if any.
        top_k: number of classes in `top_k_*` (capped at the class count).
        model_name: folder name when `export_dir` is a base (default `model.name`).
        overwrite: replace an existing version folder (TF Serving may hold
            the old one in memory; a new version is the safer update).
    """
    top_k = _check_model(model, top_k)
    settings = serving_settings(model, data_config)
    if class_names is None and data_config is not None:
        class_names = data.class_names_from_config(data_config)
    if class_names is not None:
        class_names = _checked_class_names(class_names, model.output_shape[1])
    path = resolve_export_path(export_dir, model_name or model.name)
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError("The version folder exists; export a new version or pass "
                              f"overwrite=True. Received: export_dir={path!r}")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    # Written next to the target and renamed at the end, so that TF Serving,
    # which polls the model folder, never loads a half-written version (it
    # ignores folder names that are not numbers).
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        table = None
        if class_names is not None:
            table = _class_name_table(class_names, staging)
            archive.track(table)
        from_uint8, from_normalized = _endpoints(model, settings, top_k, table)
        frames, height, width = model.input_shape[1:4]
        archive.add_endpoint(DEFAULT_SIGNATURE, from_uint8, input_signature=[
            tf.TensorSpec((None, frames, None, None, 3), tf.uint8, name=INPUT_NAME)])
        archive.add_endpoint(NORMALIZED_SIGNATURE, from_normalized, input_signature=[
            tf.TensorSpec((None, frames, height, width, 3), tf.float32, name=INPUT_NAME)])
        saved = os.path.join(staging, "model")
        archive.write_out(saved, verbose=False)
        metadata = dict(settings, num_classes=int(model.output_shape[1]), top_k=top_k,
                        class_names=class_names,
                        signatures=[DEFAULT_SIGNATURE, NORMALIZED_SIGNATURE])
        os.makedirs(os.path.join(saved, os.path.dirname(METADATA_FILE)), exist_ok=True)
        with open(os.path.join(saved, METADATA_FILE), "w") as handle:
            json.dump(metadata, handle, indent=2)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.rename(saved, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def read_metadata(saved_model_dir):
    """The preprocessing settings that `export_saved_model` recorded."""
    path = os.path.join(saved_model_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError("Not a SavedModel written by nonlocal-export (no "
                                f"{METADATA_FILE}). Received: model={saved_model_dir!r}")
    with open(path) as handle:
        return json.load(handle)


def main(argv=None):
    from nonlocal_keras.training import models

    parser = argparse.ArgumentParser(prog="nonlocal-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. RUN_DIR/config.yaml)")
    parser.add_argument("--checkpoint", help="a .weights.h5 file (default: the config's model.weights)")
    parser.add_argument("--output", required=True,
                        help="BASE/<model_name>/<version> (or BASE: next version of the model's name)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set data.eval_scale=256")
    parser.add_argument("--multi-label", action="store_true",
                        help="the model was trained multi-label (sigmoid scores, e.g. Charades)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--model-name", help="folder name when --output is a base folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    args = parser.parse_args(argv)
    config = config_lib.load_config(args.config, args.set)
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            parser.error(f"checkpoint not found. Received: --checkpoint={args.checkpoint!r}")
        config["model"]["weights"] = args.checkpoint
    model = models.build_model(config["model"], config["data"], args.multi_label)
    path = export_saved_model(model, args.output, data_config=config["data"], top_k=args.top_k,
                              model_name=args.model_name, overwrite=args.overwrite)
    print(f"SavedModel written to {path}")
    print(f"TF Serving config and request example: "
          f"python -m nonlocal_keras.training.serving_example {path}")
    # The console script passes this to sys.exit: 0, not the path.
    return 0


if __name__ == "__main__":
    from nonlocal_keras.training import cli

    sys.exit(cli.run("nonlocal-export", "nonlocal_keras.training.export"))

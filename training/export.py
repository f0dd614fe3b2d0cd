r"""SavedModel export for TF Serving, and the `nonlocal-export` CLI.

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
message that states the expected shape and dtype. `serving_default` also
bounds the frames it will resize, before it resizes them: at most
`max_frame_side` pixels on a side and an aspect ratio of at most
`max_aspect_ratio` (a 1 x 20000 frame would otherwise be resized to
256 x 5,120,000). The graph holds only TensorFlow ops: loading needs neither
Keras nor this package.

`assets.extra/nonlocal_keras.json` records every evaluation setting (clip
sampling, scales, crops, mean/std, multi-label, class names, the model and
its non-local blocks, the weights, the frame bounds): `nonlocal-predict`
reads everything it needs from there (TF Serving ignores that folder).

Without `--checkpoint`, the weights are the run's: `final.weights.h5` next to
a run's `config.yaml`, else its `checkpoints/last.weights.h5`, else the
config's `model.weights`; with none of them the export stops rather than
write a model with random weights.
"""

import errno
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile

import keras
import tensorflow as tf

from nonlocal_keras import command_lines
from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training import atomic, data, models, preprocessing, run_state
from nonlocal_keras.training.errors import ConfigError, FolderError, MissingFileError, UserError
from nonlocal_keras.utils import is_decimal, is_positive_int

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
NORMALIZED_SIGNATURE = "serving_normalized"
INPUT_NAME = "clips"
CLASS_NAMES_ASSET = "class_names.txt"
METADATA_FILE = os.path.join("assets.extra", "nonlocal_keras.json")
# 2: every evaluation setting, the model, the weights and the frame bounds.
METADATA_VERSION = 2
# The frames serving_default takes (the command line's defaults).
DEFAULT_MAX_FRAME_SIDE = command_lines.DEFAULT_MAX_FRAME_SIDE
DEFAULT_MAX_ASPECT_RATIO = command_lines.DEFAULT_MAX_ASPECT_RATIO
# The keys of `serving_settings` that `nonlocal-predict` needs.
EVAL_SETTINGS = ("num_frames", "sampling_rate", "crop_size", "eval_scale", "num_clips",
                 "num_crops", "mean", "std")


class VersionExistsError(UserError, FileExistsError):
    """The SavedModel version folder to write already exists."""


def resolve_export_path(export_dir, model_name, argument="export_dir"):
    """`<base>/<name>/<version>` as given, or `export_dir/<model_name>/<next version>`.

    A path whose last part is a number is taken as the version folder; a
    folder that holds versions already is a model's folder (its next version:
    as a base, the version went to `<it>/<model_name>/1`, which neither TF
    Serving nor `nonlocal-predict --model` on it ever loads); any other path is
    a base folder, inside which the next free version of `model_name` is used
    (TF Serving serves the highest version).
    """
    export_dir = os.path.abspath(os.fspath(export_dir))
    version = os.path.basename(export_dir)
    if is_version_name(version):
        if int(version) < 1:
            raise ConfigError("The version folder must be a number >= 1 (TF Serving ignores 0). "
                              f"Received: {argument}={export_dir!r}")
        if version != str(int(version)):
            # `007` beside `7`: two folders of one version, TF Serving's choice.
            raise ConfigError(f"Write the version as {int(version)}, without leading zeros. "
                              f"Received: {argument}={export_dir!r}")
        return export_dir
    parent = os.path.dirname(export_dir)
    beside = _versions(parent)
    if beside:
        # `<model>/-1` or `<model>/v2`: a base there nested a model that TF Serving,
        # serving `<model>`'s numbered versions, never loads.
        raise ConfigError(f"{parent!r} is a model's folder (versions "
                          f"{', '.join(map(str, sorted(beside)))}): a folder in it "
                          "must be a version number >= 1, or give the model's folder itself "
                          f"for its next version. Received: {argument}={export_dir!r}")
    if _versions(export_dir):
        model_dir = export_dir
    else:
        model_dir = os.path.join(export_dir, _checked_model_name(model_name))
    versions = [int(v) for v in _listing(model_dir) if is_version_name(v)]
    return os.path.join(model_dir, str(max(versions, default=0) + 1))


def _checked_model_name(name):
    """A model's folder name: TF Serving puts it in URLs and models.config, and a
    path (`..`, `a/b`) or a hidden name (the staging folders') would land the
    version elsewhere than `<base>/<name>/`."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError("The model name must be a folder name of letters, digits, '.', '_' "
                          "and '-' that starts with a letter or digit (--model-name; its "
                          f"default is the model's name). Received: model_name={name!r}")
    return name


def is_version_name(name):
    """Whether a folder name is a TF Serving version (a decimal number)."""
    return is_decimal(name)


def serving_settings(model, data_config=None, max_frame_side=DEFAULT_MAX_FRAME_SIDE,
                     max_aspect_ratio=DEFAULT_MAX_ASPECT_RATIO):
    """Evaluation preprocessing of the exported graph, checked against the model's input.

    Taken from a config's `data` section when given (missing fields take the
    config defaults); otherwise the clip length and crop are the model's own
    and the shorter side is resized to the crop size (the `make demo`
    setting). Also holds the frame bounds of `serving_default`.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 5 or shape[-1] != 3:
        raise ValueError("The model must take channels-last RGB clips (batch, T, H, W, 3). "
                         f"Received: model.input_shape={shape}")
    frames, height, width = shape[1:4]
    if height != width:
        raise ValueError("Exported models take square crops (or any size when fully "
                         f"convolutional). Received: model.input_shape={shape}")
    if not is_positive_int(max_frame_side):
        raise ConfigError("`max_frame_side` must be an integer >= 1 (pixels). "
                          f"Received: max_frame_side={max_frame_side!r}")
    if (isinstance(max_aspect_ratio, bool) or not isinstance(max_aspect_ratio, (int, float))
            or not max_aspect_ratio >= 1):
        raise ConfigError("`max_aspect_ratio` must be a number >= 1 (longer side / shorter side). "
                          f"Received: max_aspect_ratio={max_aspect_ratio!r}")
    settings = dict(config_lib.load_config()["data"])
    if data_config is not None:
        settings.update(data_config)
    else:
        settings.update(num_frames=frames or settings["num_frames"],
                        crop_size=height or settings["crop_size"],
                        eval_scale=height or settings["eval_scale"])
    for field, fixed in (("num_frames", frames), ("crop_size", height)):
        if fixed is not None and settings[field] != fixed:
            raise ConfigError(f"`data.{field}` must match the model's input shape {shape}. "
                              f"Received: data.{field}={settings[field]}")
    result = {key: int(settings[key]) for key in EVAL_SETTINGS if key not in ("mean", "std")}
    result.update(mean=[float(m) for m in settings["mean"]], std=[float(s) for s in settings["std"]],
                  fully_convolutional=height is None, max_frame_side=int(max_frame_side),
                  max_aspect_ratio=float(max_aspect_ratio))
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
    # An empty batch failed inside the network with an internal "Incompatible shapes".
    ok = tf.logical_and(ok, padded[0] >= 1)
    names = ["batch"] + [str(s) if s else "any" for s in expected_shape[1:]]
    message = (f"`{INPUT_NAME}` must be a {dtype_name} tensor of shape ({', '.join(names)}), "
               f"a batch of at least one clip. Received: {INPUT_NAME}.shape=")
    check = tf.debugging.Assert(ok, [message, actual], summarize=rank + 1)
    with tf.control_dependencies([check]):
        return tf.identity(clips)


def _bounded_frames(clips, max_side, max_aspect):
    """`clips`, once its frames are asserted to be within the export's bounds.

    Runs before the resize, whose output it bounds: the shorter side goes to
    `eval_scale`, so the longer one to at most `eval_scale * max_aspect`.
    """
    shape = tf.shape(clips)
    height, width = tf.cast(shape[-3], tf.float64), tf.cast(shape[-2], tf.float64)
    shorter, longer = tf.minimum(height, width), tf.maximum(height, width)
    ok = tf.logical_and(shorter >= 1.0, longer <= float(max_side))
    ok = tf.logical_and(ok, longer <= max_aspect * shorter)
    message = (f"`{INPUT_NAME}` frames must be at most {max_side} pixels on a side with an aspect "
               f"ratio of at most {max_aspect:g}:1 (max_frame_side={max_side}, "
               f"max_aspect_ratio={max_aspect:g}, set at export). Received: {INPUT_NAME}.shape=")
    check = tf.debugging.Assert(ok, [message, shape], summarize=5)
    with tf.control_dependencies([check]):
        return tf.identity(clips)


def _checked_class_names(class_names, num_classes):
    # One name per line in the asset file, UTF-8: a name may not hold a line break.
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes or any(not n.strip() or not data.one_line_text(n)
                                              for n in class_names):
        raise ConfigError(f"`class_names` must be {num_classes} non-empty one-line UTF-8 names, "
                          f"one per class. Received: class_names={class_names[:10]!r} "
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
        clips = _bounded_frames(clips, settings["max_frame_side"], settings["max_aspect_ratio"])
        if settings["fully_convolutional"]:
            resized = preprocessing.resize_shorter_side(clips, settings["eval_scale"])
            views = preprocessing.normalize(resized, settings["mean"], settings["std"])
        else:
            # The evaluation transform of training with one (centre) crop per clip.
            views = preprocessing.eval_transform(clips, settings["crop_size"], settings["eval_scale"],
                                                 1, settings["mean"], settings["std"])
        return outputs(views)

    def from_normalized(clips):
        clips = _checked(clips, tuple(model.input_shape), "float32")
        # A NaN frame gave NaN probabilities and top_k_classes 0, 1, 2, ... as an answer.
        return outputs(tf.debugging.assert_all_finite(
            clips, f"`{INPUT_NAME}` must hold finite numbers (no NaN or Inf): the "
            "normalised frames, (pixel - mean) / std"))

    return from_uint8, from_normalized


def _check_model(model, top_k):
    output_shape = model.output_shape
    if not isinstance(output_shape, tuple) or len(output_shape) != 2 or not output_shape[1]:
        raise ValueError("The model must output class scores (batch, classes). "
                         f"Received: model.output_shape={output_shape}")
    if not is_positive_int(top_k):
        raise ConfigError(f"`top_k` must be an integer >= 1. Received: top_k={top_k!r}")
    return min(top_k, output_shape[1])


def describe_model(model, model_config=None):
    """The model as the metadata records it: its config name and arguments,
    and the non-local blocks the built network holds (name and mode)."""
    from nonlocal_keras.layers import BaseNonLocal

    def walk(layer):
        for inner in getattr(layer, "layers", []):
            yield inner
            yield from walk(inner)

    blocks = [{"name": layer.name, "mode": layer.mode} for layer in walk(model)
              if isinstance(layer, BaseNonLocal)]
    config = {k: v for k, v in (model_config or {}).items() if k != "weights"}
    return {"name": config.get("name", model.name), "config": config,
            "nonlocal_blocks": blocks}


def _host_staging_prefix():
    return f".export-{socket.gethostname()}-"


def _staging_prefix():
    """Staging folders name their host and process, so that a later export can tell
    one a killed export abandoned from one another export is writing."""
    return f"{_host_staging_prefix()}{os.getpid()}-"


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


_REPLACED = "replaced-"


def _remove_abandoned_staging(folder):
    """Delete what exports killed on this host left in `folder` (a model's folder),
    after putting back a version one had moved aside to replace it (killed
    between its two renames, it left no version there)."""
    pattern = re.compile(re.escape(_host_staging_prefix()) + r"(\d+)-\w+")
    for name in _listing(folder):  # gone meanwhile: a failed export removed the one it made
        match = pattern.fullmatch(name)
        if match and not _process_exists(int(match.group(1))):
            staging = os.path.join(folder, name)
            for inner in _listing(staging):
                version = inner[len(_REPLACED):]
                if inner.startswith(_REPLACED) and not os.path.lexists(
                        os.path.join(folder, version)):
                    os.rename(os.path.join(staging, inner), os.path.join(folder, version))
            shutil.rmtree(staging, ignore_errors=True)


def export_saved_model(model, export_dir, *, data_config=None, class_names=None, top_k=5,
                       model_name=None, overwrite=False, multi_label=False, model_config=None,
                       weights=None, max_frame_side=DEFAULT_MAX_FRAME_SIDE,
                       max_aspect_ratio=DEFAULT_MAX_ASPECT_RATIO, argument="export_dir"):
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
        multi_label: whether the scores are sigmoids (recorded).
        model_config: the config's `model` section (recorded, without weights).
        weights: where the weights came from (recorded).
        max_frame_side: `serving_default` refuses frames with a longer side.
        max_aspect_ratio: `serving_default` refuses frames whose longer side
            exceeds this many times the shorter one.
        argument: what the errors name `export_dir` (`--output` for the command).
    """
    top_k = _check_model(model, top_k)
    settings = serving_settings(model, data_config, max_frame_side, max_aspect_ratio)
    if class_names is None and data_config is not None:
        class_names = data.class_names_from_config(data_config)
    if class_names is not None:
        class_names = _checked_class_names(class_names, model.output_shape[1])
    path = resolve_export_path(export_dir, model_name or model.name, argument)
    # The next version, not one the user named: if another export takes it
    # before this one is renamed into place, this one takes the next.
    chosen = path != os.path.abspath(os.fspath(export_dir))
    parent = os.path.dirname(path)
    if os.path.isdir(parent):
        # Before the next version is chosen: a version that a killed export had
        # moved aside is put back.
        _remove_abandoned_staging(parent)
        path = resolve_export_path(export_dir, model_name or model.name, argument)
    if not chosen:  # a chosen one taken meanwhile is no error: the rename below moves on
        _check_replaceable(path, overwrite, argument)
    metadata = dict(settings, metadata_version=METADATA_VERSION,
                    num_classes=int(model.output_shape[1]), multi_label=bool(multi_label),
                    class_names=class_names, top_k=top_k, model=describe_model(model, model_config),
                    weights=None if weights is None else str(weights),
                    signatures=[DEFAULT_SIGNATURE, NORMALIZED_SIGNATURE])
    # The folders this export makes: removed again if it fails, where empty (it
    # says the folder holds what it held).
    made = []
    # Written next to the target and renamed at the end, so that TF Serving,
    # which polls the model folder, never loads a half-written version (it
    # ignores folder names that are not numbers).
    staging = None
    try:
        staging = _make_staging(parent, made, argument, export_dir)
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
        os.makedirs(os.path.join(saved, os.path.dirname(METADATA_FILE)), exist_ok=True)
        with open(os.path.join(saved, METADATA_FILE), "w") as handle:
            json.dump(metadata, handle, indent=2)
        served = _served_before(path)
        if not chosen:
            _check_replaceable(path, overwrite, argument)  # another export may have written it meanwhile
            if os.path.isdir(path):
                # Moved aside (and deleted with the staging folder), not deleted in
                # place: TF Serving must not load a half-deleted version. Named, so
                # that if this process dies before the next rename the next export
                # puts it back (`_remove_abandoned_staging`).
                os.rename(path, os.path.join(staging, _REPLACED + os.path.basename(path)))
        while True:
            try:
                # Fails where a version is (only an empty folder is replaced),
                # so a chosen one that another export took is never overwritten.
                os.rename(saved, path)
                break
            except OSError as error:
                taken = error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR)
                if taken and not chosen:  # written by another export after the check: a traceback
                    raise VersionExistsError(
                        "Another export wrote the version folder while this one was written; "
                        f"nothing of this one is there. Received: {argument}={path!r}") from None
                # Three exports started at once: two failed with "The version folder exists".
                if not taken:
                    raise
            path = resolve_export_path(export_dir, model_name or model.name, argument)
            served = _served_before(path)
        made = []  # exported: the folders stay
    except Exception as error:  # noqa: BLE001 - a full disk is a ResourceExhaustedError here
        refused = atomic.refused_errno(error)
        if refused is None or isinstance(error, UserError):  # a UserError says it all already
            raise
        raise FolderError(f"Cannot write the SavedModel {path!r} ({os.strerror(refused)}); "
                          "nothing was exported, and the folder holds what it held. "
                          f"Received: {argument}={export_dir!r}") from None
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        atomic.remove_folders(made)  # those another export writes in by now stay
    _warn_if_served_model_changes(path, served, metadata)
    return path


_STAGING_TRIES = 10  # a bound, so that nothing loops for good


def _make_staging(parent, made, argument, received):
    """A new staging folder in `parent`, made where missing (the folders made are
    added to `made`). Another export into the same new folder that fails removes
    the empty folders it made (`atomic.remove_folders`): where it removed `parent`
    between its making and the staging folder's, a FileNotFoundError traceback;
    `parent` is made again instead. Once the staging folder is in it, it stays."""
    for _ in range(_STAGING_TRIES):
        atomic.make_folder(parent, argument, received, made)
        try:
            return tempfile.mkdtemp(prefix=_staging_prefix(), dir=parent)
        except FileNotFoundError:
            continue
    raise FolderError(f"Cannot make a folder in {parent!r}: other processes removed it each "
                      f"time it was made. Received: {argument}={received!r}")


# What a client of a served model sends and reads back.
_CLIENTS_SEE = {"num_classes": "class count", "class_names": "class names",
                "multi_label": "label kind (sigmoid or softmax scores)",
                "num_frames": "clip length", "crop_size": "crop size", "top_k": "top-k count",
                "mean": "normalisation", "std": "normalisation"}


def _served_before(path):
    """`(version, metadata)` of the version TF Serving serves before the export to
    `path` and not after it (it serves a model's highest version): the one `path`
    replaces, or the highest below a new highest one; None where none is."""
    folder, version = os.path.split(path)
    versions = _versions(folder)
    if not versions or max(versions) > int(version):
        return None
    served = max(versions)
    try:
        with open(os.path.join(versions[served], METADATA_FILE), encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (OSError, ValueError):
        metadata = None
    return served, metadata if isinstance(metadata, dict) else None


def _warn_if_served_model_changes(path, served, metadata):
    """Another run's export into the same model's folder changed what every client
    of the model sends and reads back (another class order, the other kind of
    scores, another clip length), without a word."""
    if served is None:
        return
    version, before = served
    folder, ours = os.path.split(path)
    if before is None:  # it was compared with nothing, without a word
        logger.warning("Version %s of %r is served from now on in place of version %s, which has "
                       "no %s (another exporter's?): whether its clients now get other classes, "
                       "scores or clip lengths cannot be told.", ours, folder, version,
                       METADATA_FILE)
        return
    # A field an older export did not record is not a change.
    changed = list(dict.fromkeys(what for key, what in _CLIENTS_SEE.items()
                                 if key in before and before[key] != metadata[key]))
    if changed:
        which = (f"version {version}, which this export replaced" if str(version) == ours
                 else f"version {version}")
        logger.warning("Version %s of %r differs from what TF Serving (and nonlocal-predict "
                       "--model) served until now, %s, in its %s: every client of the model "
                       "gets it from now on. To serve both, export it under another "
                       "--model-name.", ours, folder, which, " and ".join(changed))


def _check_replaceable(path, overwrite, argument):
    if os.path.lexists(path) and not os.path.isdir(path):
        raise FolderError(f"The version folder is a file. Received: {argument}={path!r}")
    if os.path.isdir(path) and _listing(path) and not overwrite:
        how = "--overwrite" if argument.startswith("-") else "overwrite=True"
        raise VersionExistsError(f"The version folder exists; export a new version or pass {how}. "
                                 f"Received: {argument}={path!r}")


def _listing(folder):
    try:
        return os.listdir(folder)
    except OSError:  # not a folder, or not readable: read_metadata says which
        return []


def _versions(folder):
    """`{number: path}` of the SavedModel version folders under `folder`."""
    return {int(name): os.path.join(folder, name) for name in _listing(folder)
            if is_version_name(name) and os.path.isfile(os.path.join(folder, name, "saved_model.pb"))}


def version_folder(path, argument="model"):
    """The SavedModel version folder that `path` names: itself; for a model's
    base path (`<base>/<model_name>`, TF Serving's `model_base_path`) its
    highest version, the one TF Serving serves; for a base folder holding one
    model (`nonlocal-export --output`'s), that model's highest version.

    Raises:
        ConfigError: `path` holds several models (they are listed).
    """
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = _versions(path)
    numbered = [int(name) for name in _listing(path)
                if is_version_name(name) and os.path.isdir(os.path.join(path, name))]
    if versions:
        skipped = [v for v in numbered if v > max(versions)]
        if skipped:
            # TF Serving fails to load them and keeps serving the version below;
            # so does this, which said nothing of them.
            logger.warning("Version %s of %r holds no saved_model.pb (an export in progress, a "
                           "copy cut short or a file removed); using version %d, which TF Serving "
                           "keeps serving until a newer one loads.",
                           ", ".join(map(str, sorted(skipped))), path, max(versions))
        return versions[max(versions)]
    models = exported_models(path)
    if len(models) == 1:
        return version_folder(os.path.join(path, models[0]), argument)
    if models:
        raise ConfigError(f"{path!r} holds several exported models ({', '.join(models)}): give "
                          f"one of them, e.g. {os.path.join(path, models[0])!r}. "
                          f"Received: {argument}={path!r}")
    return path


def exported_models(base):
    """Sorted names of the folders under `base` that hold SavedModel versions."""
    return sorted(name for name in _listing(base) if _versions(os.path.join(base, name)))


def read_metadata(saved_model_dir):
    """The settings that `export_saved_model` recorded (checked for what predict needs)."""
    if os.path.isfile(saved_model_dir):  # a run's model.keras or weights: "no such folder"
        raise MissingFileError(f"{saved_model_dir!r} is a file, not a SavedModel folder (a run's "
                               "model or weights? nonlocal-export makes a SavedModel of a run). "
                               f"Received: model={saved_model_dir!r}")
    if not os.path.isdir(saved_model_dir):
        raise MissingFileError(f"No such SavedModel folder. Received: model={saved_model_dir!r}")
    path = os.path.join(saved_model_dir, METADATA_FILE)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise MissingFileError("Not a SavedModel version folder written by nonlocal-export (no "
                               f"saved_model.pb and {METADATA_FILE}). Received: model={saved_model_dir!r}")
    with open(path) as handle:
        try:
            metadata = json.load(handle)
        except ValueError as error:
            raise ConfigError(f"Unreadable {METADATA_FILE} ({error}). "
                              f"Received: model={saved_model_dir!r}") from error
    missing = [key for key in EVAL_SETTINGS + ("num_classes",) if key not in metadata]
    if missing:
        raise ConfigError(f"{METADATA_FILE} lacks {', '.join(missing)}; export the model again. "
                          f"Received: model={saved_model_dir!r}")
    return metadata


def find_weights(config_path, model_weights, checkpoint=None, doing="export"):
    """`(weights, where from)` that `nonlocal-export` (`doing`: or
    `nonlocal-evaluate`, "evaluate") loads; never none.

    `checkpoint` when given; else, when `config_path` is a run's
    `config.yaml`, the run's `final.weights.h5`, else its
    `checkpoints/last.weights.h5`; else the config's `model.weights`.

    Raises:
        MissingFileError: `checkpoint` does not exist, or none of these holds
            weights (an export with random weights would serve noise, an
            evaluation of them measure nothing).
    """
    if checkpoint:
        if not os.path.exists(checkpoint):
            raise MissingFileError(f"Checkpoint not found. Received: --checkpoint={checkpoint!r}")
        return models.weights_file(checkpoint, "--checkpoint"), "--checkpoint"
    run_dir = run_folder(config_path)
    if run_dir:
        for name, what in zip(models.RUN_WEIGHTS, (
                "the run's final weights",
                "the run's last checkpoint: it has no final weights (not finished, or they "
                "were removed)")):
            if os.path.isfile(os.path.join(run_dir, name)):
                return os.path.join(run_dir, name), what
    if model_weights:
        if (isinstance(model_weights, str) and model_weights.endswith((".h5", ".pkl"))
                and not os.path.isfile(model_weights)):
            raise MissingFileError(f"Weights file not found. Received: model.weights={model_weights!r}")
        return model_weights, "the config's model.weights"
    searched = (", ".join(os.path.join(run_dir, name) for name in models.RUN_WEIGHTS) + " and "
                if run_dir else "")
    why, give = {"export": ("an export with random weights would serve noise",
                            "--checkpoint PATH.weights.h5"),
                 "evaluate": ("random weights would be measured",
                              "--weights (a .weights.h5 or a run folder) or --run-dir")}[doing]
    raise MissingFileError(
        f"No weights to {doing}: {searched}the config's model.weights are all missing, and {why}. "
        f"Give {give}. Received: --config={config_path!r}")


def run_folder(config_path):
    """The run folder whose `config.yaml` `config_path` is, else None."""
    if os.path.isfile(config_path) and os.path.basename(config_path) == "config.yaml":
        return os.path.dirname(os.path.abspath(config_path))
    return None


def trained_multi_label(train_csv, run_dir=None, weights=None):
    """`(multi-label, evidence)` of a run: what its training CSV says, or, that
    CSV gone, its training metrics (history.csv), or what the weights file
    `weights` records (`run_state.write_labels`); None when none tells.
    `evidence` is `(why multi-label, why single-label)`."""
    trained, evidence = data.labels_are_multi(train_csv), (
        "the run's training CSV has a 'labels' column", "its training data has no 'labels' column")
    if trained is None and run_dir:
        trained, evidence = run_state.trained_multi_label(run_dir), (
            f"the run trained with {run_state.MULTI_LABEL_METRIC} (history.csv)",
            f"it trained with {run_state.SINGLE_LABEL_METRIC} (history.csv)")
    if trained is None and isinstance(weights, str) and os.path.isfile(weights):
        trained, evidence = (run_state.read_labels(weights) or {}).get("multi_label"), (
            f"{weights} was trained so", f"{weights} was trained single-label")
    return trained, evidence


def _multi_label(flag, train_csv, run_dir=None, weights=None):
    """`--multi-label`, or what the run's training CSV says, or, that CSV gone,
    the run's training metrics or its weights file: without the flag a Charades
    run was exported with softmax scores, without a word."""
    trained, evidence = trained_multi_label(train_csv, run_dir, weights)
    if trained and not flag:
        print(f"Multi-label (sigmoid scores): {evidence[0]}")
    if trained is False and flag:
        raise ConfigError(f"--multi-label, but the run was trained single-label (softmax): "
                          f"{evidence[1]}. Received: data.train_csv={train_csv!r}")
    if trained is None and not flag:
        what = (f"the training CSV {train_csv!r} is not there to tell" if train_csv
                else "no training CSV (data.train_csv) tells")
        print(f"Single-label (softmax scores): {what}; give --multi-label for a model trained "
              "multi-label")
    return bool(flag or trained)


def main(argv=None):
    args = command_lines.export_parser().parse_args(argv)
    config = config_lib.load_config(args.config, args.set)
    weights, origin = find_weights(args.config, config["model"].get("weights"), args.checkpoint)
    print(f"Exporting with weights {weights} ({origin})")
    config["model"]["weights"] = weights
    multi_label = _multi_label(args.multi_label, config["data"].get("train_csv"),
                               run_folder(args.config), weights)
    try:
        model = models.build_model(config["model"], config["data"], multi_label,
                                   argument=origin if args.checkpoint else "model.weights")
    except ConfigError:
        raise  # it names what to change already
    except ValueError as error:
        # Weights saved from another architecture, class count or clip shape.
        raise ConfigError(f"Cannot build model.name={config['model']['name']!r} with weights "
                          f"{weights!r}: {error}") from error
    path = export_saved_model(model, args.output, data_config=config["data"], top_k=args.top_k,
                              model_name=args.model_name, overwrite=args.overwrite,
                              multi_label=multi_label, model_config=config["model"],
                              weights=weights, max_frame_side=args.max_frame_side,
                              max_aspect_ratio=args.max_aspect_ratio, argument="--output")
    print(f"SavedModel written to {path}")
    print(f"TF Serving config and request example: "
          f"nonlocal-serving-example {shlex.quote(path)}")
    # The console script passes this to sys.exit: 0, not the path.
    return 0


if __name__ == "__main__":
    from nonlocal_keras.training import cli

    sys.exit(cli.run("nonlocal-export", "nonlocal_keras.training.export"))

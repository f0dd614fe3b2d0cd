"""Build the model a config names, from `nonlocal_keras.applications`, and load its weights.

`model.weights` may be a `.weights.h5` file or a run folder (fine-tuning: every
weight whose place and shape match is loaded, the classifier may start fresh
when the class count differs), an official Caffe2 `.pkl` (the same rule for its
`pred` blobs), or anything the constructor itself accepts (`"imagenet"`).
"""

import contextlib
import importlib
import inspect
import logging
import os
import warnings

import keras
import numpy as np
import yaml

from nonlocal_keras.applications import h5_weights
from nonlocal_keras.layers import NonLocal3D
from nonlocal_keras.training import run_state
from nonlocal_keras.training.data import class_names_from_config, id_names
from nonlocal_keras.training.errors import ConfigError, FolderError, MissingFileError
from nonlocal_keras.utils import refused_errno

logger = logging.getLogger(__name__)

# What a run folder holds, best first (see train.py).
RUN_WEIGHTS = (run_state.FINAL_WEIGHTS, run_state.LAST_WEIGHTS)


def find_constructor(name):
    """`C2DResNet50` (from nonlocal_keras.applications) or `package.module:function`.

    A custom constructor must take the keras.applications arguments
    (`include_top, weights, input_shape, classes, classifier_activation`).
    """
    module_name, _, attribute = name.rpartition(":")
    module_name = module_name or "nonlocal_keras.applications"
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"Cannot import the module of `model.name` ({error}). "
                          f"Received: model.name={name!r}") from error
    constructor = getattr(module, attribute, None)
    if constructor is None or not callable(constructor):
        # Constructors are capitalised (keras.applications'); MEAN and STD are not callable.
        available = sorted(n for n in dir(module)
                           if n[:1].isupper() and callable(getattr(module, n)))
        raise ConfigError(
            f"`model.name` must be a constructor of {module_name} ({', '.join(available)}) "
            f"or `package.module:function`. Received: model.name={name!r}")
    return constructor


# The constructor's arguments `build_model` gives itself (`name` there is the model's).
_GIVEN_ARGUMENTS = ("include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
                    "classifier_activation", "name")


def with_default_arguments(model_config):
    """`model_config` with the defaults of the constructor arguments it leaves
    out (as is, when `model.name` names no constructor)."""
    try:
        parameters = inspect.signature(find_constructor(model_config.get("name", ""))).parameters
    except (ConfigError, TypeError, ValueError):
        return model_config
    defaults = {key: parameter.default for key, parameter in parameters.items()
                if parameter.default is not parameter.empty and key not in _GIVEN_ARGUMENTS}
    return {**defaults, **model_config}


def describe(model_config):
    """`NL-C2DResNet50 (5 non-local blocks, stem 32x2)`-style name for results and logs."""
    options = {k: v for k, v in model_config.items() if k not in ("name", "weights")}
    blocks = options.pop("nonlocal_blocks", 0)
    if blocks:
        options = dict(nonlocal_blocks=blocks, **options)
    settings = ", ".join(f"{k}={v}" for k, v in options.items())
    return f"{model_config['name']}({settings})" if settings else model_config["name"]


def names_a_file(weights):
    """Whether a `model.weights` value is a path (to a file or folder, there or
    not) rather than a constructor's name for its weights (`"imagenet"`)."""
    return isinstance(weights, str) and (os.sep in weights
                                         or weights.endswith((".h5", ".keras", ".pkl")))


def weights_file(weights, argument="model.weights"):
    """The weights file `model.weights` (or the command-line `argument` that
    gave it) names: a file, or the best one of a run folder."""
    if os.path.isdir(weights):
        for name in RUN_WEIGHTS:
            path = os.path.join(weights, name)
            if os.path.isfile(path):
                return path
        inside = (" (it is a run's own folder of them: give the run folder)"
                  if os.path.basename(os.path.normpath(weights)) in ("checkpoints", "state")
                  else "")
        raise MissingFileError(f"The run folder has no weights ({', '.join(RUN_WEIGHTS)})"
                               f"{inside}. Received: {argument}={weights!r}")
    if not os.path.isfile(weights):
        raise MissingFileError(f"Weights file not found. Received: {argument}={weights!r}")
    return weights


def evaluation_model(model_config, data_config, multi_label, trained=None,
                     argument="model.weights"):
    """The model that scores evaluation views of `data.eval_crop_size`.

    Without one (or equal to `data.crop_size`): `trained`, else the model
    `build_model` loads. Larger, the official fully-convolutional test
    (`TEST_FULLY_CONV`): the network at the larger size, its classifier run
    at every position of a `crop_size`-sized average-pooling window (stride 1)
    over the last feature map (7 x 7 of 8 x 8 at 256 for 224), the softmax (or
    sigmoid) scores averaged over the positions. `trained`: a model at
    `crop_size` whose weights it takes (else those `model.weights` names;
    `argument`: the command-line argument that gave them, for the errors).
    """
    crop, eval_crop = data_config["crop_size"], data_config.get("eval_crop_size") or 0
    if eval_crop in (0, crop):
        return trained if trained is not None else build_model(model_config, data_config,
                                                                multi_label, argument=argument)
    larger = dict(data_config, crop_size=eval_crop)
    if trained is None:
        model = build_model(model_config, larger, multi_label, argument=argument)
    else:
        model = build_model(dict(model_config, weights=None), larger, multi_label)
        model.set_weights(trained.get_weights())
    check_evaluation_head(model, model_config, data_config)
    names = {layer.name: layer for layer in model.layers}
    features = names["pool5"].input  # (batch, T, H, W, C) at eval_crop
    frames, height, width = features.shape[1:4]
    window = (frames, max(1, round(height * crop / eval_crop)), max(1, round(width * crop / eval_crop)))
    x = keras.layers.AveragePooling3D(window, strides=1, name="pool5_windows")(features)
    x = names["pred"](x)  # the classifier and its softmax at every window
    x = keras.layers.GlobalAveragePooling3D(dtype="float32", name="mean_scores")(x)
    return keras.Model(model.input, x, name=f"{model.name}_fully_convolutional")


def check_evaluation_head(model, model_config, data_config):
    """A `data.eval_crop_size` larger than `data.crop_size` needs the video ResNets'
    head (`evaluation_model`). `nonlocal-train` asks before it trains: a run of
    another network failed once trained, and its config could not change."""
    eval_crop = data_config.get("eval_crop_size") or 0
    if eval_crop in (0, data_config["crop_size"]):
        return
    names = {layer.name: layer for layer in model.layers}
    if not isinstance(names.get("pool5"), keras.layers.GlobalAveragePooling3D) or "pred" not in names:
        raise ConfigError(
            "`data.eval_crop_size` larger than data.crop_size needs a network that ends in global "
            f"average pooling `pool5` and the classifier `pred` (the video ResNets); "
            f"{model_config['name']} does not. Received: data.eval_crop_size={eval_crop}")


# The constructor's arguments the command sets, and from what.
RESERVED_ARGUMENTS = {"include_top": "always True", "input_shape": "data.num_frames and "
                      "data.crop_size", "classes": "data.num_classes",
                      "classifier_activation": "the label kind", "input_tensor": "never given"}


def build_model(model_config, data_config, multi_label, fine_tune=False,
                argument="model.weights"):
    """Call the constructor `model.name` with the clip shape and class count, then load weights.

    Every `model.*` field but `name` and `weights` is passed to the constructor.
    The classifier ends in softmax (single-label) or sigmoid (multi-label), so
    that the evaluation protocol averages probabilities. A constructor's
    ValueError or TypeError (a bad `model.*` field) becomes a ConfigError.

    `fine_tune=True` (training's `model.weights`) loads what fits and may leave
    the classifier new (`load_matching_weights`); otherwise (evaluation,
    export) every weight must load, so that nothing is served untrained.
    `argument` names where the weights came from in the errors (`--checkpoint`).
    """
    constructor = find_constructor(model_config["name"])
    kwargs = {k: v for k, v in model_config.items() if k not in ("name", "weights")}
    reserved = [k for k in RESERVED_ARGUMENTS if k in kwargs]
    if reserved:
        # It was Python's "got multiple values for keyword argument 'classes'".
        name = reserved[0]
        raise ConfigError(f"model.{name} is set by the command ({RESERVED_ARGUMENTS[name]}): "
                          f"leave it out. Received: model.{name}={kwargs[name]!r}")
    weights = model_config.get("weights")
    if names_a_file(weights) and not os.path.exists(weights):
        raise MissingFileError(f"No such weights file or run folder. Received: "
                               f"{argument}={weights!r}")
    if names_a_file(weights) and not (os.path.isdir(weights) or weights.endswith((".h5", ".pkl"))):
        # A run's config.yaml or model.keras: Keras' error named neither the
        # file nor the argument (a 72-line error for a .keras).
        hint = (" (a run's final.weights.h5 holds its model.keras's weights)"
                if weights.endswith(".keras") else "")
        raise ConfigError("`model.weights` takes a .weights.h5 file, an official .pkl or a run "
                          f"folder{hint}. Received: {argument}={weights!r}")
    if names_a_file(weights) and weights.endswith(".h5") and not weights.endswith(".weights.h5"):
        # Keras reads a plain .h5 as a Keras 2 file: a renamed .weights.h5 was a
        # "Layer count mismatch ... found 0 saved layers" traceback.
        raise ConfigError("`model.weights` takes Keras 3 weights files, whose names end in "
                          ".weights.h5 (Keras reads any other .h5 as a Keras 2 file); rename it. "
                          f"Received: {argument}={weights!r}")
    ours = isinstance(weights, str) and (os.path.isdir(weights) or weights.endswith((".h5", ".pkl")))
    size = data_config["crop_size"]
    try:
        model = constructor(
            include_top=True,
            weights=None if ours else weights,
            input_shape=(data_config["num_frames"], size, size, 3),
            classes=data_config["num_classes"],
            classifier_activation="sigmoid" if multi_label else "softmax",
            **kwargs,
        )
    except (ValueError, TypeError, OSError) as error:  # OSError: a download that failed
        # A constructor's own check names the argument and its value already.
        received = "" if "Received:" in str(error) else f" Received: model={model_config!r}"
        raise ConfigError(f"Cannot build {describe(model_config)}: {error}{received}") from error
    if not isinstance(model, keras.Model):
        raise ConfigError(f"`model.name` must name a function that returns a keras.Model; "
                          f"{model_config['name']} returned a {type(model).__name__}. "
                          f"Received: model.name={model_config['name']!r}")
    if ours:
        path = weights_file(weights, argument)
        if fine_tune and path.endswith(".pkl"):
            load_caffe2_for_fine_tuning(model, path)
        elif fine_tune:
            theirs, _ = _run_of(weights, path)
            other = _other_classes(weights, theirs, data_config)
            load_matching_weights(model, path, other)
            if not other:
                _warn_of_other_label_kind(weights, theirs, data_config, multi_label)
        if fine_tune:
            _warn_of_affine_batch_norms(model, path)
        else:
            _check_scored_classes(weights, path, data_config, multi_label,
                                  f"{argument}={weights!r}")
            _load_all(model, path, describe(model_config), f"{argument}={weights!r}")
    return model


def _load_all(model, path, built, received):
    from nonlocal_keras.applications.caffe2_weights import load_caffe2_weights

    if not path.endswith(".pkl"):
        _refuse_other_architecture(model, path, built, received)
    # Keras warns about each layer of another model's file ("Skipping nested
    # container ...", 28 lines) before it raises: kept only if the load works.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if path.endswith(".pkl"):
                load_caffe2_weights(model, path)
            else:
                model.load_weights(path)
        except (ValueError, OSError) as error:
            raise ConfigError(f"Cannot load the weights of {path} into {model.name!r} (another "
                              f"model, or another class count?): {str(error).splitlines()[0]} "
                              f"Received: {received}") from error
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _refuse_other_architecture(model, path, built, received):
    """Evaluation and export take every weight of the file and nothing else
    (Keras drops what the model has no place for: a run with non-local blocks,
    scored and exported without them, exit 0). The model is the one the
    config's `model.*` fields build (`built`), often the mistake rather than
    the weights."""
    found = _datasets(path, received)
    with _refused_copies_named():
        detail = h5_weights.mismatch(model, found) or h5_weights.block_place_difference(model, path)
    if detail:
        raise ConfigError(f"The weights of {path} are not those of {built}, the network the "
                          f"config's model.* fields build (another architecture, or another "
                          f"class count?): {detail}. Received: {received}")


@contextlib.contextmanager
def _refused_copies_named():
    """`h5_weights.model_arrays` writes the model's weights in the temporary
    folder: a full one (or a file size limit) is one line, not a traceback."""
    try:
        yield
    except OSError as error:
        if refused_errno(error) is None:
            raise
        raise FolderError(str(error)) from None


def _datasets(path, received=None):
    """`h5_weights.layer_arrays`, a file that is none a ConfigError."""
    try:
        return h5_weights.layer_arrays(path)
    except OSError as error:
        raise ConfigError(f"Cannot read the weights file ({error}). "
                          f"Received: {received or f'model.weights={path!r}'}") from None


def _run_of(weights, path):
    """`(labels, source)` of the run whose weights `weights` names (`path`, the
    file `weights_file` found): `labels` a dict of its `class_names`,
    `num_classes` and `multi_label` (None where unknown), `source` the file
    that says so. The weights files a run writes carry them
    (`run_state.write_labels`), also when copied out of its run, whatever the
    folder's config.yaml says; otherwise the run folder's config.yaml and
    history.csv (the folder, or a weights file in it, in its `checkpoints/` or
    its `state/`). `(None, None)` where neither is readable."""
    labels = run_state.read_labels(path)
    if labels is not None:
        return labels, path
    folder = weights if os.path.isdir(weights) else os.path.dirname(os.path.abspath(weights))
    if os.path.basename(folder) in ("checkpoints", run_state.STATE_DIR):
        folder = os.path.dirname(folder)
    config = os.path.join(folder, "config.yaml")
    try:
        with open(config, encoding="utf-8") as handle:
            theirs = dict((yaml.safe_load(handle) or {}).get("data", {}))
    except (OSError, ValueError, TypeError, yaml.YAMLError, AttributeError):  # ValueError: not UTF-8
        return None, None
    return dict(theirs, multi_label=run_state.trained_multi_label(folder)), config


def _other_classes(weights, theirs, data_config, fine_tune=True):
    """Whether the run of `weights`, whose labels are `theirs` (`_run_of`),
    was trained on other class names than `data_config`'s (same
    count, other names or order): its classifier's rows are then other
    classes. False where either side has none (class ids); where one side has,
    the rows are taken in order, with a warning that says which name becomes
    which id."""
    if theirs is None:
        return False
    names, count = theirs.get("class_names"), theirs.get("num_classes")
    ours = data_config.get("class_names")
    if isinstance(names, list) and ours is not None:
        return list(names) != list(ours)
    named = names if isinstance(names, list) else ours
    if named and (names is None or ours is None) and count == data_config.get("num_classes"):
        # Ids beside names are read in the names' order: right only if that is
        # what the ids meant, which nothing here can tell.
        pairs = id_names(named)
        if ours is None:
            logger.warning("The classifier of %s is loaded row by row as this run's class ids; "
                           "that run's classes were %s. If these ids mean other classes, give "
                           "data.class_names in the ids' order%s.", weights, pairs,
                           " (names other than that run's leave the classifier new)"
                           if fine_tune else "")
        else:
            logger.warning("The classifier of %s, a run of class ids, is loaded row by row as "
                           "this run's classes: %s. If that run's ids meant other classes, give "
                           "data.class_names in those ids' order.", weights, pairs)
    return False


def _warn_of_other_label_kind(weights, theirs, data_config, multi_label):
    """A classifier trained with sigmoids loaded into a softmax one, or the
    reverse, is a start its rows were not trained for: said, not refused."""
    if theirs is None or theirs.get("num_classes") != data_config.get("num_classes"):
        return  # no run, or the classifier was left new (another class count)
    trained = theirs.get("multi_label")
    if trained is not None and trained != multi_label:
        kinds = ("multi-label (sigmoid)", "single-label (softmax)")
        logger.warning("The classifier of %s, trained %s, is loaded as it is into this %s run: "
                       "its rows are a start, not trained for this loss.",
                       weights, kinds[not trained], kinds[not multi_label])


def _check_scored_classes(weights, path, data_config, multi_label, received):
    """Evaluation and export take a classifier as it is: weights of a run of
    other class names (or order), or of the other kind of labels, scored and
    labelled every video with the wrong classes, exit 0."""
    theirs, source = _run_of(weights, path)
    if isinstance(data_config.get("class_names"), str):
        try:  # an export's own YAML may name a class-name file
            data_config = dict(data_config, class_names=class_names_from_config(data_config))
        except (OSError, ValueError):
            data_config = dict(data_config, class_names=None)
    if _other_classes(weights, theirs, data_config, fine_tune=False):
        raise ConfigError(
            f"The weights are of a run trained on other class names (or another order) than "
            f"these: {id_names(theirs['class_names'])} against "
            f"{id_names(data_config['class_names'])}; every score would go to another class. "
            f"Use that run's config or its class names (as {source} says). "
            f"Received: {received}")
    trained = theirs.get("multi_label") if theirs is not None else None
    if trained is not None and trained != multi_label:
        kinds = ("multi-label (sigmoid)", "single-label (softmax)")
        raise ConfigError(f"The weights are of a run trained {kinds[not trained]} (as {source} "
                          f"says), and this is {kinds[not multi_label]}. Received: {received}")


def load_matching_weights(model, path, other_classes=False):
    """Load every weight of `path` that fits `model`; the classifier may be left new.

    Weights are matched by their place in Keras' weights file (layer type and
    order, which another class count or added non-local blocks do not move)
    and by shape. The last layer (the classifier) may differ in shape: it then
    keeps its fresh initialisation, as it does with `other_classes` (the file's
    run had other class names). A shape that differs anywhere else, or a weight
    of the file the model has no place for, means another architecture and is a
    ConfigError naming the weight. Logs what was
    restored and what was left new; returns `(restored, left_new)` h5 paths.
    """
    with _refused_copies_named():
        own = h5_weights.model_arrays(model)
    found = _datasets(path)
    names = h5_weights.variable_names(model, own)
    classifier = {v.path for v in model.layers[-1].weights}
    in_classifier = {p for p, n in names.items() if n in classifier}
    classifier_groups = {p.rsplit("/", 1)[0] for p in in_classifier}
    # By group: a zero bias is named by its layer, not matched to its variable.
    restored = [p for p in own if p in found and found[p].shape == own[p].shape
                and not (other_classes and p.rsplit("/", 1)[0] in classifier_groups)]
    mismatched = [p for p in own if p in found and found[p].shape != own[p].shape]
    wrong = [p for p in mismatched if p.rsplit("/", 1)[0] not in classifier_groups]
    if wrong:
        listed = "; ".join(f"{names.get(p, p)}: {found[p].shape} in the file, {own[p].shape} in "
                           f"the model" for p in wrong[:5])
        raise ConfigError(f"{len(wrong)} weight(s) of the file do not fit {model.name!r} outside "
                          f"its classifier (another architecture?): {listed}. "
                          f"Received: model.weights={path!r}")
    # The blocks' BN would be left new (a frozen-BN release into blocks with BN:
    # it trained another function than the release's, exit 0), or have no place.
    different_bn = (h5_weights.block_bn_difference(own, found)
                    or h5_weights.block_place_difference(model, path))
    if different_bn:
        raise ConfigError(f"The weights do not fit {model.name!r}: {different_bn}. "
                          f"Received: model.weights={path!r}")
    unused = sorted(set(found) - set(own))
    if unused:
        # A run of the model with non-local blocks into the one without, of R101
        # into R50: the rest loaded, exit 0, and an INFO line counted what was not.
        raise ConfigError(f"{len(unused)} weight array(s) of the file have no place in "
                          f"{model.name!r} (another architecture?): "
                          f"{h5_weights.listed(unused)}. Received: model.weights={path!r}")
    left_new = [p for p in own if p not in restored]
    if not restored:
        raise ConfigError(f"No weight of the file fits {model.name!r}. "
                          f"Received: model.weights={path!r}")
    fresh = model.layers[-1].get_weights()
    with warnings.catch_warnings():
        # Keras warns about the layers it skips; they are logged below by name.
        warnings.simplefilter("ignore")
        model.load_weights(path, skip_mismatch=bool(left_new))
    if other_classes:
        model.layers[-1].set_weights(fresh)
        logger.warning("The classifier is left new: the run of %s was trained on other class "
                       "names (or another order) than these.", path)
    logger.info("Loaded %d of %d weight arrays from %s.", len(restored), len(own), path)
    if left_new:
        logger.info("Left new (freshly initialised): %s",
                    ", ".join(f"{names.get(p, p)} {own[p].shape}"
                              + (f" (file: {found[p].shape})" if p in found else "")
                              for p in left_new))
    return restored, left_new


def load_caffe2_for_fine_tuning(model, path):
    """An official `.pkl`; when its classifier has another class count it is left new."""
    from nonlocal_keras.applications.caffe2_weights import load_caffe2_weights, read_caffe2_pickle

    try:
        blobs = dict(read_caffe2_pickle(path))
    except (ValueError, OSError) as error:
        raise ConfigError(f"{error}. Received: model.weights={path!r}") from None
    layer = model.layers[-1]
    if "pred_w" in blobs and np.shape(blobs["pred_w"]) != tuple(layer.kernel.shape)[::-1]:
        logger.info("Left new (freshly initialised): the classifier %s %s (file: %s).",
                    layer.name, tuple(layer.kernel.shape), np.shape(blobs["pred_w"]))
        # Caffe2 stores the classifier as (classes, channels).
        blobs["pred_w"] = np.asarray(layer.kernel).T
        blobs["pred_b"] = np.asarray(layer.bias)
    # An ImageNet file (2D, inflated on loading) has no non-local blocks: as in
    # the official training, they start from their initialisers. Nor has a file
    # made for fine-tuning by the official `modify_caffe2_ftvideo.py` a classifier.
    lacking = [name for name in ("nonlocal_", "pred_")
               if not any(b.startswith(name) for b in blobs)]
    try:
        load_caffe2_weights(model, blobs, may_lack=lacking)
    except ValueError as error:
        raise ConfigError(f"{str(error).rstrip('.')}. Received: model.weights={path!r}") from error
    if "nonlocal_" in lacking and any(isinstance(layer, NonLocal3D) for layer in model.layers):
        logger.info("Left new (freshly initialised): the non-local blocks (the file has none).")
    if "pred_" in lacking:
        logger.info("Left new (freshly initialised): the classifier %s (the file has none).",
                    layer.name)
    logger.info("Loaded the official weights %s.", path)


def _warn_of_affine_batch_norms(model, path):
    """The BNs of a frozen-BN release (the official MODEL.USE_AFFINE: `_s`, `_b`
    without statistics) load with mean 0 and variance 1 - epsilon, a value no
    training gives: trained as BatchNormalization on each batch's statistics
    they make another function than the file's from the first step."""
    batch = [layer.name for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)
             and not getattr(layer, "frozen_statistics", False)
             and not np.any(layer.moving_mean.numpy())
             and np.all(layer.moving_variance.numpy() == np.float32(1 - layer.epsilon))]
    if batch:
        logger.warning(
            "The weights' BNs are fixed affine maps (%d, e.g. %s: an official frozen-BN "
            "release, MODEL.USE_AFFINE), which the model trains as BatchNormalization on each "
            "batch's statistics: from the first step it computes another function than %s. "
            "`model.affine_bn: true` keeps them affine maps, as the official training did.",
            len(batch), batch[0], os.path.basename(path))

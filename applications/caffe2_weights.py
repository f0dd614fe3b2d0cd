"""Load the official Caffe2 release (video-nonlocal-net `*.pkl`) into our models.

The blob names are the official code's, so they follow from our layer names
(which are the official blob prefixes, see `video_resnet`):

| our layer (variable)                 | Caffe2 blob                             |
|--------------------------------------|-----------------------------------------|
| `conv1`, `res4_5_branch2a` (kernel)  | `conv1_w`, `res4_5_branch2a_w` (NCTHW)  |
| `res_conv1_bn`, `res4_5_branch2a_bn` | `<name>_s`, `_b`, `_rm`, `_riv`         |
|   (gamma, beta, moving mean, moving variance)                                  |
| `res4_5_nonlocal` theta/phi/g/w_z    | `nonlocal_conv4_5_theta_w`/`_b`, `_phi_`, `_g_`, `_out_` |
| `res4_5_nonlocal` bn                 | `nonlocal_conv4_5_bn_s`/`_b`/`_rm`/`_riv` |
|   (none with `nonlocal_use_bn=False`: the official `NONLOCAL.USE_BN: False`)  |
| `pred` (kernel, bias)                | `pred_w` `(classes, 2048)`, `pred_b`    |

Conv kernels `(C_out, C_in, T, H, W)` become `(T, H, W, C_in, C_out)`; the
non-local 1x1x1 kernels become Dense kernels `(C_in, C_out)`. `_riv` holds the
running variance (not its inverse, despite the name), as in Detectron.

The files are Python 2 pickles: they are read with `encoding="latin1"`. A
pickle can run code when loaded: convert only files you trust.
"""

import os
import pickle
import re
import sys

import keras
import numpy as np

from nonlocal_keras.applications import h5_weights, video_resnet
from nonlocal_keras.applications.video_resnet_spec import NONLOCAL_LAYOUTS
from nonlocal_keras.layers import NonLocal3D

# The epsilon of every BN of the video models and of the non-local blocks
# (both 1e-5, the official BN_EPSILON): affine-only BNs are exact for it.
BN_EPSILON = video_resnet.BN_EPSILON

_BN_BLOBS = (("gamma", "_s"), ("beta", "_b"), ("moving_mean", "_rm"), ("moving_variance", "_riv"))
_NONLOCAL_PROJECTIONS = (("theta", "theta"), ("phi", "phi"), ("g", "g"), ("w_z", "out"))
_NONLOCAL_NAME = re.compile(r"^res(\d)_(\d+)_nonlocal$")
_NONLOCAL_BN = re.compile(r"^nonlocal_conv\d_\d+_bn_(?:s|b|rm|riv)$")
_PARAMETER_SUFFIXES = ("_w", "_b", "_s", "_rm", "_riv")
ARCH_PATTERN = re.compile(
    r"^(c2d|i3d)(?:_(3x1x1|3x3x3))?(?:_nl(\d+))?_r(50|101)(?:_(8x8|32x2))?(_affine)?$")
# The frozen-BN non-local releases (official configs/*_nonlocal_affine_400k.yaml):
# NONLOCAL.USE_BN: False, and res3's blocks on groups of 4 frames
# (`add_nonlocal_group`, group_size=4 with MODEL.USE_AFFINE).
# Their BNs were fixed affine maps (MODEL.USE_AFFINE: `affine_bn`).
AFFINE_RELEASE = {"nonlocal_use_bn": False, "affine_bn": True}
AFFINE_RES3_FRAMES_PER_GROUP = 4


def caffe2_blob_map(model):
    """`[(variable, blob name, layout), ...]` for every weight of `model`.

    `layout` is `"conv"` (NCTHW kernel), `"dense"` (`(C_out, C_in[, 1, 1, 1])`
    kernel) or `"vector"`. A layer without an official counterpart is an error.
    """
    entries = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if isinstance(layer, keras.layers.Conv3D):
            entries.append((layer.kernel, f"{layer.name}_w", "conv"))
        elif isinstance(layer, keras.layers.BatchNormalization):
            entries += [(getattr(layer, attr), layer.name + suffix, "vector")
                        for attr, suffix in _BN_BLOBS]
        elif isinstance(layer, NonLocal3D):
            entries += _nonlocal_entries(layer)
        elif isinstance(layer, keras.layers.Dense) and layer.name == "pred":
            entries += [(layer.kernel, "pred_w", "dense"), (layer.bias, "pred_b", "vector")]
        else:
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no counterpart "
                             "in the official Caffe2 models.")
    return entries


def _nonlocal_entries(layer):
    match = _NONLOCAL_NAME.match(layer.name)
    if match is None or layer.w_f is not None:
        raise ValueError(
            f"Non-local layer {layer.name!r} has no official counterpart: the official blocks "
            "are named `res<stage>_<block>_nonlocal`, without the concatenation mode.")
    prefix = f"nonlocal_conv{match.group(1)}_{match.group(2)}"
    entries = []
    for attr, blob in _NONLOCAL_PROJECTIONS:
        projection = getattr(layer, attr)
        if projection is not None:  # theta and phi are absent in the gaussian mode
            entries += [(projection.kernel, f"{prefix}_{blob}_w", "dense"),
                        (projection.bias, f"{prefix}_{blob}_b", "vector")]
    if layer.bn is not None:
        entries += [(getattr(layer.bn, attr), f"{prefix}_bn{suffix}", "vector")
                    for attr, suffix in _BN_BLOBS]
    return entries


# What NumPy arrays and scalars (NumPy 1 and 2, Python 2's pickles) are rebuilt
# from; the official files hold nothing else beside dicts, strings and numbers.
# (`_codecs.encode`: bytes in the protocols 0-2 that Python 3 writes.)
_ARRAY_GLOBALS = {(f"numpy{core}.{module}", name) for core in (".core", "._core")
                  for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                       ("numeric", "_frombuffer"))} | {
                      ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                      ("_codecs", "encode")}


class _NotArrays(pickle.UnpicklingError):
    pass


class _ArraysOnly(pickle.Unpickler):
    """A pickle can call any function while it loads (`os.system`, a file
    written): a weights file is let build NumPy arrays and nothing else."""

    def find_class(self, module, name):
        if (module, name) not in _ARRAY_GLOBALS:
            raise _NotArrays(f"{module}.{name}")
        return super().find_class(module, name)


def read_caffe2_pickle(path):
    """The `{name: array}` blobs of an official `.pkl` (bare dict or `{"blobs": ...}`)."""
    with open(path, "rb") as file:
        try:
            content = _ArraysOnly(file, encoding="latin1").load()
        except _NotArrays as error:
            raise ValueError(f"{path!r} is no weights pickle: it calls {error} while it loads, "
                             "which was refused (a pickle can run any code; an official "
                             "video-nonlocal-net .pkl builds NumPy arrays only)") from None
        except Exception as error:  # noqa: BLE001 - unpickling other bytes raises almost anything
            raise ValueError(f"Cannot read {path!r} as a pickle ({type(error).__name__}: "
                             f"{str(error).rstrip('.')}); an official video-nonlocal-net .pkl "
                             "is one, and a partial download ends early") from error
    if isinstance(content, dict) and isinstance(content.get("blobs"), dict):
        content = content["blobs"]
    if not isinstance(content, dict):
        raise ValueError(f"{path!r} holds a {type(content).__name__}, not the dict of blobs "
                         "(or {'blobs': {...}}) of a Caffe2 weights pickle")
    other = [key for key in content if not isinstance(key, str)]
    if other:  # a pickled label map {0: 'abseiling', ...}: names were compared as text
        raise ValueError(f"{path!r} holds a dict with keys that are not blob names (e.g. "
                         f"{other[0]!r} of type {type(other[0]).__name__}), not the blobs of a "
                         "Caffe2 weights pickle")
    return content


def load_caffe2_weights(model, blobs, may_lack=()):
    """Loads official Caffe2 blobs (a dict or a `.pkl` path) into `model`.

    Returns:
        The sorted names of the blobs the model does not use (optimizer
        state such as `*_momentum`, `lr`, `model_iter`), which are ignored.

    Raises:
        ValueError: naming the blobs the model needs and the file lacks
            (but those starting with one of `may_lack`, left as they are),
            parameter blobs the model has no place for (another architecture:
            a classifier only where the model has one), or a blob whose shape
            does not fit its layer.

    The frozen-BN releases (`*_I3D_pretrain_*`, trained with the official
    `USE_AFFINE`) store each BN as an affine `x * _s + _b` without running
    statistics: such a BN gets mean 0 and variance `1 - epsilon`, which makes
    it that affine map. A 2D kernel `(C_out, C_in, H, W)` (the official ImageNet
    ResNets) for a `t x H x W` convolution is inflated as the official
    `initialize_master_gpu_model_params` does: `t` copies along time, divided by `t`.
    """
    if isinstance(blobs, str):
        blobs = read_caffe2_pickle(blobs)
    entries = caffe2_blob_map(model)
    blobs = _with_affine_statistics(blobs, [name for _, name, _ in entries])
    missing = [name for _, name, _ in entries
               if name not in blobs and not name.startswith(tuple(may_lack))]
    if missing and all(_NONLOCAL_BN.match(name) for name in missing) and any(
            name.startswith("nonlocal_conv") and name.endswith("_out_w") for name in blobs):
        # The official NONLOCAL.USE_BN: False of the frozen-BN non-local releases.
        raise ValueError(
            "The file's non-local blocks have no BN after their output convolution, the "
            f"blocks of {model.name!r} have one: the official frozen-BN non-local releases "
            "(i3d_nonlocal_*_I3D_pretrain_*) trained with NONLOCAL.USE_BN: False and res3's "
            "blocks on groups of 4 frames; build the model with nonlocal_use_bn=False, "
            "nonlocal_frames_per_group={'res3': 4}, affine_bn=True (--arch ..._affine; in a "
            "config model.nonlocal_use_bn: false, model.nonlocal_frames_per_group: {res3: 4}, "
            f"model.affine_bn: true). First BN blob the file lacks: {missing[0]!r}")
    if missing:
        raise ValueError(f"{len(missing)} blobs that {model.name!r} needs are not in the file, "
                         f"the first {missing[0]!r}: {', '.join(missing[:10])}")
    used = {name for _, name, _ in entries}
    unused = sorted(set(blobs) - used)
    # A model without a classifier (include_top=False) has no place for one.
    headless = not any(name.startswith("pred_") for name in used)
    parameters = [n for n in unused if n.endswith(_PARAMETER_SUFFIXES) and "momentum" not in n
                  and not (headless and n.startswith("pred_"))]
    if parameters and all(_NONLOCAL_BN.match(name) for name in parameters):
        raise ValueError(
            f"The file's non-local blocks have a BN after their output convolution, the blocks "
            f"of {model.name!r} have none (nonlocal_use_bn=False, --arch ..._affine): build it "
            f"with their BN. First BN blob without a place: {parameters[0]!r}")
    if parameters:
        # Before anything is assigned: R101's blobs hold every name R50
        # needs, a release with non-local blocks every name the model without them
        # needs; both loaded part of the file, exit 0, with a warning.
        raise ValueError(f"{len(parameters)} parameter blobs of the file have no place in "
                         f"{model.name!r} (another architecture?), the first {parameters[0]!r}: "
                         f"{', '.join(parameters[:10])}")
    values, damaged = [], []
    for variable, name, layout in entries:
        if name not in blobs:
            continue
        value = np.asarray(blobs[name])
        if layout == "conv" and value.ndim == 4 and len(variable.shape) == 5:
            frames = variable.shape[0]
            value = np.stack([value] * frames, axis=2) / frames
        value = _to_keras(value, layout)
        if value.shape != tuple(variable.shape):
            raise ValueError(f"Blob {name!r} has shape {np.shape(blobs[name])} (Caffe2's layout), "
                             f"which does not fit {variable.path} {tuple(variable.shape)} (Keras' "
                             f"layout) of {model.name!r}.")
        try:
            value = value.astype(variable.dtype)
        except (TypeError, ValueError):
            raise ValueError(f"Blob {name!r} holds {value.dtype} values, not numbers.") from None
        # A BN variance below 0 is NaN in the output too (found by a walk: converted, exit 0).
        if not np.isfinite(value).all() or (name.endswith("_riv") and (value < 0).any()):
            damaged.append(name)
        values.append((variable, value))
    if damaged:  # a damaged file converted to weights that score NaN, exit 0
        raise ValueError(f"{len(damaged)} blobs of the file hold NaN or infinite values, or "
                         f"a negative BN variance (a damaged file?), the first {damaged[0]!r}: "
                         f"{', '.join(damaged[:10])}")
    for variable, value in values:
        variable.assign(value)
    return unused


def _with_affine_statistics(blobs, needed):
    filled = dict(blobs)
    for name in needed:
        prefix = name[: -len("_rm")] if name.endswith("_rm") else None
        if prefix and f"{prefix}_s" in blobs and f"{prefix}_rm" not in blobs \
                and f"{prefix}_riv" not in blobs:
            scale = np.asarray(blobs[f"{prefix}_s"])
            filled[f"{prefix}_rm"] = np.zeros_like(scale)
            filled[f"{prefix}_riv"] = np.full_like(scale, 1.0 - BN_EPSILON)
    return filled


def _to_keras(value, layout):
    if layout == "conv" and value.ndim == 5:
        return np.transpose(value, (2, 3, 4, 1, 0))
    if layout == "dense":
        return value.reshape(value.shape[:2]).T
    return value


def model_for_arch(arch, classes=400, include_top=True):
    """The model an `--arch` name such as `i3d_nl5_r50` or `c2d_r101_32x2` stands for.

    The `_32x2` suffix (the released 32x2 and 128x1 models) selects
    `stem="32x2"`; without it (or with `_8x8`) the model is the 8x8 one.
    The `_affine` suffix is the frozen-BN non-local releases' blocks
    (`AFFINE_RELEASE`): `i3d_nl5_r50_affine` for `i3d_nonlocal_32x4_...`
    (32-frame clips), `i3d_nl5_r50_32x2_affine` for `i3d_nonlocal_128x1_...`
    (128-frame clips).
    """
    constructor, kwargs = _arch_spec(arch)
    return constructor(include_top=include_top, classes=classes if include_top else 400, **kwargs)


def _arch_spec(arch):
    """`(constructor, keyword arguments)` of an `--arch` name (see `model_for_arch`)."""
    match = ARCH_PATTERN.match(arch or "")
    if match is None:
        raise ValueError("`arch` must look like c2d_r50, i3d_nl5_r50, i3d_nl5_r50_32x2 "
                         "(c2d|i3d, optional _3x3x3, optional _nl<blocks>, _r50|_r101, "
                         "optional _8x8|_32x2, optional _affine). "
                         f"Received: arch={arch!r}")
    family, inflation, blocks, depth, stem, affine = match.groups()
    kwargs = {"nonlocal_blocks": int(blocks or 0), "stem": stem or "8x8"}
    layout = NONLOCAL_LAYOUTS[int(depth)].get(kwargs["nonlocal_blocks"])
    if kwargs["nonlocal_blocks"] and not layout:
        # Checked here so that a misspelt name fails before the file is read.
        raise ValueError("`_nl<blocks>` must be _nl1, _nl5 or _nl10 (the official layouts). "
                         f"Received: arch={arch!r}")
    if affine:
        if not layout:
            raise ValueError("`_affine` (the frozen-BN non-local releases) needs non-local "
                             f"blocks, _nl1, _nl5 or _nl10. Received: arch={arch!r}")
        kwargs.update(AFFINE_RELEASE)
        if "res3" in layout:
            kwargs["nonlocal_frames_per_group"] = {"res3": AFFINE_RES3_FRAMES_PER_GROUP}
    if family == "i3d":
        kwargs["inflation"] = inflation or "3x1x1"
    elif inflation:
        raise ValueError(f"C2D models have no inflation variant. Received: arch={arch!r}")
    return getattr(video_resnet, f"{family.upper()}ResNet{depth}"), kwargs


def convert_caffe2_weights(source, arch, destination, classes=None, overwrite=True):
    """Converts an official `.pkl` into a Keras `.weights.h5` for the `arch` model.

    `classes` defaults to the rows of the file's `pred_w`; a file without
    `pred_w` gives a model without the classifier (`include_top=False`).
    `overwrite=False` refuses an existing `destination` (Keras' `save_weights`
    replaces it, as this does by default). Returns `(model, unused blob names)`.
    """
    if not str(destination).endswith(".weights.h5"):
        raise ValueError("The destination must end with `.weights.h5`. "
                         f"Received: destination={destination!r}")
    _check_new(destination, overwrite)
    _arch_spec(arch)  # a misspelt name fails before the file is read
    blobs = read_caffe2_pickle(source)
    include_top = "pred_w" in blobs
    if include_top and np.ndim(blobs["pred_w"]) not in (2, 5):
        raise ValueError(f"The file's 'pred_w' has shape {np.shape(blobs['pred_w'])}, not the "
                         "(classes, features) of a classifier")
    file_classes = int(np.shape(blobs["pred_w"])[0]) if include_top else None
    if classes is not None and file_classes is not None and classes != file_classes:
        raise ValueError(f"The file's classifier has {file_classes} classes. "
                         f"Received: classes={classes}")
    model = model_for_arch(arch, classes=file_classes or 400, include_top=include_top)
    unused = load_caffe2_weights(model, blobs)
    # Imported here: the package, TensorFlow with it, is not needed to load weights.
    from nonlocal_keras.training import atomic

    atomic.remove_left_by_killed_writers(destination)  # a killed conversion's 12-200 MB
    _check_new(destination, overwrite)  # another process may have written it meanwhile
    with atomic.replace(destination, atomic.model_size(model)) as temporary:
        model.save_weights(temporary)
        h5_weights.write_block_names(temporary, model)
    return model, unused


def _check_new(destination, overwrite, how="overwrite=True"):
    if not overwrite and os.path.lexists(destination):
        raise FileExistsError(f"The destination exists (it may be a fine-tuned model's "
                              f"weights); {how} replaces it. Received: destination="
                              f"{str(destination)!r}")


def main(argv=None):
    """`nonlocal-convert-weights` (its console script goes through
    `nonlocal_keras.console`, which answers `--help` without TensorFlow)."""
    from nonlocal_keras import command_lines
    from nonlocal_keras.training.errors import FolderError, WeightsError

    args = command_lines.convert_weights_parser().parse_args(argv)
    from nonlocal_keras.training import atomic

    try:
        atomic.check_writable(args.destination)  # before the work, not after it
    except FolderError as error:
        raise FolderError(f"{error}. Received: destination={args.destination!r}") from None
    try:
        _check_new(args.destination, args.overwrite, how="--overwrite")
        model, unused = convert_caffe2_weights(args.source, args.arch, args.destination,
                                               classes=args.classes, overwrite=args.overwrite)
    except (ValueError, OSError) as error:  # a full disk is a FolderError already
        said = str(error)
        if isinstance(error, OSError) and error.filename == args.source:
            said = f"Cannot read the source ({error.strerror})."
        if "Received:" not in said:
            said = said.rstrip(".") + f". Received: source={args.source!r}, --arch={args.arch}"
        # The function's arguments are the command's options here.
        raise WeightsError(said.replace("Received: arch=", "Received: --arch=")) from None
    print(f"{model.name}: {len(caffe2_blob_map(model))} blobs loaded, {len(unused)} ignored"
          + (f" ({', '.join(unused[:8])}{', ...' if len(unused) > 8 else ''})" if unused else ""))
    print(f"Wrote {args.destination}")
    return 0


if __name__ == "__main__":
    from nonlocal_keras.training import cli

    sys.exit(cli.run("nonlocal-convert-weights", "nonlocal_keras.applications.caffe2_weights"))

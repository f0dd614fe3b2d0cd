"""What a Keras weights file (`.weights.h5`) holds, against what a model has.

Keras loads a file holding more than the model without a word (a run with
non-local blocks into the network without them: those weights are dropped),
and one holding less, or of other shapes, with an error that names neither
weight nor shape ("Example error message for object ...:", then nothing).
"""

import json
import os
import re
import tempfile

import h5py
import numpy as np

from nonlocal_keras.applications.hdf5_writes import (
    file_size,
    refusals_reported_once,
    release_failed_writer,
    room_refused,
)
from nonlocal_keras.utils import refused_errno


def layer_arrays(path):
    """`{h5 path: array}` of a weights file's layer weights (optimizer state left
    out). Raises OSError where `path` is no HDF5 file."""
    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: found.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) and name.startswith("layers/")
                          else None)
    return found


def model_arrays(model):
    """`layer_arrays` of the file `model.save_weights` writes: the h5 paths its
    weights take. That file is written in the temporary folder: where it takes
    no more (a full /tmp, a file size limit) an `OSError` says so (with the
    storage's errno; h5py's was a RuntimeError naming a temporary file), before
    the write where it can tell (`room_refused`), and h5py's finalisers of a
    failed write say nothing (`refusals_reported_once`)."""
    def cannot(code, reason):
        said = OSError(
            f"Cannot write a copy of the model's weights, which the check of the weights file "
            f"compares with, in the temporary folder {tempfile.gettempdir()!r} ({reason}); free "
            "space there, or set TMPDIR to another folder")
        said.errno = code
        return said

    refused = room_refused(tempfile.gettempdir(), file_size(model))
    if refused:
        raise cannot(*refused)
    with refusals_reported_once():
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "own.weights.h5")
                model.save_weights(path)
                return layer_arrays(path)
        except Exception as error:  # noqa: BLE001 - h5py's failed close is a RuntimeError
            code = refused_errno(error)
            if code is None:
                raise
            release_failed_writer(error)
            raise cannot(code, os.strerror(code)) from None


def variable_names(model, own):
    """h5 path -> the model's variable path, where a value identifies the variable
    (`own`: `model_arrays(model)`)."""
    by_value = {}
    for variable in model.weights:
        value = np.asarray(variable)
        by_value.setdefault((value.shape, value.tobytes()), []).append(variable.path)
    names, layers = {}, {}
    for path, value in own.items():
        matches = by_value.get((value.shape, value.tobytes()), [])
        if len(matches) == 1:
            names[path] = matches[0]
            layers[path.rsplit("/", 1)[0]] = matches[0].rsplit("/", 1)[0]
    # A weight whose value is not unique (a zero bias) is named by its layer.
    for path in own:
        group, index = path.rsplit("/", 1)
        if path not in names and group in layers:
            names[path] = f"{layers[group]} weight {index}"
    return names


def listed(paths):
    """The first five of `paths`, and how many more."""
    return f"{', '.join(paths[:5])}{f' and {len(paths) - 5} more' if len(paths) > 5 else ''}"


def mismatch(model, found, may_drop=()):
    """None where the layer arrays `found` (`layer_arrays`) are exactly `model`'s
    weights in place and shape, but those under the h5 paths `may_drop` that
    the model lacks; else words saying what differs."""
    own = model_arrays(model)
    wrong = [p for p in own if p in found and found[p].shape != own[p].shape]
    missing = [p for p in own if p not in found]
    unused = sorted(p for p in set(found) - set(own) if not p.startswith(tuple(may_drop)))
    if not (wrong or missing or unused):
        return None
    names = variable_names(model, own)
    if wrong:
        return f"{len(wrong)} weight(s) differ in shape: " + "; ".join(
            f"{names.get(p, p)}: {found[p].shape} in the file, {own[p].shape} in the model"
            for p in wrong[:5])
    return "; ".join(part for part in (
        block_bn_difference(own, found),
        unused and f"{len(unused)} weight array(s) of the file have no place in the model: "
                   f"{listed(unused)}",
        missing and f"{len(missing)} weight array(s) of the model are not in the file: "
                    f"{listed([names.get(p, p) for p in missing])}") if part)


# Keras names a block's arrays by its class: `layers/non_local3d_2/bn/vars/0`.
_BLOCK_BN = re.compile(r"^(layers/non_local[123]d(?:_\d+)?/)bn/")

# The HDF5 attribute in which our weights files name their non-local blocks.
BLOCKS_ATTRIBUTE = "nonlocal_keras.nonlocal_blocks"


def block_names(model):
    """The names of `model`'s non-local blocks (`res4_3_nonlocal`) in the order
    of its weights file, which places the n-th block of a class at
    `layers/non_local3d_<n>` whatever its name or place in the network."""
    from nonlocal_keras.layers.base_nonlocal import BaseNonLocal

    return [layer.name for layer in model.layers if isinstance(layer, BaseNonLocal)]


def write_block_names(path, model):
    """Record `block_names(model)` in the weights file `path` (`block_place_difference`)."""
    with h5py.File(path, "a") as handle:
        handle.attrs[BLOCKS_ATTRIBUTE] = json.dumps(block_names(model))


def block_place_difference(model, path):
    """Words saying that the non-local blocks of the weights file `path` sit
    elsewhere in the network than `model`'s, else None (also where the file
    does not say, as files written before 2026-12-07 and other programs'). The
    file places blocks by their order: blocks after res3_1, res3_3 and res4_1
    loaded into blocks after res3_0, res3_2 and res4_0 without a word."""
    try:
        with h5py.File(path, "r") as handle:
            theirs = json.loads(handle.attrs[BLOCKS_ATTRIBUTE])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    ours = block_names(model)
    if not isinstance(theirs, list) or theirs[:len(ours)] == ours[:len(theirs)]:
        return None  # the same places; blocks one side lacks are said elsewhere
    return (f"its non-local blocks are {_blocks(theirs)}, the model's {_blocks(ours)}, and a "
            "weights file places blocks by their order, so each would load into a block at "
            "another place: build the model with the file's blocks (model.nonlocal_blocks)")


def _blocks(names):
    shown = [name[:-len("_nonlocal")] if name.endswith("_nonlocal") else name for name in names]
    return ", ".join(shown) if shown else "none"


def block_bn_difference(own, found):
    """Words naming the argument where the non-local blocks of the file (`found`)
    and of the model (`own`, `model_arrays`) differ in the BN after W_z, the
    blocks being there in both; else None. The official frozen-BN non-local
    releases have none (NONLOCAL.USE_BN: False)."""
    def without_bn(have, lack):  # a block with its BN in `have`, without it in `lack`
        return any(p not in lack and f"{match.group(1)}w_z/vars/0" in lack
                   for p in have if (match := _BLOCK_BN.match(p)))

    if without_bn(own, found):
        return ("the file's non-local blocks have no BN after W_z, the model's have one: build "
                "it with nonlocal_use_bn=False (model.nonlocal_use_bn: false; the official "
                "frozen-BN releases, --arch ..._affine, also need nonlocal_frames_per_group="
                "{'res3': 4} and affine_bn=True)")
    if without_bn(found, own):
        return ("the file's non-local blocks have a BN after W_z, the model's have none: build "
                "it with nonlocal_use_bn=True (model.nonlocal_use_bn: true)")
    return None

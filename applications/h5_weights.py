"""What a Keras weights file (`.weights.h5`) holds, against what a model has.

Keras loads a file holding more than the model without a word (a run with
non-local blocks into the network without them: those weights are dropped),
and one holding less, or of other shapes, with an error that names neither
weight nor shape ("Example error message for object ...:", then nothing).
"""

import contextlib
import errno
import gc
import inspect
import math
import os
import re
import sys
import tempfile

import h5py
import numpy as np

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


def room_refused(folder, size):
    """`(errno, words)` where the file system of the existing `folder` has less
    than `size` bytes free for this user, or the process may write no file of
    that size (`ulimit -f`); else None. Asked before an HDF5 file is written:
    h5py raises when a disk fills during a write, but crashes the process (a
    segmentation fault inside its `close`, or when the failed file is let go)
    when it fills while the file's metadata is written; so it did at a file
    size limit (found by a walk)."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < size:
        return errno.EFBIG, (f"{os.strerror(errno.EFBIG)}: this process may write files of at "
                             f"most {_amount(limit)} (ulimit -f), about {_amount(size)} needed")
    try:
        stats = os.statvfs(folder)
    except OSError:  # a file system that cannot tell: the write itself will
        return None
    free = stats.f_bavail * stats.f_frsize
    # Some FUSE file systems (object stores) report a size of 0: they cannot tell either.
    if stats.f_blocks and free < size:
        return errno.ENOSPC, (f"{os.strerror(errno.ENOSPC)}: {_amount(free)} free, about "
                              f"{_amount(size)} needed")
    return None


def _amount(size):
    """Bytes as people read them: 512 bytes, 12.3 KB, 250.4 MB, 1.2 GB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def file_size(model):
    """About the bytes of `model.save_weights` / `model.save`'s file: Keras
    writes the optimiser's variables too (momentum: as many again), and each
    variable takes about 1 KB of HDF5 groups and attributes (2 KB counted)."""
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.weights) + list(getattr(optimizer, "variables", None) or [])
    return sum(math.prod(v.shape) * _itemsize(v.dtype) + 2048 for v in variables)


def _itemsize(dtype):
    try:
        return np.dtype(str(dtype)).itemsize
    except TypeError:  # a name NumPy does not know (bfloat16 without ml_dtypes): at most 4
        return 4


@contextlib.contextmanager
def refusals_reported_once():
    """A write the storage refused is said once, by the error its writer raises
    (`atomic.replace`'s, `model_arrays`'). An h5py file whose write failed fails
    again in its finaliser, which h5py (Cython) reports through both hooks: two
    tracebacks ("Exception ignored in ... __dealloc__") after the one-line error
    when the error was let go, or before it when Keras' own clean-up let the
    file go (a file size limit, found by a walk). Other reports pass."""
    hooks = sys.unraisablehook, sys.excepthook

    def unraisable(report):
        if refused_errno(report.exc_value) is None:
            hooks[0](report)

    def excepthook(kind, value, traceback):
        if refused_errno(value) is None:
            hooks[1](kind, value, traceback)

    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = hooks


def release_failed_writer(error):
    """Free what the failed write of `error` left open, inside
    `refusals_reported_once` (which keeps its finalisers quiet); else they run
    when the error goes, after the hooks are back. The writer's objects live in
    the finished frames of the error's traceback and in their callers that Keras
    leaves out of it (`f_back`), up to the first frame still running."""
    while error is not None:
        tb = error.__traceback__
        while tb is not None:
            _clear_finished(tb.tb_frame)
            tb = tb.tb_next
        error = error.__context__
    gc.collect()


def _clear_finished(frame):
    while frame is not None:
        # A generator's frame is left alone: clearing a suspended one would close it.
        if not frame.f_code.co_flags & _GENERATOR_FLAGS:
            try:
                frame.clear()
            except RuntimeError:  # still running, and so are its callers
                return
        frame = frame.f_back


_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


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

"""Writing an HDF5 file (a `.weights.h5`) where the storage may refuse it.

h5py raises when a disk fills during a write, but crashes the process (a
segmentation fault) when it fills while the file's metadata is written or when
the failed file is let go, and its finalisers then print "Exception ignored"
tracebacks. The room is asked first (`room_refused`), the write runs inside
`refusals_reported_once`, and a failed writer is let go there
(`release_failed_writer`). TensorFlow-free: the applications import it on JAX
and PyTorch too (`h5_weights`), and `training.atomic` for every weights file.
"""

import contextlib
import errno
import gc
import inspect
import math
import os
import sys

import numpy as np

from nonlocal_keras.utils import refused_errno


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

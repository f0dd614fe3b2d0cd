"""Files that appear whole or not at all: write to a temporary name, then rename.

A run folder is read by the next run after a kill, by TF Serving and by people:
none of them may see half a file. `replace(path)` hands out a temporary path
in the same folder (so the rename is atomic on POSIX file systems), with the
same ending as `path` (Keras checks `.weights.h5` / `.keras` endings), and
renames it over `path` only when the block ends without an exception.
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import uuid

# What writing an HDF5 file takes (TensorFlow-free there, for the applications too).
from nonlocal_keras.applications.hdf5_writes import (
    file_size,
    refusals_reported_once as _refusals_reported_once,
    release_failed_writer as _release_failed_writer,
    room_refused,
)
from nonlocal_keras.training.errors import FolderError
from nonlocal_keras.utils import refused_errno

# Fault injection for the kill-and-resume tests: "<part of a file name>:<n>"
# kills this process (SIGKILL) with the n-th such file written but not yet
# renamed into place, the moment a kill does the most harm.
KILL_AT_ENV = "NONLOCAL_KERAS_KILL_AT"
_renames = {}


def make_folder(path, argument, received=None, made=None):
    """`os.makedirs(path, exist_ok=True)`; where the system refuses, a `FolderError`
    naming `argument`, the setting the user gave (`received`, default `path`).

    `made`: a list to add the folders this call made to, the highest first
    (`remove_folders` removes them again); returned. Each is made with its own
    `os.mkdir`, so that one another process made meanwhile is not counted (it is
    that process's to remove); and where another process removed one meanwhile
    (a failed command removing the empty folders it had made), the missing ones
    are made again."""
    made = [] if made is None else made
    error = None
    for _ in range(_MAKE_TRIES):
        try:
            for folder in reversed(_missing_folders(path)):
                try:
                    os.mkdir(folder)
                except FileExistsError:
                    continue  # another process's, or a file: the next mkdir or the check says
                made.append(folder)
            if stat.S_ISDIR(os.stat(path).st_mode):
                return made
            error = OSError(errno.EEXIST, os.strerror(errno.EEXIST), path)  # a file is there
            break
        except FileNotFoundError as missing:  # a folder above (or it) went meanwhile
            error = missing
        except OSError as refused:
            error = refused
            break
    received = path if received is None else received
    raise FolderError(f"Cannot make the folder {error.filename or path!r} "
                      f"({error.strerror}). Received: {argument}={received!r}") from None


# Folders removed again as soon as made this many times in a row cannot be made
# (a bound, so that nothing loops for good).
_MAKE_TRIES = 10


def _missing_folders(path):
    """`path` and the folders above it that do not exist, the deepest first."""
    missing = []
    while path and not os.path.lexists(path):
        missing.append(path)
        above = os.path.dirname(path)
        if above == path:
            break
        path = above
    return missing


def make_folders(named):
    """Make each `(path, argument[, received])` folder (`make_folder`); returns
    the folders made. Where one cannot be made, those this call made are removed
    again before the error: a failed command leaves no folder behind."""
    made = []
    try:
        for path, *argument in named:
            make_folder(path, *argument, made=made)
    except BaseException:
        remove_folders(made)
        raise
    return made


def remove_folders(made):
    """Remove the folders `made` (`make_folder`'s list), the last made first, each
    only where empty: one that another process has put something in by now
    (another export's staging folder, say) stays, and so do those above it."""
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _nearest_folder(path):
    """The nearest existing folder above `path`; a `FolderError` where a file is
    in place of one (it was "[Errno 17] File exists: ...", or "Permission
    denied", naming neither what was to be written nor why)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise _cannot_write(path, f"{folder!r} is a file, not a folder")
    return folder


def _make_parent(path):
    """The folder `path` is to be written in, made where missing (under a folder
    of `folders_made_in`, in that folder wherever it is now)."""
    _nearest_folder(path)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        for root, descriptor in _MADE_IN.items():
            inside = os.path.relpath(parent, root)
            if inside == os.curdir:
                return  # never made again: moved away, the write fails
            if inside != os.pardir and not inside.startswith(os.pardir + os.sep):
                parts = inside.split(os.sep)
                for depth in range(1, len(parts) + 1):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(os.path.join(*parts[:depth]), dir_fd=descriptor)
                return
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise _cannot_write(path, error.strerror) from None


_MADE_IN = {}  # `folders_made_in`'s: absolute folder -> descriptor of it


@contextlib.contextmanager
def folders_made_in(folder, descriptor):
    """Inside it, `replace` makes a missing folder under `folder` (a run folder this
    process holds) in the folder that the open `descriptor` is, wherever it is
    now (`os.mkdir(dir_fd=...)`), and never makes `folder` itself: where it was
    moved away since the last look, its writes there fail rather than make it
    again, or a folder in it, at its old path (`run_state.writing_in_held`
    then says it was moved)."""
    folder = os.path.abspath(folder)
    before = _MADE_IN.get(folder)
    if os.mkdir in os.supports_dir_fd:  # else as before: made at its path
        _MADE_IN[folder] = descriptor
    try:
        yield
    finally:
        if before is None:
            _MADE_IN.pop(folder, None)
        else:
            _MADE_IN[folder] = before


def temporary_name(path):
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".tmp-{uuid.uuid4().hex[:8]}-"
    # A name near the file system's limit keeps its end, the ending Keras
    # checks (found by a walk: a legal 245-byte --output failed after the work).
    room = _name_max(folder) - len(prefix)
    encoded = os.fsencode(name)
    if len(encoded) > room:
        name = os.fsdecode(encoded[-room:])
    return os.path.join(folder, prefix + name)


def existing_folder(folder):
    """`folder`, or the nearest folder above it that exists (absolute)."""
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def _name_max(folder):
    """The longest name, in bytes, the file system of `folder` (or of the
    nearest folder above it that exists) takes."""
    try:
        return os.pathconf(existing_folder(folder), "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def is_temporary(name):
    return os.path.basename(name).startswith(".tmp-")


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def replace(path, size=None):
    """`with replace(path) as temporary:` write `temporary`; it becomes `path` at the end.

    When the storage refuses the write (disk full, quota, permissions), a
    `FolderError` names the file and the reason, and `path` is left as it was.
    `size`: the bytes the file will about take, checked against the free space
    first (see `check_room`).
    """
    check_file_path(path)
    _make_parent(path)
    if size is not None:
        check_room(path, size)
    temporary = temporary_name(path)
    try:
        with _refusals_reported_once():
            try:
                yield temporary
                _fsync(temporary)
                _maybe_kill(path)
                os.replace(temporary, path)
            except Exception as error:  # noqa: BLE001 - h5py raises a RuntimeError for a failed close
                refused = refused_errno(error)
                if refused is None:
                    raise
                _release_failed_writer(error)
                raise _cannot_write(path, os.strerror(refused)) from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def check_file_path(path):
    """A `FolderError` when `path`, a file to write, names a folder (the rename
    into place failed with IsADirectoryError, a traceback) or something else
    than a file: a device or a pipe (`--output /dev/stdout` was read as
    earlier results: endless zeros from /dev/full, a pipe waited on for good;
    and the rename would replace it). Also asked before a command's work, so
    that the mistake does not come at its end."""
    if os.path.isdir(path):
        raise FolderError(f"Cannot write the file {os.path.abspath(path)!r}: a folder is there; "
                          "name a file (in it, say)")
    if os.path.exists(path) and not os.path.isfile(path):
        raise FolderError(f"Cannot write the file {os.path.abspath(path)!r}: it is no file (a "
                          "device or a pipe); name a file")


def check_writable(path):
    """`check_file_path`, and a `FolderError` when the folder the file goes to
    (or the nearest one that exists) cannot be written: a read-only file system,
    no permission. Asked before a command's work: `nonlocal-evaluate` scored
    every video, then could not write its output, and printed nothing of it."""
    check_file_path(path)
    folder = _nearest_folder(path)
    longest = _name_max(folder)
    if len(os.fsencode(os.path.basename(path))) > longest:
        raise _cannot_write(path, f"{os.strerror(errno.ENAMETOOLONG)}: the file system takes "
                                  f"names of at most {longest} bytes")
    reason = why_not_writable(folder)
    if reason:
        raise _cannot_write(path, reason)


def why_not_writable(folder):
    """Why nothing new can be made in the existing `folder`, or None. Its
    permission bits first (no permission, a read-only file system), then a
    folder made and removed there, for what the bits do not tell: root's say
    yes under /proc or /sys, which take nothing (found by a walk: an export
    there failed after the whole evaluation)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return os.strerror(errno.EROFS if _read_only(folder) else errno.EACCES)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tmp-check-", dir=folder))
    except OSError as error:
        return error.strerror or str(error)
    return None


def _read_only(folder):
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _cannot_write(path, reason):
    return FolderError(f"Cannot write {os.path.abspath(path)!r} ({reason}); the file there "
                       "before, if any, is unchanged")


def check_room(path, size):
    """A `FolderError` when the file system of `path` has less than `size` bytes
    free for this user, or the process may write no file of that size (`ulimit
    -f`). Before an HDF5 file is written (`hdf5_writes.room_refused`)."""
    refused = room_refused(os.path.dirname(os.path.abspath(path)), size)
    if refused:
        raise _cannot_write(path, refused[1])


def model_size(model):
    """About the bytes of `model.save_weights` / `model.save`'s file (`hdf5_writes.file_size`)."""
    return file_size(model)


def _maybe_kill(path):
    target = os.environ.get(KILL_AT_ENV)
    if not target:
        return
    part, _, count = target.rpartition(":")
    if part and part in os.path.basename(path):
        _renames[part] = _renames.get(part, 0) + 1
        if _renames[part] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)


def write_text(path, text):
    with replace(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)


def write_json(path, value):
    """`value` as indented JSON; NaN and infinity are refused (they are not JSON)."""
    write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def remove_stale(folder):
    """Delete the temporary files a killed writer left in `folder`."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if is_temporary(name):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                os.remove(path)


@contextlib.contextmanager
def replace_folder(path):
    """`with replace_folder(path) as staging:` fill the new folder `staging`; it
    becomes `path` at the end, the folder that was there moved aside first and
    then deleted, so that a kill leaves `path` as it was or whole, never half
    written. `staging` is a hidden temporary folder beside `path`; those a killed
    writer of `path` left are removed first, after putting back the folder one
    had moved aside (killed between the two renames, it left no `path`)."""
    _make_parent(path)
    for left in _left_by_killed_writers(path):
        if left.endswith(_ASIDE) and not os.path.lexists(path):
            os.rename(left, path)
    remove_left_by_killed_writers(path)
    staging, aside = temporary_name(path), temporary_name(path) + _ASIDE
    os.makedirs(staging)
    try:
        with _held(staging):
            yield staging
            if os.path.isdir(path):
                os.rename(path, aside)
            os.rename(staging, path)
    finally:
        for folder in (staging, aside):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _held(folder):
    """An exclusive `flock` on `folder` while its writer lives: a second writer of
    the same path (two exports into one folder) deleted the first one's staging
    folder as a killed writer's. The kernel drops it when the process ends,
    `kill -9` included."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def is_held(path):
    """Whether another open file holds a `flock` on `path` (a file or folder)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False


_ASIDE = ".replaced"  # `replace_folder`'s old folder, between its two renames


def _left_by_killed_writers(path):
    """The temporary files or folders (`temporary_name`, or a folder moved aside
    by `replace_folder`) of `path` beside it."""
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    pattern = r"\.tmp-[0-9a-f]{8}-" + re.escape(name) + f"({re.escape(_ASIDE)})?"
    return [os.path.join(parent, left) for left in sorted(os.listdir(parent))
            if re.fullmatch(pattern, left)]


def entries(folder):
    """The paths of `folder` (normalised) and of everything under it; None where
    there is no folder."""
    if not os.path.isdir(folder):
        return None
    return {os.path.normpath(folder)} | {
        os.path.join(root, name) for root, folders, files in os.walk(folder)
        for name in folders + files}


def remove_new_entries(folder, before):
    """Remove what is under `folder` but not in `before` (the `entries` of it, or
    of a folder above it, then): the folder itself where it was not there."""
    if before is None or os.path.normpath(folder) not in before:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for root, folders, files in os.walk(folder, topdown=False):
        for name in files + folders:
            path = os.path.join(root, name)
            if path not in before:
                with contextlib.suppress(OSError):
                    (os.rmdir if name in folders else os.remove)(path)


def remove_left_by_killed_writers(path):
    """Delete the temporary files or folders of `path` beside it: a writer of
    `path` killed before its rename left them. For a path that one process at a
    time writes (a second writer's temporary would go too)."""
    for left in _left_by_killed_writers(path):
        if os.path.isdir(left):
            if not is_held(left):  # else a live writer's (`replace_folder`)
                shutil.rmtree(left, ignore_errors=True)
        else:
            os.remove(left)

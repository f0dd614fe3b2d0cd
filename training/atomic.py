"""Files that appear whole or not at all: write to a temporary name, then rename.

A run folder is read by the next run after a kill, by TF Serving and by people:
none of them may see half a file. `replace(path)` hands out a temporary path
in the same folder (so the rename is atomic on POSIX file systems), with the
same ending as `path` (Keras checks `.weights.h5` / `.keras` endings), and
renames it over `path` only when the block ends without an exception.
"""

import contextlib
import json
import os
import signal
import uuid

from nonlocal_keras.training.errors import FolderError

# Fault injection for the kill-and-resume tests: "<part of a file name>:<n>"
# kills this process (SIGKILL) with the n-th such file written but not yet
# renamed into place, the moment a kill does the most harm.
KILL_AT_ENV = "NONLOCAL_KERAS_KILL_AT"
_renames = {}


def make_folder(path, argument, received=None):
    """`os.makedirs(path, exist_ok=True)`; where the system refuses, a `FolderError`
    naming `argument`, the setting the user gave (`received`, default `path`)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        received = path if received is None else received
        raise FolderError(f"Cannot make the folder {error.filename or path!r} "
                          f"({error.strerror}). Received: {argument}={received!r}") from None


def temporary_name(path):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".tmp-{uuid.uuid4().hex[:8]}-{name}")


def is_temporary(name):
    return os.path.basename(name).startswith(".tmp-")


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def replace(path):
    """`with replace(path) as temporary:` write `temporary`; it becomes `path` at the end."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = temporary_name(path)
    try:
        yield temporary
        _fsync(temporary)
        _maybe_kill(path)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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

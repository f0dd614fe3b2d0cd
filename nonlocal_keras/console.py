"""The console scripts' entry points.

They live outside `nonlocal_keras.training` because importing that package
loads TensorFlow, and TensorFlow reads its C++ log level once, when it loads:
the `cuInit` and grappler "E"/"W" lines of a normal run on a machine without a
GPU are silenced here first, and TensorFlow's oneDNN kernels are asked for on
every x86-64 CPU (`nonlocal_keras.cpu`); a `TF_CPP_MIN_LOG_LEVEL` or
`TF_ENABLE_ONEDNN_OPTS` the user set wins. Keras is loaded without the
packages it imports for what no command uses (`UNUSED_IMPORTS`: 2-3 s of each start).

Ctrl-C while TensorFlow loads (the first seconds of every command) ends the
process at once, with the same one line and exit status as later: nothing has
been written yet, and a `KeyboardInterrupt` raised inside those imports printed
a traceback, or landed in a garbage-collection callback that only prints it,
and the command went on (seen: `nonlocal-export` interrupted 3.6 s after its
start exported anyway and exited 0). So does SIGTERM (`nonlocal-<cmd>:
terminated`, exit 143), and SIGHUP (`hung up`, exit 129: the terminal closed, an
SSH session dropped) unless it was ignored when the command started (`nohup`).
`cli.run` takes them over from there.

They leave with `os._exit` once the command has returned or raised and its
output is flushed: every file a command writes is complete by then (written
atomically), and an interpreter shutdown can hang on a `tf.data` pipeline whose
decoding threads are still blocked in Python (seen after Ctrl-C and after an
error in the first step) or on a multi-worker cluster's gRPC server whose peer
died.
"""

import errno
import json
import os
import signal
import stat
import sys
import threading
import traceback

from nonlocal_keras import command_lines, cpu


def _run(prog, module_name):
    closed = _occupy_closed_descriptors()
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (`bad\xffname.mp4`, held as a lone
        # surrogate) or a character the terminal's encoding lacks is printed as
        # an escape, not a UnicodeEncodeError (a traceback, after the work).
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    sys.stdout, sys.stderr = (OutlivesItsTerminal(sys.stdout, 1 in closed),
                              OutlivesItsTerminal(sys.stderr, 2 in closed))
    _interrupt_at_once(prog)
    status = 1
    try:
        # --help, a usage error and `--list` need no TensorFlow, which takes 3-4 s to load.
        answered = command_lines.answer_without_tensorflow(
            prog, [arg for arg in sys.argv[1:] if arg != "--debug"])
        if answered is not None:
            status = answered
        else:
            _prepare_tensorflow()
            from nonlocal_keras.training import cli

            status = cli.run(prog, module_name)
    except SystemExit as exit_:  # argparse: --help (0), a usage error (2), already printed
        status = _exit_status(exit_.code)
    except BaseException:  # noqa: BLE001 - a bug: show it, then leave
        traceback.print_exc()
    finally:
        # In `finally`: whatever the output does, the process must not reach the
        # interpreter's shutdown (see above).
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if status == 0 and sys.stdout.failed:
            status = _unwritten_output(prog, sys.stdout.failed)
        os._exit(status)


def _occupy_closed_descriptors():
    """The standard descriptors (0, 1, 2) that were closed (`cmd >&-`), each now
    /dev/null. The next file opened takes the lowest free number: a checkpoint
    opened as descriptor 2 would get TensorFlow's log lines. Python's
    `sys.stdout` is None there (a traceback at the first print, exit 120): it
    writes to the /dev/null now, and the command's output counts as unwritten."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if fd in closed or getattr(sys, name) is None:
            setattr(sys, name, open(fd, "w", closefd=False))
    return closed


def _unwritten_output(prog, reason):
    """The status of a command that did its work but could not write its
    output (a full disk behind `> file`, a closed stdout): 2, as a command
    whose output is lost has not done all it was asked (predictions, results,
    a listing), and a line on stderr where it still goes."""
    try:
        print(f"{prog}: error: its output on stdout could not be written ({reason}).",
              file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
    return 2


class OutlivesItsTerminal:
    """`sys.stdout` / `sys.stderr` that survive the terminal or pipe behind them.

    A run whose terminal closed (SIGHUP: it commits, then leaves), a job left
    running in the background of a shell that was closed (`cmd &`, then `exit`:
    no SIGHUP comes), or one whose `| tee` died, writes its progress to a
    terminal or pipe that is gone: every write fails (EIO, EPIPE). The
    error broke the training step that printed, and the process then hung in
    the interpreter's shutdown on the `tf.data` pipeline (seen: 0% CPU for good,
    holding the run folder's lock). Here the first such failure sends both
    streams to /dev/null (`leave_terminal`) and the work goes on; `lost` tells
    a command whose output is its work (`nonlocal-predict`) that it was not read.
    Any other failure (a full disk, a file size limit, a quota, a descriptor
    open for reading only: a traceback, exit 1, until 2026-12-07) sends this
    stream to /dev/null, the work goes on, and `failed` holds why (also for a
    stream closed at the start).
    """

    def __init__(self, stream, closed=False):
        self._stream = stream
        self.lost = False
        self.failed = "closed when the command started" if closed else None

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as error:
            self._gone(error)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except OSError as error:
            self._gone(error)

    def _gone(self, error):
        if error.errno in (errno.EIO, errno.EPIPE):
            self.lost = True
            leave_terminal()
        else:
            # A full disk, a file size limit, a quota; a descriptor open for
            # reading only (a wrapper script run with `2>&-` hands on its own
            # script file as descriptor 2: a walk's training stopped there).
            self.failed = error.strerror
            _to_dev_null(self._stream.fileno())
        try:
            self._stream.flush()  # what the failed write left in the buffer, now to /dev/null
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _exit_status(code):
    """The status `sys.exit(code)` gives: None is 0, a message is printed and is 1."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


STOPPING_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated",
                    signal.SIGHUP: "hung up"}
# Said once a process: a second Ctrl-C's watchdog and the main thread, handling
# the first one, both said it (seen in 1 of 6 double Ctrl-Cs).
_SAID = threading.Lock()


def say_stopped(prog, signum):
    """The one line of a Ctrl-C (SIGINT), a SIGTERM or a SIGHUP; returns the exit
    status, the shell's 128 + the signal's number. On a terminal it starts a
    line of its own: the terminal's `^C`, or a progress bar Keras redraws in
    place, has none. A stream that cannot take the line any more (a closed
    pipe) does not change the status."""
    if not _SAID.acquire(blocking=False):
        return 128 + signum
    start = "\n" if is_terminal(sys.stderr) else ""
    try:
        sys.stdout.flush()
        print(f"{start}{prog}: {STOPPING_SIGNALS[signum]}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
    return 128 + signum


def stopping_signals():
    """The signals a command stops on: SIGHUP only where it is not ignored
    (`nohup` ignores it so that the command outlives the terminal)."""
    return [signum for signum in STOPPING_SIGNALS
            if signum != signal.SIGHUP or signal.getsignal(signum) != signal.SIG_IGN]


def take_back_signals():
    """Reinstall this process's Python handlers of the stopping signals at the C level.

    TensorFlow's coordination service (started by `MultiWorkerMirroredStrategy`,
    in `nonlocal-train` and Model Garden's trainer alike) installs a C handler
    for SIGTERM, for its preemption notifier, that only records the signal: the
    command's own handling (commit, then leave) never ran (seen: a worker sent
    SIGTERM trained on to the run's end and exited 0). Call it after making such
    a strategy.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOPPING_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None:  # None: not installed from Python, left alone
            signal.signal(signum, handler)


def _to_dev_null(fd):
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def leave_terminal():
    """Point stdout and stderr at /dev/null unless they are files: the terminal
    (or the `tee` of a pipeline) behind them is gone (`OutlivesItsTerminal`), a
    closed SSH session's or a dead pipe's, and every write to it fails. A file
    still takes every line.
    """
    for fd in (1, 2):
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                _to_dev_null(fd)
        except OSError:
            pass


def is_terminal(stream):
    """Whether `stream` is a terminal (False for a file, a pipe, a closed stream)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _interrupt_at_once(prog):
    """Ctrl-C, SIGTERM or SIGHUP ends the process until a command installs its own
    handling (see above)."""
    def leave(signum, frame):
        os._exit(say_stopped(prog, signum))

    for signum in stopping_signals():
        signal.signal(signum, leave)


def _prepare_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cpu.use_onednn()
    _import_keras_without(UNUSED_IMPORTS + (("jax",) if _keras_backend() == "tensorflow" else ()))


# What Keras (and TensorFlow's tf.lite) import when they are installed, for what no
# command uses: scikit-learn for Keras' scikit-learn wrappers, matplotlib and
# OpenCV for its image plots, pandas for DataFrame inputs, and JAX for tf.lite's
# JAX converter (hidden only when Keras' backend is TensorFlow). Together 2-3 s of
# CPU of each command's start on 2 cores (Intel Xeon, 2026-12-06: scikit-learn
# 1.5-2 s, the others 0.8-2.4 s more). Each stays importable afterwards: the demo's digits
# come from scikit-learn, attention maps are drawn with matplotlib.
UNUSED_IMPORTS = ("sklearn", "matplotlib", "cv2", "pandas")


def _import_keras_without(packages):
    hidden = [name for name in packages if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError, which Keras catches
    try:
        import keras  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def _keras_backend():
    """The backend Keras will load, by its own rule: KERAS_BACKEND, else the
    "backend" of keras.json in KERAS_HOME (or ~/.keras, /tmp/.keras where the
    home folder is read-only), else TensorFlow. None when that file is unreadable."""
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    path = os.path.join(home, "keras.json")
    if not os.path.exists(path):
        return "tensorflow"
    try:
        with open(path) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return None


def train():
    _run("nonlocal-train", "nonlocal_keras.training.train")


def evaluate():
    _run("nonlocal-evaluate", "nonlocal_keras.training.evaluate")


def export():
    _run("nonlocal-export", "nonlocal_keras.training.export")


def predict():
    _run("nonlocal-predict", "nonlocal_keras.training.predict")


def demo():
    _run("nonlocal-demo", "nonlocal_keras.training.demo")


def convert_weights():
    _run("nonlocal-convert-weights", "nonlocal_keras.applications.caffe2_weights")


def serving_example():
    _run("nonlocal-serving-example", "nonlocal_keras.training.serving_example")


def train_detection():
    _run("nonlocal-train-detection", "nonlocal_keras.training.train_detection")

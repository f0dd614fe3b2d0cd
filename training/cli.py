"""What every console script shares: quiet logs, one-line user errors, exit codes, signals.

    nonlocal-<cmd> ... [--debug]

- A `UserError` (bad config, bad data, missing file, ...) prints
  `nonlocal-<cmd>: error: <message>` on stderr and exits 2, as argparse does
  for a bad flag. `--debug` (or `NONLOCAL_KERAS_DEBUG=1`) keeps the traceback.
- Ctrl-C (SIGINT) prints `nonlocal-<cmd>: interrupted` and exits 130, the
  shell's convention, within seconds. Outside training the interrupt is raised
  in the main thread as usual; inside `fit` (`StopWhenInterrupted`) the process
  leaves after the step in progress (raised anywhere, the interrupt can land in
  a finaliser, which only prints it). A watchdog
  thread ends the process if it is still alive `GRACE_SECONDS` later (a main
  thread blocked in a C++ call never sees the interrupt); a second Ctrl-C ends
  it at once. Training resumes from its last commit.
- SIGTERM (`kill`, a scheduler preempting the job) is handled the same way,
  with `nonlocal-<cmd>: terminated` and exit 143, except that inside `fit` the
  run's state is committed after the step in progress before the process
  leaves (`TERMINATE_GRACE_SECONDS` for the watchdog): a preempted run loses
  nothing it trained. More SIGTERMs or SIGHUPs (a wrapper such as `timeout`
  forwarding the one the process also got) do not cut the commit short; a
  Ctrl-C does. `nonlocal-train-detection` commits the same way within 10 steps
  (about 5 s of steps on one worker) of its Orbit loop in progress (`LoopSignals`).
- SIGHUP (the terminal closed: an SSH session dropped without tmux or `nohup`)
  is a SIGTERM that says `nonlocal-<cmd>: hung up` and exits 129; the writes to
  the vanished terminal, which fail, send stdout and stderr to /dev/null
  (`console.OutlivesItsTerminal`). Under `nohup`, which ignores SIGHUP, the
  command goes on.
- Any other exception is a bug: its traceback is printed and the exit status is 1.
- The command's temporary files go to a folder of its own
  (`<TMPDIR>/nonlocal-<cmd>-*`), removed when it returns, fails or is
  interrupted: the console scripts leave with `os._exit`, which skips the exit
  handlers through which TensorFlow deletes the source file it writes for each
  function autograph converts (13 files an evaluation of the README's quick
  start left behind before its input pipeline was built unconverted; Orbit's
  loop in the detection commands still is). A `kill -9` leaves the folder.
- absl's Python log is kept to warnings and above. TensorFlow's C++ log is
  silenced by the launchers in `nonlocal_keras.console`, which must act before
  TensorFlow loads (importing this package loads it); absl's C++ log gets the
  same level here (`absl_log_level_as_tensorflow`).
"""

import contextlib
import ctypes
import importlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import traceback

import keras

from nonlocal_keras.console import say_stopped, stopping_signals
from nonlocal_keras.training.errors import UserError

DEBUG_ENV = "NONLOCAL_KERAS_DEBUG"
GRACE_SECONDS = 5
# SIGTERM inside `fit` waits for the step in progress and a commit; a scheduler
# that preempts a job sends SIGKILL after its own grace (30 s for Slurm's and
# Kubernetes' defaults) anyway.
TERMINATE_GRACE_SECONDS = 60
INTERRUPTED = threading.Event()
TERMINATED = threading.Event()  # SIGTERM or SIGHUP
_TERMINATED_BY = [signal.SIGTERM]  # the first of them, for the line and the status
_AT_STEP_END = threading.Event()
_PROG = ["nonlocal"]  # the running console script's name, for the interrupt message
_TEMPORARY = []  # the running command's own temporary folder, see `run`


def _debugging(argv):
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


class StopWhenInterrupted(keras.callbacks.Callback):
    """Ends the process after the step during which Ctrl-C was pressed (exit
    130) or SIGTERM came (exit 143), the latter once `on_terminate()` (a commit
    of the run's state) has returned: a scheduler that preempts a job sends
    SIGTERM, and the steps since the last commit would be lost. `on_terminate`
    returns False at an epoch's last step: the process then leaves at the
    epoch's end. Goes after the callback that counts the steps and commits.

    Its `fit`s run inside `LoopSignals.steps`, where the handlers only record
    the signal (also between two `fit`s). The process leaves at once rather
    than unwinding `fit`: tearing down a `tf.data` pipeline
    whose decoders are mid-call can take seconds, and the run's state is its
    last commit, complete on disk.
    """

    def __init__(self, on_terminate=None, cluster=None):
        super().__init__()
        self.on_terminate = on_terminate
        self.cluster = cluster  # see `_terminating`

    def on_train_batch_end(self, batch, logs=None):
        if INTERRUPTED.is_set():
            _exit_now()
        # on_terminate() is False where the commit must wait for the epoch's end.
        if _terminating(self.cluster) and (self.on_terminate is None or self.on_terminate()):
            _leave(self.cluster)

    def on_epoch_end(self, epoch, logs=None):
        if _terminating(self.cluster):  # after the epoch's commit (the callbacks before this one)
            _leave(self.cluster)


class LoopSignals:
    """How a training loop other than Keras' `fit` (the Orbit controller of Model
    Garden's trainer) meets Ctrl-C, SIGTERM and SIGHUP, as `StopWhenInterrupted`
    has `fit` meet them. `commit()` saves what was trained (a checkpoint)."""

    @staticmethod
    @contextlib.contextmanager
    def steps(commit, cluster=None, check_after=True):
        """Around a block of training steps: inside it the handlers only record
        the signal; after it, Ctrl-C leaves, and SIGTERM or SIGHUP commits first
        (unless not `check_after`: the signal stays recorded). The watchdog still
        ends a block that outlasts its grace. Blocks may nest (Orbit's loops inside
        its `train`): the outermost one lets signals raise again."""
        outermost = not _AT_STEP_END.is_set()
        _AT_STEP_END.set()  # kept during the commit: a repeated SIGTERM must not cut it short
        try:
            yield
            if check_after:
                LoopSignals.check(commit, cluster)
        finally:
            if outermost:
                _AT_STEP_END.clear()

    @staticmethod
    def check(commit, cluster=None):
        """Inside `steps`, between two steps: Ctrl-C leaves; SIGTERM or SIGHUP
        commits, then leaves (`_terminating`); else nothing."""
        if INTERRUPTED.is_set():
            _exit_now()
        if _terminating(cluster):
            commit()
            _leave(cluster)

    @staticmethod
    @contextlib.contextmanager
    def evaluation(commit, cluster=None):
        """Around an evaluation between blocks of steps: interrupted at once as
        usual, after a commit of the steps trained when SIGTERM or SIGHUP came.
        In a cluster every worker takes part in the evaluation: a signal is only
        recorded, for the next `check`."""
        if cluster is not None:
            _AT_STEP_END.set()
            try:
                yield
            finally:
                _AT_STEP_END.clear()
            return
        try:
            yield
        except KeyboardInterrupt:
            if TERMINATED.is_set() and not INTERRUPTED.is_set():
                with LoopSignals.steps(commit):
                    pass  # commits, then leaves
            raise


def _terminating(cluster):
    """Whether a SIGTERM or SIGHUP stops the process now: at once, or with
    `cluster` (a `cluster_stop.ClusterStop`) at the step its workers agree on,
    each of them, whichever was terminated."""
    return TERMINATED.is_set() if cluster is None else cluster.due()


def _leave(cluster):
    """Leave for a SIGTERM or SIGHUP, once every worker of `cluster` is there."""
    if cluster is not None:
        cluster.leave_together()
    _exit_now()


def _handle_interrupts():
    """SIGINT, SIGTERM, SIGHUP: raise KeyboardInterrupt in the main thread (outside
    `fit`), and arm the watchdog.

    The C-level handler writes each signal to a wakeup pipe from whichever
    thread it lands on, so the watchdog thread sees it even while the main
    thread is blocked.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    handled = stopping_signals()

    def watch():
        # Counted here, not read from the events: the main thread's handler may
        # set them before this thread sees the first signal.
        seen, terminating = 0, False
        while True:
            number = os.read(read_end, 1)
            if not number or number[0] not in handled:
                continue
            if number[0] != signal.SIGINT:
                # A hangup comes twice (from the kernel and from the shell that
                # forwards it to its jobs), a SIGTERM too where a wrapper (`timeout`,
                # a batch script) forwards what it got to a process that got it as
                # well: only a Ctrl-C, a user insisting, ends the process before
                # the commit.
                if terminating:
                    continue
                terminating = True
            seen += 1
            _event(number[0]).set()
            if seen > 1:
                _exit_now()
            grace = GRACE_SECONDS if number[0] == signal.SIGINT else TERMINATE_GRACE_SECONDS
            threading.Timer(grace, _exit_now).start()

    threading.Thread(target=watch, name="interrupt-watchdog", daemon=True).start()
    for signum in handled:
        signal.signal(signum, lambda signum, frame: _on_signal(signum))


def _on_signal(signum):
    """The main thread's handler: record the signal; raise KeyboardInterrupt
    unless between two steps is where it is met (`LoopSignals.steps`)."""
    _event(signum).set()
    if not _AT_STEP_END.is_set():
        raise KeyboardInterrupt


def terminate_as_if_signalled():
    """This process stops as if it had got SIGTERM (another worker of its cluster did)."""
    _event(signal.SIGTERM).set()


def _event(signum):
    if signum == signal.SIGINT:
        return INTERRUPTED
    if not TERMINATED.is_set():
        _TERMINATED_BY[0] = signum
    return TERMINATED


def _stopped(prog):
    """Say why the command stopped (Ctrl-C unless only SIGTERM or SIGHUP came); its
    exit status."""
    only_terminated = TERMINATED.is_set() and not INTERRUPTED.is_set()
    return say_stopped(prog, _TERMINATED_BY[0] if only_terminated else signal.SIGINT)


def _exit_now():
    status = _stopped(_PROG[0])
    for folder in list(_TEMPORARY):  # no `finally` runs after os._exit
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(status)


def run(prog, module_name, argv=None):
    """Run `module_name.main(argv)` as console script `prog`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debugging(argv)
    argv = [arg for arg in argv if arg != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # TensorFlow's Python logger also prints each of its INFO lines through the root logger.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    _PROG[0] = prog
    if threading.current_thread() is threading.main_thread():
        _handle_interrupts()
    folder = tempfile.mkdtemp(prefix=f"{prog}-")
    previous, tempfile.tempdir = tempfile.tempdir, folder
    _TEMPORARY.append(folder)
    try:
        return _run_main(prog, module_name, argv, debug)
    finally:
        _remove(folder)
        _TEMPORARY.remove(folder)
        tempfile.tempdir = previous


def _remove(folder):
    """`folder` removed whatever signals come meanwhile: the command has already
    stopped, with its status (a re-walk: a further SIGTERM raised
    KeyboardInterrupt inside rmtree, a traceback)."""
    while True:
        try:
            shutil.rmtree(folder, ignore_errors=True)
            return
        except KeyboardInterrupt:
            continue


def _out_of_memory(error):
    """The line for TensorFlow's failure to allocate a tensor (a batch, a video's
    clips or a model larger than this machine's memory: the settings are the
    user's to lower), or None for any other error."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(error, tf.errors.ResourceExhaustedError):
        return None
    said = str(error.message).strip()
    if "allocat" not in said and "OOM" not in said:
        return None  # e.g. a full disk, which the commands name where they write
    # "{{function_node __wrapped__IteratorGetNext...}} Failed to allocate ... name: "
    first = re.sub(r"\{\{[^}]*\}\}|\s*name:\s*$", "", said.split("\n")[0])
    first = " ".join(first.split())
    return (f"Out of memory ({first}). Lower the batch size, the clips or crops per "
            "video or the clip size, or free memory, and run the command again.")


def _check_working_directory():
    """Found by a walk: in a deleted current directory a relative path's
    `os.path.abspath` was a FileNotFoundError traceback."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UserError("The current directory was deleted: no relative path can be read or "
                        "written from it. cd into a folder that exists and run the command "
                        "again.") from None


# `absl::SetMinLogLevel` as TensorFlow 2.20's libtensorflow_framework exports it
# (absl's LTS of 2025-01-27).
_ABSL_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"


def absl_log_level_as_tensorflow(level=None):
    """Give absl's C++ log the level `TF_CPP_MIN_LOG_LEVEL` (or `level`) gives
    TensorFlow's, for the whole process.

    Part of TensorFlow's C++ (XLA's, among others) logs through absl, which that
    variable does not reach: every `mixed_bfloat16` training on a CPU printed
    "WARNING: All log messages before absl::InitializeLog() is called are
    written to STDERR" and XLA's "Compiled cluster using XLA!" under the
    console scripts' level 3. Both scales run from 0 (info) to 3 (fatal only).
    Where TensorFlow's build has no such function, nothing changes.
    """
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") if level is None else level)
    except ValueError:
        return
    level = min(max(level, 0), 3)
    import tensorflow as tf

    path = os.path.join(os.path.dirname(tf.__file__), "libtensorflow_framework.so.2")
    try:
        set_min_log_level = getattr(ctypes.CDLL(path), _ABSL_SET_MIN_LOG_LEVEL)
    except (OSError, AttributeError):
        return
    set_min_log_level(ctypes.c_int(level))


def _run_main(prog, module_name, argv, debug):
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
        absl_log_level_as_tensorflow()
        _check_working_directory()
        status = importlib.import_module(module_name).main(argv)
    except UserError as error:
        if debug:  # the traceback, and still the user's mistake's line and status
            traceback.print_exc()
        print(f"{prog}: error: {str(error).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        return _stopped(prog)
    except Exception as error:
        memory = _out_of_memory(error)
        if memory:
            if debug:
                traceback.print_exc()
            print(f"{prog}: error: {memory}", file=sys.stderr)
            return 2
        if not (INTERRUPTED.is_set() or TERMINATED.is_set()):
            raise
        # The interrupt, raised inside a library that turned it into an error of
        # its own (TensorFlow's graph stack while a SavedModel is written: an
        # AssertionError, or Keras' TypeError from the layer being traced).
        if debug:
            traceback.print_exc()
        return _stopped(prog)
    if INTERRUPTED.is_set() or TERMINATED.is_set():
        # Came while the command was finishing: the interrupt was swallowed somewhere.
        return _stopped(prog)
    return 0 if status is None else int(status)

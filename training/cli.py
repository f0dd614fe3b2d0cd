"""What every console script shares: quiet logs, one-line user errors, exit codes, Ctrl-C.

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
- Any other exception is a bug: its traceback is printed and the exit status is 1.
- The command's temporary files go to a folder of its own
  (`<TMPDIR>/nonlocal-<cmd>-*`), removed when it returns, fails or is
  interrupted: the console scripts leave with `os._exit`, which skips the exit
  handlers through which TensorFlow deletes the source file it writes for each
  function autograph converts (13 files an evaluation of the README's quick
  start, left behind by every command). A `kill -9` leaves the folder.
- absl's Python log is kept to warnings and above. TensorFlow's C++ log is
  silenced by the launchers in `nonlocal_keras.console`, which must act before
  TensorFlow loads (importing this package loads it).
"""

import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading

import keras

from nonlocal_keras.console import say_interrupted
from nonlocal_keras.training.errors import UserError

DEBUG_ENV = "NONLOCAL_KERAS_DEBUG"
GRACE_SECONDS = 5
INTERRUPTED = threading.Event()
_AT_STEP_END = threading.Event()
_PROG = ["nonlocal"]  # the running console script's name, for the interrupt message
_TEMPORARY = []  # the running command's own temporary folder, see `run`


def _debugging(argv):
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


class StopWhenInterrupted(keras.callbacks.Callback):
    """Ends the process (exit 130) after the step during which Ctrl-C was pressed.

    While `fit` runs, the SIGINT handler only records the interrupt. The
    process leaves at once rather than unwinding `fit`: tearing down a
    `tf.data` pipeline whose decoders are mid-call can take seconds, and the
    run's state is its last commit, complete on disk.
    """

    def on_train_begin(self, logs=None):
        _AT_STEP_END.set()

    def on_train_end(self, logs=None):
        _AT_STEP_END.clear()

    def on_train_batch_end(self, batch, logs=None):
        if INTERRUPTED.is_set():
            _exit_now()


def _handle_interrupts():
    """SIGINT: raise KeyboardInterrupt in the main thread, and arm the watchdog.

    The C-level handler writes each signal to a wakeup pipe from whichever
    thread it lands on, so the watchdog thread sees it even while the main
    thread is blocked.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch():
        # Counted here, not read from INTERRUPTED: the main thread's handler may
        # set that flag before this thread sees the first signal.
        seen = 0
        while True:
            number = os.read(read_end, 1)
            if not number or number[0] != signal.SIGINT:
                continue
            seen += 1
            INTERRUPTED.set()
            if seen > 1:
                _exit_now()
            threading.Timer(GRACE_SECONDS, _exit_now).start()

    def raise_interrupt(signum, frame):
        INTERRUPTED.set()
        if not _AT_STEP_END.is_set():
            raise KeyboardInterrupt

    threading.Thread(target=watch, name="interrupt-watchdog", daemon=True).start()
    signal.signal(signal.SIGINT, raise_interrupt)


def _exit_now():
    say_interrupted(_PROG[0])
    for folder in list(_TEMPORARY):  # no `finally` runs after os._exit
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(130)


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
        shutil.rmtree(folder, ignore_errors=True)
        _TEMPORARY.remove(folder)
        tempfile.tempdir = previous


def _run_main(prog, module_name, argv, debug):
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
        status = importlib.import_module(module_name).main(argv)
    except UserError as error:
        if debug:
            raise
        print(f"{prog}: error: {str(error).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        say_interrupted(prog)
        return 130
    if INTERRUPTED.is_set():
        # Pressed while the command was finishing: the interrupt was swallowed somewhere.
        say_interrupted(prog)
        return 130
    return 0 if status is None else int(status)

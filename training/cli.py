"""What every console script shares: quiet logs, one-line user errors, exit codes.

    nonlocal-<cmd> ... [--debug]

- A `UserError` (bad config, bad data, missing file, ...) prints
  `nonlocal-<cmd>: error: <message>` on stderr and exits 2, as argparse does
  for a bad flag. `--debug` (or `NONLOCAL_KERAS_DEBUG=1`) keeps the traceback.
- Ctrl-C (SIGINT) prints one line and exits 130, the shell's convention.
- Any other exception is a bug: its traceback is printed and the exit status is 1.
- absl's Python log is kept to warnings and above. TensorFlow's C++ log is
  silenced by the launchers in `nonlocal_keras.console`, which must act before
  TensorFlow loads (importing this package loads it).
"""

import importlib
import logging
import os
import sys

DEBUG_ENV = "NONLOCAL_KERAS_DEBUG"


def _debugging(argv):
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(prog, module_name, argv=None):
    """Run `module_name.main(argv)` as console script `prog`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debugging(argv)
    argv = [arg for arg in argv if arg != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from nonlocal_keras.training.errors import UserError

    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)
        status = importlib.import_module(module_name).main(argv)
    except UserError as error:
        if debug:
            raise
        print(f"{prog}: error: {_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


def _message(error):
    # A multi-line message (a DatasetError listing rows) stays readable: its
    # first line is the summary and the rest follows, indented.
    text = str(error).strip() or type(error).__name__
    return text.replace("\n", "\n  ")

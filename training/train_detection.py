"""`nonlocal-train-detection`: Model Garden's vision trainer for the non-local Mask R-CNN.

The same command line as `official.vision.train` (`--experiment`,
`--config_file`, `--params_override`, `--mode`, `--model_dir`), with the
non-local backbone and the experiment `maskrcnn_resnetfpn_nonlocal_coco`
registered, plus:

- `--synthetic_coco_dir DIR`: generate the embedded synthetic-shapes COCO
  dataset in DIR (once) and train / evaluate on it;
- `--export_dir DIR`: after the `--mode` run, export the latest checkpoint
  of `--model_dir` with Model Garden's detection export module (`--mode eval
  --export_dir DIR` evaluates a trained model, then exports it; a `--model_dir`
  without a checkpoint, or with another model's, is a user error, not an
  untrained model evaluated and exported; `trainer.check_model_dir`).

It runs as the other console scripts do (`nonlocal_keras.training.cli`): a
user error (a bad flag, config file or override, missing data) prints one line
`nonlocal-train-detection: error: <message>` and exits with status 2
(`--debug` keeps the traceback); Ctrl-C leaves within 10 steps (an Orbit loop
runs 10 steps at a time), exit 130; SIGTERM and SIGHUP save a checkpoint of the
steps trained first (exit 143, 129; an evaluation is cut short, but in a
multi-worker run it ends first), so the same command resumes there.

Examples:
    nonlocal-train-detection --experiment maskrcnn_resnetfpn_nonlocal_coco \\
      --config_file training/configs/maskrcnn_nonlocal_tiny.yaml \\
      --synthetic_coco_dir /tmp/nl_coco --mode train_and_eval --model_dir /tmp/nl_maskrcnn
    nonlocal-train-detection ... --mode eval --export_dir /tmp/nl_maskrcnn/export
"""

import re

import tensorflow as tf
import yaml
from absl import app, flags

from nonlocal_keras.applications.mask_rcnn import trainer
from nonlocal_keras.training import cli
from nonlocal_keras.training.errors import ClusterError, ConfigError
from nonlocal_keras.training.run_state import DivergedError

PROG = "nonlocal-train-detection"
# What a wrong command line, experiment name, config or data path raises from
# absl, Model Garden's config overrides and TensorFlow's file access. Model
# Garden's registries raise a bare LookupError for an unknown name (an
# IndexError, also a LookupError, is a bug: it keeps its traceback).
USER_ERRORS = (flags.Error, ValueError, KeyError, OSError, tf.errors.NotFoundError)
GIN_CALL = re.compile(r"\s*In call to configurable '[^']*' \([^)]*\)")
# Model Garden's RecoveryCondition, a train action: "The loss value is NaN after
# training loop ..." or "... is 1e9, which is larger than the bound ...".
DIVERGED = re.compile(r"The loss value is (?:NaN|.* larger than the bound)")


def _is_user_error(error):
    return isinstance(error, USER_ERRORS) or type(error) is LookupError


def _user_error(error):
    # KeyError's str() is the repr of its argument.
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    # gin appends where it was raised ("In call to configurable 'Trainer' (<class ...>)").
    text = GIN_CALL.sub("", text)
    return ConfigError(" ".join(text.split()) or type(error).__name__)


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        raise _user_error(error) from error


def _run(argv):
    try:
        trainer.run(argv, signals=cli.LoopSignals)
    except tf.errors.UnavailableError as error:  # a peer of a multi-worker cluster left
        raise ClusterError.peer_left(error.message, "its latest checkpoint") from None
    except yaml.YAMLError as error:  # --params_override's (check_flags reads the files)
        raise ConfigError(f"--params_override is not valid YAML ({' '.join(str(error).split())})."
                          f" Received: --params_override={flags.FLAGS.params_override!r}") from None
    except RuntimeError as error:
        if not DIVERGED.search(str(error)):
            raise
        # Raised after a loop, before Orbit saves that loop's checkpoint.
        raise DivergedError(f"Training diverged ({error}): the run keeps its latest checkpoint, "
                            "if any. Lower trainer.optimizer_config.learning_rate (or warm up "
                            "longer) and train again.") from None
    except Exception as error:
        if not _is_user_error(error):
            raise
        overrides = flags.FLAGS.params_override
        if isinstance(error, tf.errors.NotFoundError) and overrides and overrides in str(error):
            # Model Garden reads what it cannot parse as pairs as a file's name:
            # "task.model.input_size=[256,256,3; No such file or directory".
            raise ConfigError("--params_override is neither KEY=VALUE pairs Model Garden can "
                              "read (a bracket or quote left open?) nor a YAML file that is "
                              f"there. Received: --params_override={overrides!r}") from None
        raise _user_error(error) from error


# absl's --help lists the flags of the main module only, which defines none
# here ("Try --helpfull"), and exits 1 as it does for a usage error.
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")
# Where the flags of Model Garden's trainer, and ours, are defined.
FLAG_MODULES = ("official.common.flags", "official.vision.train", trainer.__name__)


def _help(full):
    if full:
        return flags.FLAGS.get_help()
    return "\n".join([f"usage: {PROG} --experiment NAME --mode MODE --model_dir DIR [flags]",
                      "", __doc__.strip(), "",
                      *(flags.FLAGS.module_help(module) for module in FLAG_MODULES), "",
                      "--helpfull lists every flag (absl's and TensorFlow's too)."])


def main(argv):
    """The command's work, run by `cli.run` (see `nonlocal_keras.console`)."""
    trainer.define_flags()
    options = argv[:argv.index("--")] if "--" in argv else argv
    asked = [arg for arg in options if arg in HELP_FLAGS]
    if asked:
        print(_help("--helpfull" in asked))
        return 0
    try:
        app.run(_run, argv=[PROG, *argv], flags_parser=_parse)
    except SystemExit as exit_:  # absl leaves through sys.exit: --help, or the work's end
        return exit_.code


if __name__ == "__main__":
    from nonlocal_keras import console

    console.train_detection()

"""`nonlocal-predict`: the top classes of video files, with an exported SavedModel.

    nonlocal-predict video1.mp4 video2.mp4 --model exported/nl_c2d/1

(`--model exported/nl_c2d` takes its highest version, as TF Serving does.)

Each video goes through the evaluation pipeline of training (PyAV decoding of
only the frames the clips need, `num_clips` clips evenly spaced in time,
`num_crops` crops at shorter side `eval_scale`, normalisation: every setting
as `nonlocal-export` recorded it), the SavedModel's `serving_normalized`
signature scores every view, and the view scores are averaged, the paper's
multi-clip protocol. A progress bar with ETA goes to stderr (on a terminal;
else a line at every tenth of the videos). A file that
cannot be read (or is truncated) is reported on stderr by name and reason;
the exit status is 1 when any file failed. A path where no file is stops the
command before any prediction (exit 2).
"""

import os
import signal
import sys

import numpy as np
import tensorflow as tf

from nonlocal_keras import command_lines
from nonlocal_keras.training import data, evaluate, export, progress
from nonlocal_keras.training.errors import ConfigError, MissingFileError


class UnreadableVideos:
    """Collects what the decoding pipeline could not read, with the reason."""

    def __init__(self):
        self.reasons = {}

    def record(self, path, reason):
        self.reasons[path] = reason


def eval_options(metadata, num_clips=None, num_crops=None):
    """`eval_dataset` keyword arguments: the export's settings, clips/crops overridable."""
    return data.eval_options(dict(metadata, num_clips=num_clips or metadata["num_clips"],
                                  num_crops=num_crops or metadata["num_crops"]))


def predict_files(paths, saved_model_dir, num_clips=None, num_crops=None, batch_size=1,
                  verbose=1):
    """Mean view scores per video.

    Returns `(scores, failures, metadata)`: `(len(paths), classes)` scores
    (NaN rows for unreadable files), `{path: reason}` of those files, and the
    export's settings.
    """
    metadata = export.read_metadata(saved_model_dir)
    try:
        loaded = tf.saved_model.load(saved_model_dir)
    except (OSError, IndexError, ValueError, tf.errors.OpError) as error:
        # A copy cut short, a file missing; IndexError: variables cut short.
        message = getattr(error, "message", None) or str(error)
        raise ConfigError(f"The SavedModel cannot be loaded ({message.splitlines()[0]}); export "
                          f"it again. Received: model={saved_model_dir!r}") from None

    def scores_of(views, training=False):
        # Through `loaded`, which must outlive the call: it owns the variables.
        signature = loaded.signatures[export.NORMALIZED_SIGNATURE]
        return signature(**{export.INPUT_NAME: views})["probabilities"]

    num_classes = metadata["num_classes"]
    records = [data.VideoRecord(os.path.abspath(p), (0,), None) for p in paths]
    unreadable = UnreadableVideos()
    dataset = data.eval_dataset(records, num_classes, False, batch_size, skipped=unreadable,
                                **eval_options(metadata, num_clips, num_crops))
    bar = progress.VideoProgress(len(records), lambda: len(unreadable.reasons), verbose)
    scores, _ = evaluate.predict_videos(scores_of, dataset, len(records), num_classes, bar)
    failures = {path: unreadable.reasons[record.path]
                for path, record in zip(paths, records) if record.path in unreadable.reasons}
    return scores, failures, metadata


def shown(path):
    """`path` as printed: quoted and escaped where it holds a line break, a tab
    or another control character, so that each result stays one name (bytes
    that are not UTF-8 are escaped by the output stream: `bad\\udcffname.mp4`)."""
    return repr(path) if any(ord(c) < 32 or ord(c) == 127 for c in path) else path


def format_top_k(path, scores, class_names, top_k):
    """`path` then one `  rank. name  probability` line per class."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    lines = [shown(path)]
    for rank, index in enumerate(order, start=1):
        name = class_names[index] if class_names else str(index)
        lines.append(f"  {rank}. {name}  {scores[index]:.4f}")
    return "\n".join(lines)


def check_videos(paths):
    """Raises MissingFileError naming the first of `paths` where no file is (nothing,
    or a folder): a mistake in the command, such as a glob that matched nothing
    (the shell passes `*.mp4` on), where a file that cannot be decoded is
    reported beside the predictions of the others."""
    missing = [path for path in dict.fromkeys(paths) if not os.path.isfile(path)]
    if missing:
        what = ("is a folder" if os.path.isdir(missing[0]) else
                "is not a file" if os.path.exists(missing[0]) else "does not exist")  # a FIFO
        more = (f" (and {len(missing) - 1} more: {', '.join(map(repr, missing[1:4]))}"
                f"{', ...' if len(missing) > 4 else ''})") if len(missing) > 1 else ""
        raise MissingFileError(f"{missing[0]!r} {what}{more}: give video files. "
                               f"Received: VIDEO={missing[0]!r}")


def main(argv=None):
    args = command_lines.predict_parser().parse_args(argv)
    check_videos(args.videos)
    model = export.version_folder(args.model)
    if model != args.model:
        print(f"Using the SavedModel {model}", file=sys.stderr)
    scores, failures, metadata = predict_files(args.videos, model, args.num_clips,
                                               args.num_crops, args.batch_size,
                                               verbose=0 if args.no_progress else 1)
    if metadata.get("multi_label"):
        print("Multi-label model: each score is its class's own sigmoid (they do not sum to 1).",
              file=sys.stderr)
    for path, video_scores in zip(args.videos, scores):
        if path not in failures:
            print(format_top_k(path, video_scores, metadata.get("class_names"),
                               args.top_k or metadata.get("top_k", 5)))
    for path, reason in failures.items():
        print(f"{shown(path)}: cannot read video ({reason})", file=sys.stderr)
    if failures:
        failed = sum(path in failures for path in args.videos)  # a path given twice counts twice
        print(f"{failed} of {len(args.videos)} video(s) failed.", file=sys.stderr)
    sys.stdout.flush()  # a pipe's buffer: written now, or found unread
    if getattr(sys.stdout, "lost", False):
        # The predictions are the work, and their reader (a pipe's) left before
        # them: the status of a Unix tool that SIGPIPE stops, which `set -o pipefail` sees.
        return 128 + signal.SIGPIPE
    return 1 if failures else 0


if __name__ == "__main__":
    from nonlocal_keras.training import cli

    sys.exit(cli.run("nonlocal-predict", "nonlocal_keras.training.predict"))

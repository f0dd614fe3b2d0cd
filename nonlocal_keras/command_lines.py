"""The console scripts' command lines, read without loading TensorFlow.

Importing `nonlocal_keras.training` loads TensorFlow (3-4 s). The parsers live
here so that `nonlocal_keras.console` answers `--help`, a usage error and
`nonlocal-train --list` before that; each command's `main` parses with the same
parser. A command's description is its module's docstring, read from the file.
"""

import argparse
import ast
import importlib.util
import math
import os

from nonlocal_keras import synthetic_digits_cache

# The frames an export's `serving_default` takes: a side up to DCI 4K (4096 x
# 2160) either way round, and shapes up to 4:1 (32:9 ultra-wide is 3.6:1): the
# resized frame is then at most eval_scale x 4 * eval_scale.
DEFAULT_MAX_FRAME_SIDE = 4096
DEFAULT_MAX_ASPECT_RATIO = 4.0


def _at_least(minimum, kind=int):
    """An argparse `type`: a number of `kind` >= `minimum`, so that a value out
    of range is a usage error answered before TensorFlow loads, naming the flag."""
    what = f"{'an integer' if kind is int else 'a number'} >= {minimum}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}. Received: {text!r}")
        return value

    return parse


def _named(text):
    """An argparse `type` for a path or name: an empty one (`--output ""`, an
    unset shell variable) was taken as not given, its default used, exit 0."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must not be empty. Received: {text!r}")
    return text


def _training_folder():
    # find_spec imports the parent `nonlocal_keras` only, not the package itself.
    return importlib.util.find_spec("nonlocal_keras.training").submodule_search_locations[0]


def _parser(prog, module):
    with open(os.path.join(_training_folder(), module + ".py"), encoding="utf-8") as handle:
        description = ast.get_docstring(ast.parse(handle.read()), clean=False)
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def list_configs():
    """Shipped video experiments (the `maskrcnn_*` files belong to
    `nonlocal-train-detection` and use Model Garden's format)."""
    return sorted(f[:-5] for f in os.listdir(os.path.join(_training_folder(), "configs"))
                  if f.endswith(".yaml") and not f.startswith(("maskrcnn_", "keypoint")))


def _set(parser, example):
    # Several after one flag too (`--set a=1 b=2`): it was "unrecognized
    # arguments: b=2"; none of these commands takes a positional to swallow.
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help=f"override config fields, e.g. --set {example}")


def _no_progress(parser):
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (default: a bar on a terminal, else a "
                        "line at every tenth of the videos)")


def train_parser():
    parser = _parser("nonlocal-train", "train")
    parser.add_argument("--config", type=_named, help="experiment YAML file or shipped config name")
    _set(parser, "runtime.precision=mixed_float16")
    parser.add_argument("--restart", action="store_true",
                        help="move an existing run folder aside (<folder>.old-<time>) and start over")
    parser.add_argument("--list", action="store_true", help="list the shipped configs")
    return parser


def evaluate_parser():
    parser = _parser("nonlocal-evaluate", "evaluate")
    parser.add_argument("--run-dir", type=_named, help="a nonlocal-train output folder (its config.yaml "
                        "and final weights are used unless given)")
    parser.add_argument("--config", type=_named, help="experiment YAML (default: RUN_DIR/config.yaml)")
    parser.add_argument("--weights", type=_named, help="a .weights.h5 file or run folder "
                        "(default: RUN_DIR's final.weights.h5)")
    _set(parser, "data.num_clips=1")
    parser.add_argument("--output", type=_named, help="results JSON (default: RUN_DIR/eval.json or stdout)")
    _no_progress(parser)
    return parser


def export_parser():
    parser = _parser("nonlocal-export", "export")
    parser.add_argument("--config", type=_named, required=True, help="experiment YAML (e.g. RUN_DIR/config.yaml)")
    parser.add_argument("--checkpoint", type=_named, help="a .weights.h5 file or a run folder (default: "
                        "RUN_DIR/final.weights.h5, "
                        "else RUN_DIR/checkpoints/last.weights.h5, else the config's model.weights)")
    parser.add_argument("--output", type=_named, required=True,
                        help="BASE/<model_name>/<version>; BASE/<model_name> of an exported model: its "
                        "next version; BASE: the next version of the model's name")
    _set(parser, "data.eval_scale=256")
    parser.add_argument("--multi-label", action="store_true",
                        help="the model was trained multi-label (sigmoid scores, e.g. Charades)")
    parser.add_argument("--top-k", type=_at_least(1), default=5)
    parser.add_argument("--model-name", type=_named, help="folder name when --output is a base folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    parser.add_argument("--max-frame-side", type=_at_least(1), default=DEFAULT_MAX_FRAME_SIDE,
                        help="serving_default refuses frames with a longer side (pixels)")
    parser.add_argument("--max-aspect-ratio", type=_at_least(1, float), default=DEFAULT_MAX_ASPECT_RATIO,
                        help="serving_default refuses frames more elongated than this (longer/shorter)")
    return parser


def predict_parser():
    parser = _parser("nonlocal-predict", "predict")
    parser.add_argument("videos", type=_named, nargs="+", metavar="VIDEO")
    parser.add_argument("--model", type=_named, required=True,
                        help="a SavedModel version folder written by nonlocal-export, or "
                        "the model's folder above it (its highest version, as TF Serving)")
    parser.add_argument("--top-k", type=_at_least(1),
                        help="classes shown per video (default: the export's --top-k)")
    parser.add_argument("--num-clips", type=_at_least(1), help="default: the value recorded at export")
    parser.add_argument("--num-crops", type=_at_least(1), help="default: the value recorded at export")
    parser.add_argument("--batch-size", type=_at_least(1), default=1, help="videos per model call")
    _no_progress(parser)
    return parser


def demo_parser():
    parser = _parser("nonlocal-demo", "demo")
    parser.add_argument("--output-dir", type=_named, default="demo_output",
                        help="results.json, attention.png and examples/")
    parser.add_argument("--runs-dir", type=_named, default="runs", help="the two run folders")
    parser.add_argument("--export-dir", type=_named, default="exported", help="the SavedModel base folder")
    parser.add_argument("--print-data-dir", action="store_true",
                        help="write (or reuse) the dataset, print its folder and stop")
    parser.add_argument("--restart", action="store_true",
                        help="train both again (the old run folders are moved aside)")
    parser.add_argument("--data-dir", type=_named, default=None, help="dataset cache (default: "
                        "$NONLOCAL_KERAS_CACHE or ~/.cache/nonlocal_keras, then "
                        "synthetic_digits, or synthetic_digits-<train>-<test>-seed<seed> "
                        "for other sizes or seeds)")
    parser.add_argument("--seed", type=_at_least(0), default=synthetic_digits_cache.SEED)
    parser.add_argument("--num-train", type=_at_least(1), default=synthetic_digits_cache.NUM_TRAIN)
    parser.add_argument("--num-test", type=_at_least(1), default=synthetic_digits_cache.NUM_TEST)
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override fields of both demo configs")
    return parser


def convert_weights_parser():
    parser = argparse.ArgumentParser(
        prog="nonlocal-convert-weights",
        description="Convert an official video-nonlocal-net Caffe2 .pkl into Keras weights.")
    parser.add_argument("source", type=_named, help="the official .pkl file")
    parser.add_argument("destination", type=_named, help="the .weights.h5 file to write")
    parser.add_argument("--arch", required=True,
                        help="c2d_r50, c2d_nl5_r50, i3d_nl5_r50, i3d_nl5_r50_32x2 (the 32x2 and "
                             "128x1 releases), i3d_3x3x3_r50, ... _r101; _affine for the "
                             "frozen-BN non-local releases (i3d_nl5_r50_affine: 32x4, "
                             "i3d_nl5_r50_32x2_affine: 128x1)")
    parser.add_argument("--classes", type=_at_least(1), default=None,
                        help="classifier size (default: the file's pred_w rows)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing destination (refused otherwise: it may be "
                             "a fine-tuned model's weights)")
    return parser


def serving_example_parser():
    parser = _parser("nonlocal-serving-example", "serving_example")
    parser.add_argument("model", type=_named, help="the exported version folder <base>/<model_name>/<version> "
                        "(or <base>/<model_name>: its highest version)")
    parser.add_argument("--write", type=_named, metavar="DIR",
                        help="also write models.config and request.json here")
    return parser


def demo_data_dir(args):
    """The dataset folder of `nonlocal-demo`'s parsed `args`, for the demo and for
    its `--print-data-dir` answered here: the two must name the same one."""
    return args.data_dir or synthetic_digits_cache.default_cache_dir(
        args.num_train, args.num_test, args.seed)


PARSERS = {"nonlocal-train": train_parser, "nonlocal-evaluate": evaluate_parser,
           "nonlocal-export": export_parser, "nonlocal-predict": predict_parser,
           "nonlocal-demo": demo_parser, "nonlocal-convert-weights": convert_weights_parser,
           "nonlocal-serving-example": serving_example_parser}


def answer_without_tensorflow(prog, argv):
    """Parse `argv` as `prog` does; `--help` and a usage error leave here
    (SystemExit 0 or 2, as argparse does), and so do `nonlocal-train --list` and
    `nonlocal-demo --print-data-dir` once the dataset is written (return 0).
    Else None: the command must run."""
    if prog not in PARSERS:
        return None
    args = PARSERS[prog]().parse_args(argv)
    if prog == "nonlocal-train" and args.list:
        print("\n".join(list_configs()))
        return 0
    if prog == "nonlocal-demo" and args.print_data_dir:
        root = demo_data_dir(args)
        if synthetic_digits_cache.is_complete(root, args.num_train, args.num_test, args.seed):
            print(root)
            return 0
    return None

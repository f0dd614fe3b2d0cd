"""Where the demo's dataset is cached, and whether a folder holds it complete.

Without TensorFlow: `nonlocal-demo --print-data-dir` (the README's
`DATA=$(...)`) answers from here when the dataset is already written, instead
of loading TensorFlow first. `nonlocal_keras.training.synthetic_digits` writes it.
"""

import json
import os

# Bumped whenever the generated videos change, so that old caches are rewritten.
VERSION = 2
# `nonlocal-demo`'s dataset: training and test videos, and the seed.
NUM_TRAIN, NUM_TEST, SEED = 4000, 1000, 0


def default_cache_dir(num_train=NUM_TRAIN, num_test=NUM_TEST, seed=SEED):
    """`$NONLOCAL_KERAS_CACHE` or `~/.cache/nonlocal_keras`, plus the dataset
    name, which names other sizes or seeds too: one folder each, so that
    `nonlocal-demo --seed 1` does not rewrite the videos that runs trained on
    the default one name in their config.yaml."""
    root = os.environ.get("NONLOCAL_KERAS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "nonlocal_keras")
    name = "synthetic_digits"
    if (num_train, num_test, seed) != (NUM_TRAIN, NUM_TEST, SEED):
        name += f"-{num_train}-{num_test}-seed{seed}"
    return os.path.join(root, name)


def stamp_path(root):
    return os.path.join(root, "done.json")


def parameters(num_train, num_test, seed):
    """What `done.json` records: a folder is reused only for the same ones."""
    return {"version": VERSION, "num_train": num_train, "num_test": num_test, "seed": seed}


def is_complete(root, num_train, num_test, seed):
    """Whether `root` holds the dataset of these parameters, fully written. The
    stamp is written last, atomically; a stamp from before stamps were written
    atomically that a kill cut short reads as not complete."""
    try:
        with open(stamp_path(root), encoding="utf-8") as handle:
            return json.load(handle) == parameters(num_train, num_test, seed)
    except (OSError, ValueError):
        return False

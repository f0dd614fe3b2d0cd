"""Experiment configs: YAML files over `DEFAULTS`, `--set key=value` overrides.

An experiment file holds any subset of the sections below; missing fields
take the defaults (the paper's Kinetics recipe). Every field except the
free-form `model` section must exist in `DEFAULTS`, so a typo is an error
rather than a silently ignored setting. `model.name` names a constructor of
`nonlocal_keras.applications`; every other `model.*` field is passed to it as
a keyword argument (e.g. `model.nonlocal_blocks: 5`).
"""

import copy
import os

import yaml

from nonlocal_keras.training.errors import ConfigError
from nonlocal_keras.training.preprocessing import MEAN, STD
from nonlocal_keras.utils import is_positive_int

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

DEFAULTS = {
    "model": {
        "name": "C2DResNet50",
        # None (random), a `.weights.h5` file, or what the constructor accepts.
        "weights": None,
    },
    "data": {
        # A CSV (`path,label` or `path,labels`) or a folder per class.
        "train_csv": None,
        "val_csv": None,
        "num_classes": 400,
        # Needed when labels are names; a list or a text file, one per line.
        # When absent they are read from the training CSV (sorted).
        "class_names": None,
        "num_frames": 32,
        "sampling_rate": 2,
        "crop_size": 224,
        "train_scale": [256, 320],
        "flip": True,
        "eval_scale": 256,
        "num_clips": 10,
        "num_crops": 3,
        "mean": list(MEAN),
        "std": list(STD),
        # Keep decoded clips in memory after the first epoch (small data only).
        "cache_decoded": False,
        "num_parallel_calls": None,
    },
    "optimizer": {
        # SGD learning rate for `train.batch_size` clips (paper: 0.01 for 64).
        "learning_rate": 0.01,
        "momentum": 0.9,
        "nesterov": False,
        # L2 on convolution / dense kernels only (not BN, not biases).
        "weight_decay": 1e-4,
    },
    "schedule": {
        "epochs": 109,
        # None: one pass over the training set per epoch.
        "steps_per_epoch": None,
        # Step decay at these fractions of the run (paper: 150k, 300k of 400k).
        "boundaries": [0.375, 0.75],
        "decay": 0.1,
        "warmup_epochs": 0.0,
    },
    "train": {
        # Global batch, split across replicas.
        "batch_size": 64,
        "seed": 0,
        "eval_batch_size": 4,
    },
    "runtime": {
        "output_dir": "runs/experiment",
        # auto | default | mirrored | multi_worker | tpu
        "strategy": "auto",
        "tpu": "",
        # float32 | mixed_float16 | mixed_bfloat16
        "precision": "float32",
        # BackupAndRestore: "epoch" or a number of steps.
        "backup_freq": "epoch",
        "tensorboard": True,
        "verbose": 1,
        "steps_per_execution": 1,
    },
}


def _merge(base, update, path=""):
    for key, value in update.items():
        where = f"{path}{key}"
        if path == "" and key not in base:
            raise ConfigError(f"Unknown config section. Received: {where}={value!r}")
        if path == "model.":
            base[key] = value
        elif key not in base:
            raise ConfigError(f"Unknown config field. Received: {where}={value!r}")
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"Config section expects a mapping. Received: {where}={value!r}")
            _merge(base[key], value, where + ".")
        else:
            base[key] = value
    return base


def parse_override(text):
    """`"a.b=value"` -> `{"a": {"b": value}}`, the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"An override must look like key=value. Received: --set {text!r}")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"An override key must be section.field. Received: --set {text!r}")
    value = yaml.safe_load(raw) if raw.strip() else None
    nested = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def resolve_path(name):
    """A config path, or the name of a shipped config (`demo_digits_nl_c2d`)."""
    if os.path.isfile(name):
        return name
    shipped = os.path.join(CONFIG_DIR, name if name.endswith(".yaml") else name + ".yaml")
    if os.path.isfile(shipped):
        return shipped
    raise FileNotFoundError(
        f"No such config file or shipped config ({', '.join(list_configs())}). Received: config={name!r}")


def list_configs():
    """Shipped video experiments (the `maskrcnn_*` files belong to
    `nonlocal-train-detection` and use Model Garden's format)."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR)
                  if f.endswith(".yaml") and not f.startswith("maskrcnn_"))


def load_config(path=None, overrides=()):
    """Defaults, updated by the YAML file at `path`, then by `overrides` (`key=value`)."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        with open(resolve_path(path)) as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"A config file must hold a mapping. Received: config={path!r}")
        _merge(config, loaded)
    for text in overrides:
        _merge(config, parse_override(text))
    validate(config)
    return config


def _fail(field, value, expectation):
    raise ConfigError(f"`{field}` {expectation}. Received: {field}={value!r}")


def validate(config):
    data, runtime = config["data"], config["runtime"]
    for field in ("num_classes", "num_frames", "sampling_rate", "crop_size", "eval_scale",
                  "num_clips", "num_crops"):
        value = data[field]
        if not is_positive_int(value):
            _fail(f"data.{field}", value, "must be an integer >= 1")
    scale = data["train_scale"]
    if (not isinstance(scale, (list, tuple)) or len(scale) != 2 or scale[0] > scale[1]
            or scale[0] < data["crop_size"]):
        _fail("data.train_scale", scale, "must be [min, max] with crop_size <= min <= max")
    if data["eval_scale"] < data["crop_size"]:
        _fail("data.eval_scale", data["eval_scale"], "must be >= data.crop_size")
    if runtime["precision"] not in ("float32", "mixed_float16", "mixed_bfloat16"):
        _fail("runtime.precision", runtime["precision"],
              "must be float32, mixed_float16 or mixed_bfloat16")
    if runtime["strategy"] not in ("auto", "default", "mirrored", "multi_worker", "tpu"):
        _fail("runtime.strategy", runtime["strategy"],
              "must be auto, default, mirrored, multi_worker or tpu")
    backup = runtime["backup_freq"]
    if backup != "epoch" and not is_positive_int(backup):
        _fail("runtime.backup_freq", backup, "must be 'epoch' or a number of steps >= 1")
    schedule = config["schedule"]
    if not isinstance(schedule["epochs"], int) or schedule["epochs"] < 1:
        _fail("schedule.epochs", schedule["epochs"], "must be an integer >= 1")
    if any(not 0 < b < 1 for b in schedule["boundaries"]):
        _fail("schedule.boundaries", schedule["boundaries"], "must be fractions in (0, 1)")
    if config["train"]["batch_size"] < 1:
        _fail("train.batch_size", config["train"]["batch_size"], "must be >= 1")
    if not config["model"].get("name"):
        _fail("model.name", config["model"].get("name"), "must name a constructor")
    return config


def save_config(config, path):
    """Write the resolved config as YAML (next to the checkpoints)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)

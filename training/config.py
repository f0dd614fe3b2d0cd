"""Experiment configs: typed sections, YAML files over the defaults, `--set key=value`.

An experiment is an `Experiment` of six typed sections (`model`, `data`,
`optimizer`, `schedule`, `train`, `runtime`). A YAML file holds any subset of
them; missing fields take the defaults (the official release's 8x8 Kinetics
setting, from random weights, testing `crop_size` crops: the shipped configs
set the rest). Every
field's type and range is checked, and so are the restrictions between fields
(the clip length and the stem of the named ResNets, the crop and the scales),
with a `ConfigError` naming the field and the value received. `model.name`
names a constructor of `nonlocal_keras.applications`; every other `model.*`
field is passed to it as a keyword argument (e.g. `model.nonlocal_blocks: 5`).

The code reads the config as the plain nested dict `load_config` returns
(`config["data"]["num_frames"]`), which is also what `config.yaml` holds.
"""

import copy
import dataclasses
import math
import os
import re
import typing
from typing import List, Optional, Union

import yaml

from nonlocal_keras import command_lines
from nonlocal_keras.applications import MEAN, STD
from nonlocal_keras.training import atomic
from nonlocal_keras.training.errors import ConfigError, MissingFileError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

# The named ResNets of the paper, and the official clip settings: `8x8` (8
# frames every 8th, no temporal down-sampling before pool2) and `32x2` (32
# frames every 2nd, conv1 and pool1 halve time; also the 128-frame models of
# Table 2g). Either way res3..res5 see 4 frames (16 with 128-frame clips).
PAPER_RESNETS = ("C2DResNet50", "C2DResNet101", "I3DResNet50", "I3DResNet101")
STEM_FRAMES = {"8x8": (8,), "32x2": (32, 128)}
STEM_FRAMES_GROUPED = {"8x8": (8, 32), "32x2": (32, 128)}
DEFAULT_STEM = "8x8"
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class ModelConfig:
    # A constructor of nonlocal_keras.applications, or `package.module:function`.
    name: str = "C2DResNet50"
    # None (random), a `.weights.h5` file, a run folder, an official `.pkl`,
    # or what the constructor accepts ("imagenet").
    weights: Optional[str] = None


@dataclasses.dataclass
class DataConfig:
    # A CSV (`path,label` or `path,labels`) or a folder per class.
    train_csv: Optional[str] = None
    val_csv: Optional[str] = None
    # None: the number of class names (given, or read from the training data).
    num_classes: Optional[int] = None
    # A list, or a file: a name per line, numbered lines (UCF101's classInd.txt)
    # or JSON (a list, or names to ids). When absent and the
    # labels are names, they are read from the training CSV (sorted).
    class_names: Union[List[str], str, None] = None
    # The official 8x8 clip (8 frames, every 8th), which the constructors'
    # default stem expects; the paper's 32x2 clip needs `model.stem: 32x2`.
    num_frames: int = 8
    sampling_rate: int = 8
    crop_size: int = 224
    train_scale: List[int] = dataclasses.field(default_factory=lambda: [256, 320])
    flip: bool = True
    eval_scale: int = 256
    # The evaluation views' side; None: `crop_size`. Larger (the official
    # fully-convolutional test: 256, so 3 crops cover a 256 x 340 frame): the
    # classifier scores every `crop_size`-sized window of the last feature map
    # and the softmax scores are averaged (`models.evaluation_model`).
    eval_crop_size: Optional[int] = None
    num_clips: int = 10
    num_crops: int = 3
    mean: List[float] = dataclasses.field(default_factory=lambda: list(MEAN))
    std: List[float] = dataclasses.field(default_factory=lambda: list(STD))
    # Keep decoded clips in memory after the first epoch (small data only).
    cache_decoded: bool = False
    num_parallel_calls: Optional[int] = None


@dataclasses.dataclass
class OptimizerConfig:
    # SGD learning rate for `train.batch_size` clips (paper: 0.01 for 64).
    learning_rate: float = 0.01
    momentum: float = 0.9
    # The official SOLVER.NESTEROV (the paper does not say).
    nesterov: bool = True
    # The official SOLVER.SCALE_MOMENTUM: at a rate change the momentum is
    # multiplied by new / old rate (`optim.SGDWithL2`).
    scale_momentum: bool = True
    # L2 on every parameter but BatchNorm's (official WEIGHT_DECAY_BN: 0): `optim.is_decayed`.
    weight_decay: float = 1e-4


@dataclasses.dataclass
class ScheduleConfig:
    epochs: int = 109
    # None: one pass over the training set per epoch.
    steps_per_epoch: Optional[int] = None
    # Step decay at these fractions of the run (paper: 150k, 300k of 400k).
    boundaries: List[float] = dataclasses.field(default_factory=lambda: [0.375, 0.75])
    decay: float = 0.1
    warmup_epochs: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    # Global batch, split across replicas.
    batch_size: int = 64
    seed: int = 0
    eval_batch_size: int = 4
    # After training: the BatchNorm statistics recomputed over this many training
    # steps (the official COMPUTE_PRECISE_BN; `precise_bn.py`); 0: the moving averages.
    precise_bn_steps: int = 0


@dataclasses.dataclass
class RuntimeConfig:
    output_dir: str = "runs/experiment"
    # auto | default | mirrored | multi_worker | tpu
    strategy: str = "auto"
    tpu: str = ""
    # float32 | mixed_float16 | mixed_bfloat16
    precision: str = "float32"
    # How often the resume state is committed: "epoch" or a number of steps.
    backup_freq: Union[str, int] = "epoch"
    tensorboard: bool = True
    # 0 silent, 1 progress bar, 2 lines (Keras' `verbose`, and a line at each tenth
    # of an epoch); "auto": 1 when stdout is a terminal, else 2 (`runtime.keras_verbose`).
    verbose: Union[str, int] = "auto"
    # Must divide the epoch's steps (`train._check_steps_per_execution`).
    steps_per_execution: int = 1


@dataclasses.dataclass
class Experiment:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)


# The defaults as a plain dict (what `load_config` starts from).
DEFAULTS = dataclasses.asdict(Experiment())
SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Experiment)}


def _field_types(section):
    return typing.get_type_hints(SECTIONS[section])


def _merge(base, update, path=""):
    for key, value in update.items():
        where = f"{path}{key}"
        if path == "" and key not in base:
            raise ConfigError(f"Unknown config section (one of {', '.join(base)}). "
                              f"Received: {where}={value!r}")
        if path == "model.":
            base[key] = value
        elif key not in base:
            raise ConfigError(f"Unknown config field. Received: {where}={value!r}")
        elif path == "":
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
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"An override key must be section.field. Received: --set {text!r}")
    try:
        value = yaml.load(raw, Loader=_Numbers) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"The value is not valid YAML ({_first_line(error)}). "
                          f"Received: --set {text!r}") from None
    if re.search(r"(?:^|\s)#", raw) and "#" not in str(value):
        # Found by a walk: `runtime.output_dir=runs/exp #3` trained into runs/exp.
        raise ConfigError("The value holds a YAML comment (a # after a space), which YAML "
                          "drops with what follows it: quote the value "
                          f"(--set '{key}=\"{raw.strip()}\"'). Received: --set {text!r}")
    return {parts[0]: {parts[1]: value}}


def resolve_path(name):
    """A config path, or the name of a shipped config (`demo_digits_nl_c2d`)."""
    if os.path.isfile(name):
        return name
    if os.path.exists(name):  # a folder, a pipe, /dev/null: "no such file" of what is there
        raise MissingFileError(f"{name!r} is not a config file (a YAML file, or a shipped "
                               f"config's name: {', '.join(list_configs())}). "
                               f"Received: config={name!r}")
    shipped = os.path.join(CONFIG_DIR, name if name.endswith(".yaml") else name + ".yaml")
    if os.path.isfile(shipped) and os.path.basename(shipped)[:-5] not in list_configs():
        # Model Garden's format: it failed as an unknown field of this one.
        raise ConfigError(f"{name!r} is a config of nonlocal-train-detection (Model Garden's "
                          f"format): run it with that command. Received: config={name!r}")
    if os.path.isfile(shipped):
        return shipped
    raise MissingFileError(
        f"No such config file or shipped config ({', '.join(list_configs())}). Received: config={name!r}")


list_configs = command_lines.list_configs


def load_config(path=None, overrides=()):
    """Defaults, updated by the YAML file at `path`, then by `overrides` (`key=value`);
    type-checked and validated (see `validate`)."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        resolved = resolve_path(path)
        try:
            with open(resolved, encoding="utf-8") as handle:
                loaded = yaml.load(handle, Loader=_UniqueKeys)
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"Cannot read the config file ({_first_line(error)}). "
                              f"Received: config={path!r}") from None
        if loaded is None:
            # An editor's empty save trained the defaults (109 epochs of Kinetics).
            raise ConfigError(f"The config file is empty. Received: config={path!r}")
        if not isinstance(loaded, dict):
            raise ConfigError(f"A config file must hold a mapping. Received: config={path!r}")
        _merge(config, loaded)
    for text in overrides:
        _merge(config, parse_override(text))
    return validate(config)


class _Numbers(yaml.SafeLoader):
    """YAML's safe loader (YAML 1.1, as `yaml.safe_dump` writes a run's
    config.yaml) without its two number forms nobody means in a config:
    `batch_size: 016` was octal (14) and is 16; `1:30` was sexagesimal (90) and
    is the text '1:30' (which a number field then refuses). `08`, `1e-3` and
    the rest read as before, so config.yaml files written before read the same."""

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node).replace("_", "")
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        base = {"0b": 2, "0x": 16}.get(digits[:2].lower(), 10)
        try:
            return sign * int(digits[2:] if base != 10 else digits, base)
        except ValueError:  # an explicit `!!int 1.5`
            raise yaml.constructor.ConstructorError(
                None, None, f"{text!r} is not an integer", node.start_mark) from None


_Numbers.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
# PyYAML's YAML 1.1 patterns without their sexagesimal forms.
_Numbers.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Numbers.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
_Numbers.add_constructor("tag:yaml.org,2002:int", _Numbers.construct_yaml_int)


class _UniqueKeys(_Numbers):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps
    the last one without a word: a setting written twice, one of them forgotten)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice, on line "
                    f"{key_node.start_mark.line + 1}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _fail(field, value, expectation):
    raise ConfigError(f"`{field}` {expectation}. Received: {field}={value!r}")


def _coerce(field, value, annotation):
    """`value` as `annotation` says, or a ConfigError naming `field`.

    Integers are accepted where a float is expected, and so are strings that
    read as one: YAML 1.1 reads `1e-3` (no dot) as a string.
    """
    origin = typing.get_origin(annotation)
    if origin is Union:
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(field, value, option)
            except ConfigError:
                continue
        _fail(field, value, f"must be {_describe(annotation)}")
    if origin in (list, List):
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            _fail(field, value, f"must be {_describe(annotation)}")
        return [_coerce(field, v, item) for v in value]
    if annotation is bool:
        if not isinstance(value, bool):
            _fail(field, value, "must be true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(field, value, "must be an integer")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(field, value, "must be a number")
        # `nan` passes every range check (its comparisons are all false) and
        # `.inf` the lower bounds: a run would train to NaN and fail at its end.
        if not math.isfinite(value):
            _fail(field, value, "must be a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            _fail(field, value, "must be a string")
        return value
    raise TypeError(f"No check for {annotation!r} ({field})")


def _describe(annotation):
    origin = typing.get_origin(annotation)
    if origin is Union:
        return " or ".join("null" if a is type(None) else _describe(a)
                           for a in typing.get_args(annotation))
    if origin in (list, List):
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return "a list of " + plural[typing.get_args(annotation)[0]]
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[annotation]


def _check_types(config):
    model = config["model"]
    for field, annotation in _field_types("model").items():
        model[field] = _coerce(f"model.{field}", model.get(field), annotation)
    for section in list(SECTIONS)[1:]:
        for field, annotation in _field_types(section).items():
            where = f"{section}.{field}"
            config[section][field] = _coerce(where, config[section][field], annotation)


def _at_least(config, field, minimum, allow_none=False):
    section, name = field.split(".")
    value = config[section][name]
    if value is None and allow_none:
        return
    if value < minimum:
        _fail(field, value, f"must be >= {minimum}")


def validate(config):
    """Check every field's type and range and the restrictions between fields.

    Returns the config with numbers normalised (`1e-3` given as a string
    becomes a float). Raises `ConfigError` naming the field(s) and value(s).
    """
    _check_types(config)
    data, schedule, optimizer, runtime = (config["data"], config["schedule"],
                                          config["optimizer"], config["runtime"])
    if not config["model"]["name"]:
        _fail("model.name", config["model"]["name"], "must name a constructor")
    for field in ("num_frames", "sampling_rate", "crop_size", "eval_scale", "num_clips",
                  "num_crops"):
        _at_least(config, f"data.{field}", 1)
    _at_least(config, "data.num_classes", 1, allow_none=True)
    _at_least(config, "data.num_parallel_calls", 1, allow_none=True)
    scale = data["train_scale"]
    if len(scale) != 2 or scale[0] > scale[1] or scale[0] < data["crop_size"]:
        _fail("data.train_scale", scale,
              f"must be [min, max] with data.crop_size ({data['crop_size']}) <= min <= max")
    if data["eval_scale"] < data["crop_size"]:
        _fail("data.eval_scale", data["eval_scale"],
              f"must be >= data.crop_size ({data['crop_size']})")
    eval_crop = data["eval_crop_size"]
    if eval_crop is not None and not data["crop_size"] <= eval_crop <= data["eval_scale"]:
        _fail("data.eval_crop_size", eval_crop, f"must be in [data.crop_size, data.eval_scale] "
              f"= [{data['crop_size']}, {data['eval_scale']}] (or null: data.crop_size)")
    for field in ("mean", "std"):
        if len(data[field]) != 3:
            _fail(f"data.{field}", data[field], "must hold 3 numbers (R, G, B)")
    if min(data["std"]) <= 0:
        _fail("data.std", data["std"], "must be > 0 for every channel")
    if data["class_names"] == []:  # was taken as not given, without a word
        _fail("data.class_names", data["class_names"], "must name the classes (leave it out, "
              "or null, for class ids or the training labels' own names)")
    if isinstance(data["class_names"], list) and (
            len(set(data["class_names"])) != len(data["class_names"])
            or not all(n.strip() for n in data["class_names"])):
        _fail("data.class_names", data["class_names"], "must be distinct, non-empty names")

    if optimizer["learning_rate"] <= 0:
        _fail("optimizer.learning_rate", optimizer["learning_rate"], "must be > 0")
    if not 0 <= optimizer["momentum"] < 1:
        _fail("optimizer.momentum", optimizer["momentum"], "must be in [0, 1)")
    if optimizer["weight_decay"] < 0:
        _fail("optimizer.weight_decay", optimizer["weight_decay"], "must be >= 0")

    _at_least(config, "schedule.epochs", 1)
    _at_least(config, "schedule.steps_per_epoch", 1, allow_none=True)
    boundaries = schedule["boundaries"]
    if any(not 0 < b < 1 for b in boundaries) or any(
            b >= c for b, c in zip(boundaries, boundaries[1:])):
        _fail("schedule.boundaries", boundaries, "must be increasing fractions of the run in (0, 1)")
    if not 0 < schedule["decay"] <= 1:
        _fail("schedule.decay", schedule["decay"], "must be in (0, 1]")
    if not 0 <= schedule["warmup_epochs"] < schedule["epochs"]:
        _fail("schedule.warmup_epochs", schedule["warmup_epochs"],
              f"must be in [0, schedule.epochs={schedule['epochs']})")

    _at_least(config, "train.batch_size", 1)
    _at_least(config, "train.eval_batch_size", 1)
    _at_least(config, "train.precise_bn_steps", 0)
    if not 0 <= config["train"]["seed"] < 2**32:  # NumPy's and Keras' seed range
        _fail("train.seed", config["train"]["seed"], "must be in [0, 2**32)")

    if not runtime["output_dir"].strip():
        _fail("runtime.output_dir", runtime["output_dir"], "must name a folder")
    if runtime["strategy"] not in STRATEGIES:
        _fail("runtime.strategy", runtime["strategy"], f"must be {', '.join(STRATEGIES)}")
    if runtime["precision"] not in PRECISIONS:
        _fail("runtime.precision", runtime["precision"], f"must be {', '.join(PRECISIONS)}")
    backup = runtime["backup_freq"]
    if backup != "epoch" and (isinstance(backup, str) or backup < 1):
        _fail("runtime.backup_freq", backup, "must be 'epoch' or a number of steps >= 1")
    verbose = runtime["verbose"]
    if verbose != "auto" and (isinstance(verbose, str) or verbose not in (0, 1, 2)):
        _fail("runtime.verbose", verbose, "must be 'auto', 0, 1 or 2")
    _at_least(config, "runtime.steps_per_execution", 1)
    _check_stem(config)
    _expand_home(config)
    return config


# Fields that name the files a run reads (`model.weights` may also be a keyword
# such as "imagenet", `data.class_names` a list).
INPUT_FIELDS = (("data", "train_csv"), ("data", "val_csv"), ("data", "class_names"),
                ("model", "weights"))


def _expand_home(config):
    # `--set runtime.output_dir=~/runs/x` reaches us with its `~` (a shell expands
    # a word's leading `~` only), which made a folder `~` in the working directory.
    for section, field in INPUT_FIELDS + (("runtime", "output_dir"),):
        value = config[section].get(field)
        if isinstance(value, str) and value.startswith("~"):
            config[section][field] = os.path.expanduser(value)


def _check_stem(config):
    """The named ResNets must see the paper's clip: the stem and clip length agree."""
    model, frames = config["model"], config["data"]["num_frames"]
    module, _, name = model["name"].rpartition(":")  # also `nonlocal_keras.applications:C2DResNet50`
    if name not in PAPER_RESNETS or not (module == "" or module.startswith("nonlocal_keras")):
        return
    stem = model.get("stem", DEFAULT_STEM)
    # The frozen-BN non-local releases group res3's frames: their 32x4 one is
    # the 8x8 stem on 32-frame clips (16 frames at res3..res5).
    grouped = bool(model.get("nonlocal_frames_per_group"))
    stem_frames = STEM_FRAMES_GROUPED if grouped else STEM_FRAMES
    official = [n for s, counts in stem_frames.items() for n in counts]
    # A stem that is not one of theirs (`[8, 8]`) is the constructor's to refuse.
    if (isinstance(stem, str) and stem in stem_frames and frames in official
            and frames not in stem_frames[stem]):
        settings = "; ".join(f"stem {s!r} takes {' or '.join(map(str, n))}-frame clips"
                             for s, n in stem_frames.items())
        lead = ("the official frozen-BN releases' clips" if grouped
                else "the paper's network has 4 frames at res3..res5")
        raise ConfigError(
            f"`model.stem` and `data.num_frames` disagree for {model['name']}: {lead} "
            f"({settings}). Received: data.num_frames={frames}, model.stem={stem!r}")


def save_config(config, path):
    """Write the resolved config as YAML, atomically (next to the checkpoints)."""
    with atomic.replace(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle, sort_keys=False)

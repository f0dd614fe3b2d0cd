"""Experiment configs: overrides, typos, validation, shipped YAML files."""

import os
import re

import pytest
import yaml

from nonlocal_keras.training import config as config_lib


def test_set_overrides_parse_yaml_values():
    config = config_lib.load_config(None, ["data.train_scale=[32, 40]", "runtime.precision=mixed_bfloat16",
                                           "model.nonlocal_blocks=5", "data.val_csv=val.csv",
                                           "data.crop_size=32", "data.eval_scale=32"])
    assert config["data"]["train_scale"] == [32, 40]
    assert config["runtime"]["precision"] == "mixed_bfloat16"
    assert config["model"]["nonlocal_blocks"] == 5  # model.* is free-form
    assert config["data"]["val_csv"] == "val.csv"
    assert config["optimizer"]["momentum"] == 0.9  # untouched default


@pytest.mark.parametrize("override,message", [
    ("data.trian_csv=x.csv", "Unknown config field. Received: data.trian_csv"),
    ("dta.train_csv=x.csv", "Unknown config section (one of model, data"),
    ("train.batch_size=abc", "`train.batch_size` must be an integer. Received: train.batch_size='abc'"),
    ("schedule.boundaries=0.5", "Received: schedule.boundaries=0.5"),
    ("schedule.boundaries=[0.75, 0.5]", "increasing"),
    ("data.mean=[1, 2]", "`data.mean` must hold 3 numbers"),
    ("data.std=[1, 0, 1]", "data.std"),
    ("optimizer.learning_rate=-0.1", "Received: optimizer.learning_rate=-0.1"),
    ("optimizer.learning_rate=0", "optimizer.learning_rate=0"),
    ("optimizer.momentum=1.5", "optimizer.momentum=1.5"),
    ("runtime.verbose=3", "`runtime.verbose` must be 'auto', 0, 1 or 2. Received: runtime.verbose=3"),
    ("runtime.verbose=loud", "Received: runtime.verbose='loud'"),
    ("runtime.verbose=true", "Received: runtime.verbose=True"),
    ("runtime.backup_freq=often", "runtime.backup_freq='often'"),
    ("runtime.tensorboard=maybe", "runtime.tensorboard='maybe'"),
    ("data.flip=1", "data.flip=1"),
    ("data.num_classes=2.5", "data.num_classes=2.5"),
    ("schedule.epochs=[3]", "schedule.epochs=[3]"),
    ("model.weights=5", "model.weights=5"),
    ("data.class_names=[a, a]", "distinct"),
    ("data.class_names=[]", "`data.class_names` must name the classes (leave it out"),
    ("data.train_csv=[unclosed", "not valid YAML"),
    ("runtime.precision=float16", "runtime.precision='float16'"),
    ("runtime.strategy=gpu", "runtime.strategy='gpu'"),
    ("data.num_frames=0", "data.num_frames=0"),
    ("data.train_scale=[200, 300]", "data.train_scale=[200, 300]"),
    ("schedule.boundaries=[1.5]", "schedule.boundaries=[1.5]"),
    ("nonsense", "key=value"),
    # NaN passes every range check (it compares false), infinity the lower bounds.
    ("optimizer.learning_rate=nan", "`optimizer.learning_rate` must be a finite number. "
                                    "Received: optimizer.learning_rate=nan"),
    ("optimizer.learning_rate=.inf", "optimizer.learning_rate=inf"),
    ("optimizer.weight_decay=.nan", "`optimizer.weight_decay` must be a finite number"),
    ("optimizer.momentum=-inf", "optimizer.momentum=-inf"),
    ("data.std=[1, inf, 1]", "`data.std` must be a finite number"),
    # Found by a walk: a traceback (Keras' seed), and a rate divided by 100 at once.
    ("train.seed=4294967296", "Received: train.seed=4294967296"),
    ("schedule.boundaries=[0.5, 0.5]", "increasing"),
    ("train.precise_bn_steps=-1", "Received: train.precise_bn_steps=-1"),
    ("train.precise_bn_steps=yes", "`train.precise_bn_steps` must be an integer"),
    # Found by a walk: trained into runs/exp, the rest a YAML comment.
    ("runtime.output_dir=runs/exp #3", "which YAML drops with what follows it: quote the value"),
    ("data.class_names=[a, b] # c", "holds a YAML comment"),
])
def test_bad_fields_are_errors_naming_them(override, message):
    with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        config_lib.load_config(None, [override])


def test_a_yaml_comment_in_a_set_value_says_how_to_quote_it():
    with pytest.raises(config_lib.ConfigError) as raised:
        config_lib.load_config(None, ["runtime.output_dir=runs/exp #3"])
    assert str(raised.value).endswith(
        "quote the value (--set 'runtime.output_dir=\"runs/exp #3\"'). "
        "Received: --set 'runtime.output_dir=runs/exp #3'")


def test_a_hash_yaml_keeps_is_kept():
    config = config_lib.load_config(None, ['runtime.output_dir="runs/exp #3"',
                                           "data.train_csv=runs/exp#3.csv"])
    assert config["runtime"]["output_dir"] == "runs/exp #3"
    assert config["data"]["train_csv"] == "runs/exp#3.csv"


def test_numbers_are_normalised_and_yaml_exponents_read_as_floats():
    # YAML 1.1 reads `1e-3` (no dot) as a string; a learning rate means a number.
    config = config_lib.load_config(None, ["optimizer.learning_rate=1e-3", "schedule.decay=1"])
    assert config["optimizer"]["learning_rate"] == 0.001
    assert isinstance(config["schedule"]["decay"], float)


@pytest.mark.parametrize("name,frames,stem", [
    ("C2DResNet50", 32, None), ("I3DResNet101", 32, "8x8"), ("C2DResNet101", 8, "32x2"),
    ("I3DResNet50", 128, "8x8")])
def test_the_stem_must_agree_with_the_clip_for_the_paper_networks(name, frames, stem):
    overrides = [f"model.name={name}", f"data.num_frames={frames}"]
    if stem:
        overrides.append(f"model.stem={stem}")
    with pytest.raises(config_lib.ConfigError, match="model.stem.*data.num_frames") as info:
        config_lib.load_config(None, overrides)
    assert f"data.num_frames={frames}" in str(info.value)


def test_the_stem_check_sees_through_a_module_path_and_leaves_odd_stems_to_the_constructor():
    """`nonlocal_keras.applications:C2DResNet50` passed the check its short name
    failed; `model.stem=[8, 8]` was a TypeError traceback (a list is unhashable)."""
    with pytest.raises(config_lib.ConfigError, match="model.stem.*data.num_frames"):
        config_lib.load_config(None, ["model.name=nonlocal_keras.applications:C2DResNet50",
                                      "data.num_frames=32", "model.stem=8x8"])
    config = config_lib.load_config(None, ["model.stem=[8, 8]"])
    assert config["model"]["stem"] == [8, 8]


def test_the_frozen_bn_releases_32x4_clip_is_the_8x8_stem_on_32_frames():
    """The official i3d_nonlocal_32x4 release (res3's frames in groups of 4)."""
    grouped = ["model.name=I3DResNet50", "model.nonlocal_blocks=5",
               "model.nonlocal_use_bn=false", "model.nonlocal_frames_per_group={res3: 4}"]
    config = config_lib.load_config(None, grouped + ["data.num_frames=32"])
    assert config["model"]["nonlocal_frames_per_group"] == {"res3": 4}
    with pytest.raises(config_lib.ConfigError, match="model.stem.*data.num_frames"):
        config_lib.load_config(None, grouped + ["data.num_frames=8", "model.stem=32x2"])


def test_a_leading_tilde_in_a_path_is_the_home_folder(monkeypatch, tmp_path):
    """`--set runtime.output_dir=~/runs/x` (no shell expands that `~`) made a
    folder named `~` in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = config_lib.load_config(None, ["runtime.output_dir=~/runs/x",
                                           "data.train_csv=~/train.csv", "model.weights=imagenet"])
    assert config["runtime"]["output_dir"] == str(tmp_path / "runs" / "x")
    assert config["data"]["train_csv"] == str(tmp_path / "train.csv")
    assert config["model"]["weights"] == "imagenet"


@pytest.mark.parametrize("frames,stem", [(8, "8x8"), (32, "32x2"), (128, "32x2"), (16, "8x8")])
def test_the_official_clip_settings_and_other_lengths_pass(frames, stem):
    config = config_lib.load_config(None, [f"data.num_frames={frames}", f"model.stem={stem}"])
    assert config["model"]["stem"] == stem


def test_file_then_overrides_and_saved_copy(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("schedule:\n  epochs: 3\ntrain:\n  batch_size: 8\n")
    config = config_lib.load_config(str(path), ["train.batch_size=16"])
    assert config["schedule"]["epochs"] == 3 and config["train"]["batch_size"] == 16
    # A field set twice on the command line: the last counts (README: a command extended).
    config = config_lib.load_config(str(path), ["schedule.epochs=2", "schedule.epochs=5"])
    assert config["schedule"]["epochs"] == 5
    config_lib.save_config(config, str(tmp_path / "run" / "config.yaml"))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == config


def test_a_key_given_twice_and_an_empty_file_are_refused(tmp_path):
    """Both were taken without a word (found by a helper's walk): the last of two
    values, and the defaults (the paper's 109 epochs) for an empty file."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("schedule:\n  epochs: 3\ntrain:\n  batch_size: 8\nschedule:\n  decay: 0.5\n")
    with pytest.raises(config_lib.ConfigError, match=r"the key 'schedule' is given twice, on "
                       r"line 5.*Received: config="):
        config_lib.load_config(str(twice))
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  batch_size: 8\n  batch_size: 16\n")
    with pytest.raises(config_lib.ConfigError, match="'batch_size' is given twice, on line 3"):
        config_lib.load_config(str(nested))
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(config_lib.ConfigError, match="The config file is empty. Received: config="):
        config_lib.load_config(str(empty))


@pytest.mark.parametrize("name", config_lib.list_configs())
def test_shipped_configs_load_and_say_how_to_run_them(name):
    config = config_lib.load_config(name)
    with open(config_lib.resolve_path(name)) as handle:
        header = handle.read().split("\n\n")[0]
    assert "nonlocal-train" in header or "make demo" in header
    assert "Expect" in header
    assert config["model"]["name"]
    if name.endswith("_affine"):
        # The official frozen-BN run starts from the I3D baseline folded into affine maps.
        assert "--set model.weights=pretrained/run_i3d_baseline_400k/affine_model_400k" in header
    elif name.startswith("kinetics"):
        # The paper's runs start from ImageNet weights of the same depth (the R101 headers
        # named the R50 file, which the converter refuses for an R101).
        depth = "r101" if config["model"]["name"].endswith("101") else "r50"
        assert f"--set model.weights=pretrained/{depth}_pretrain_c2_model_iter450450" in header
    if name.startswith(("kinetics", "charades")):
        assert config["data"]["eval_crop_size"] == 256  # the official fully-convolutional test
    if name.startswith("charades"):
        # Its header spelled out a schedule without the warm-up, which `schedule.epochs=1`
        # then refused (warmup_epochs must be in [0, 1)).
        assert config["schedule"]["warmup_epochs"] == 1 and "1 epoch of linear warm-up" in header


@pytest.mark.parametrize("name", config_lib.list_configs())
def test_shipped_configs_name_a_constructor_and_its_arguments(name):
    import inspect

    from nonlocal_keras.training import models

    model_config = config_lib.load_config(name)["model"]
    constructor = models.find_constructor(model_config["name"])
    parameters = inspect.signature(constructor).parameters
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    for key in set(model_config) - {"name"}:
        assert accepts_any or key in parameters, f"{model_config['name']} has no argument {key}"


def _frames_at(model, stage):
    blocks = [layer for layer in model.layers if layer.name.startswith(stage + "_")
              and layer.name[len(stage) + 1:].isdigit()]
    return {layer.output.shape[1] for layer in blocks}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in config_lib.list_configs() if not n.startswith("demo")])
def test_every_shipped_config_builds_the_papers_network(name):
    """Through the constructor call nonlocal-train makes: 4 frames at res3..res5 (16 for
    the official 32x4 frozen-BN release, the 8x8 stem on 32 frames)."""
    import keras

    from nonlocal_keras.training import models

    config = config_lib.load_config(name)
    multi_label = name.startswith("charades")
    model = models.build_model(config["model"], config["data"], multi_label)
    try:
        frames = config["data"]["num_frames"]
        assert model.input_shape[1] == frames
        expected = 16 if name.endswith("_32x4_affine") else 4
        for stage in ("res3", "res4", "res5"):
            assert _frames_at(model, stage) == {expected}, (stage, _frames_at(model, stage))
        assert model.output_shape == (None, config["data"]["num_classes"])
        if "r101" in name:
            assert len([n for n in model.layers if n.name.startswith("res4_")
                        and n.name[5:].isdigit()]) == 23
    finally:
        del model
        keras.backend.clear_session()


def test_a_paper_recipe_builds_its_model():
    from nonlocal_keras.training import models

    config = config_lib.load_config("kinetics_nl_i3d_r50_8x8")
    model = models.build_model(config["model"], config["data"], multi_label=False)
    assert model.output_shape == (None, 400)
    assert sum("nonlocal" in layer.name for layer in model.layers) == 5
    with pytest.raises(config_lib.ConfigError, match="model.name='NoSuchNet'"):
        models.find_constructor("NoSuchNet")
    # The constructors it lists are callable: MEAN and STD, tuples, were offered too.
    with pytest.raises(config_lib.ConfigError, match=r"applications \(C2DResNet101, C2DResNet50, "
                       r"I3DResNet101, I3DResNet50, VideoResNet\) .*Received: model.name='MEAN'"):
        models.find_constructor("MEAN")


def test_a_constructors_own_error_is_not_followed_by_the_whole_model_section():
    """It read "... Received: nonlocal_blocks=7 Received: model={...}"."""
    from nonlocal_keras.training import models

    config = config_lib.load_config("demo_digits_nl_c2d", ["model.nonlocal_blocks=7"])
    with pytest.raises(config_lib.ConfigError) as info:
        models.build_model(config["model"], config["data"], multi_label=False)
    assert str(info.value).count("Received:") == 1 and str(info.value).endswith(
        "Received: nonlocal_blocks=7")


@pytest.mark.slow
def test_the_charades_recipe_loads_its_kinetics_run(tmp_path):
    """charades_nl_i3d_r101 with model.weights = the kinetics_nl_i3d_r101 run folder (400 -> 157)."""
    import keras
    import numpy as np

    from nonlocal_keras.training import models

    small = ["data.crop_size=32", "data.train_scale=[32, 32]", "data.eval_scale=32",
             "data.eval_crop_size=null"]
    kinetics = config_lib.load_config("kinetics_nl_i3d_r101", small)
    source = models.build_model(kinetics["model"], kinetics["data"], multi_label=False)
    run = tmp_path / "kinetics_nl_i3d_r101"
    run.mkdir()
    source.save_weights(str(run / "final.weights.h5"))
    charades = config_lib.load_config("charades_nl_i3d_r101", small + [f"model.weights={run}"])
    tuned = models.build_model(charades["model"], charades["data"], multi_label=True,
                               fine_tune=True)
    assert tuned.output_shape == (None, 157)
    for before, after in zip(source.weights, tuned.weights):
        if not before.path.startswith("pred/"):
            np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    keras.backend.clear_session()


@pytest.mark.parametrize("value", [None, "", "{}", '{"task": {"type": "worker", "index": 0}}'])
def test_multi_worker_without_a_cluster_is_warned_about(monkeypatch, caplog, value):
    """Found by a walk: `runtime.strategy=multi_worker` with TF_CONFIG unset (not
    exported to the workers) trained one process alone, exit 0, without a word."""
    from nonlocal_keras.training import runtime

    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with caplog.at_level("WARNING", logger=runtime.logger.name):
        runtime.check_tf_config()
    [message] = [r.getMessage() for r in caplog.records if r.name == runtime.logger.name]
    assert message.startswith("runtime.strategy is multi_worker, but TF_CONFIG names no cluster "
                              f"({'it is not set' if value is None else f'TF_CONFIG={value!r}'})"
                              ": this process trains alone.")
    caplog.clear()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    runtime.check_tf_config()
    assert not [r for r in caplog.records if r.name == runtime.logger.name]


def test_an_empty_tf_config_trains_alone_as_said(monkeypatch, caplog):
    """Found by a walk: `TF_CONFIG=` was warned about as "this process trains
    alone", then TensorFlow read the empty variable as JSON: a traceback."""
    from nonlocal_keras.training import runtime

    monkeypatch.setenv("TF_CONFIG", " ")
    with caplog.at_level("WARNING", logger=runtime.logger.name):
        runtime.check_tf_config()
    assert "trains alone" in caplog.text and "TF_CONFIG" not in os.environ


@pytest.mark.parametrize("task", ['{"type": "worker", "index": 5}', '{"type": "chief", "index": 0}',
                                  '{"type": "worker", "index": "a"}', '{"type": "worker", '
                                  '"index": -1}', '{"type": "worker"}', '"worker"', 'null'])
def test_a_task_outside_the_cluster_is_named(monkeypatch, task):
    """Found by a walk: TensorFlow's ValueError tracebacks ("The task_id 5
    exceeds the maximum id of worker", "task_type 'chief' not found")."""
    from nonlocal_keras.training import runtime

    value = f'{{"cluster": {{"worker": ["localhost:1", "localhost:2"]}}, "task": {task}}}'
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            "TF_CONFIG's task must be one of its cluster's tasks, {\"type\": ..., \"index\": "
            f"...}} (the cluster has worker 0-1). Received: TF_CONFIG={value!r}")):
        runtime.check_tf_config()
    # What TensorFlow's resolver reads as an index (int()) stays allowed.
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
                                    '"task": {"type": "worker", "index": "1"}}')
    runtime.check_tf_config()


def test_settings_that_cannot_build_a_strategy_or_a_model_are_config_errors(monkeypatch):
    """Each was a traceback (exit 1): a TF_CONFIG that is not JSON, `runtime.strategy:
    tpu` without a TPU, and a `model.name` whose function returns no model."""
    from nonlocal_keras.training import models, runtime

    monkeypatch.setenv("TF_CONFIG", "{bad")
    with pytest.raises(config_lib.ConfigError, match="TF_CONFIG is not JSON.*Received: "
                       "TF_CONFIG='{bad'"):
        runtime.make_strategy("multi_worker")
    with pytest.raises(config_lib.ConfigError, match="Cannot find the TPU"):
        runtime.make_strategy("tpu", "")
    data_config = dict(config_lib.DEFAULTS["data"], num_classes=3)
    with pytest.raises(config_lib.ConfigError, match="returned a dict. Received: "
                       "model.name='builtins:dict'"):
        models.build_model({"name": "builtins:dict"}, data_config, False)


def test_octal_and_sexagesimal_numbers_are_not_read_as_such(tmp_path):
    """PyYAML's YAML 1.1 read `016` as octal (batch size 14) and `1:30` as
    sexagesimal (a learning rate of 90), in --set and in config files. The rest
    reads as before: a run's config.yaml, written by `yaml.safe_dump`, holds
    class names such as `08` unquoted."""
    config = config_lib.load_config(None, ["train.batch_size=016", "schedule.epochs=0x10",
                                           "optimizer.learning_rate=1e-3"])
    assert config["train"]["batch_size"] == 16 and config["schedule"]["epochs"] == 16
    assert config["optimizer"]["learning_rate"] == 0.001
    with pytest.raises(config_lib.ConfigError, match=r"Received: optimizer.learning_rate='1:30'"):
        config_lib.load_config(None, ["optimizer.learning_rate=1:30"])
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 010\n")
    assert config_lib.load_config(str(path))["train"]["batch_size"] == 10
    names = ["08", "09", "0018", "1e3", "0o17", "-.5", "016", "1:30", "0x10"]
    saved = dict(config_lib.load_config(None, ["data.num_classes=9"]))
    saved["data"] = dict(saved["data"], class_names=names)
    config_lib.save_config(saved, str(path))
    assert config_lib.load_config(str(path))["data"]["class_names"] == names
    assert config_lib.load_config(None, ["runtime.output_dir=08"])["runtime"]["output_dir"] == "08"
    with pytest.raises(config_lib.ConfigError, match=r"'1\.5' is not an integer"):
        config_lib.load_config(None, ["train.seed=!!int 1.5"])


def test_a_config_that_is_no_yaml_file_or_a_detection_config_is_named_as_such(tmp_path):
    """A folder or /dev/null was "No such config file" of what is there; the
    detection command's `maskrcnn_tiny` failed as an unknown field of this format."""
    from nonlocal_keras.training.errors import ConfigError, MissingFileError

    for path in (str(tmp_path), "/dev/null"):
        with pytest.raises(MissingFileError, match=rf"'{path}' is not a config file \(a YAML "
                           rf"file, or a shipped config's name: .*Received: config='{path}'"):
            config_lib.resolve_path(path)
    with pytest.raises(ConfigError, match=r"'maskrcnn_tiny' is a config of "
                       r"nonlocal-train-detection .*Received: config='maskrcnn_tiny'"):
        config_lib.resolve_path("maskrcnn_tiny")


@pytest.mark.parametrize("field, value, said", [
    ("classes", 5, r"model.classes is set by the command \(data.num_classes\)"),
    ("include_top", False, r"model.include_top is set by the command \(always True\)"),
    ("width", "1e9", r"`width` must be an integer of at least 2. Received: width='1e9'")])
def test_model_fields_the_command_sets_or_of_the_wrong_type_are_one_line(field, value, said):
    """Python's words: "got multiple values for keyword argument 'classes'",
    "unsupported operand type(s) for //: 'str' and 'int'" (YAML's `1e9` is a string)."""
    from nonlocal_keras.training import models
    from nonlocal_keras.training.errors import ConfigError

    model = {"name": "nonlocal_keras.training.demo_model:DemoC2D", "weights": None, field: value}
    data = {"num_frames": 4, "crop_size": 16, "num_classes": 3}
    with pytest.raises(ConfigError, match=said):
        models.build_model(model, data, multi_label=False)


def test_a_runs_checkpoints_folder_as_weights_says_to_give_the_run(tmp_path):
    from nonlocal_keras.training import models
    from nonlocal_keras.training.errors import MissingFileError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.weights.h5").write_bytes(b"")
    with pytest.raises(MissingFileError, match=r"\(it is a run's own folder of them: give the "
                       r"run folder\). Received: model.weights="):
        models.weights_file(str(tmp_path / "run" / "checkpoints"))

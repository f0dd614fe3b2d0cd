"""Experiment configs: overrides, typos, validation, shipped YAML files."""

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
    ("dta.train_csv=x.csv", "Unknown config section. Received: dta"),
    ("runtime.precision=float16", "runtime.precision='float16'"),
    ("runtime.strategy=gpu", "runtime.strategy='gpu'"),
    ("data.num_frames=0", "data.num_frames=0"),
    ("data.train_scale=[200, 300]", "data.train_scale=[200, 300]"),
    ("schedule.boundaries=[1.5]", "schedule.boundaries=[1.5]"),
    ("nonsense", "key=value"),
])
def test_bad_fields_are_errors_naming_them(override, message):
    with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        config_lib.load_config(None, [override])


def test_file_then_overrides_and_saved_copy(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("schedule:\n  epochs: 3\ntrain:\n  batch_size: 8\n")
    config = config_lib.load_config(str(path), ["train.batch_size=16"])
    assert config["schedule"]["epochs"] == 3 and config["train"]["batch_size"] == 16
    config_lib.save_config(config, str(tmp_path / "run" / "config.yaml"))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == config


@pytest.mark.parametrize("name", config_lib.list_configs())
def test_shipped_configs_load_and_say_how_to_run_them(name):
    config = config_lib.load_config(name)
    with open(config_lib.resolve_path(name)) as handle:
        header = handle.read().split("\n\n")[0]
    assert "nonlocal-train" in header or "make demo" in header
    assert "Expect" in header
    assert config["model"]["name"]


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


def test_a_paper_recipe_builds_its_model():
    from nonlocal_keras.training import models

    config = config_lib.load_config("kinetics_nl_i3d_r50", ["data.num_frames=8"])
    model = models.build_model(config["model"], config["data"], multi_label=False)
    assert model.output_shape == (None, 400)
    assert sum("nonlocal" in layer.name for layer in model.layers) == 5
    with pytest.raises(ValueError, match="model.name='NoSuchNet'"):
        models.find_constructor("NoSuchNet")

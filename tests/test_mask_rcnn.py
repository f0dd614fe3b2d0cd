"""Mask R-CNN with a non-local ResNet backbone on TF Model Garden.

Tiny settings throughout: ResNet-50 at width x0.25, 128x128 (256x256 for
training), thin FPN and heads (training/configs/maskrcnn_nonlocal_tiny.yaml).
"""

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("official")
tf_keras = pytest.importorskip("tf_keras")

import nonlocal_keras.training  # noqa: E402
from nonlocal_keras.applications import mask_rcnn  # noqa: E402
from nonlocal_keras.applications.mask_rcnn import (  # noqa: E402
    backbone as nl_backbone,
    experiment,
    keras_fit,
    synthetic_coco,
)
from nonlocal_keras.layers import NonLocal2D  # noqa: E402
from official.core import exp_factory, task_factory  # noqa: E402
from savedmodel_without_package import check_serves_without_the_package  # noqa: E402
import hangup  # noqa: E402
import smaller_detection  # noqa: E402
import orbit  # noqa: E402
from official.modeling.hyperparams import params_dict  # noqa: E402
from official.vision.configs import backbones as mg_backbones  # noqa: E402
from official.vision.configs import common as mg_common  # noqa: E402
from official.vision.modeling.backbones import factory as backbone_factory  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(nonlocal_keras.training.__file__), "configs")
TINY_YAML = os.path.join(CONFIG_DIR, "maskrcnn_nonlocal_tiny.yaml")
PLAIN_TINY_YAML = os.path.join(CONFIG_DIR, "maskrcnn_tiny.yaml")
# Each shipped non-local YAML and its baseline for Model Garden's own experiment.
YAML_PAIRS = [("maskrcnn_nonlocal_tiny.yaml", "maskrcnn_tiny.yaml"),
              ("maskrcnn_nonlocal_r50_coco.yaml", "maskrcnn_r50_coco.yaml")]
PLAIN_EXPERIMENT = "maskrcnn_resnetfpn_coco"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(experiment_name=mask_rcnn.EXPERIMENT, input_size=128, data=None):
    config = exp_factory.get_exp_config(experiment_name)
    yaml_file = TINY_YAML if experiment_name == mask_rcnn.EXPERIMENT else PLAIN_TINY_YAML
    params_dict.override_params_dict(config, yaml_file, is_strict=True)
    config.task.model.input_size = [input_size, input_size, 3]
    if data:
        config.task.train_data.input_path = data["train_tfrecords"]
        config.task.validation_data.input_path = data["val_tfrecords"]
        config.task.annotation_file = data["val_json"]
    return config


def build_backbone(placements=None, model_id=50, input_size=64):
    config = nl_backbone.Backbone(type=nl_backbone.BACKBONE_TYPE)
    config.resnet_nonlocal.model_id = model_id
    config.resnet_nonlocal.depth_multiplier = 0.25
    if placements is not None:
        config.resnet_nonlocal.nonlocal_placements = placements
    return backbone_factory.build_backbone(
        tf_keras.layers.InputSpec(shape=[None, input_size, input_size, 3]),
        config,
        mg_common.NormActivation(),
    )


def nonlocal_layers(model):
    return [layer for layer in model.layers if isinstance(layer, mask_rcnn.NonLocalBlock2D)]


# --- the tf_keras block -----------------------------------------------------


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product", "concatenation", "gaussian"])
def test_tf_keras_block_computes_what_the_keras3_layer_computes(mode):
    # Same weights in both shells, BN made non-trivial: equal outputs mean
    # both call the one implementation of the math the same way.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 8)).astype("float32")
    shell = mask_rcnn.NonLocalBlock2D(mode=mode)
    shell.build(x.shape)
    reference = NonLocal2D(mode=mode)
    reference.build(x.shape)
    for name in ("theta", "phi", "g", "w_z", "w_f"):
        source, target = getattr(shell, name), getattr(reference, name)
        assert (source is None) == (target is None), name
        if source is not None:
            values = [rng.normal(size=w.shape).astype("float32") for w in source.weights]
            source.set_weights(values)
            target.set_weights(values)
    bn_values = [rng.uniform(0.5, 1.5, size=w.shape).astype("float32") for w in shell.bn.weights]
    shell.bn.set_weights(bn_values)
    reference.bn.set_weights(bn_values)
    expected = np.asarray(reference(x, training=False))
    got = shell(x, training=False).numpy()
    assert np.abs(got - x).max() > 1e-2  # the block is not the identity here
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_tf_keras_block_is_identity_at_init_and_round_trips_its_config():
    x = tf.random.stateless_normal((1, 8, 8, 16), seed=(1, 2))
    inputs = tf_keras.Input((8, 8, 16))
    model = tf_keras.Model(inputs, mask_rcnn.NonLocalBlock2D(mode="dot_product", name="nl")(inputs))
    np.testing.assert_array_equal(model(x).numpy(), x.numpy())
    layer = model.get_layer("nl")
    assert set(layer.get_config()) - {"name", "trainable", "dtype"} == {
        "mode", "inter_channels", "sub_sample", "use_scale", "kernel_initializer",
        "kernel_regularizer", "norm_momentum", "norm_epsilon", "use_sync_bn", "chunk_size",
    }
    layer.bn.gamma.assign(tf.ones_like(layer.bn.gamma))
    clone = tf_keras.models.model_from_json(model.to_json())
    clone.set_weights(model.get_weights())
    assert isinstance(clone.get_layer("nl"), mask_rcnn.NonLocalBlock2D)
    np.testing.assert_allclose(clone(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


def test_tf_keras_classes_serialise_under_the_projects_package_name_and_old_names_load():
    inputs = tf_keras.Input((8, 8, 16))
    model = tf_keras.Model(inputs, mask_rcnn.NonLocalBlock2D(name="nl")(inputs))
    saved = model.to_json()
    # The one package name of the Keras 3 layers (`nonlocal_keras>NonLocal2D`).
    assert '"nonlocal_keras>NonLocalBlock2D"' in saved and '"NonLocal>' not in saved
    for cls in (mask_rcnn.NonLocalBlock2D, mask_rcnn.ResNetNonLocalModel):
        assert tf_keras.utils.get_registered_name(cls) == f"nonlocal_keras>{cls.__name__}"
    # A config written before the rename still loads.
    old = saved.replace('"nonlocal_keras>NonLocalBlock2D"', '"NonLocal>NonLocalBlock2D"')
    assert isinstance(tf_keras.models.model_from_json(old).get_layer("nl"), mask_rcnn.NonLocalBlock2D)
    assert tf_keras.utils.get_registered_object("NonLocal>ResNetNonLocalModel") is (
        mask_rcnn.ResNetNonLocalModel)


def test_tf_keras_block_chunked_path_matches_the_plain_path_and_its_gradients():
    x = tf.random.stateless_normal((2, 6, 6, 8), seed=(7, 8))
    plain = mask_rcnn.NonLocalBlock2D(chunk_size=None)
    chunked = mask_rcnn.NonLocalBlock2D(chunk_size=5)
    plain.build(x.shape)
    chunked.build(x.shape)
    plain.bn.gamma.assign(tf.ones_like(plain.bn.gamma))
    chunked.set_weights(plain.get_weights())
    results = []
    for block in (plain, chunked):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = block(x, training=False)
            loss = tf.reduce_sum(y * y)
        results.append((y, tape.gradient(loss, [x] + block.trainable_weights)))
    (y_plain, grads_plain), (y_chunked, grads_chunked) = results
    np.testing.assert_allclose(y_chunked.numpy(), y_plain.numpy(), rtol=1e-5, atol=1e-5)
    for g_chunked, g_plain in zip(grads_chunked, grads_plain, strict=True):
        np.testing.assert_allclose(g_chunked.numpy(), g_plain.numpy(), rtol=1e-4, atol=1e-4)


def test_tf_keras_block_runs_under_tf_keras_mixed_precision():
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = tf_keras.Input((8, 8, 16))
        model = tf_keras.Model(inputs, mask_rcnn.NonLocalBlock2D(name="nl")(inputs))
        model.get_layer("nl").bn.gamma.assign(tf.ones((16,)))
        y = model(tf.random.stateless_normal((1, 8, 8, 16), seed=(5, 6)) * 30.0)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert y.dtype == tf.float16
    assert np.isfinite(y.numpy()).all()


def test_tf_keras_block_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="Received: mode='softmax'"):
        mask_rcnn.NonLocalBlock2D(mode="softmax")


# --- the backbone -------------------------------------------------------------


def test_default_backbone_has_one_block_in_res4_before_its_last_block():
    model = build_backbone()
    blocks = nonlocal_layers(model)
    assert [b.name for b in blocks] == ["nonlocal_res4_5"]
    # ResNet-50 is (3, 4, 6, 3) blocks, res4 = blocks 7..12 (0-based): the NL
    # block reads block 11 (res4's fifth) and feeds block 12 (res4's last).
    residual = [layer for layer in model.layers if type(layer).__name__ == "BottleneckBlock"]
    assert len(residual) == 16
    (nl,) = blocks
    assert nl.inbound_nodes[0].inbound_layers is residual[11]
    assert residual[12].inbound_nodes[0].inbound_layers is nl
    assert model.get_layer("block_group_l4").inbound_nodes[0].inbound_layers is residual[12]


def test_backbone_places_blocks_where_the_config_says_and_nowhere_else():
    model = build_backbone(["res3:0", "res5:-2", "res4:2"])
    names = sorted(b.name for b in nonlocal_layers(model))
    assert names == ["nonlocal_res3_0", "nonlocal_res4_2", "nonlocal_res5_1"]
    residual = [layer for layer in model.layers if type(layer).__name__ == "BottleneckBlock"]
    nl = {b.name: b for b in nonlocal_layers(model)}
    # Before res3's first block: fed by res2's output group, feeding block 3.
    assert residual[3].inbound_nodes[0].inbound_layers is nl["nonlocal_res3_0"]
    assert residual[9].inbound_nodes[0].inbound_layers is nl["nonlocal_res4_2"]
    assert residual[14].inbound_nodes[0].inbound_layers is nl["nonlocal_res5_1"]
    assert build_backbone([]).count_params() < model.count_params()
    assert nonlocal_layers(build_backbone([])) == []
    # One entry as a string (`--params_override ...nonlocal_placements=res4:-2`)
    # reaches the backbone as its letters: the error said "bad entry 'r'".
    with pytest.raises(ValueError, match=r"a single string is read letter by letter \(in "
                       r"--params_override write nonlocal_placements=\[res4:-2\]\)"):
        build_backbone("res4:-2")


@pytest.mark.parametrize(
    "placements, bad",
    [
        (["res4:6"], "res4:6"),  # res4 of ResNet-50 has 6 blocks: 0..5
        (["res4:-7"], "res4:-7"),
        (["res6:0"], "res6:0"),
        (["conv4:1"], "conv4:1"),
        (["res4"], "res4"),
        (["res4:last"], "res4:last"),
        (["res4:-1", "res4:5"], "res4:5"),  # the same block twice
    ],
)
def test_bad_placement_is_a_value_error_naming_the_field_and_value(placements, bad):
    with pytest.raises(ValueError, match="nonlocal_placements") as error:
        build_backbone(placements)
    assert f"Received: nonlocal_placements={placements!r}" in str(error.value)
    assert bad in str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    # Found by a walk: bool("False") is True, the opposite of what was written.
    ({"sub_sample": "False"}, "`sub_sample` must be True or False. Received: sub_sample='False'"),
    ({"use_scale": "no"}, "Received: use_scale='no'"),
    ({"use_sync_bn": "no"}, "Received: use_sync_bn='no'"),
    # The output was NaN; the strings were kept.
    ({"norm_epsilon": -1.0}, "`norm_epsilon` must be a finite number > 0 (the output is NaN "
                             "for a negative one). Received: norm_epsilon=-1.0"),
    ({"norm_momentum": "abc"}, "Received: norm_momentum='abc'"),
    ({"kernel_regularizer": "nope"}, "`kernel_regularizer` must be a tf_keras regularizer, "
                                     "its name or config, a function, or None. "
                                     "Received: kernel_regularizer='nope'"),
    ({"kernel_initializer": ""}, "Received: kernel_initializer=''"),
])
def test_bad_block_arguments_are_value_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        mask_rcnn.NonLocalBlock2D(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"model_id": 51}, "`model_id` must be one of the ResNet depths 10, 18, 26, 34, 50, 101, "
                       "152, 200, 270, 350, 420. Received: model_id=51"),  # a KeyError before
    ({"model_id": 50, "nonlocal_placements": None}, "Received: nonlocal_placements=None"),
    ({"model_id": 50, "nonlocal_sub_sample": "False"}, "Received: nonlocal_sub_sample='False'"),
])
def test_bad_backbone_arguments_are_value_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        nl_backbone.ResNetNonLocalModel(
            input_specs=tf_keras.layers.InputSpec(shape=[None, 64, 64, 3]), **kwargs)


def test_bad_nonlocal_mode_is_a_value_error_naming_the_field():
    config = nl_backbone.Backbone(type=nl_backbone.BACKBONE_TYPE)
    config.resnet_nonlocal.nonlocal_mode = "softmax"
    with pytest.raises(ValueError, match="Received: nonlocal_mode='softmax'"):
        backbone_factory.build_backbone(
            tf_keras.layers.InputSpec(shape=[None, 64, 64, 3]), config, mg_common.NormActivation())


@pytest.mark.parametrize("use_sync_bn", [False, True])
def test_nonlocal_block_batchnorm_follows_use_sync_bn_like_the_resnets(use_sync_bn):
    config = nl_backbone.Backbone(type=nl_backbone.BACKBONE_TYPE)
    config.resnet_nonlocal.depth_multiplier = 0.25
    model = backbone_factory.build_backbone(
        tf_keras.layers.InputSpec(shape=[None, 64, 64, 3]), config,
        mg_common.NormActivation(use_sync_bn=use_sync_bn))
    (block,) = nonlocal_layers(model)
    resnet_bns = [m for m in model.submodules if isinstance(m, tf_keras.layers.BatchNormalization)
                  and m is not block.bn]
    assert len(resnet_bns) == 53  # ResNet-50's: stem 1, 16 bottlenecks x 3, 4 projections
    assert {bn.synchronized for bn in resnet_bns} == {use_sync_bn}
    assert block.bn.synchronized is use_sync_bn
    assert block.get_config()["use_sync_bn"] is use_sync_bn


def test_backbone_config_round_trips_through_get_config():
    model = build_backbone(["res3:1"])
    config = model.get_config()
    assert config["nonlocal_placements"] == ["res3:1"]
    clone = nl_backbone.ResNetNonLocalModel.from_config(config)
    assert [b.name for b in nonlocal_layers(clone)] == ["nonlocal_res3_1"]
    assert clone.count_params() == model.count_params()


# --- the experiment -------------------------------------------------------


def test_experiment_is_model_gardens_mask_rcnn_with_the_nonlocal_backbone():
    ours = exp_factory.get_exp_config(mask_rcnn.EXPERIMENT).as_dict()
    theirs = exp_factory.get_exp_config("maskrcnn_resnetfpn_coco").as_dict()
    our_backbone = ours["task"]["model"].pop("backbone")
    their_backbone = theirs["task"]["model"].pop("backbone")
    assert ours == theirs
    assert our_backbone["type"] == "resnet_nonlocal"
    settings = dict(our_backbone["resnet_nonlocal"])
    assert settings.pop("nonlocal_placements") == ["res4:-1"]
    assert settings.pop("nonlocal_mode") == "embedded_gaussian"
    assert settings.pop("nonlocal_sub_sample") is True
    assert settings == their_backbone["resnet"]
    assert issubclass(nl_backbone.ResNetNonLocal, mg_backbones.ResNet)
    task = task_factory.get_task(exp_factory.get_exp_config(mask_rcnn.EXPERIMENT).task)
    assert isinstance(task, mask_rcnn.NonLocalMaskRCNNTask)


def _yaml(name):
    import yaml

    with open(os.path.join(CONFIG_DIR, name)) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("nonlocal_yaml, plain_yaml", YAML_PAIRS)
def test_shipped_yamls_apply_to_their_experiments_and_pairs_differ_only_in_the_backbone(
        nonlocal_yaml, plain_yaml):
    for name, experiment_name in ((nonlocal_yaml, mask_rcnn.EXPERIMENT), (plain_yaml, PLAIN_EXPERIMENT)):
        config = exp_factory.get_exp_config(experiment_name)
        params_dict.override_params_dict(config, os.path.join(CONFIG_DIR, name), is_strict=True)
        config.validate()
    ours, theirs = _yaml(nonlocal_yaml), _yaml(plain_yaml)
    our_backbone = ours["task"]["model"].pop("backbone")
    their_backbone = theirs["task"]["model"].pop("backbone")
    assert ours == theirs
    assert (our_backbone["type"], their_backbone["type"]) == ("resnet_nonlocal", "resnet")
    settings = our_backbone["resnet_nonlocal"]
    assert {k: v for k, v in settings.items() if not k.startswith("nonlocal_")} == their_backbone["resnet"]
    assert set(os.listdir(CONFIG_DIR)) >= {name for pair in YAML_PAIRS for name in pair}


@pytest.mark.slow
def test_every_flag_of_model_gardens_vision_trainer_is_accepted():
    # The flags `python -m official.vision.train` defines, listed in a process
    # of its own, then parsed by our command line.
    listing = textwrap.dedent(
        """
        from absl import flags
        before = set(flags.FLAGS)
        from official.common import flags as tfm_flags
        from official.vision import train
        tfm_flags.define_flags()
        print(" ".join(sorted(set(flags.FLAGS) - before)))
        """
    )
    result = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    official_flags = result.stdout.split()
    assert "enable_async_checkpointing" in official_flags and "params_override" in official_flags
    ours = textwrap.dedent(
        """
        import sys
        from absl import flags
        from nonlocal_keras.applications.mask_rcnn import trainer
        trainer.define_flags()
        missing = [name for name in sys.argv[1:] if name not in flags.FLAGS]
        assert not missing, missing
        flags.FLAGS(["prog", "--enable_async_checkpointing=false", "--experiment=x",
                     "--mode=train", "--model_dir=/tmp/unused"])
        assert flags.FLAGS.enable_async_checkpointing is False
        print("FLAGS_OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", ours, *official_flags], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FLAGS_OK" in result.stdout


def _detection_command(argv, capsys, debug=False):
    """`nonlocal-train-detection argv` in this process, as its console script runs
    it but for the signal handlers: (exit status, stderr). A process a command took
    5-7 s of TensorFlow's import each."""
    import gin
    from absl import flags

    from nonlocal_keras.training import cli, train_detection

    handlers = list(logging.root.handlers)  # absl's app.run adds its own
    capsys.readouterr()
    try:
        status = cli._run_main(train_detection.PROG, train_detection.__name__, argv, debug)
    finally:  # as this process had them: no flag parsed, gin's config open
        flags.FLAGS.unparse_flags()
        gin.clear_config()
        logging.root.handlers[:] = handlers
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--params_override", "task.model.no_such_field=1"], "The key 'no_such_field' does not exist"),
        (["--config_file", "/no/such/config.yaml"], "/no/such/config.yaml"),
        (["--no_such_flag"], "no_such_flag"),
        # Evaluated the initial weights, exported them with --export_dir, exit 0.
        (["--mode", "eval", "--export_dir", "unused"], "holds no checkpoint, so --mode eval"),
        # Found by a walk: a run in the working directory (exit 0); a traceback after
        # writing params.yaml; a traceback after the training; tracebacks.
        (["--model_dir="], "--model_dir must name a folder"),
        (["--mode", "continuous_train_and_eval"], "--mode must be one of train, eval"),
        (["--export_dir", sys.executable], "--export_dir is a file, not a folder"),
        # Found by a walk: after the whole evaluation, naming a temporary folder.
        (["--export_dir", "/proc/nl_export"], "Cannot write in --export_dir ('/proc', where it "
                                              "would be made): it takes no new file"),
        (["--config_file", "/"], "--config_file is a folder"),
        (["--params_override", "trainer.train_steps=abc"],
         "`trainer.train_steps` must be int, as its default"),
        # Model Garden's registry: "collection path nosuch at position 0 is never registered".
        (["--experiment", "maskrcnn_resnetfpn_nonlocal"],
         "Unknown --experiment 'maskrcnn_resnetfpn_nonlocal' (did you mean "
         "'maskrcnn_resnetfpn_nonlocal_coco'?). This package's experiments: "
         "maskrcnn_resnetfpn_nonlocal_coco, keypoint_rcnn_resnetfpn_coco"),
        # A yaml.parser.ParserError traceback (the same in a --config_file was one line).
        (["--params_override", "{trainer: {train_steps: 5}"],
         "--params_override is not valid YAML (while parsing a flow mapping"),
        # "task.model.input_size=[256,256,3; No such file or directory".
        (["--params_override", "task.model.input_size=[256,256,3"],
         "--params_override is neither KEY=VALUE pairs Model Garden can read"),
    ],
)
def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys, arguments, message):
    status, stderr = _detection_command(
        ["--experiment", PLAIN_EXPERIMENT, "--mode", "train", "--model_dir",
         str(tmp_path / "run"), *arguments], capsys)
    assert status == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("nonlocal-train-detection: error: "), errors
    assert message in errors[0]
    assert "Traceback" not in stderr
    assert not (tmp_path / "run").exists()  # nothing written for a wrong command


def test_a_user_error_of_the_console_script_is_exit_2_and_debug_keeps_the_traceback(tmp_path):
    """The commands above as a process runs them (the console script's status)."""
    command = [sys.executable, "-m", "nonlocal_keras.training.train_detection",
               "--experiment", PLAIN_EXPERIMENT, "--mode", "train",
               "--model_dir", str(tmp_path / "run"), "--config_file", "/no/such/config.yaml"]
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, timeout=300)
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr[-3000:]
    assert debug.stderr.splitlines()[-1].startswith(
        "nonlocal-train-detection: error: ") and "/no/such/config.yaml" in debug.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    # Orbit's loop waited forever for the step to reach 1.5 (seen: 12 minutes).
    ("trainer.train_steps=1.5", "`trainer.train_steps` must be int"),
    # Tracebacks (TypeError) after the model was built and params.yaml written.
    ("task.model.input_size=abc", "`task.model.input_size` must be list"),
    ("task.init_checkpoint=5", "`task.init_checkpoint` must be str"),
    # Empty (an unset shell variable): tracebacks once the model was built.
    ("trainer.train_steps=", "`trainer.train_steps` is empty \\(null\\) where a number \\("
                             "default 22500\\) is needed"),
    ("task.model=", "`task.model` is empty \\(null\\) where a section is needed"),
    # Fields of no default, typed Optional: Keras' "Expected `seed` argument to be
    # an integer", naming no key (stop 56's walk).
    ("task.train_data.seed=abc", "`task.train_data.seed` must be int or null \\(its default\\)"),
    ("task.train_data.deterministic=5", "`task.train_data.deterministic` must be bool or null"),
    ("trainer.optimizer_config.optimizer.sgd.clipnorm=abc",
     "`trainer.optimizer_config.optimizer.sgd.clipnorm` must be float or null"),
])
def test_an_override_of_the_wrong_type_names_its_field(override, message):
    from nonlocal_keras.applications.mask_rcnn import trainer

    defaults = exp_factory.get_exp_config(PLAIN_EXPERIMENT)
    given = params_dict.override_params_dict(
        exp_factory.get_exp_config(PLAIN_EXPERIMENT), override, is_strict=True)
    with pytest.raises(ValueError, match=f"{message}.*Received: {override.split('=')[0]}="):
        trainer.check_value_types(given, defaults)
    # What the fields take: a float field an int, a str-or-list field a list.
    fine = params_dict.override_params_dict(
        exp_factory.get_exp_config(PLAIN_EXPERIMENT),
        "trainer.train_steps=7,task.losses.l2_weight_decay=0,"
        "task.init_checkpoint_modules=[backbone],task.train_data.seed=3,"
        "trainer.optimizer_config.optimizer.sgd.clipnorm=1", is_strict=True)
    trainer.check_value_types(fine, defaults)


def test_tensorflow_logs_at_absls_level(monkeypatch):
    """Importing Model Garden's COCO converter sets TensorFlow's logger to INFO:
    the command's log, kept to warnings, had its INFO lines (found by a walk)."""
    import importlib

    from absl import logging as absl_logging

    from nonlocal_keras.applications.mask_rcnn import trainer

    importlib.import_module("official.vision.data.create_coco_tf_record")
    logger = tf.get_logger()
    monkeypatch.setattr(logger, "level", logging.INFO)  # as that import's first time leaves it
    before = absl_logging.get_verbosity()
    try:
        for verbosity, level in ((absl_logging.WARNING, logging.WARNING),
                                 (absl_logging.INFO, logging.INFO)):
            absl_logging.set_verbosity(verbosity)
            trainer.tensorflow_log_as_absl()
            assert logger.getEffectiveLevel() == level
    finally:
        absl_logging.set_verbosity(before)


def test_a_diverged_run_is_one_line_naming_what_to_lower(monkeypatch):
    """Model Garden's RuntimeError after a loop whose loss was NaN was a traceback, exit 1."""
    from nonlocal_keras.training import run_state, train_detection

    def diverging(argv, signals):
        raise RuntimeError("The loss value is NaN after training loop and it happens 1 times.")

    monkeypatch.setattr(train_detection.trainer, "run", diverging)
    with pytest.raises(run_state.DivergedError, match=r"Training diverged \(The loss value is NaN "
                       r".*keeps its latest checkpoint, if any\. Lower trainer\.optimizer_config"):
        train_detection._run([])

    def failing(argv, signals):
        raise RuntimeError("something else")

    monkeypatch.setattr(train_detection.trainer, "run", failing)
    with pytest.raises(RuntimeError, match="something else"):  # a bug's, as it was
        train_detection._run([])


def test_gins_call_site_is_not_part_of_the_one_line_error():
    from nonlocal_keras.training import train_detection

    error = ValueError("/nonexistent/x* does not match any files.\n  In call to configurable "
                       "'Trainer' (<class 'official.core.base_trainer.Trainer'>)\n  In call to "
                       "configurable 'create_trainer' (<function create_trainer at 0x7fb574fab060>)")
    assert str(train_detection._user_error(error)) == "/nonexistent/x* does not match any files."


class _StepCounter(orbit.AbstractTrainer):
    """An Orbit trainer whose training only counts the steps."""

    def __init__(self, step):
        self.step = step

    def create_train_loop_fn(self):  # CommittingController wraps it; not called here
        raise AssertionError("not called")

    def train(self, num_steps):
        self.step.assign_add(int(num_steps))


def test_train_and_eval_resumed_at_its_last_step_evaluates():
    """A SIGTERM during the final evaluation commits the last step; the same
    command then trained nothing and evaluated nothing, exit 0 (Orbit's loop
    runs while the step is below train_steps)."""
    from nonlocal_keras.applications.mask_rcnn import trainer
    from nonlocal_keras.training import cli

    step, evaluations = tf.Variable(10, dtype=tf.int64), []

    class Evaluator(orbit.AbstractEvaluator):
        def evaluate(self, num_steps):
            evaluations.append(int(num_steps))
            return {"AP": 0.5}

    controller = trainer.CommittingController(
        trainer=_StepCounter(step), evaluator=Evaluator(), global_step=step, steps_per_loop=5,
        signals=cli.LoopSignals)
    assert controller.train_and_evaluate(train_steps=10, eval_steps=3)["AP"] == 0.5
    assert evaluations == [3] and int(step.numpy()) == 10
    step.assign(4)  # mid-run: Orbit's own loop, which trains to the end, then evaluates
    controller.train_and_evaluate(train_steps=10, eval_steps=3)
    assert evaluations == [3, 3] and int(step.numpy()) == 10


def test_a_failed_first_commands_params_yaml_is_replaced_before_the_first_checkpoint(tmp_path):
    """A first command that failed after writing params.yaml (a bad override of the
    block) left it; the corrected command replaced it only at its end, so once
    killed its own run was refused as "another model" on resume. The callback
    (`_run_and_export` passes params.yaml's writer when the folder holds no
    checkpoint) runs once, before the first save."""
    from nonlocal_keras.applications.mask_rcnn import trainer
    from nonlocal_keras.training import cli

    step, order = tf.Variable(0, dtype=tf.int64), []
    checkpoint = tf.train.Checkpoint(step=step)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=5,
                                         step_counter=step, checkpoint_interval=2)
    saving = manager.save
    manager.save = lambda *args, **kwargs: order.append("checkpoint") or saving(*args, **kwargs)
    controller = trainer.CommittingController(
        trainer=_StepCounter(step), global_step=step, steps_per_loop=2,
        checkpoint_manager=manager,
        signals=cli.LoopSignals, before_first_save=lambda: order.append("params.yaml"))
    controller.train(steps=6)
    assert order[:2] == ["params.yaml", "checkpoint"] and order.count("params.yaml") == 1


def test_help_lists_the_trainers_flags_and_exits_0():
    """absl's --help printed "Try --helpfull" (the main module defines no flag)
    and exited 1, as for a usage error."""
    command = [sys.executable, "-m", "nonlocal_keras.training.train_detection"]
    helped = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert helped.stdout.startswith("usage: nonlocal-train-detection --experiment NAME")
    for flag in ("--experiment", "--mode", "--model_dir", "--params_override",
                 "--synthetic_coco_dir", "--export_dir"):
        assert f"  {flag}" in helped.stdout, flag
    full = subprocess.run(command + ["--mode", "eval", "--helpfull"], capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0 and "--verbosity" in full.stdout, full.stderr[-3000:]


def test_a_peer_that_left_is_one_cluster_error_not_a_traceback(monkeypatch):
    """Seen on two workers: kill -9 of one, and the other printed a 60-line
    traceback ending in UnavailableError ("tasks are unhealthy")."""
    from nonlocal_keras.applications.mask_rcnn import trainer
    from nonlocal_keras.training import errors, train_detection

    def peer_left(argv, signals):
        raise tf.errors.UnavailableError(None, None, "Graph execution error:\n\nCollective "
                                         "ops is aborted by: recvmsg:Connection reset by peer")

    monkeypatch.setattr(trainer, "run", peer_left)
    with pytest.raises(errors.ClusterError) as info:
        train_detection._run([])
    assert str(info.value).startswith("A worker of the cluster stopped or cannot be reached "
                                      "(Collective ops is aborted by: recvmsg:Connection reset")
    assert "keeps its latest checkpoint" in str(info.value)


@pytest.mark.slow
def test_seeded_config_builds_the_same_weights_every_time(monkeypatch):
    from nonlocal_keras.applications.mask_rcnn import trainer

    # Deterministic ops cannot be switched off again: record the call instead
    # of changing the rest of this test process.
    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism", lambda: calls.append(1))
    config = tiny_config()
    assert config.task.train_data.seed is not None  # the tiny YAML is seeded
    weights = []
    for _ in range(2):
        trainer.seed_everything(config)
        model = task_factory.get_task(config.task).build_model()
        weights.append([w.numpy() for w in model.weights])
    for first, second in zip(*weights, strict=True):
        np.testing.assert_array_equal(first, second)
    assert calls == [1, 1]
    config.task.train_data.seed = None
    trainer.seed_everything(config)  # no seed: nothing is seeded
    model = task_factory.get_task(config.task).build_model()
    assert any(not np.array_equal(w.numpy(), first) for w, first in zip(model.weights, weights[0]))


def test_registration_is_idempotent_across_imports_and_reloads():
    script = textwrap.dedent(
        """
        import importlib
        import nonlocal_keras.applications.mask_rcnn as m
        import nonlocal_keras.applications.mask_rcnn as again
        from nonlocal_keras.applications.mask_rcnn import backbone, experiment, nonlocal_block
        from official.core import exp_factory
        from official.vision.modeling.backbones import factory
        builder = factory._REGISTERED_BACKBONE_CLS["resnet_nonlocal"]
        for module in (nonlocal_block, backbone, experiment, m):
            importlib.reload(module)
        assert factory._REGISTERED_BACKBONE_CLS["resnet_nonlocal"] is builder
        config = exp_factory.get_exp_config("maskrcnn_resnetfpn_nonlocal_coco")
        assert config.task.model.backbone.type == "resnet_nonlocal"
        print("REGISTERED_OK")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REGISTERED_OK" in result.stdout


def _copy_weights(plain_model, nl_model):
    # Backbones line up layer by layer (minus the NL blocks); the rest of the
    # two Mask R-CNNs has the same structure.
    for source, target in zip(plain_model.layers, nl_model.layers, strict=True):
        if source is plain_model.backbone:
            experiment.copy_plain_weights(source, target)
        else:
            target.set_weights(source.get_weights())


@pytest.mark.slow
def test_model_is_the_plain_mask_rcnn_at_init_given_the_same_backbone_weights():
    tf_keras.utils.set_random_seed(0)
    plain_task = task_factory.get_task(tiny_config("maskrcnn_resnetfpn_coco").task)
    plain = plain_task.build_model()
    nl_task = task_factory.get_task(tiny_config().task)
    nl = nl_task.build_model()
    assert len(nonlocal_layers(nl.backbone)) == 1 and not nonlocal_layers(plain.backbone)
    _copy_weights(plain, nl)
    images = tf.random.stateless_uniform((2, 128, 128, 3), seed=(3, 4)) * 2.0 - 1.0
    shape = tf.constant([[128.0, 128.0]] * 2)
    expected = plain(images, image_shape=shape, training=False)
    got = nl(images, image_shape=shape, training=False)
    for key in ("rpn_scores", "rpn_boxes"):
        for level in expected[key]:
            np.testing.assert_allclose(got[key][level].numpy(), expected[key][level].numpy(),
                                       rtol=1e-5, atol=1e-5)
    for key in ("detection_boxes", "detection_scores", "detection_classes", "detection_masks"):
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-5)
    # The NL block is live: a non-zero BN scale changes the output.
    nl_block = nonlocal_layers(nl.backbone)[0]
    nl_block.bn.gamma.assign(tf.ones_like(nl_block.bn.gamma))
    changed = nl(images, image_shape=shape, training=False)["backbone_features"]["4"].numpy()
    before = expected["backbone_features"]["4"].numpy()
    np.testing.assert_allclose(got["backbone_features"]["4"].numpy(), before, rtol=1e-5, atol=1e-5)
    assert np.abs(changed - before).max() > 1e-3 * np.abs(before).max()


@pytest.mark.slow
def test_init_checkpoint_restores_every_backbone_weight_but_the_nonlocal_blocks(tmp_path, caplog):
    config = tiny_config()
    model_config = config.task.model
    plain = nl_backbone.build_plain_resnet(
        tf_keras.layers.InputSpec(shape=[None] + list(model_config.input_size)),
        model_config.backbone, model_config.norm_activation,
    )
    # Distinctive values, so a restored weight cannot match by chance.
    rng = np.random.default_rng(5)
    for weight in plain.weights:
        weight.assign(rng.uniform(0.5, 1.0, size=weight.shape).astype("float32"))
    path = tf.train.Checkpoint(backbone=plain).write(str(tmp_path / "imagenet" / "ckpt"))

    config.task.init_checkpoint = path
    config.task.init_checkpoint_modules = "backbone"
    task = task_factory.get_task(config.task)
    model = task.build_model()
    nl_before = {w.name: w.numpy() for b in nonlocal_layers(model.backbone) for w in b.weights}
    restored, left_new = experiment.restore_plain_backbone(model.backbone, path, model_config)
    assert restored == len(plain.weights)
    assert sorted(left_new) == sorted(nl_before) and len(left_new) == 12  # theta/phi/g/W_z kernel+bias, BN(4)
    others = [w for layer in model.backbone.layers if not isinstance(layer, mask_rcnn.NonLocalBlock2D)
              for w in layer.weights]
    assert len(others) == len(plain.weights)
    for source, target in zip(plain.weights, others):
        np.testing.assert_array_equal(target.numpy(), source.numpy())
    for block in nonlocal_layers(model.backbone):
        for w in block.weights:
            np.testing.assert_array_equal(w.numpy(), nl_before[w.name])

    # The task's own initialize (what the trainer calls) does the same, and says so.
    fresh = task.build_model()
    with caplog.at_level(logging.INFO, logger="absl"):
        task.initialize(fresh)
    np.testing.assert_array_equal(fresh.backbone.weights[0].numpy(), plain.weights[0].numpy())
    assert f"restored {len(plain.weights)} backbone variables" in caplog.text
    assert "left 12 new" in caplog.text and "nonlocal_res4_5/theta/kernel" in caplog.text


# --- data, training, evaluation, export --------------------------------------


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    return synthetic_coco.build(str(tmp_path_factory.mktemp("coco")), num_train=6, num_val=2)


def test_an_annotation_file_that_cannot_be_scored_is_refused_before_anything_runs(
        synthetic_data, tmp_path):
    """Found by a walk, each after the whole evaluation: `{}` was "error: images",
    no annotation scored AP -1 (exit 0), a polygon of 2 points a pycocotools
    traceback, a JSON cut short "Expecting ',' delimiter" naming no file."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    task = tiny_config(data=synthetic_data).task
    trainer.check_annotation_file(task, "train_and_eval")  # the real one: fine
    with open(synthetic_data["val_json"]) as handle:
        text = handle.read()
    coco = json.loads(text)
    few = json.loads(text)
    few["annotations"][1]["segmentation"] = [[1, 2, 3, 4]]
    cases = {"{}": "holds no COCO `images` and `annotations` lists",
             json.dumps({**coco, "annotations": []}): "has no annotation: its AP cannot be "
                                                      "scored (it is -1)",
             json.dumps(few): f"the `segmentation` of annotation {few['annotations'][1]['id']!r} "
                              "holds a polygon of fewer than 3 (x, y) points",
             text[:len(text) // 2]: "task.annotation_file is no JSON (Expecting"}
    for number, (content, message) in enumerate(cases.items()):
        path = tmp_path / f"{number}.json"
        path.write_text(content)
        task.annotation_file = str(path)
        with pytest.raises(ValueError, match=re.escape(message) + ".*Received: "
                           f"task.annotation_file='{re.escape(str(path))}'$"):
            trainer.check_annotation_file(task, "eval")
        trainer.check_annotation_file(task, "train")  # not read
    # The converter of a training JSON: pycocotools' TypeError, naming nothing.
    few_json = tmp_path / "few_train.json"
    few_json.write_text(json.dumps(few))
    image_dir = os.path.join(os.path.dirname(synthetic_data["val_json"]), "val")
    with pytest.raises(ValueError, match=f"The `segmentation` of annotation "
                       f"{few['annotations'][1]['id']!r} of .* holds a polygon of fewer than 3"):
        synthetic_coco.write_tfrecords(str(few_json), image_dir, str(tmp_path / "few"))
    assert not list(tmp_path.glob("*few-*"))


def test_synthetic_coco_masks_are_the_painted_pixels(synthetic_data):
    import json

    from PIL import Image
    from pycocotools import mask as mask_api

    with open(synthetic_data["train_json"]) as f:
        coco = json.load(f)
    assert {c["name"] for c in coco["categories"]} == {"rectangle", "ellipse", "triangle"}
    image = coco["images"][0]
    pixels = np.asarray(Image.open(os.path.join(os.path.dirname(synthetic_data["train_json"]),
                                                "train", image["file_name"])))
    annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    assert annotations
    for annotation in annotations:
        rle = mask_api.frPyObjects(annotation["segmentation"], image["height"], image["width"])
        mask = mask_api.decode(rle)[..., 0].astype(bool)
        assert mask.sum() == annotation["area"]
        # Inside the mask one colour >= 120 per channel; the background is < 60.
        inside = pixels[mask]
        assert (inside == inside[0]).all() and (inside[0] >= 120).all()
        ring = np.zeros_like(mask)
        x, y, w, h = (int(v) for v in annotation["bbox"])
        ring[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1] = True
        assert (pixels[ring & ~mask] < 60).all()
    records = list(tf.data.TFRecordDataset(tf.io.gfile.glob(synthetic_data["train_tfrecords"])))
    assert len(records) == len(coco["images"])
    # Each record carries its image's annotations (read without the converter's private loaders).
    from official.vision.dataloaders import tf_example_decoder

    decoded = tf_example_decoder.TfExampleDecoder(include_mask=True).decode(records[0])
    first = [a for a in coco["annotations"] if a["image_id"] == int(decoded["source_id"].numpy())]
    assert sorted(decoded["groundtruth_classes"].numpy().tolist()) == sorted(
        a["category_id"] for a in first)


@pytest.mark.slow
def test_fit_lowers_the_loss_and_coco_evaluation_returns_box_and_mask_ap(synthetic_data):
    tf_keras.utils.set_random_seed(1)
    config = tiny_config(input_size=256, data=synthetic_data)
    task = task_factory.get_task(config.task)
    model = task.build_model()
    trainer = keras_fit.TaskModel(task, model)
    trainer.compile(optimizer=task.create_optimizer(config.trainer.optimizer_config, config.runtime))
    history = trainer.fit(task.build_inputs(config.task.train_data), steps_per_epoch=3,
                          epochs=4, verbose=0)
    losses = history.history["total_loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    metrics = keras_fit.evaluate(task, model, steps=1)
    for key in ("AP", "AP50", "mask_AP", "mask_AP50"):
        assert isinstance(metrics[key], float) and -1.0 <= metrics[key] <= 1.0, (key, metrics)


def test_the_network_and_its_losses_run_without_autograph_and_the_losses_are_the_converted_ones(
        synthetic_data, monkeypatch):
    """AutoGraph's conversion of the network and its losses took 15-20 s of each
    detection command's start: they run unconverted (in graphs: `tf.function`),
    and the losses are those of the converted code. (That the network's outputs
    are the converted ones is the CLI runs' check: seeded, they repeat exactly.)"""
    from official.vision.losses import maskrcnn_losses
    from official.vision.modeling.layers import detection_generator
    from official.vision.tasks import maskrcnn as maskrcnn_task
    from tensorflow.python.autograph.core import ag_ctx

    statuses = []

    def probed(function):
        def call(*args, **kwargs):
            statuses.append(ag_ctx.control_status_ctx().status)
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(detection_generator.DetectionGenerator, "__call__",
                        probed(detection_generator.DetectionGenerator.__call__))
    monkeypatch.setattr(maskrcnn_losses.RpnScoreLoss, "__call__",
                        probed(maskrcnn_losses.RpnScoreLoss.__call__))
    config = tiny_config(input_size=64, data=synthetic_data)
    task = task_factory.get_task(config.task)
    model = task.build_model()
    images, labels = next(iter(task.build_inputs(config.task.train_data)))
    image_shape = labels["image_info"][:, 1, :]
    statuses.clear()
    tf.function(lambda: model(images, image_shape=image_shape,
                              anchor_boxes=labels["anchor_boxes"], training=False))()
    assert statuses == [ag_ctx.Status.DISABLED]

    outputs = model(images, image_shape=image_shape, anchor_boxes=labels["anchor_boxes"],
                    gt_boxes=labels["gt_boxes"], gt_classes=labels["gt_classes"],
                    gt_masks=labels["gt_masks"], training=True)
    outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), outputs)
    statuses.clear()
    expected = tf.function(lambda: maskrcnn_task.MaskRCNNTask.build_losses(
        task, outputs, labels))()
    got = tf.function(lambda: task.build_losses(outputs, labels))()
    assert statuses == [ag_ctx.Status.ENABLED, ag_ctx.Status.DISABLED]
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


def test_the_trainer_makes_the_optimizers_slots_before_the_first_step(synthetic_data, tmp_path):
    """Made by the first step, they had the training loop traced twice."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    config = tiny_config(data=synthetic_data)
    runner = trainer.ExperimentRunner(
        distribution_strategy=tf.distribute.get_strategy(), task=task_factory.get_task(config.task),
        mode="train", params=config, model_dir=str(tmp_path))
    slots = {v.name for v in runner.trainer.optimizer.variables() if "/momentum" in v.name}
    assert len(slots) == len(runner.trainer.model.trainable_variables) > 0


@pytest.mark.parametrize("make", [
    lambda: tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9),
    lambda: tf_keras.optimizers.SGD(0.1, momentum=0.9),
    lambda: tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.legacy.SGD(0.1, 0.9)),
], ids=["legacy", "new", "loss_scale"])
def test_optimizer_variables_made_before_the_first_step_are_those_it_makes(make):
    from nonlocal_keras.applications.mask_rcnn import trainer

    def train(early):
        weights = [tf.Variable(np.arange(6.0).reshape(2, 3), dtype=tf.float32),
                   tf.Variable([1.0, -2.0])]
        optimizer = make()
        if early:
            trainer.create_optimizer_variables(optimizer, weights)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(weights[0] ** 2) + tf.reduce_sum(weights[1] ** 3)
            optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))

        for _ in range(3):
            step()
        return (step.experimental_get_tracing_count(),
                # Made by the step, a loss-scale optimizer's are in its tf.cond's scope.
                sorted(((re.sub(r"^cond_\d+/", "", v.name), v.numpy().tolist())
                        for v in optimizer.variables()), key=str),
                [w.numpy() for w in weights])

    (traces_late, variables_late, late), (traces_early, variables_early, early) = (
        train(False), train(True))
    assert (traces_late, traces_early) == (2, 1)
    assert variables_early == variables_late
    for a, b in zip(late, early):
        np.testing.assert_array_equal(a, b)


def _train_detection_until(command, step, signum, stderr_path):
    """Run `command` (unbuffered) and send `signum` twice, as a wrapper that forwards
    its own (`timeout`, a batch script) makes it come, 2 s after Orbit has logged a
    step >= `step` (it logs "training until" just before a loop starts: a signal
    before that stops the command at once, nothing trained and nothing saved);
    returns (exit status, stdout)."""
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   preexec_fn=hangup.as_without_nohup)
        lines = []
        try:
            for line in process.stdout:
                lines.append(line)
                words = line.split()
                if line.startswith("train | step:") and words[3].isdigit() and int(words[3]) >= step:
                    time.sleep(2)
                    process.send_signal(signum)
                    process.send_signal(signum)
                    break
            lines.append(process.communicate(timeout=120)[0])
        finally:
            process.kill()
    return process.returncode, "".join(lines)


@pytest.mark.slow
def test_cli_hangup_saves_the_steps_trained_and_the_same_command_resumes_and_exports(tmp_path):
    """SIGTERM (a preempted job) or SIGHUP (a closed terminal) ended the command at once:
    every step since the last `trainer.checkpoint_interval` was lost. Then it saved
    once the Orbit loop in progress ended, but Model Garden's COCO experiments loop
    over an epoch: now it saves within `trainer.PIECE_STEPS` steps (or PIECE_SECONDS),
    here inside the second loop of 30 steps, 2 s into it (signalled during the first one's
    trace, a minute on loaded cores, the watchdog's grace ended the command unsaved). SIGHUP
    here, SIGTERM in the cluster test below (the same path, `cli.TERMINATED`). The
    command that finishes exports a SavedModel that serves without the package."""
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    command = [sys.executable, "-u", "-m", "nonlocal_keras.training.train_detection",
               "--experiment", mask_rcnn.EXPERIMENT, "--config_file", TINY_YAML,
               "--synthetic_coco_dir", str(tmp_path / "data"),
               "--params_override", smaller_detection.OVERRIDES +
               "trainer.train_steps=90,trainer.steps_per_loop=30,trainer.summary_interval=30,"
               "trainer.checkpoint_interval=1000,task.train_data.global_batch_size=1",
               "--mode", "train", "--model_dir", str(model_dir), "--export_dir", str(export_dir)]
    def saved_step():
        return int(tf.train.latest_checkpoint(str(model_dir)).rsplit("-", 1)[1])

    status, output = _train_detection_until(command, 30, signal.SIGHUP, tmp_path / "1.err")
    assert status == 129, (tmp_path / "1.err").read_text()[-3000:]
    assert "nonlocal-train-detection: hung up" in (tmp_path / "1.err").read_text()
    saved = saved_step()
    # Inside the second loop here (40 or 50); a core twice as fast could reach its end.
    assert 30 < saved < 90, saved
    assert f"saved checkpoint to {model_dir}/ckpt-{saved}." in output
    assert not export_dir.exists()

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"restored from checkpoint: {model_dir}/ckpt-{saved}" in finished.stdout
    assert f"train | step: {saved:6d} | training until step 90" in finished.stdout
    assert saved_step() == 90
    assert (export_dir / "saved_model.pb").exists()
    check_serves_without_the_package(export_dir, tmp_path, {
        "detection_boxes": (1, 20, 4), "detection_masks": (1, 20, 28, 28),
        "detection_scores": (1, 20)})


@pytest.mark.slow
def test_two_worker_cluster_stops_together_on_sigterm_and_resumes(tmp_path):
    """Two workers on 127.0.0.1 (MultiWorkerMirroredStrategy). SIGTERM to the
    non-chief: it saved alone (a collective) and both failed with tracebacks; now
    both stop at one step, save it together, exit 143. Then the same commands:
    Model Garden's non-chief restored from a new temporary folder (nothing), and
    both failed at the first collective; now both resume and finish."""
    import json

    import loopback

    from nonlocal_keras.applications.mask_rcnn import trainer

    data_dir, model_dir = tmp_path / "data", tmp_path / "model"
    trainer.synthetic_data_config(str(data_dir))  # once, before two processes read it
    ports = loopback.free_ports(2)
    command = [sys.executable, "-u", "-m", "nonlocal_keras.training.train_detection",
               "--experiment", mask_rcnn.EXPERIMENT, "--config_file", TINY_YAML,
               "--synthetic_coco_dir", str(data_dir),
               "--params_override", smaller_detection.OVERRIDES +
               "runtime.distribution_strategy=multi_worker_mirrored,"
               "trainer.train_steps=40,trainer.steps_per_loop=5,trainer.summary_interval=5,"
               "trainer.checkpoint_interval=1000,task.train_data.global_batch_size=2",
               "--mode", "train", "--model_dir", str(model_dir)]

    def start(index, run):
        env = dict(os.environ, TF_CONFIG=json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.{run}.log", "w")
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(index, run):
        return (tmp_path / f"worker{index}.{run}.log").read_text()

    def wait(workers, run):
        try:
            return [worker.wait(timeout=300) for worker in workers]
        except subprocess.TimeoutExpired:
            pytest.fail("a worker hung:\n" + log(0, run)[-3000:] + log(1, run)[-3000:])

    workers = [start(0, 1), start(1, 1)]
    try:
        # Into the second loop: during the first one's trace (a minute on two loaded
        # cores) the watchdog's grace could end before the first point to stop at.
        # Two workers take 0.2 s a step on quiet cores, a few seconds on loaded ones:
        # 40 steps leave room to stop before the last.
        deadline = time.time() + 300
        while "train | step:      5 |" not in log(1, 1) and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        workers[1].send_signal(signal.SIGTERM)
        assert wait(workers, 1) == [143, 143], log(0, 1)[-3000:] + log(1, 1)[-3000:]
        saved = int(tf.train.latest_checkpoint(str(model_dir)).rsplit("-", 1)[1])
        assert saved % 5 == 0 and 5 < saved < 40, saved  # at a loop's end
        assert "A worker of the cluster was terminated: every worker stops" in log(0, 1)
        workers = [start(0, 2), start(1, 2)]
        assert wait(workers, 2) == [0, 0], log(0, 2)[-3000:] + log(1, 2)[-3000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for index in (0, 1):
        assert f"restored from checkpoint: {model_dir}/ckpt-{saved}" in log(index, 2)
        assert "train | step:     40 |" in log(index, 2)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-40")


@pytest.mark.parametrize("step_seconds, seconds, pieces", [
    (0.1, None, [10, 10, 5, 10, 10, 5]),  # a cluster's workers: the same pieces
    (0.1, 5.0, [1, 10, 10, 4, 10, 10, 5]),
    (2.0, 5.0, [1] + [2] * 12 + [2] * 12 + [1]),
    (7.0, 5.0, [1] * 50),
])
def test_a_loop_is_cut_into_pieces_of_ten_steps_or_of_about_five_seconds(
        step_seconds, seconds, pieces):
    """Ten steps of a large model on a CPU outlast a scheduler's grace after
    SIGTERM (and the watchdog's): on one worker the signals are looked at every
    PIECE_SECONDS of steps. Every step is taken once, in order."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    now, taken, looked_at = [0.0], [], []

    def loop_fn(iterator, num_steps):
        assert num_steps.dtype == tf.int32
        taken.append(int(num_steps))
        now[0] += step_seconds * int(num_steps)

    run = trainer.in_pieces(loop_fn, trainer.PIECE_STEPS, lambda: looked_at.append(sum(taken)),
                            seconds, clock=lambda: now[0])
    for _ in range(2):  # two Orbit loops of 25 steps
        run(iter([]), tf.constant(25))
    assert taken == pieces and sum(taken) == 50
    ends = list(itertools.accumulate(pieces))
    assert looked_at == [end for end in ends if end not in (25, 50)]


@pytest.mark.parametrize("events, committed", [(["TERMINATED"], True), (["INTERRUPTED"], False),
                                               (["TERMINATED", "INTERRUPTED"], False)])
def test_an_evaluation_stopped_by_sigterm_commits_the_steps_trained_first(
        events, committed, monkeypatch):
    """Between two blocks of steps, Orbit evaluates: a SIGTERM there (seen by hand: exit
    143 two seconds after it, ckpt-6 saved) must not lose the block just trained; a
    Ctrl-C saves nothing, as during the steps."""
    from nonlocal_keras.training import cli

    class Left(Exception):
        pass

    def leave():
        raise Left  # instead of os._exit

    monkeypatch.setattr(cli, "_exit_now", leave)
    commits = []
    try:
        for name in events:
            getattr(cli, name).set()
        with pytest.raises(Left if committed else KeyboardInterrupt):
            with cli.LoopSignals.evaluation(lambda: commits.append(cli._AT_STEP_END.is_set())):
                raise KeyboardInterrupt
    finally:
        cli.TERMINATED.clear()
        cli.INTERRUPTED.clear()
    # During the commit a repeated SIGTERM is only recorded (no KeyboardInterrupt in it).
    assert commits == ([True] if committed else [])
    with cli.LoopSignals.evaluation(lambda: commits.append("again")):
        pass  # no signal: nothing committed
    assert len(commits) == (1 if committed else 0) and not cli._AT_STEP_END.is_set()


class _Pieces(orbit.AbstractTrainer):
    """An Orbit trainer whose loop function (which CommittingController cuts into
    pieces) only counts the steps; one loop function for every loop, as Model Garden's."""

    def __init__(self, step):
        self.step, self.loop_fn = step, None

    def create_train_loop_fn(self):
        return lambda iterator, num_steps: self.step.assign_add(int(num_steps))

    def train(self, num_steps):
        self.loop_fn = self.loop_fn or self.create_train_loop_fn()
        self.loop_fn(None, tf.constant(num_steps))


def test_a_cluster_reads_the_agreed_step_before_its_last_collective(tmp_path):
    """In a cluster the workers read the agreed step (the chief's store) at each
    piece's end; the completion save is the last collective: a read after it
    (as the check after the last loop made at first) could find the chief gone,
    and the other worker failed at the end of a finished run, exit 2."""
    from nonlocal_keras.applications.mask_rcnn import trainer
    from nonlocal_keras.training import cli

    step, events = tf.Variable(0, dtype=tf.int64), []

    class Cluster:  # a `cluster_stop.ClusterStop` nobody terminates
        def due(self):
            events.append(("read", int(step.numpy())))
            return False

    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path),
                                         max_to_keep=1, step_counter=step,
                                         checkpoint_interval=1000)
    saving = manager.save
    manager.save = lambda *args, **kwargs: events.append(("save", int(step.numpy()))) or saving(
        *args, **kwargs)
    controller = trainer.CommittingController(
        trainer=_Pieces(step), global_step=step, steps_per_loop=20, checkpoint_manager=manager,
        signals=cli.LoopSignals)
    controller._cluster = Cluster()
    controller.train(steps=40)
    assert ("read", 40) in events and events[-1] == ("save", 40), events


def test_a_sigterm_between_two_loops_commits_at_the_next_piece(tmp_path, monkeypatch):
    """Between two loops Orbit writes summaries and periodic checkpoints: a SIGTERM
    there raised at once, and the command left without the loop just trained (in a
    cluster, that worker left alone and its peers failed). Now it is met at the next
    piece's end, with a commit."""
    from nonlocal_keras.applications.mask_rcnn import trainer
    from nonlocal_keras.training import cli

    class Left(Exception):
        pass

    def leave():
        raise Left  # instead of os._exit

    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path),
                                         max_to_keep=5, step_counter=step,
                                         checkpoint_interval=1000)
    controller = trainer.CommittingController(
        trainer=_Pieces(step), global_step=step, steps_per_loop=20, checkpoint_manager=manager,
        signals=cli.LoopSignals)
    saving = controller._maybe_save_checkpoint

    def sigterm_after_the_first_loop(*args, **kwargs):
        if int(step.numpy()) == 20:
            cli._on_signal(signal.SIGTERM)
        return saving(*args, **kwargs)

    monkeypatch.setattr(controller, "_maybe_save_checkpoint", sigterm_after_the_first_loop)
    monkeypatch.setattr(cli, "_exit_now", leave)
    try:
        with pytest.raises(Left):
            controller.train(steps=60)
    except KeyboardInterrupt:  # would end pytest's session
        pytest.fail("the SIGTERM between two loops was raised at once")
    finally:
        cli.TERMINATED.clear()
    assert int(step.numpy()) == 30 and manager.latest_checkpoint.endswith("ckpt-30")
    assert not cli._AT_STEP_END.is_set()


def test_export_of_a_folder_without_a_checkpoint_is_refused(tmp_path):
    """Model Garden's export wrote the initial weights when the folder held none."""
    from nonlocal_keras.applications.mask_rcnn import export

    with pytest.raises(ValueError, match=r"holds no checkpoint.*untrained.*"
                       f"Received: checkpoint_path={str(tmp_path)!r}"):
        export.export_saved_model(tiny_config(), str(tmp_path), str(tmp_path / "export"))
    assert os.listdir(tmp_path) == []


def _run_folder_of(experiment_name, folder):
    """`folder` as the trainer leaves it: params.yaml and a checkpoint."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    trainer._serialize_config(exp_factory.get_exp_config(experiment_name), str(folder))
    assert os.listdir(folder) == ["params.yaml"]  # no temporary file left
    tf.train.Checkpoint(step=tf.Variable(1)).save(str(folder / "ckpt"))
    return str(folder)


@pytest.mark.slow
def test_a_second_command_on_a_training_folder_and_a_failed_one_change_nothing(
        tmp_path, synthetic_data):
    """Two commands on one --model_dir trained side by side, both exit 0; a command
    that failed (a data path matching nothing) had rewritten the folder's params.yaml."""
    import fcntl

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "params.yaml").write_text("kept: 1\n")
    command = [sys.executable, "-m", "nonlocal_keras.training.train_detection",
               "--experiment", PLAIN_EXPERIMENT, "--mode", "train", "--model_dir", str(folder)]
    with open(folder / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a command training there
        busy = subprocess.run(command + ["--params_override", "task.train_data.input_path="
                                         + synthetic_data["train_tfrecords"]],
                              capture_output=True, text=True, timeout=300)
    assert busy.returncode == 2, busy.stderr[-3000:]
    assert busy.stderr.strip().splitlines()[-1].startswith(
        "nonlocal-train-detection: error: Another process is training in this run folder")
    failed = subprocess.run(command + ["--params_override",
                                       f"task.train_data.input_path={tmp_path}/nowhere/*"],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "does not match any files" in failed.stderr, \
        failed.stderr[-3000:]
    assert (folder / "params.yaml").read_text() == "kept: 1\n"


def test_an_override_or_config_that_is_empty_or_gives_a_section_a_value_is_named(tmp_path):
    """Found by a walk: each was a traceback in Model Garden's override: an empty
    --config_file or --params_override file ("'NoneType' object has no attribute
    'items'"), a list, `task: null`, `trainer: 5`."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    for text in ("", "# a comment\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(ValueError, match=re.escape(
                "--config_file must hold a mapping (task: ..., trainer: ...); this one is "
                f"empty. Received: --config_file={str(tmp_path / 'empty.yaml')!r}")):
            trainer.check_flags("run", "train", None, [str(tmp_path / "empty.yaml")])
        with pytest.raises(ValueError, match=re.escape(
                "--params_override must be KEY=VALUE pairs, a YAML mapping or a YAML file "
                "holding one; this is empty.")):
            trainer.override_mapping(str(tmp_path / "empty.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ValueError, match="holding one; this is not. Received: --params_override="):
        trainer.override_mapping(str(tmp_path / "list.yaml"))
    # What Model Garden reads as pairs, YAML or a file's name comes back as a mapping.
    assert trainer.override_mapping("task.model.min_level=3,trainer.train_steps=5") == {
        "task": {"model": {"min_level": 3}}, "trainer": {"train_steps": 5}}
    (tmp_path / "fine.yaml").write_text("trainer:\n  train_steps: 5\n")
    assert trainer.override_mapping(str(tmp_path / "fine.yaml")) == {"trainer": {"train_steps": 5}}
    assert trainer.override_mapping("input_size=[256,256,3") is None  # Model Garden's to name
    defaults = exp_factory.get_exp_config(PLAIN_EXPERIMENT)
    for given, message in (({"task": None}, "`task` is empty (null) where a section is needed. "
                                             "Received: task=None"),
                           ({"trainer": 5}, "`trainer` is a section: give its fields "
                                            "(trainer.<field>: ...). Received: --params_override: "
                                            "trainer=5"),
                           ({"task": {"model": [1]}}, "Received: --params_override: "
                                                      "task.model=[1]")):
        with pytest.raises(ValueError, match=re.escape(message)):
            trainer.check_sections(given, defaults, "--params_override")
    trainer.check_sections({"task": {"model": {"min_level": 3}}, "nosuch": 5}, defaults, "x")


def test_files_that_are_not_there_are_named_by_their_field(tmp_path):
    """Found by a walk: a missing --config_file ("x.yaml; No such file or
    directory"), annotation file ("[Errno 2] ...") or init checkpoint
    ("Unsuccessful TensorSliceReader constructor", after the model's build)."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    absent = str(tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match=re.escape(
            f"--config_file is not there (no such file). Received: --config_file={absent!r}")):
        trainer.check_flags("run", "train", None, [absent])
    task = exp_factory.get_exp_config(PLAIN_EXPERIMENT).task
    task.annotation_file = str(tmp_path / "absent.json")
    with pytest.raises(ValueError, match=re.escape(
            f"task.annotation_file is not there. Received: task.annotation_file="
            f"{task.annotation_file!r}")):
        trainer.check_annotation_file(task, "train_and_eval")
    trainer.check_annotation_file(task, "train")  # training reads none
    run = str(tmp_path / "run")
    for path, message in ((str(tmp_path / "ckpt-7"), "is no checkpoint: neither it nor "),
                          (str(tmp_path), "is a folder that holds no checkpoint")):
        task.init_checkpoint = path
        with pytest.raises(ValueError, match=re.escape(message) + ".*Received: "
                           f"task.init_checkpoint={re.escape(repr(path))}"):
            trainer.check_init_checkpoint(task, run, "train")
        trainer.check_init_checkpoint(task, run, "eval")  # evaluation reads its own
    saved = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), run,
                                       max_to_keep=1).save()
    trainer.check_init_checkpoint(task, run, "train")  # a resumed run reads its own
    for path in (saved, run, str(tmp_path / "weights.txt")):  # a prefix, a folder, a file
        (tmp_path / "weights.txt").write_text("TensorFlow's first format, say")
        task.init_checkpoint = path
        trainer.check_init_checkpoint(task, str(tmp_path / "new"), "train")


def test_an_init_checkpoint_of_another_backbone_is_named(tmp_path):
    """Found by a re-walk: a non-local run's checkpoint as `task.init_checkpoint`
    failed in TensorFlow's words only, naming no setting."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    task = exp_factory.get_exp_config(PLAIN_EXPERIMENT).task
    task.init_checkpoint = str(tmp_path / "other" / "ckpt-4")
    shapes = ValueError("Received incompatible tensor with shape (1, 1, 256, 64) when attempting "
                        "to restore variable with shape (1, 1, 256, 128)")
    with pytest.raises(ValueError, match=r"^task.init_checkpoint is not of this backbone "
                       r"\(Received incompatible tensor .*\): it must be a checkpoint of the same "
                       r"plain ResNet .* Received: task.init_checkpoint='.*ckpt-4'$"):
        with trainer.other_init_checkpoint_named(task, str(tmp_path / "new")):
            raise shapes
    # A resumed run restores its own checkpoint, not the init one: TensorFlow's words stay.
    tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), str(tmp_path / "run"),
                               max_to_keep=1).save()
    with pytest.raises(ValueError, match="^Received incompatible tensor"):
        with trainer.other_init_checkpoint_named(task, str(tmp_path / "run")):
            raise shapes


def test_a_whole_number_for_a_float_field_becomes_a_float():
    """Found by a walk: `nms_iou_threshold=1` stayed an int and failed in the
    model's trace ("Input 'y' of 'Less' Op has type int32")."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    params = params_dict.override_params_dict(
        exp_factory.get_exp_config(PLAIN_EXPERIMENT),
        "task.model.detection_generator.nms_iou_threshold=1,trainer.train_steps=7",
        is_strict=True)
    trainer.floats_as_floats(params, exp_factory.get_exp_config(PLAIN_EXPERIMENT))
    threshold = params.task.model.detection_generator.nms_iou_threshold
    assert threshold == 1.0 and type(threshold) is float
    assert type(params.trainer.train_steps) is int


def test_a_config_file_that_is_not_a_mapping_is_one_error_naming_it(tmp_path):
    from nonlocal_keras.applications.mask_rcnn import trainer

    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [unclosed\n  foo: : :\n")
    with pytest.raises(ValueError, match=r"--config_file is not valid YAML"):
        trainer.check_flags("run", "train", None, [str(broken)])
    broken.write_text("- 1\n")
    with pytest.raises(ValueError, match=r"--config_file must hold a mapping"):
        trainer.check_flags("run", "train", None, [str(broken)])
    run = _run_folder_of(PLAIN_EXPERIMENT, tmp_path / "old_run")
    with pytest.raises(ValueError, match="--export_dir holds a training run"):
        trainer.check_flags(str(tmp_path / "new"), "train", run, [])
    exported = tmp_path / "exported"  # an earlier export: written again
    exported.mkdir()
    for name in ("params.yaml", "saved_model.pb"):
        (exported / name).write_text("")
    trainer.check_flags(str(tmp_path / "new"), "train", str(exported), [])
    with pytest.raises(ValueError, match="is in .*, a file, not a folder"):
        trainer.check_flags(str(broken / "sub"), "train", None, [])


def test_an_export_dir_that_is_not_a_new_empty_or_exported_folder_is_refused(tmp_path):
    """The export replaces its folder whole: `--export_dir` above `--model_dir`
    deleted the run it exported, and a folder of the user's files lost them,
    both exit 0."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    run = _run_folder_of(PLAIN_EXPERIMENT, tmp_path / "parent" / "run")
    for export_dir in (tmp_path / "parent", tmp_path, run):
        with pytest.raises(ValueError, match=r"not one above it: the export replaces the folder "
                           rf"whole. Received: --export_dir='{export_dir}', --model_dir='{run}'"):
            trainer.check_flags(run, "eval", str(export_dir), [])
    mine = tmp_path / "mine"
    mine.mkdir()
    trainer.check_flags(run, "eval", str(mine), [])  # empty
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds no SavedModel but notes.txt, which the export "
                       "would replace"):
        trainer.check_flags(run, "eval", str(mine), [])
    trainer.check_flags(run, "eval", str(tmp_path / "parent" / "run" / "export"), [])  # new


def test_a_model_dir_of_another_model_is_refused_before_anything_is_written(tmp_path):
    """Over a plain Mask R-CNN's run, the non-local experiment overwrote params.yaml,
    then restored what fitted. Every registered experiment's own folder passes."""
    from nonlocal_keras.applications.mask_rcnn import keypoint_experiment, trainer

    names = [mask_rcnn.EXPERIMENT, PLAIN_EXPERIMENT, *keypoint_experiment.EXPERIMENTS]
    for name in names:
        folder = _run_folder_of(name, tmp_path / name)
        for mode in ("train", "eval", "train_and_eval"):
            trainer.check_model_dir(exp_factory.get_exp_config(name), folder, mode)
    plain = str(tmp_path / PLAIN_EXPERIMENT)
    # Settings of inference, sampling, input size or synchronised BN: the same network.
    changed = exp_factory.get_exp_config(PLAIN_EXPERIMENT)
    changed.task.model.detection_generator.max_num_detections = 7
    changed.task.model.norm_activation.use_sync_bn = True
    changed.task.model.input_size = [96, 96, 3]
    trainer.check_model_dir(changed, plain, "train")
    changed.task.model.detection_head.num_fcs += 1
    with pytest.raises(ValueError, match=r"task\.model\.detection_head\.num_fcs: \d -> \d"):
        trainer.check_model_dir(changed, plain, "eval")
    before = {f: os.path.getmtime(os.path.join(plain, f)) for f in os.listdir(plain)}
    with pytest.raises(ValueError, match=r"holds the checkpoints of another model \(task\.model\."
                       r"backbone\.type: 'resnet' -> 'resnet_nonlocal'; .*Received: --model_dir="):
        trainer.check_model_dir(exp_factory.get_exp_config(mask_rcnn.EXPERIMENT), plain, "train")
    assert {f: os.path.getmtime(os.path.join(plain, f)) for f in os.listdir(plain)} == before
    empty = tmp_path / "empty"
    with pytest.raises(ValueError, match="holds no checkpoint, so --mode eval"):
        trainer.check_model_dir(exp_factory.get_exp_config(PLAIN_EXPERIMENT), str(empty), "eval")
    trainer.check_model_dir(exp_factory.get_exp_config(PLAIN_EXPERIMENT), str(empty), "train")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="--model_dir is a file"):  # was a traceback
        trainer.check_model_dir(exp_factory.get_exp_config(PLAIN_EXPERIMENT),
                                str(tmp_path / "a_file"), "train")


@pytest.mark.parametrize("override, message", [
    ("trainer.train_steps=0", "`trainer.train_steps` must be at least 1. Received: "
                              "trainer.train_steps=0"),
    ("trainer.train_steps=-5", "Received: trainer.train_steps=-5"),
    ("trainer.steps_per_loop=0", "Received: trainer.steps_per_loop=0"),
    ("task.model.num_classes=1", "`task.model.num_classes` must be at least 2"),
    # A bare KeyError: "error: 7".
    # Keras' "Dimensions must be equal, but are 64 and 63" from the FPN's build.
    ("task.model.input_size=[250, 256, 3]", "`task.model.input_size` must be [height, width, 3] "
     "with sides that are multiples of 2^task.model.max_level = 64 (the coarsest level's stride). "
     "Received: task.model.input_size=[250, 256, 3]"),
    ("task.model.input_size=[0, 0, 3]", "Received: task.model.input_size=[0, 0, 3]"),
    ("task.model.input_size=[256, 256]", "Received: task.model.input_size=[256, 256]"),
    ("task.model.backbone.resnet_nonlocal.model_id=7", "`task.model.backbone.resnet_nonlocal."
     "model_id` must be one of the ResNet depths 10, 18, 26, 34, 50, 101, 152, 200, 270, 350, "
     "420 (a bare KeyError before). Received: task.model.backbone.resnet_nonlocal.model_id=7"),
    # Found by a walk: a graph trace after the build naming no key; TopKV2's words.
    ("task.model.roi_generator.num_proposals=-10", "`task.model.roi_generator.num_proposals` "
     "must be at least 1. Received: task.model.roi_generator.num_proposals=-10"),
    ("task.model.detection_generator.max_num_detections=-5", "Received: task.model."
     "detection_generator.max_num_detections=-5"),
    # Gradient ascent, exit 0; a resize traceback mid-training.
    ("trainer.optimizer_config.learning_rate.stepwise.values=[0.1, -0.01, 0.001]",
     "`trainer.optimizer_config.learning_rate.stepwise.values` must be learning rates >= 0 "
     "(finite). Received: trainer.optimizer_config.learning_rate.stepwise.values=[0.1, -0.01, "
     "0.001]"),
    ("trainer.optimizer_config.warmup.linear.warmup_learning_rate=-1.0", "Received: trainer."
     "optimizer_config.warmup.linear.warmup_learning_rate=-1.0"),
    ("trainer.optimizer_config.learning_rate.type=constant,trainer.optimizer_config."
     "learning_rate.constant.learning_rate=-0.01", "Received: trainer.optimizer_config."
     "learning_rate.constant.learning_rate=-0.01"),
    ("task.train_data.parser.aug_scale_min=-1.0", "`task.train_data.parser.aug_scale_min` and "
     "`aug_scale_max` must be scales with 0 < min <= max. Received: task.train_data.parser."
     "aug_scale_min=-1.0, task.train_data.parser.aug_scale_max=1.25"),
    # Found by a walk: trained, exit 0 (the thresholds, -1 convolutions); a bare
    # KeyError "'5'" (min_level); Keras' "Invalid value for argument `filters`".
    ("task.model.detection_generator.nms_iou_threshold=-0.5", "`task.model.detection_generator."
     "nms_iou_threshold` must be a fraction in [0, 1] (an IoU or a score). Received: task.model."
     "detection_generator.nms_iou_threshold=-0.5"),
    ("task.model.roi_generator.pre_nms_score_threshold=.nan", "Received: task.model."
     "roi_generator.pre_nms_score_threshold=nan"),
    ("task.model.roi_sampler.cascade_iou_thresholds=[0.5, 1.5]", "Received: task.model."
     "roi_sampler.cascade_iou_thresholds=[0.5, 1.5]"),
    ("task.model.min_level=7", "`task.model.min_level` must be a level of the ResNet backbone, "
     "2 to 5 (the FPN starts from one), and at most `task.model.max_level`. Received: "
     "task.model.min_level=7, task.model.max_level=6"),
    ("task.model.min_level=6", "Received: task.model.min_level=6, task.model.max_level=6"),
    ("task.model.min_level=1", "Received: task.model.min_level=1, task.model.max_level=6"),
    ("task.model.roi_sampler.foreground_iou_threshold=0.0", "The RoI sampler's IoU thresholds "
     "must run background_iou_low <= background_iou_high <= foreground_iou. Received: task.model."
     "roi_sampler.background_iou_low_threshold=0.0, task.model.roi_sampler."
     "background_iou_high_threshold=0.5, task.model.roi_sampler.foreground_iou_threshold=0.0"),
    ("task.model.rpn_head.num_convs=-1", "`task.model.rpn_head.num_convs` must be at least 0. "
     "Received: task.model.rpn_head.num_convs=-1"),
    ("task.model.decoder.fpn.num_filters=0", "Received: task.model.decoder.fpn.num_filters=0"),
    ("task.model.anchor.num_scales=0", "Received: task.model.anchor.num_scales=0"),
    ("task.model.backbone.resnet_nonlocal.depth_multiplier=0.0", "`task.model.backbone."
     "resnet_nonlocal.depth_multiplier` must be a number > 0 (it scales the channels). "
     "Received: task.model.backbone.resnet_nonlocal.depth_multiplier=0.0"),
    ("task.model.anchor.aspect_ratios=[]", "`task.model.anchor.aspect_ratios` must be one or "
     "more numbers > 0. Received: task.model.anchor.aspect_ratios=[]"),
    # Model Garden's words named the value or a field, not the key.
    ("task.train_data.seed=-1", "`task.train_data.seed` must be at least 0. "
     "Received: task.train_data.seed=-1"),
    ("trainer.summary_interval=0", "Received: trainer.summary_interval=0"),
    ("runtime.distribution_strategy=bogus", "`runtime.distribution_strategy` must be one of off, "
     "one_device, mirrored, parameter_server, multi_worker_mirrored, tpu. Received: "
     "runtime.distribution_strategy='bogus'"),
    ("runtime.mixed_precision_dtype=float64", "`runtime.mixed_precision_dtype` must be one of "
     "float32, float16, bfloat16. Received: runtime.mixed_precision_dtype='float64'"),
])
def test_values_that_make_no_run_are_refused(override, message):
    """`trainer.train_steps=0` or -5 wrote an untrained ckpt-0, exit 0;
    `task.model.num_classes=0` was a model-building traceback folded into a line."""
    from official.core import exp_factory
    from official.modeling import hyperparams

    from nonlocal_keras.applications.mask_rcnn import trainer

    params = hyperparams.override_params_dict(
        exp_factory.get_exp_config(mask_rcnn.EXPERIMENT), override, is_strict=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer.check_value_ranges(params)
    trainer.check_value_ranges(exp_factory.get_exp_config(mask_rcnn.EXPERIMENT))


def test_a_damaged_record_image_or_checkpoint_is_a_user_error_naming_the_inputs():
    """A TFRecord with flipped bytes (DataLossError), an image that is none
    (InvalidArgumentError) and a truncated checkpoint (IndexError) were tracebacks."""
    from official.core import exp_factory

    from nonlocal_keras.applications.mask_rcnn import trainer

    params = exp_factory.get_exp_config(mask_rcnn.EXPERIMENT)
    for error, said in [
            (tf.errors.DataLossError(None, None, "Graph execution error:\ncorrupted record at 12"),
             "corrupted record at 12"),
            (tf.errors.InvalidArgumentError(None, None, "Unknown image file format. One of JPEG"),
             "Unknown image file format"),
            (IndexError("Read less bytes than requested"), "Read less bytes than requested")]:
        with pytest.raises(ValueError, match=rf"^A file this command reads is damaged \({said}\).*"
                           r"Received: task.train_data.input_path=.*--model_dir='run'$"):
            with trainer.damaged_files_named(params, "run"):
                raise error
    for bug in (tf.errors.InvalidArgumentError(None, None, "Incompatible shapes"),
                IndexError("list index out of range")):
        with pytest.raises(type(bug)):
            with trainer.damaged_files_named(params, "run"):
                raise bug


@pytest.mark.slow
def test_a_command_that_fails_leaves_the_folder_as_it_found_it(tmp_path):
    """A first command that failed on damaged data (or a block placement the
    network lacks) left a new --model_dir with its params.yaml and lock file
    behind, and a traceback for the data; in a folder that was there, its
    params.yaml, lock file and summaries."""
    data = tmp_path / "damaged.tfrecord"
    with tf.io.TFRecordWriter(str(data)) as writer:
        writer.write(b"x" * 200)
    raw = bytearray(data.read_bytes())
    raw[20:60] = bytes(40)  # the record's bytes no longer match its checksum
    data.write_bytes(bytes(raw))
    model_dir = tmp_path / "new" / "run"

    def train():
        result = subprocess.run(
            [sys.executable, "-m", "nonlocal_keras.training.train_detection",
             "--experiment", mask_rcnn.EXPERIMENT, "--config_file", TINY_YAML,
             "--params_override",
             smaller_detection.OVERRIDES + f"trainer.train_steps=2,task.train_data.input_path={data}",
             "--mode", "train", "--model_dir", str(model_dir)],
            capture_output=True, text=True, timeout=600)
        assert result.returncode == 2, result.stderr[-4000:]
        assert "Traceback" not in result.stderr
        assert re.match(r"nonlocal-train-detection: error: A file this command reads is damaged "
                        r"\(corrupted record at \d+\)", result.stderr.strip().splitlines()[-1]), \
            result.stderr[-2000:]

    train()
    assert not model_dir.exists() and (tmp_path / "new").is_dir()
    (model_dir / "notes").mkdir(parents=True)
    (model_dir / "notes" / "mine.txt").write_text("mine")
    train()
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*")) == [
        "notes", "notes/mine.txt"]


@pytest.mark.parametrize("override, message", [
    # Orbit's train_and_evaluate trained min(steps left, interval) steps at a time: forever.
    ("trainer.validation_interval=-5", "`trainer.validation_interval` must be at least 0 "
                                       "(0: one evaluation, after the training). Received: "
                                       "trainer.validation_interval=-5"),
    ("trainer.validation_interval=-1", "Received: trainer.validation_interval=-1"),
    # Trained, saved no checkpoint, exit 0: a rerun trained again.
    ("trainer.checkpoint_interval=0", "`trainer.checkpoint_interval` must be at least 1. "
                                      "Received: trainer.checkpoint_interval=0"),
    ("trainer.checkpoint_interval=-3", "Received: trainer.checkpoint_interval=-3"),
    # Tracebacks, and -1 a cryptic "Dimension -1 must be >= 0".
    ("task.train_data.global_batch_size=0", "`task.train_data.global_batch_size` must be at "
                                            "least 1. Received: "
                                            "task.train_data.global_batch_size=0"),
    ("task.train_data.global_batch_size=-1", "Received: task.train_data.global_batch_size=-1"),
    ("task.validation_data.global_batch_size=0",
     "Received: task.validation_data.global_batch_size=0"),
    ("task.train_data.shuffle_buffer_size=0", "`task.train_data.shuffle_buffer_size` must be at "
                                              "least 1. Received: "
                                              "task.train_data.shuffle_buffer_size=0"),
    # Trained the whole run, then failed with Orbit's ValueError.
    ("trainer.validation_steps=0", "`trainer.validation_steps` must be at least 1, or -1 (the "
                                   "whole validation set). Received: trainer.validation_steps=0"),
    ("trainer.validation_steps=-5", "Received: trainer.validation_steps=-5"),
])
def test_intervals_steps_and_batch_sizes_that_make_no_run_are_refused(override, message):
    from official.modeling import hyperparams

    from nonlocal_keras.applications.mask_rcnn import trainer

    params = hyperparams.override_params_dict(
        exp_factory.get_exp_config(mask_rcnn.EXPERIMENT), override, is_strict=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer.check_value_ranges(params)


def test_model_gardens_special_values_stay_allowed():
    """`trainer.validation_steps=-1` evaluates the whole set; `validation_interval=0`
    is Orbit's "no interval" (one evaluation, after the training)."""
    from official.modeling import hyperparams

    from nonlocal_keras.applications.mask_rcnn import keypoint_experiment, trainer

    for name in (mask_rcnn.EXPERIMENT, PLAIN_EXPERIMENT, *keypoint_experiment.EXPERIMENTS):
        trainer.check_value_ranges(exp_factory.get_exp_config(name))
    trainer.check_value_ranges(hyperparams.override_params_dict(
        exp_factory.get_exp_config(mask_rcnn.EXPERIMENT),
        "trainer.validation_steps=-1,trainer.validation_interval=0,"
        "task.train_data.global_batch_size=1,trainer.checkpoint_interval=1", is_strict=True))


def test_a_model_dir_that_links_into_the_export_dir_is_refused(tmp_path):
    """The check compared absolute paths: a --model_dir that is a symbolic link
    to a folder in --export_dir passed, and the export deleted the run, exit 0."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    run = _run_folder_of(PLAIN_EXPERIMENT, tmp_path / "export" / "run")
    link = tmp_path / "run_link"
    link.symlink_to(run, target_is_directory=True)
    with pytest.raises(ValueError, match="not one above it: the export replaces the folder whole"):
        trainer.check_flags(str(link), "eval", str(tmp_path / "export"), [])
    export_link = tmp_path / "export_link"  # a link to the folder above the run
    export_link.symlink_to(tmp_path / "export", target_is_directory=True)
    with pytest.raises(ValueError, match="not one above it"):
        trainer.check_flags(run, "eval", str(export_link), [])
    trainer.check_flags(str(link), "eval", str(tmp_path / "elsewhere"), [])


def test_a_truncated_checkpoint_or_an_init_checkpoint_that_is_none_names_the_file(tmp_path):
    """`truncate -s 10 ckpt-N.index` (an OpError of code UNKNOWN) and a
    task.init_checkpoint that is a text file (DataLossError) were tracebacks."""
    from official.modeling import hyperparams

    from nonlocal_keras.applications.mask_rcnn import trainer

    run = tmp_path / "run"
    saved = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), str(run),
                                       max_to_keep=1).save()
    os.truncate(saved + ".index", 10)
    params = exp_factory.get_exp_config(mask_rcnn.EXPERIMENT)
    with pytest.raises(ValueError, match=r"^A checkpoint this command reads is damaged or no "
                       r"checkpoint \(file is too short to be an sstable\): the latest of "
                       rf"--model_dir \({re.escape(saved)}\).*Received: task.init_checkpoint=.*, "
                       rf"--model_dir='{run}'$"):
        with trainer.damaged_files_named(params, str(run), "train"):
            tf.train.Checkpoint(v=tf.Variable(2.0)).restore(saved)
    text = tmp_path / "weights.txt"
    text.write_text("not a checkpoint\n")
    params = hyperparams.override_params_dict(params, f"task.init_checkpoint={text}",
                                              is_strict=True)
    with pytest.raises(ValueError, match=rf"too short to be an sstable: {re.escape(str(text))}\)"
                       rf".*Received: task.init_checkpoint='{re.escape(str(text))}'"):
        with trainer.damaged_files_named(params, str(tmp_path / "new"), "train"):
            tf.train.load_checkpoint(str(text))


@pytest.mark.parametrize("error", [
    tf.errors.OutOfRangeError(None, None, "End of sequence\n\t [[{{node IteratorGetNext}}]]"),
    tf.errors.InvalidArgumentError(None, None, "Graph execution error:\nCould not parse example "
                                   "input, value: 'hello'"),
    tf.errors.InvalidArgumentError(None, None, "Feature: image/encoded (data type: string) is "
                                   "required but could not be found."),
])
def test_data_that_are_no_coco_examples_name_the_input_path_they_were_read_from(error):
    """An empty TFRecord, records that are not tf.Example, tf.Examples without the
    COCO keys: tracebacks, in training and in --mode eval."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    params = exp_factory.get_exp_config(mask_rcnn.EXPERIMENT)
    params.task.train_data.input_path = "/data/train*"
    params.task.validation_data.input_path = "/data/val*"
    for mode, phase, named, unnamed in [
            ("train", {}, "task.train_data.input_path='/data/train*'", "validation_data"),
            ("eval", {}, "task.validation_data.input_path='/data/val*'", "train_data"),
            ("train_and_eval", {"now": "eval"}, "task.validation_data.input_path=", "train_data"),
            ("train_and_eval", {"now": "train"}, "task.train_data.input_path=", "validation_data")]:
        with pytest.raises(ValueError, match=r"^The (training|validation) data are not COCO "
                           r"tf.Examples .*Received: ") as raised:
            with trainer.damaged_files_named(params, "run", mode, phase):
                raise error
        assert named in str(raised.value) and unnamed not in str(raised.value)
        assert "\n" not in str(raised.value)
    with pytest.raises(tf.errors.OutOfRangeError):  # another error of that type: a bug's
        with trainer.damaged_files_named(params, "run", "train"):
            raise tf.errors.OutOfRangeError(None, None, "Read past the end of the buffer")


def test_a_model_dir_this_user_cannot_write_is_one_line(tmp_path, monkeypatch):
    """A read-only --model_dir: PermissionDeniedError tracebacks (params.yaml's
    temporary file, the summary writer). Elsewhere that error stays a bug's."""
    from nonlocal_keras.applications.mask_rcnn import trainer
    from nonlocal_keras.training import train_detection

    run = tmp_path / "run"
    run.mkdir()
    denied = tf.errors.PermissionDeniedError(
        None, None, f"{run}/params.yaml.tmp-1-ab; Permission denied")
    with pytest.raises(ValueError, match=rf"^Cannot write in --model_dir \(.*Permission denied\)"
                       rf"\. Received: --model_dir='{run}'$") as raised:
        with trainer.unwritable_model_dir_named(str(run)):
            raise denied
    assert train_detection._is_user_error(raised.value)
    with pytest.raises(tf.errors.PermissionDeniedError):
        with trainer.unwritable_model_dir_named(str(run)):
            raise tf.errors.PermissionDeniedError(None, None, "/etc/other; Permission denied")
    trainer.check_can_write("--model_dir", str(run))
    trainer.check_can_write("--model_dir", str(run / "new" / "deeper"))
    real_access = os.access
    monkeypatch.setattr(trainer.os, "access", lambda path, mode: (
        False if str(path).startswith(str(run)) else real_access(path, mode)))
    with pytest.raises(ValueError, match=rf"^Cannot write in --model_dir: it takes no new file "
                       rf"\(Permission denied\)\. Received: --model_dir='{run}'$"):
        trainer.check_can_write("--model_dir", str(run))
    with pytest.raises(ValueError, match=r"^Cannot write in --model_dir \(.*where it would be "
                       r"made\)"):
        trainer.check_can_write("--model_dir", str(run / "new"))


@pytest.mark.slow
def test_a_failed_eval_on_unusable_validation_data_is_one_line_and_leaves_the_run_as_it_was(
        tmp_path, synthetic_data):
    """--mode eval on tf.Examples without the COCO keys was a traceback, and left
    validation/events... newly written in the run folder it evaluated."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    nokeys = tmp_path / "nokeys.tfrecord"
    with tf.io.TFRecordWriter(str(nokeys)) as writer:
        for _ in range(2):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
                .SerializeToString())
    run = tmp_path / "run"
    trainer._serialize_config(tiny_config(), str(run))
    tf.train.Checkpoint(step=tf.Variable(1, dtype=tf.int64)).save(str(run / "ckpt"))
    (run / "validation").mkdir()  # an earlier evaluation's, kept
    (run / "validation" / "events.earlier").write_text("earlier")

    def snapshot():
        # A folder's mtime changes when a file is made and removed in it.
        return {str(p.relative_to(run)): p.is_dir() or p.stat().st_mtime_ns
                for p in run.rglob("*")}

    before = snapshot()
    result = subprocess.run(
        [sys.executable, "-m", "nonlocal_keras.training.train_detection",
         "--experiment", mask_rcnn.EXPERIMENT, "--config_file", TINY_YAML,
         "--params_override", f"task.validation_data.input_path={nokeys},"
         f"task.annotation_file={synthetic_data['val_json']},trainer.validation_steps=1,"
         "task.validation_data.global_batch_size=1",
         "--mode", "eval", "--model_dir", str(run)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "nonlocal-train-detection: error: The validation data are not COCO tf.Examples Model "
        "Garden can read (Feature: image/encoded (data type: string) is required but could not "
        "be found): an empty TFRecord file, records that are not tf.Example, or tf.Examples "
        "without the COCO keys (image/encoded, image/object/bbox/...). Received: "
        f"task.validation_data.input_path='{nokeys}'")
    assert snapshot() == before


def test_data_of_empty_or_missing_files_are_refused_before_anything_is_written(
        tmp_path, synthetic_data):
    """An empty TFRecord: training was a traceback ("End of sequence"); --mode eval
    evaluated nothing (validation_loss 0.0, no AP), exit 0. A missing one was found
    after the network was built and traced."""
    from nonlocal_keras.applications.mask_rcnn import trainer

    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    params = tiny_config(data=synthetic_data)
    for mode in trainer.MODES:
        trainer.check_data_files(params, mode)
    params.task.train_data.input_path = f"{tmp_path}/empty*"
    with pytest.raises(ValueError, match=r"^task.train_data.input_path names only empty files.*"
                       rf"Received: task.train_data.input_path='{tmp_path}/empty\*'$"):
        trainer.check_data_files(params, "train")
    trainer.check_data_files(params, "eval")  # reads no training data
    params.task.validation_data.input_path = str(empty)
    with pytest.raises(ValueError, match=r"^task.validation_data.input_path names only empty "
                       r"files .*nothing to evaluate"):
        trainer.check_data_files(params, "eval")
    # One file of records among empty ones.
    params.task.validation_data.input_path = f"{empty},{synthetic_data['val_tfrecords']}"
    trainer.check_data_files(params, "eval")
    params.task.validation_data.input_path = [str(empty), synthetic_data["val_tfrecords"]]
    trainer.check_data_files(params, "eval")
    # Found after the build and the first trace (38 s of the plain config on 2 cores):
    # each pattern, and each path, must name a file, as Model Garden's reader wants.
    for missing in (f"{tmp_path}/nowhere/*", f"{tmp_path}/nowhere.tfrecord"):
        for given in (missing, f"{synthetic_data['val_tfrecords']},{missing}", [missing]):
            params.task.validation_data.input_path = given
            with pytest.raises(ValueError, match=re.escape(
                    f"{missing} does not match any files. Received: "
                    f"task.validation_data.input_path={given!r}")):
                trainer.check_data_files(params, "eval")
    params.task.validation_data.input_path = "gs://bucket/nowhere/*"  # not checked here
    trainer.check_data_files(params, "eval")


def test_a_failed_evals_clean_up_removes_only_its_summaries_and_not_under_a_trainer(tmp_path):
    import fcntl

    from nonlocal_keras.applications.mask_rcnn import trainer
    from nonlocal_keras.training import atomic

    run = tmp_path / "run"
    (run / "validation").mkdir(parents=True)
    (run / "validation" / "events.old").write_text("")
    before = atomic.entries(str(run))
    (run / "validation" / "events.new").write_text("")
    (run / "ckpt-9.index").write_text("")  # a trainer's, elsewhere in the folder
    trainer._remove_new_entries(str(run), before, under=str(run / "validation"))
    assert sorted(p.name for p in run.rglob("*")) == ["ckpt-9.index", "events.old", "validation"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    before = atomic.entries(str(fresh))
    (fresh / "validation").mkdir()
    (fresh / "validation" / "events.new").write_text("")
    trainer._remove_new_entries(str(fresh), before, under=str(fresh / "validation"))
    assert list(fresh.iterdir()) == []
    assert not trainer._held_by_a_trainer(str(run))
    with open(run / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert trainer._held_by_a_trainer(str(run))
    assert not trainer._held_by_a_trainer(str(run))


def test_a_whole_synthetic_dataset_on_read_only_storage_is_used_as_it_is(tmp_path, monkeypatch):
    """Its data_override.yaml was written again on every run: a complete dataset
    on read-only storage was refused ("Cannot write .../data_override.yaml")."""
    from nonlocal_keras.applications.mask_rcnn import trainer
    from nonlocal_keras.training import atomic

    (tmp_path / "paths.json").write_text(json.dumps(
        {"train_tfrecords": "train-*.tfrecord", "val_tfrecords": "val-*.tfrecord",
         "val_json": "val.json"}))
    override = trainer.synthetic_data_config(str(tmp_path))
    written = open(override).read()

    def read_only(path, *args, **kwargs):
        raise atomic.FolderError(f"Cannot write {path!r} (Read-only file system)")

    monkeypatch.setattr(trainer.atomic, "write_json", read_only)
    assert trainer.synthetic_data_config(str(tmp_path)) == override
    assert open(override).read() == written

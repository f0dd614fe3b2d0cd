"""The official fully-convolutional test (`data.eval_crop_size` larger than the
training crop): the classifier at every crop-sized window of the last feature
map, softmax scores averaged, against a float64 NumPy computation of that head."""

import json

import keras
import numpy as np
import pytest

from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training import models
from nonlocal_keras.training.errors import ConfigError

MODEL = {"name": "VideoResNet", "stage_blocks": [1, 1, 1, 1], "width": 8,
         "nonlocal_blocks": {"res4": [0]}}
# 64-pixel crops give a 2 x 2 res5 map, 96-pixel views a 3 x 3 one: 2 x 2 windows.
DATA = {"num_frames": 4, "crop_size": 64, "eval_crop_size": 96, "num_classes": 5}


def _trained(seed=0):
    model = models.build_model(MODEL, DATA, multi_label=False)
    rng = np.random.default_rng(seed)
    for variable in model.weights:  # away from the initialisers (BN gamma 0 in the block)
        values = rng.uniform(0.5, 1.5, variable.shape) if "variance" in variable.path else (
            rng.normal(0.0, 0.2, variable.shape))
        variable.assign(values.astype("float32"))
    return model


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("multi_label", [False, True])
def test_the_window_scores_are_the_official_fully_convolutional_test(multi_label):
    trained = _trained()
    if multi_label:
        trained = models.build_model(MODEL, DATA, multi_label=True)
        trained.set_weights(_trained().get_weights())
    scorer = models.evaluation_model(MODEL, DATA, multi_label, trained)
    clips = np.random.default_rng(1).normal(size=(2, 4, 96, 96, 3)).astype("float32")
    features = keras.Model(scorer.input, scorer.get_layer("pool5_windows").input)(clips)
    features = np.asarray(features, "float64")  # (2, T, 3, 3, C)
    assert features.shape[2:4] == (3, 3)
    kernel, bias = (np.asarray(w, "float64") for w in trained.get_layer("pred").weights)
    scores = []
    for top in range(2):  # the 2 x 2 positions of a 2 x 2 window (the 64-pixel map)
        for left in range(2):
            pooled = features[:, :, top:top + 2, left:left + 2].mean(axis=(1, 2, 3))
            logits = pooled @ kernel + bias
            scores.append(1 / (1 + np.exp(-logits)) if multi_label else _softmax(logits))
    expected = np.mean(scores, axis=0)
    np.testing.assert_allclose(np.asarray(scorer(clips)), expected, rtol=1e-5, atol=1e-7)
    # The views at the training size: the trained model itself.
    assert models.evaluation_model(MODEL, dict(DATA, eval_crop_size=None), False, trained) is trained
    assert models.evaluation_model(MODEL, dict(DATA, eval_crop_size=64), False, trained) is trained


def test_a_network_without_the_video_resnet_head_is_refused():
    custom = {"name": "training_tiny_model:failing_video_net"}
    with pytest.raises(ConfigError, match="needs a network that ends in global average pooling "
                       "`pool5`.*Received: data.eval_crop_size=96"):
        models.evaluation_model(custom, DATA, False)


@pytest.mark.parametrize("value", [32, 300])
def test_the_eval_crop_lies_between_the_training_crop_and_the_eval_scale(value):
    with pytest.raises(ConfigError, match=rf"`data.eval_crop_size` must be in \[data.crop_size, "
                       rf"data.eval_scale\] = \[224, 256\].*Received: data.eval_crop_size={value}"):
        config_lib.load_config(None, [f"data.eval_crop_size={value}"])


def test_nonlocal_evaluate_scores_views_of_the_eval_crop(tmp_path):
    """A run trained on 16-pixel crops, evaluated on 20-pixel views of 20-pixel frames."""
    from test_training_train import _overrides, _write_dataset

    from nonlocal_keras.training import data, evaluate, train

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    overrides = _overrides(csv_path, run_dir, "schedule.epochs=1", "data.eval_scale=20",
                           "data.eval_crop_size=20")
    _, results = train.run(config_lib.load_config(None, overrides))
    assert results["eval"]["num_videos"] == 8
    config = config_lib.load_config(str(run_dir / "config.yaml"))
    options = data.eval_options(config["data"])
    assert options["crop_size"] == 20 and options["scale"] == 20
    assert evaluate.main(["--run-dir", str(run_dir), "--no-progress"]) == 0
    again = json.loads((run_dir / "eval.json").read_text())
    assert again["top1"] == pytest.approx(results["eval"]["top1"])

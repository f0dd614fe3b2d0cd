"""Caffe2 release conversion: a pickle written here in the official naming scheme, round trip."""

import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest

from nonlocal_keras.applications import I3DResNet50, VideoResNet, load_caffe2_weights
from nonlocal_keras.applications.caffe2_weights import convert_caffe2_weights, main
from nonlocal_keras.layers import NonLocal3D

# Optimizer state and bookkeeping that the released files carry.
EXTRA_BLOBS = {"lr": np.float32(0.01), "model_iter": np.int64(400000),
               "res2_0_branch2a_w_momentum": np.zeros((64, 64, 3, 1, 1), "float32")}


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.uniform(0.5, 1.5, variable.shape) if "variance" in variable.path else (
            rng.normal(0.0, 0.1, variable.shape))
        variable.assign(values.astype("float32"))


def official_blobs(model):
    """Blobs named and laid out as video-nonlocal-net saves them (NCTHW, (out, in) FC)."""
    blobs = {}

    def batch_norm(prefix, bn):
        for suffix, values in (("s", bn.gamma), ("b", bn.beta), ("rm", bn.moving_mean),
                               ("riv", bn.moving_variance)):
            blobs[f"{prefix}_{suffix}"] = np.asarray(values)

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv3D):
            blobs[f"{layer.name}_w"] = np.asarray(layer.kernel).transpose(4, 3, 0, 1, 2)
        elif isinstance(layer, keras.layers.BatchNormalization):
            batch_norm(layer.name, layer)
        elif isinstance(layer, NonLocal3D):
            stage, block, _ = layer.name.split("_")
            prefix = f"nonlocal_conv{stage[3:]}_{block}"
            for sub, blob in (("theta", "theta"), ("phi", "phi"), ("g", "g"), ("w_z", "out")):
                dense = getattr(layer, sub)
                kernel = np.asarray(dense.kernel).T
                blobs[f"{prefix}_{blob}_w"] = kernel.reshape(kernel.shape + (1, 1, 1))
                blobs[f"{prefix}_{blob}_b"] = np.asarray(dense.bias)
            if layer.bn is not None:  # the official NONLOCAL.USE_BN: False has none
                batch_norm(f"{prefix}_bn", layer.bn)
        elif layer.name == "pred":
            blobs["pred_w"] = np.asarray(layer.kernel).T
            blobs["pred_b"] = np.asarray(layer.bias)
    return blobs


SMALL = {"width": 8, "conv1_time": 5,
         "inflated_blocks": {"res2": "all", "res3": "even", "res5": "odd"},
         "nonlocal_blocks": {"res3": [1], "res4": [0]}}
# The same network as `nonlocal-train` builds it (3 classes), and its clips.
SMALL_CONFIG = {"name": "VideoResNet", "stage_blocks": [2, 2, 1, 1], **SMALL}
SMALL_DATA = {"num_frames": 4, "crop_size": 48, "num_classes": 3}


def small_model(seed=None):
    model = VideoResNet((2, 2, 1, 1), classes=6, name="small_nl_i3d", **SMALL)
    if seed is not None:
        randomize(model, seed)
    return model


def write_pickle(path, blobs, wrap):
    with open(path, "wb") as file:
        pickle.dump({"blobs": blobs} if wrap else blobs, file, protocol=2)


def assert_same_weights(model, reference):
    for variable, expected in zip(model.weights, reference.weights):
        assert variable.path == expected.path
        np.testing.assert_array_equal(np.asarray(variable), np.asarray(expected))


@pytest.mark.parametrize("wrap", [True, False])
def test_round_trip_through_an_official_style_pickle(tmp_path, wrap):
    source = small_model(seed=0)
    blobs = official_blobs(source)
    # The official names for a few layers, spelled out.
    for name in ("conv1_w", "res_conv1_bn_riv", "res2_0_branch1_w", "res3_0_branch2a_bn_s",
                 "nonlocal_conv3_1_theta_w", "nonlocal_conv4_0_out_b", "nonlocal_conv4_0_bn_rm"):
        assert name in blobs
    assert blobs["conv1_w"].shape == (8, 3, 5, 7, 7)
    write_pickle(tmp_path / "model.pkl", {**blobs, **EXTRA_BLOBS}, wrap)

    target = small_model(seed=1)
    unused = load_caffe2_weights(target, str(tmp_path / "model.pkl"))
    assert unused == sorted(EXTRA_BLOBS)
    assert_same_weights(target, source)
    clip = np.random.default_rng(2).normal(size=(1, 4, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(target(clip, training=False), source(clip, training=False),
                               rtol=1e-6, atol=1e-7)
    # The constructors take the .pkl as `weights` too.
    from_path = VideoResNet((2, 2, 1, 1), classes=6, name="small_nl_i3d",
                            weights=str(tmp_path / "model.pkl"), **SMALL)
    assert_same_weights(from_path, source)


def test_missing_blob_and_wrong_shape_are_named():
    blobs = official_blobs(small_model(seed=0))
    del blobs["nonlocal_conv3_1_phi_b"]
    with pytest.raises(ValueError,
                       match=r"1 blobs .* needs are not in the file.*'nonlocal_conv3_1_phi_b'"):
        load_caffe2_weights(small_model(), blobs)
    blobs = official_blobs(small_model(seed=0))
    blobs["res2_1_branch2b_w"] = blobs["res2_1_branch2b_w"][:, :, :, :2]
    with pytest.raises(ValueError, match=r"Blob 'res2_1_branch2b_w' has shape \(8, 8, 1, 2, 3\) "
                       r"\(Caffe2's layout\)"):
        load_caffe2_weights(small_model(), blobs)
    # A damaged file: weights that score NaN were written, exit 0; nothing is assigned.
    blobs = official_blobs(small_model(seed=0))
    blobs["conv1_w"] = np.full_like(blobs["conv1_w"], np.nan)
    blobs["pred_b"] = np.full_like(blobs["pred_b"], np.inf)
    blobs["res_conv1_bn_riv"][0] = -0.5
    model = small_model()
    before = [np.asarray(v).copy() for v in model.weights]
    with pytest.raises(ValueError, match=r"3 blobs of the file hold NaN or infinite values, or a "
                       r"negative BN variance \(a damaged file\?\), the first 'conv1_w': "
                       r"conv1_w, res_conv1_bn_riv, pred_b"):
        load_caffe2_weights(model, blobs)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(np.asarray(variable), value)
    blobs = official_blobs(small_model(seed=0))
    blobs["pred_b"] = np.array(["a"] * len(blobs["pred_b"]))
    with pytest.raises(ValueError, match=r"Blob 'pred_b' holds <U1 values, not numbers"):
        load_caffe2_weights(small_model(), blobs)


def test_parameter_blobs_the_model_has_no_place_for_are_an_error():
    """A file of another architecture whose blobs hold every name the model needs
    (R101 into R50, a release with non-local blocks into the model without them)
    loaded that part of it with a warning, exit 0."""
    blobs = official_blobs(small_model(seed=0))
    blobs["nonlocal_conv4_3_theta_w"] = np.zeros((4, 8, 1, 1, 1), "float32")
    blobs["res4_3_branch2a_w"] = np.zeros((8, 8, 1, 1, 1), "float32")
    model = small_model()
    before = [np.asarray(v).copy() for v in model.weights]
    with pytest.raises(ValueError, match=r"2 parameter blobs of the file have no place in "
                       r"'small_nl_i3d' \(another architecture\?\), the first "
                       r"'nonlocal_conv4_3_theta_w'"):
        load_caffe2_weights(model, blobs)
    for variable, value in zip(model.weights, before):  # nothing assigned
        np.testing.assert_array_equal(np.asarray(variable), value)
    # Optimiser state is passed over; so is a classifier where the model has none.
    blobs = {**official_blobs(small_model(seed=0)), **EXTRA_BLOBS}
    assert load_caffe2_weights(small_model(), blobs) == sorted(EXTRA_BLOBS)
    headless = VideoResNet((2, 2, 1, 1), include_top=False, name="small_nl_i3d", **SMALL)
    assert load_caffe2_weights(headless, blobs) == sorted([*EXTRA_BLOBS, "pred_b", "pred_w"])


@pytest.mark.slow
def test_cli_converts_a_released_style_nl_i3d_r50(tmp_path, capsys, monkeypatch):
    source = I3DResNet50(nonlocal_blocks=5)
    randomize(source, 3)
    write_pickle(tmp_path / "i3d_nl5.pkl", {**official_blobs(source), **EXTRA_BLOBS}, wrap=True)
    destination = str(tmp_path / "i3d_nl5.weights.h5")
    # What a conversion killed before its rename leaves (kill -9: 12 MB here), and
    # another file's, which stays.
    (tmp_path / ".tmp-0123abcd-i3d_nl5.weights.h5").write_bytes(b"half")
    (tmp_path / ".tmp-0123abcd-other.weights.h5").write_bytes(b"half")
    assert main([str(tmp_path / "i3d_nl5.pkl"), "--arch", "i3d_nl5_r50", destination]) == 0
    assert "3 ignored" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [".tmp-0123abcd-other.weights.h5", "i3d_nl5.pkl",
                                            "i3d_nl5.weights.h5"]
    os.remove(tmp_path / ".tmp-0123abcd-other.weights.h5")
    restored = I3DResNet50(nonlocal_blocks=5, weights=destination)
    assert_same_weights(restored, source)
    clip = np.random.default_rng(4).normal(size=(1, 4, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(restored(clip, training=False), source(clip, training=False),
                               rtol=1e-5, atol=1e-6)

    # Written under a temporary name, renamed at the end: on a full disk the file
    # that was there stays whole (it had been overwritten in place).
    real, before = os.statvfs(tmp_path), (tmp_path / "i3d_nl5.weights.h5").read_bytes()
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(real[:4] + (0,) + real[5:]))
    assert _command(str(tmp_path / "i3d_nl5.pkl"), "--arch", "i3d_nl5_r50", destination,
                    "--overwrite").startswith(
        f"nonlocal-convert-weights: error: Cannot write '{destination}' (No space left on device")
    assert (tmp_path / "i3d_nl5.weights.h5").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["i3d_nl5.pkl", "i3d_nl5.weights.h5"]


@pytest.mark.slow
def test_cli_converts_a_frozen_bn_nonlocal_release(tmp_path, capsys):
    """i3d_nonlocal_32x4_I3D_pretrain_400k.pkl-style: `--arch i3d_nl5_r50_affine`;
    the model it names runs 32-frame clips with res3 in groups of 4 frames."""
    affine = {"nonlocal_use_bn": False, "nonlocal_frames_per_group": {"res3": 4}}
    source = I3DResNet50(nonlocal_blocks=5, **affine)
    randomize(source, 3)
    blobs = {name: value for name, value in official_blobs(source).items()
             if not name.endswith(("_rm", "_riv"))}
    write_pickle(tmp_path / "nl_32x4.pkl", {**blobs, **EXTRA_BLOBS}, wrap=True)
    destination = str(tmp_path / "nl_32x4.weights.h5")
    assert main([str(tmp_path / "nl_32x4.pkl"), "--arch", "i3d_nl5_r50_affine",
                 destination]) == 0
    assert "3 ignored" in capsys.readouterr().out
    restored = I3DResNet50(nonlocal_blocks=5, weights=destination, **affine)
    for variable, expected in zip(restored.weights, source.weights):
        if "moving" not in variable.path:
            np.testing.assert_array_equal(np.asarray(variable), np.asarray(expected))
    assert _command(str(tmp_path / "nl_32x4.pkl"), "--arch", "i3d_nl5_r50",
                    str(tmp_path / "other.weights.h5")).startswith(
        "nonlocal-convert-weights: error: The file's non-local blocks have no BN")


def _command(*argv):
    """`main(argv)`: its exit status, or the one line its console script prints for a
    user's mistake (`cli.run` prints a `UserError` so, exit 2)."""
    from nonlocal_keras.training.errors import UserError

    try:
        return main(list(argv))
    except UserError as error:
        assert "\n" not in str(error)
        return f"nonlocal-convert-weights: error: {error}"


def test_cli_errors(tmp_path):
    write_pickle(tmp_path / "empty.pkl", {"lr": 0.1}, wrap=False)
    target = str(tmp_path / "x.weights.h5")
    assert "Received: --arch='i3d_nl7_r34'" in _command(
        str(tmp_path / "empty.pkl"), "--arch", "i3d_nl7_r34", target)
    assert "must end with `.weights.h5`" in _command(
        str(tmp_path / "empty.pkl"), "--arch", "c2d_r50", str(tmp_path / "x.h5"))
    # A misspelt name is found before the file is read.
    assert "Received: --arch='c2d_r5'" in _command(
        str(tmp_path / "absent.pkl"), "--arch", "c2d_r5", target)
    # So is a block count with no official layout (it reported the pickle's error first).
    assert _command(str(tmp_path / "absent.pkl"), "--arch", "i3d_nl7_r50", target) == (
        "nonlocal-convert-weights: error: `_nl<blocks>` must be _nl1, _nl5 or _nl10 (the "
        "official layouts). Received: --arch='i3d_nl7_r50'")
    # The source by its argument (it was "[Errno 2] No such file or directory: ...").
    absent = str(tmp_path / "absent.pkl")
    assert _command(absent, "--arch", "c2d_r50", target) == (
        "nonlocal-convert-weights: error: Cannot read the source (No such file or directory). "
        f"Received: source={absent!r}, --arch=c2d_r50")
    assert "Cannot read the source (Is a directory). Received: source=" in _command(
        str(tmp_path), "--arch", "c2d_r50", target)
    assert os.listdir(tmp_path) == ["empty.pkl"]
    # A file in place of the destination's folder, before the work (it was
    # "[Errno 17] File exists" after it).
    assert f"('{tmp_path / 'empty.pkl'}' is a file, not a folder)" in _command(
        str(tmp_path / "absent.pkl"), "--arch", "c2d_r50",
        str(tmp_path / "empty.pkl" / "x.weights.h5"))
    (tmp_path / "a.weights.h5").mkdir()  # said "a folder is there", not which argument
    assert _command(str(tmp_path / "absent.pkl"), "--arch", "c2d_r50",
                    str(tmp_path / "a.weights.h5")).endswith(
        f"(in it, say). Received: destination='{tmp_path / 'a.weights.h5'}'")
    os.rmdir(tmp_path / "a.weights.h5")
    # An existing destination (a user's fine-tuned weights named by mistake) was
    # replaced without a word; refused before the source is read, the file untouched.
    (tmp_path / "tuned.weights.h5").write_bytes(b"fine-tuned")
    assert _command(str(tmp_path / "absent.pkl"), "--arch", "c2d_r50",
                    str(tmp_path / "tuned.weights.h5")) == (
        "nonlocal-convert-weights: error: The destination exists (it may be a fine-tuned "
        "model's weights); --overwrite replaces it. Received: destination="
        f"'{tmp_path / 'tuned.weights.h5'}'")
    assert (tmp_path / "tuned.weights.h5").read_bytes() == b"fine-tuned"
    with pytest.raises(FileExistsError, match="overwrite=True replaces it"):
        convert_caffe2_weights(str(tmp_path / "empty.pkl"), "c2d_r50",
                               str(tmp_path / "tuned.weights.h5"), overwrite=False)
    assert "No such file or directory" in _command(  # --overwrite gets as far as the source
        str(tmp_path / "absent.pkl"), "--arch", "c2d_r50", str(tmp_path / "tuned.weights.h5"),
        "--overwrite")


class _Opens:
    """Unpickled, it calls `open(path, "w")`: what any function could be."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("content", [b"garbage\n", b"x", b"", "truncated", "a list",
                                     "a label map", "blobs and a number",
                                     "a number for pred_w", "code"])
def test_a_file_that_is_not_a_weights_pickle_is_named_in_one_line(tmp_path, content):
    """A partial download or another file was a traceback (UnpicklingError,
    EOFError, ValueError), from the converter and from `model.weights`; a dict
    with keys other than names (a label map) an AttributeError or TypeError.
    A pickle that calls a function while it loads (found by a walk: it wrote a
    file, then came the error) is refused before the call: the file it would
    write here is checked absent below."""
    path = tmp_path / "weights.pkl"
    expected = {"a list": "holds a list", "a label map": "keys that are not blob names (e.g. 0 of type "
                "int)", "blobs and a number": "keys that are not blob names (e.g. 7 of type int)",
                # An IndexError traceback, exit 1.
                "a number for pred_w": "The file's 'pred_w' has shape (), not the (classes, "
                "features) of a classifier. Received: source=",
                "code": "is no weights pickle: it calls io.open while it loads, which was "
                "refused (a pickle can run any code; an official video-nonlocal-net .pkl builds "
                "NumPy arrays only)"}
    if content == "truncated":
        write_pickle(path, official_blobs(small_model(seed=0)), wrap=True)
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "a list":
        path.write_bytes(pickle.dumps([1, 2]))
    elif content == "a label map":
        path.write_bytes(pickle.dumps({0: "abseiling", 1: "air drumming"}))
    elif content == "blobs and a number":
        path.write_bytes(pickle.dumps({**official_blobs(small_model(seed=0)), 7: 1}))
    elif content == "a number for pred_w":
        path.write_bytes(pickle.dumps({"blobs": {"pred_w": 1.0}}))
    elif content == "code":
        path.write_bytes(pickle.dumps({"blobs": {"pred_w": _Opens(tmp_path / "written")}}))
    else:
        path.write_bytes(content)
    line = _command(str(path), "--arch", "c2d_r50", str(tmp_path / "x.weights.h5"))
    assert str(path) in line
    assert expected.get(content, "Cannot read") in line, line
    assert sorted(os.listdir(tmp_path)) == ["weights.pkl"]

    from nonlocal_keras.training import models
    from nonlocal_keras.training.errors import ConfigError

    with pytest.raises(ConfigError, match=f"Received: model.weights={str(path)!r}"):
        models.load_caffe2_for_fine_tuning(small_model(), str(path))


def test_the_console_script_prints_a_bad_file_in_one_line(tmp_path):
    (tmp_path / "weights.pkl").write_bytes(b"<html>404</html>")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from nonlocal_keras import console; "
         "sys.argv = ['nonlocal-convert-weights', 'weights.pkl', 'x.weights.h5', '--arch', "
         "'c2d_r50']; console.convert_weights()"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        "nonlocal-convert-weights: error: Cannot read 'weights.pkl' as a pickle "
        "(UnpicklingError: invalid load key, '<'); an official video-nonlocal-net .pkl is "
        "one, and a partial download ends early. Received: source='weights.pkl', --arch=c2d_r50"],\
        done.stderr[-3000:]


def test_affine_batch_norms_of_the_frozen_bn_releases():
    """`*_I3D_pretrain_*` files hold BN as `_s`, `_b` only: x * s + b."""
    blobs = official_blobs(small_model(seed=0))
    affine = {name: value for name, value in blobs.items()
              if not name.endswith(("_rm", "_riv"))}
    model = small_model()
    assert load_caffe2_weights(model, affine) == []
    rng = np.random.default_rng(5)
    for layer_name in ("res_conv1_bn", "res3_1_nonlocal"):
        layer = model.get_layer(layer_name)
        bn = layer.bn if isinstance(layer, NonLocal3D) else layer
        x = rng.normal(size=(2, 3, 4, 4, bn.gamma.shape[0]))
        prefix = "nonlocal_conv3_1_bn" if bn is not layer else "res_conv1_bn"
        expected = x * blobs[f"{prefix}_s"].astype("float64") + blobs[f"{prefix}_b"]
        np.testing.assert_allclose(bn(x.astype("float32"), training=False), expected,
                                   rtol=1e-5, atol=1e-5)


def test_the_frozen_bn_nonlocal_releases_load_into_their_blocks(tmp_path, capsys):
    """`i3d_nonlocal_32x4_I3D_pretrain_400k.pkl`-style files: affine BNs, blocks
    without BN, res3's blocks on groups of 4 frames (`--arch ..._affine`)."""
    released = small_model()
    release = VideoResNet((2, 2, 1, 1), classes=6, name="small_nl_i3d",
                          **{**SMALL, "nonlocal_use_bn": False},
                          nonlocal_frames_per_group={"res3": 4})
    randomize(release, 3)
    blobs = {name: value for name, value in official_blobs(release).items()
             if not name.endswith(("_rm", "_riv"))}
    assert not any(name.startswith("nonlocal_conv") and "_bn_" in name for name in blobs)
    with pytest.raises(ValueError, match=r"nonlocal_use_bn=False, nonlocal_frames_per_group="
                       r"\{'res3': 4\}, affine_bn=True \(--arch ..._affine; in a config "
                       r"model.nonlocal_use_bn: false.*'nonlocal_conv3_1_bn_s'"):
        load_caffe2_weights(released, blobs)
    loaded = VideoResNet((2, 2, 1, 1), classes=6, name="small_nl_i3d",
                         **{**SMALL, "nonlocal_use_bn": False},
                         nonlocal_frames_per_group={"res3": 4})
    assert load_caffe2_weights(loaded, blobs) == []
    clip = np.random.default_rng(4).normal(size=(1, 16, 32, 32, 3)).astype("float32")
    for variable in release.weights:  # the affine BNs: mean 0, variance 1 - epsilon
        if "moving" in variable.path:
            variable.assign(np.full(variable.shape, 0.0 if "mean" in variable.path
                                    else 1 - 1e-5, "float32"))
    np.testing.assert_allclose(loaded(clip, training=False), release(clip, training=False),
                               rtol=1e-5, atol=1e-6)
    # The other way round: a file with BN in its blocks into blocks without.
    with pytest.raises(ValueError, match=r"have a BN after their output convolution.*"
                       r"have none \(nonlocal_use_bn=False"):
        load_caffe2_weights(loaded, official_blobs(small_model(seed=1)))


def test_the_frozen_bn_release_arch_names(tmp_path, capsys):
    from nonlocal_keras.applications.caffe2_weights import model_for_arch

    for arch, stride in (("i3d_nl5_r50_affine", 1), ("i3d_nl5_r50_32x2_affine", 2)):
        model = model_for_arch(arch)
        assert model.get_layer("conv1").strides == (stride, 2, 2)
        blocks = {layer.name: (layer.use_bn, layer.frames_per_group)
                  for layer in model.layers if isinstance(layer, NonLocal3D)}
        assert blocks == {"res3_1_nonlocal": (False, 4), "res3_3_nonlocal": (False, 4),
                          "res4_1_nonlocal": (False, None), "res4_3_nonlocal": (False, None),
                          "res4_5_nonlocal": (False, None)}
        batch_norms = [layer for layer in model.layers
                       if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(batch_norms) == 53 and all(bn.frozen_statistics for bn in batch_norms)
    blocks = [(layer.name, layer.use_bn, layer.frames_per_group)
              for layer in model_for_arch("c2d_nl1_r50_affine").layers
              if isinstance(layer, NonLocal3D)]
    assert blocks == [("res4_4_nonlocal", False, None)]  # no res3 block to group
    with pytest.raises(ValueError, match=r"needs non-local blocks.*Received: arch='i3d_r50_affine'"):
        model_for_arch("i3d_r50_affine")


def test_arch_names():
    from nonlocal_keras.applications.caffe2_weights import model_for_arch

    model = model_for_arch("c2d_nl1_r50_32x2", classes=10)
    assert model.get_layer("conv1").strides == (2, 2, 2)
    assert model.get_layer("pool1").pool_size == (2, 3, 3)
    assert [layer.name for layer in model.layers if isinstance(layer, NonLocal3D)] == [
        "res4_4_nonlocal"]
    assert model.output_shape == (None, 10)
    with pytest.raises(ValueError, match=r"Received: arch='c2d_3x3x3_r50'"):
        model_for_arch("c2d_3x3x3_r50")


def test_layout_and_padding_match_an_ncthw_reference():
    """The converted network computes what Caffe2 computes: an independent NCTHW forward pass.

    PyTorch's conv3d/max_pool3d use Caffe2's layout and symmetric padding. The
    clip's sizes make conv1's input and res3's strided 3x3 input even, where
    TensorFlow's "same" padding would pad only at the end and shift the windows.
    """
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    model = VideoResNet((1, 1), width=8, conv1_time=5, inflated_blocks={"res2": "all"},
                        include_top=False, name="reference_check")
    randomize(model, 6)
    blobs = {name: torch.from_numpy(np.asarray(value, "float64"))
             for name, value in official_blobs(model).items()}

    def conv_bn(x, name, stride=(1, 1, 1), relu=True, bn=None):
        kernel = blobs[f"{name}_w"]
        x = functional.conv3d(x, kernel, stride=stride,
                              padding=tuple(k // 2 for k in kernel.shape[2:]))
        prefix = bn or f"{name}_bn"
        x = functional.batch_norm(x, blobs[f"{prefix}_rm"], blobs[f"{prefix}_riv"],
                                  blobs[f"{prefix}_s"], blobs[f"{prefix}_b"], eps=1e-5)
        return functional.relu(x) if relu else x

    def bottleneck(x, name, stride):
        y = conv_bn(x, f"{name}_branch2a")
        y = conv_bn(y, f"{name}_branch2b", stride=(1, stride, stride))
        y = conv_bn(y, f"{name}_branch2c", relu=False)
        shortcut = conv_bn(x, f"{name}_branch1", stride=(1, stride, stride), relu=False)
        return functional.relu(y + shortcut)

    clip = np.random.default_rng(7).normal(size=(2, 4, 52, 50, 3))
    x = torch.from_numpy(clip.transpose(0, 4, 1, 2, 3))
    x = conv_bn(x, "conv1", stride=(1, 2, 2), bn="res_conv1_bn")
    x = functional.max_pool3d(x, (1, 3, 3), stride=(1, 2, 2))
    x = functional.max_pool3d(bottleneck(x, "res2_0", 1), (2, 1, 1), stride=(2, 1, 1))
    expected = bottleneck(x, "res3_0", 2).numpy().transpose(0, 2, 3, 4, 1)

    actual = model(clip.astype("float32"), training=False)
    assert actual.shape == expected.shape == (2, 2, 6, 6, 64)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4)


def _official_nonlocal(torch, model, prefix, x, use_bn):
    """The official `spacetime_nonlocal` + the residual sum (`add_nonlocal`) on
    NCTHW `x`, float64, from `model`'s blobs as the official code names them."""
    functional = torch.nn.functional
    blobs = {name: torch.from_numpy(np.asarray(value, "float64"))
             for name, value in official_blobs(model).items()}

    def projection(t, name):
        return functional.conv3d(t, blobs[f"{prefix}_{name}_w"], blobs[f"{prefix}_{name}_b"])

    batch, channels, *positions = x.shape
    pooled = functional.max_pool3d(x, (1, 2, 2), stride=(1, 2, 2))
    theta = projection(x, "theta").flatten(2)         # (B, C/2, N)
    phi = projection(pooled, "phi").flatten(2)        # (B, C/2, N/4)
    g = projection(pooled, "g").flatten(2)
    affinity = torch.softmax(theta.transpose(1, 2) @ phi * (channels // 2) ** -0.5, dim=2)
    y = (g @ affinity.transpose(1, 2)).reshape(batch, channels // 2, *positions)
    z = projection(y, "out")
    if use_bn:
        z = functional.batch_norm(z, blobs[f"{prefix}_bn_rm"], blobs[f"{prefix}_bn_riv"],
                                  blobs[f"{prefix}_bn_s"], blobs[f"{prefix}_bn_b"], eps=1e-5)
    return x + z


def test_nonlocal_blobs_compute_the_official_block():
    """A converted `NonLocal3D` equals the official `spacetime_nonlocal` on the same blobs."""
    torch = pytest.importorskip("torch")
    inputs = keras.Input((4, 6, 6, 16))
    model = keras.Model(inputs, NonLocal3D(name="res4_2_nonlocal")(inputs))
    randomize(model, 8)
    clip = np.random.default_rng(9).normal(size=(2, 4, 6, 6, 16))
    x = torch.from_numpy(clip.transpose(0, 4, 1, 2, 3))
    expected = _official_nonlocal(torch, model, "nonlocal_conv4_2", x, use_bn=True)
    actual = model(clip.astype("float32"), training=False)
    np.testing.assert_allclose(np.asarray(actual), expected.numpy().transpose(0, 2, 3, 4, 1),
                               rtol=1e-4, atol=1e-4)


def test_nonlocal_blobs_compute_the_official_group_block():
    """`NonLocal3D(use_bn=False, frames_per_group=4)` equals the official
    `add_nonlocal_group` (group_size 4, NONLOCAL.USE_BN: False) on the same blobs."""
    torch = pytest.importorskip("torch")
    inputs = keras.Input((8, 4, 4, 8))
    model = keras.Model(inputs, NonLocal3D(use_bn=False, frames_per_group=4,
                                           name="res3_1_nonlocal")(inputs))
    randomize(model, 10)
    clip = np.random.default_rng(11).normal(size=(2, 8, 4, 4, 8))
    x = torch.from_numpy(clip.transpose(0, 4, 1, 2, 3))       # (B, C, T, H, W)
    # The official transpose / reshape / transpose: (B * T / 4, C, 4, H, W), and back.
    grouped = x.permute(0, 2, 1, 3, 4).reshape(4, 4, 8, 4, 4).permute(0, 2, 1, 3, 4)
    z = _official_nonlocal(torch, model, "nonlocal_conv3_1", grouped, use_bn=False)
    z = z.permute(0, 2, 1, 3, 4).reshape(2, 8, 8, 4, 4).permute(0, 2, 1, 3, 4)
    actual = model(clip.astype("float32"), training=False)
    np.testing.assert_allclose(np.asarray(actual), z.numpy().transpose(0, 2, 3, 4, 1),
                               rtol=1e-4, atol=1e-4)


def test_fine_tuning_from_an_official_pickle_with_another_class_count(tmp_path, caplog):
    """`model.weights: file.pkl` with 6 classes into a 3-class model: all but `pred` load."""
    import logging

    from nonlocal_keras.training import models
    from nonlocal_keras.training.errors import ConfigError

    source = small_model(seed=0)
    write_pickle(tmp_path / "model.pkl", {**official_blobs(source), **EXTRA_BLOBS}, wrap=True)
    model_config = dict(SMALL_CONFIG, weights=str(tmp_path / "model.pkl"))
    data_config = SMALL_DATA
    with caplog.at_level(logging.INFO, logger="nonlocal_keras.training.models"):
        tuned = models.build_model(model_config, data_config, multi_label=False, fine_tune=True)
    assert "Left new" in caplog.text and "(file: (6, 256))" in caplog.text
    for variable, expected in zip(tuned.weights, source.weights):
        if not variable.path.startswith("pred/"):
            np.testing.assert_array_equal(np.asarray(variable), np.asarray(expected))
    assert tuned.get_layer("pred").kernel.shape == (256, 3)
    with pytest.raises(ConfigError, match="model.weights="):
        models.build_model(dict(model_config, width=16), data_config, multi_label=False,
                           fine_tune=True)
    # Evaluation and export load strictly: a classifier of another size is an error.
    with pytest.raises(ConfigError, match="another class count"):
        models.build_model(model_config, data_config, multi_label=False)


def test_fine_tuning_from_a_frozen_bn_nonlocal_release(tmp_path):
    """`model.weights` of an i3d_nonlocal_*_I3D_pretrain_* style pickle (affine BNs,
    blocks without BN) into the model those releases are: every weight but `pred`."""
    from nonlocal_keras.training import models

    affine = {"nonlocal_use_bn": False, "nonlocal_frames_per_group": {"res3": 4}}
    source = VideoResNet((2, 2, 1, 1), classes=6, name="small_nl_i3d", **SMALL, **affine)
    randomize(source, 2)
    blobs = {name: value for name, value in official_blobs(source).items()
             if not name.endswith(("_rm", "_riv"))}
    write_pickle(tmp_path / "model.pkl", blobs, wrap=True)
    model_config = dict(SMALL_CONFIG, weights=str(tmp_path / "model.pkl"), **affine)
    tuned = models.build_model(model_config, dict(SMALL_DATA, num_frames=16), multi_label=False,
                               fine_tune=True)
    for variable, expected in zip(tuned.weights, source.weights):
        if "moving" not in variable.path and not variable.path.startswith("pred/"):
            np.testing.assert_array_equal(np.asarray(variable), np.asarray(expected))
    assert tuned.get_layer("res3_1_nonlocal").frames_per_group == 4


def test_fine_tuning_a_frozen_bn_release_with_batch_statistics_is_warned_of(tmp_path, caplog):
    """Its BNs were affine maps: trained on batch statistics the network changes at once."""
    import logging

    from nonlocal_keras.training import models

    blobs = {name: value for name, value in official_blobs(small_model(seed=2)).items()
             if not name.endswith(("_rm", "_riv")) or name.startswith("nonlocal_")}
    write_pickle(tmp_path / "model.pkl", blobs, wrap=True)
    for affine_bn, warned in ((False, True), (True, False)):
        caplog.clear()
        model_config = dict(SMALL_CONFIG, weights=str(tmp_path / "model.pkl"), affine_bn=affine_bn)
        with caplog.at_level(logging.INFO, logger="nonlocal_keras.training.models"):
            models.build_model(model_config, SMALL_DATA, multi_label=False, fine_tune=True)
        assert ("`model.affine_bn: true` keeps them" in caplog.text) == warned, caplog.text
    # A file with the statistics (a BN release) says nothing.
    caplog.clear()
    write_pickle(tmp_path / "bn.pkl", official_blobs(small_model(seed=2)), wrap=True)
    with caplog.at_level(logging.INFO, logger="nonlocal_keras.training.models"):
        models.build_model(dict(SMALL_CONFIG, weights=str(tmp_path / "bn.pkl")), SMALL_DATA,
                           multi_label=False, fine_tune=True)
    assert "affine_bn" not in caplog.text
    # The README's route: converted first, then fine-tuned from the .weights.h5.
    converted = small_model()
    load_caffe2_weights(converted, blobs)
    converted.save_weights(tmp_path / "converted.weights.h5")
    with caplog.at_level(logging.INFO, logger="nonlocal_keras.training.models"):
        models.build_model(dict(SMALL_CONFIG, weights=str(tmp_path / "converted.weights.h5")),
                           SMALL_DATA, multi_label=False, fine_tune=True)
    assert "`model.affine_bn: true` keeps them" in caplog.text


def test_fine_tuning_from_an_official_pickle_without_a_classifier(tmp_path, caplog):
    """What the official `modify_caffe2_ftvideo.py` writes for fine-tuning (its
    `pred_*` deleted, a bare dict) was refused: "2 blobs ... needs are not in
    the file, the first 'pred_w'". The classifier starts new."""
    import logging

    from nonlocal_keras.training import models

    source = small_model(seed=0)
    blobs = {n: v for n, v in official_blobs(source).items() if not n.startswith("pred_")}
    write_pickle(tmp_path / "ft.pkl", {**blobs, "lr": 0.01}, wrap=False)
    model_config = dict(SMALL_CONFIG, weights=str(tmp_path / "ft.pkl"))
    with caplog.at_level(logging.INFO, logger="nonlocal_keras.training.models"):
        tuned = models.build_model(model_config, SMALL_DATA, multi_label=False, fine_tune=True)
    assert "the classifier pred (the file has none)" in caplog.text
    for variable, expected in zip(tuned.weights, source.weights):
        if not variable.path.startswith("pred/"):
            np.testing.assert_array_equal(np.asarray(variable), np.asarray(expected))


def test_fine_tuning_from_a_weights_file_of_more_layers_is_refused(tmp_path):
    """A run with non-local blocks into the model without them: the rest loaded,
    exit 0, and an INFO line counted the 12 arrays left out. The reverse loads
    (the blocks start new)."""
    from nonlocal_keras.training import models
    from nonlocal_keras.training.errors import ConfigError

    with_blocks, without = dict(SMALL_CONFIG), dict(SMALL_CONFIG, nonlocal_blocks=0)
    for source_config, target_config, error in ((with_blocks, without, True),
                                                (without, with_blocks, False)):
        source = models.build_model(source_config, SMALL_DATA, multi_label=False)
        path = str(tmp_path / "source.weights.h5")
        source.save_weights(path)
        target = dict(target_config, weights=path)
        if not error:
            models.build_model(target, SMALL_DATA, multi_label=False, fine_tune=True)
            continue
        with pytest.raises(ConfigError, match=(
                r"24 weight array\(s\) of the file have no place in '.*' \(another "
                r"architecture\?\): layers/non_local3d.* and 19 more\. Received: model.weights=")):
            models.build_model(target, SMALL_DATA, multi_label=False, fine_tune=True)


def test_fine_tuning_from_an_official_2d_imagenet_pickle_inflates_it(tmp_path, caplog):
    """The Kinetics configs start from the official ImageNet ResNet (2D kernels,
    no non-local blobs, 1000 classes): `conv1_w (64, 3, 7, 7)` did not fit conv1.
    Each t x k x k kernel is now t copies of the 2D one divided by t (the official
    inflation), the non-local blocks and the classifier start new."""
    import logging

    from nonlocal_keras.training import models

    source = small_model(seed=0)
    rng = np.random.default_rng(1)
    blobs = {name: (rng.normal(0, 0.1, value.shape[:2] + value.shape[3:]).astype("float32")
                    if name.endswith("_w") and value.ndim == 5 else value)
             for name, value in official_blobs(source).items() if not name.startswith("nonlocal_")}
    blobs["pred_w"] = rng.normal(0, 0.1, (1000, 256)).astype("float32")
    blobs["pred_b"] = np.zeros(1000, "float32")
    write_pickle(tmp_path / "imagenet.pkl", blobs, wrap=True)
    model_config = dict(SMALL_CONFIG, weights=str(tmp_path / "imagenet.pkl"))
    data_config = SMALL_DATA
    with caplog.at_level(logging.INFO, logger="nonlocal_keras.training.models"):
        tuned = models.build_model(model_config, data_config, multi_label=False, fine_tune=True)
    assert "the non-local blocks (the file has none)" in caplog.text
    inflated = 0
    for layer in tuned.layers:
        if isinstance(layer, keras.layers.Conv3D):
            kernel = np.asarray(layer.kernel)  # (t, k, k, in, out)
            expected = blobs[f"{layer.name}_w"].transpose(2, 3, 1, 0) / kernel.shape[0]
            for plane in kernel:
                np.testing.assert_allclose(plane, expected, rtol=1e-6)
            inflated += kernel.shape[0] > 1
        elif isinstance(layer, NonLocal3D):
            assert not np.asarray(layer.bn.gamma).any()  # the block's identity start
    assert inflated >= 3  # conv1 (5 frames) and the inflated blocks' 3x1x1 kernels

"""SavedModel export: TF Serving layout, signatures equal to the Keras model,
loading without this package, input checks, and the nonlocal-export CLI."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import warnings
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import yaml

from nonlocal_keras.training import errors, export, models, run_state
from test_export_support import (CLASS_NAMES, CROP, DATA_CONFIG, NUM_FRAMES, SCALE, centre_crop,
                                 normalize, random_clips, sharpen, tiny_model)

# Frames larger than the crop, shorter side already at SCALE: the in-graph
# resize is then the identity and the crop is plain slicing, which NumPy redoes.
FRAME_HEIGHT, FRAME_WIDTH = SCALE, SCALE + 8


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return export.export_saved_model(model, str(base), data_config=DATA_CONFIG)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def test_writes_the_tf_serving_layout(exported):
    base = os.path.dirname(os.path.dirname(exported))
    assert exported == os.path.join(base, "tiny_nl", "1")
    assert os.path.isfile(os.path.join(exported, "saved_model.pb"))
    assert os.path.isfile(os.path.join(exported, "variables", "variables.index"))
    with open(os.path.join(exported, "assets", export.CLASS_NAMES_ASSET)) as handle:
        assert handle.read().splitlines() == CLASS_NAMES
    # Only the version folder: no staging folder is left for TF Serving to see.
    assert os.listdir(os.path.dirname(exported)) == ["1"]


_LOAD_WITHOUT_PACKAGE = textwrap.dedent("""
    import sys
    sys.modules["nonlocal_keras"] = None
    try:
        import nonlocal_keras
    except ImportError:
        pass
    else:
        raise SystemExit("nonlocal_keras should not be importable here")
    import numpy as np
    import tensorflow as tf

    saved_model, inputs, outputs = sys.argv[1:4]
    clips = np.load(inputs)
    loaded = tf.saved_model.load(saved_model)
    results = {}
    for signature, key in (("serving_default", "uint8"), ("serving_normalized", "normalized")):
        for name, value in loaded.signatures[signature](clips=tf.constant(clips[key])).items():
            value = value.numpy()
            # Class names come back as bytes objects; np.savez wants plain strings.
            results[f"{key}/{name}"] = value.astype(str) if value.dtype == object else value
    assert not [m for m in sys.modules if m.startswith("nonlocal_keras.")]
    np.savez(outputs, **results)
""")


def test_loads_without_the_package_and_equals_the_keras_model(model, exported, tmp_path):
    uint8 = random_clips((3, NUM_FRAMES, FRAME_HEIGHT, FRAME_WIDTH, 3), seed=1)
    normalized = np.random.default_rng(2).normal(size=(2, NUM_FRAMES, CROP, CROP, 3)).astype("float32")
    np.savez(tmp_path / "inputs.npz", uint8=uint8, normalized=normalized)
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_PACKAGE)
    run = subprocess.run([sys.executable, str(script), exported, str(tmp_path / "inputs.npz"),
                          str(tmp_path / "outputs.npz")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    served = np.load(tmp_path / "outputs.npz")

    expected = {"uint8": model.predict(normalize(centre_crop(uint8, CROP)), verbose=0),
                "normalized": model.predict(normalized, verbose=0)}
    # The comparison can tell preprocessing apart: an off-centre crop moves the scores.
    shifted = model.predict(normalize(uint8[:, :, :CROP, 2:CROP + 2]), verbose=0)
    assert np.abs(shifted - expected["uint8"]).max() > 1e-3
    for key, probabilities in expected.items():
        assert np.abs(served[f"{key}/probabilities"] - probabilities).max() < 1e-5
        # Top-k checked by value, so that near-ties may come in either order.
        classes = served[f"{key}/top_k_classes"]
        top = served[f"{key}/top_k_probabilities"]
        np.testing.assert_allclose(top, -np.sort(-probabilities, axis=1)[:, :5], atol=1e-5)
        np.testing.assert_allclose(np.take_along_axis(probabilities, classes, axis=1), top, atol=1e-5)
        names = served[f"{key}/top_k_class_names"].astype(str)
        np.testing.assert_array_equal(names, np.array(CLASS_NAMES)[classes])


def test_saved_model_cli_lists_both_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run([cli, "show", "--dir", exported, "--all"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    shown = run.stdout
    assert "signature_def['serving_default']" in shown
    assert "signature_def['serving_normalized']" in shown
    default = shown.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    assert "dtype: DT_UINT8" in default
    assert f"shape: (-1, {NUM_FRAMES}, -1, -1, 3)" in default
    for output in ("probabilities", "top_k_classes", "top_k_probabilities", "top_k_class_names"):
        assert f"outputs['{output}']" in default
    normalized = shown.split("signature_def['serving_normalized']")[1].split("signature_def[")[0]
    assert "dtype: DT_FLOAT" in normalized
    assert f"shape: (-1, {NUM_FRAMES}, {CROP}, {CROP}, 3)" in normalized


_UINT8_EXPECTATION = rf"must be a uint8 tensor of shape \(batch, {NUM_FRAMES}, any, any, 3\)"


@pytest.mark.parametrize("shape", [
    (NUM_FRAMES, FRAME_HEIGHT, FRAME_WIDTH, 3),        # no batch axis
    (1, NUM_FRAMES, FRAME_HEIGHT, FRAME_WIDTH, 1),     # grey frames
    (1, NUM_FRAMES - 2, FRAME_HEIGHT, FRAME_WIDTH, 3), # too few frames
    (0, NUM_FRAMES, FRAME_HEIGHT, FRAME_WIDTH, 3),     # no clip (failed inside the network)
], ids=["rank", "channels", "frames", "empty"])
def test_signature_rejects_a_bad_shape_with_the_expected_one(loaded, shape):
    with pytest.raises(tf.errors.InvalidArgumentError, match=_UINT8_EXPECTATION) as error:
        loaded.signatures["serving_default"](clips=tf.zeros(shape, tf.uint8))
    assert str(list(shape)).replace(",", "") in str(error.value)


def test_normalized_signature_rejects_a_bad_crop(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"float32 tensor of shape \(batch, {NUM_FRAMES}, {CROP}, {CROP}, 3\)"):
        loaded.signatures["serving_normalized"](clips=tf.zeros((1, NUM_FRAMES, 28, 28, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="a batch of at least one clip"):
        loaded.signatures["serving_normalized"](clips=tf.zeros((0, NUM_FRAMES, CROP, CROP, 3)))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_normalized_signature_rejects_frames_that_are_no_numbers(loaded, value):
    """Found by a walk: a NaN frame gave NaN probabilities and top_k_classes 0-4."""
    clips = np.zeros((1, NUM_FRAMES, CROP, CROP, 3), np.float32)
    clips[0, 1, 2, 3, 0] = value
    with pytest.raises(tf.errors.InvalidArgumentError, match="must hold finite numbers"):
        loaded.signatures["serving_normalized"](clips=tf.constant(clips))


def test_wrong_dtype_is_rejected_naming_the_expected_dtype(loaded):
    floats = tf.zeros((1, NUM_FRAMES, FRAME_HEIGHT, FRAME_WIDTH, 3), tf.float32)
    # The signature (what TF Serving calls) checks the dtype before the graph runs.
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor"):
        loaded.signatures["serving_default"](clips=floats)
    # The restored function states the whole expected spec.
    with pytest.raises(TypeError, match=rf"shape=\(None, {NUM_FRAMES}, None, None, 3\), "
                                        r"dtype=tf\.uint8"):
        loaded.serving_default(floats)


def test_fully_convolutional_model_takes_any_size_without_cropping(tmp_path):
    model = tiny_model(input_shape=(None, None, None, 3), name="tiny_fcn")
    path = export.export_saved_model(model, str(tmp_path / "fcn" / "3"),
                                     data_config=dict(DATA_CONFIG, class_names=None))
    assert path.endswith(os.path.join("fcn", "3"))
    signature = tf.saved_model.load(path).signatures["serving_default"]
    assert signature.structured_input_signature[1]["clips"].shape.as_list() == [None] * 4 + [3]
    assert "top_k_class_names" not in signature.structured_outputs
    clips = random_clips((2, 4, SCALE, SCALE + 12, 3), seed=3)
    served = signature(clips=tf.constant(clips))["probabilities"].numpy()
    expected = model.predict(normalize(clips), verbose=0)
    assert np.abs(served - expected).max() < 1e-5


def test_next_version_in_a_base_folder_and_version_checks(tmp_path):
    for version in ("1", "3", "tmp"):
        os.makedirs(tmp_path / "net" / version)
    assert export.resolve_export_path(tmp_path, "net") == str(tmp_path / "net" / "4")
    assert export.resolve_export_path(tmp_path, "other") == str(tmp_path / "other" / "1")
    with pytest.raises(ValueError, match="Received: export_dir="):
        export.resolve_export_path(tmp_path / "net" / "0", "net")
    # `007` beside `7`: both version 7, exported without --overwrite, exit 0. The
    # command's errors name its flag (they named the library's `export_dir`).
    with pytest.raises(ValueError, match=r"Write the version as 7, without leading zeros\. "
                                         r"Received: --output='.*/net/007'$"):
        export.resolve_export_path(tmp_path / "net" / "007", "net", "--output")


@pytest.mark.parametrize("name", ["..", ".", "/abs/name", "a/b", "line\nbreak", 'my"model',
                                  ".hidden", "", "-x"])
def test_a_model_name_is_one_plain_folder_name(tmp_path, name):
    """`--model-name ..` wrote the version outside --output, `.` made the base a
    model's folder, an absolute name ignored --output (each exit 0), and `my"model`
    made nonlocal-serving-example's models.config unreadable to TF Serving."""
    with pytest.raises(errors.ConfigError, match=rf"Received: model_name={re.escape(repr(name))}$"):
        export.resolve_export_path(tmp_path, name)
    assert export.resolve_export_path(tmp_path, "nl_c2d-r50.v2") == str(
        tmp_path / "nl_c2d-r50.v2" / "1")


def test_a_models_folder_gets_its_next_version_not_a_nested_model(model, tmp_path, caplog):
    """`--output exp/net` (a model's folder, which `nonlocal-predict --model` takes)
    wrote `exp/net/net/1`, which nothing serves, exit 0. A next version that
    scores otherwise than the served one is warned about (it changed what every
    client got without a word)."""
    first = export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG,
                                      model_name="net")
    with caplog.at_level("WARNING"):
        second = export.export_saved_model(model, os.path.dirname(first), data_config=DATA_CONFIG)
    assert (first, second) == (str(tmp_path / "net" / "1"), str(tmp_path / "net" / "2"))
    assert not [r for r in caplog.records if r.name == export.logger.name]
    with caplog.at_level("WARNING"):
        third = export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG,
                                          model_name="net", multi_label=True)
    assert [r.getMessage() for r in caplog.records if r.name == export.logger.name] == [
        f"Version 3 of {str(tmp_path / 'net')!r} differs from what TF Serving (and "
        "nonlocal-predict --model) served until now, version 2, in its label kind (sigmoid or "
        "softmax scores): every client of the model gets it from now on. To serve both, export "
        "it under another --model-name."]
    caplog.clear()
    # --overwrite of the served version: compared with what it replaced (it was not).
    with caplog.at_level("WARNING"):
        export.export_saved_model(model, third, data_config=DATA_CONFIG, overwrite=True,
                                  top_k=2)
    assert [r.getMessage() for r in caplog.records if r.name == export.logger.name] == [
        f"Version 3 of {str(tmp_path / 'net')!r} differs from what TF Serving (and "
        "nonlocal-predict --model) served until now, version 3, which this export replaced, in "
        "its label kind (sigmoid or softmax scores) and top-k count: every client of the model "
        "gets it from now on. To serve both, export it under another --model-name."]
    caplog.clear()
    metadata = json.loads((tmp_path / "net" / "3" / export.METADATA_FILE).read_text())
    older = {key: value for key, value in metadata.items() if key != "top_k"}
    caplog.clear()
    with caplog.at_level("WARNING"):  # a field an older export lacks is no change
        export._warn_if_served_model_changes(third, (3, older), dict(metadata, top_k=1))
    assert not [r for r in caplog.records if r.name == export.logger.name]
    with caplog.at_level("WARNING"):  # not the served version: nothing changes for clients
        export.export_saved_model(model, first, data_config=DATA_CONFIG, overwrite=True,
                                  multi_label=True)
    assert not [r for r in caplog.records if r.name == export.logger.name]
    # A served version without the metadata (another exporter's) was compared
    # with nothing, without a word.
    os.remove(os.path.join(third, export.METADATA_FILE))
    caplog.clear()
    with caplog.at_level("WARNING"):
        fourth = export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG,
                                           model_name="net")
    assert [r.getMessage() for r in caplog.records if r.name == export.logger.name] == [
        f"Version 4 of {str(tmp_path / 'net')!r} is served from now on in place of version 3, "
        f"which has no {export.METADATA_FILE} (another exporter's?): whether its clients now "
        "get other classes, scores or clip lengths cannot be told."]
    shutil.rmtree(fourth)
    shutil.rmtree(third)
    assert export.resolve_export_path(tmp_path / "²", "net") == str(tmp_path / "²" / "net" / "1")
    # `--output exp/net/-1` (or `abc`) wrote `exp/net/-1/net/1`, exit 0, where `0` is refused.
    for name in ("-1", "abc"):
        with pytest.raises(errors.ConfigError, match=r"is a model's folder \(versions 1, 2\): a "
                           rf"folder in it must be a version number >= 1, .*Received: "
                           rf"--output='.*/net/{name}'$"):
            export.resolve_export_path(tmp_path / "net" / name, "net", "--output")


def test_a_version_that_is_a_file_or_appears_meanwhile_is_refused(model, tmp_path, monkeypatch):
    """A file in the version's place was a NotADirectoryError traceback; a version
    another export finished meanwhile was replaced without --overwrite."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "7").write_text("")
    with pytest.raises(errors.FolderError, match="The version folder is a file. Received"):
        export.export_saved_model(model, str(tmp_path / "net" / "7"), data_config=DATA_CONFIG,
                                  overwrite=True)
    other = tmp_path / "net" / "8"

    def another_export_writes(parent):
        other.mkdir()
        (other / "saved_model.pb").write_text("the other export's")

    monkeypatch.setattr(export, "_remove_abandoned_staging", another_export_writes)
    with pytest.raises(export.VersionExistsError, match="The version folder exists"):
        export.export_saved_model(model, str(other), data_config=DATA_CONFIG)
    assert sorted(os.listdir(tmp_path / "net")) == ["7", "8"]
    assert (other / "saved_model.pb").read_text() == "the other export's"


def test_a_read_only_model_folder_is_one_line(model, tmp_path, monkeypatch):
    """Its staging folder (tempfile.mkdtemp) failed outside the handled writes: a traceback."""
    import errno
    import tempfile

    def read_only(**kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(errors.FolderError, match=r"Cannot write the SavedModel .*Read-only"):
        export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG)


def test_refuses_to_overwrite_a_version(model, exported):
    with pytest.raises(FileExistsError, match="Received: export_dir="):
        export.export_saved_model(model, exported, data_config=DATA_CONFIG)


def test_overwrite_replaces_the_version_whole(model, tmp_path):
    path = export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG)
    renamed = [name.upper() for name in CLASS_NAMES]
    again = export.export_saved_model(model, path, data_config=DATA_CONFIG,
                                      class_names=renamed, overwrite=True)
    assert again == path and os.listdir(os.path.dirname(path)) == ["1"]
    with open(os.path.join(path, "assets", export.CLASS_NAMES_ASSET)) as handle:
        assert handle.read().splitlines() == renamed


def _archive_class():
    """The class keras.export.ExportArchive() makes for the backend (TFExportArchive)."""
    import keras

    return type(keras.export.ExportArchive())


def _full_disk_write_out(self, filepath, **kwargs):
    os.makedirs(os.path.join(filepath, "variables"))  # what SaveV2 had begun
    raise tf.errors.ResourceExhaustedError(
        None, None, "{{function_node __wrapped__SaveV2_dtypes_79_device_/job:localhost/"
        f"replica:0/task:0/device:CPU:0}}}} {filepath}/variables/variables_temp/part-00000-"
        "of-00001.data-00000-of-00001.tempstate1498; No space left on device [Op:SaveV2]")


def test_a_full_disk_is_a_one_line_error_and_the_version_stays(model, tmp_path, monkeypatch):
    """TensorFlow's saver reports a full disk as a ResourceExhaustedError (seen on a full
    tmpfs, with this message): it was a traceback and exit 1."""
    path = export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG)
    before = sorted(os.listdir(path))
    monkeypatch.setattr(_archive_class(), "write_out", _full_disk_write_out)
    with pytest.raises(errors.FolderError, match=r"Cannot write the SavedModel '.*/1' \(No space "
                       r"left on device\); nothing was exported, and the folder holds what it held"):
        export.export_saved_model(model, path, data_config=DATA_CONFIG, overwrite=True)
    assert os.listdir(os.path.dirname(path)) == ["1"] and sorted(os.listdir(path)) == before


def test_a_failed_export_removes_the_folders_it_made_and_only_those(model, tmp_path, monkeypatch):
    """On a full disk it said "the folder holds what it held" and left the empty
    `BASE/<model_name>/` it had made."""
    monkeypatch.setattr(_archive_class(), "write_out", _full_disk_write_out)
    (tmp_path / "kept").mkdir()
    for output in (tmp_path / "new" / "base", tmp_path / "kept", tmp_path / "kept" / "net" / "3"):
        with pytest.raises(errors.FolderError, match=r"\(No space left on device\); nothing was"):
            export.export_saved_model(model, str(output), data_config=DATA_CONFIG)
        assert sorted(os.listdir(tmp_path)) == ["kept"] and not os.listdir(tmp_path / "kept")
    # A folder that is not empty (another export's version by now) stays.
    os.makedirs(tmp_path / "kept" / "net" / "1")

    def another_export_meanwhile(self, filepath, **kwargs):
        (tmp_path / "kept" / "net" / "1" / "saved_model.pb").write_text("")
        _full_disk_write_out(self, filepath)

    monkeypatch.setattr(_archive_class(), "write_out", another_export_meanwhile)
    with pytest.raises(errors.FolderError, match=r"\(No space left on device\); nothing was"):
        export.export_saved_model(model, str(tmp_path / "kept" / "net" / "2"),
                                  data_config=DATA_CONFIG)
    assert os.listdir(tmp_path / "kept" / "net") == ["1"]


def test_a_new_folder_another_failed_export_removes_meanwhile_is_made_again(model, tmp_path,
                                                                           monkeypatch):
    """Two `--output BASE` exports at once into a new BASE: the one that failed
    removed the empty folders it had made just as the other was to make its
    staging folder in them, a FileNotFoundError traceback."""
    import tempfile

    base, real_mkdtemp = tmp_path / "base", tempfile.mkdtemp
    removed = []

    def the_other_export_fails_first(**kwargs):
        if kwargs.get("dir") == str(base / model.name) and not removed:
            for folder in (base / model.name, base):  # its clean-up, deepest first
                os.rmdir(folder)
                removed.append(folder)
        return real_mkdtemp(**kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", the_other_export_fails_first)
    path = export.export_saved_model(model, str(base), data_config=DATA_CONFIG)
    assert removed and path == str(base / model.name / "1")
    assert os.listdir(base) == [model.name] and os.listdir(base / model.name) == ["1"]
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))


def test_a_failed_export_leaves_the_folders_another_export_made_meanwhile(model, tmp_path,
                                                                          monkeypatch):
    """It counted as its own the folders missing when it looked, and removed them when
    it failed: those another export had made meanwhile too, under that one's feet."""
    from nonlocal_keras.training import atomic

    base, real_make_folder = tmp_path / "base", atomic.make_folder

    def the_other_export_first(path, *args, **kwargs):
        os.makedirs(path)  # the other export's, about to make its staging folder there
        return real_make_folder(path, *args, **kwargs)

    monkeypatch.setattr(atomic, "make_folder", the_other_export_first)
    monkeypatch.setattr(_archive_class(), "write_out", _full_disk_write_out)
    with pytest.raises(errors.FolderError, match=r"\(No space left on device\); nothing was"):
        export.export_saved_model(model, str(base), data_config=DATA_CONFIG)
    assert os.listdir(base) == [model.name] and os.listdir(base / model.name) == []


def test_a_next_version_another_export_takes_meanwhile_goes_to_the_next_one(
        model, tmp_path, monkeypatch):
    """Three `--output BASE` exports started at once: one wrote version 1, the two
    others failed with "The version folder exists" (they were asked for the next
    version, not version 1). A version the user names still fails so."""
    folder = tmp_path / model.name
    real_write_out, real_rename = _archive_class().write_out, os.rename

    def another_export(version):
        os.makedirs(folder / version)
        (folder / version / "saved_model.pb").write_text(f"the other export's {version}")

    def written_meanwhile(self, filepath, **kwargs):
        real_write_out(self, filepath, **kwargs)
        another_export(str(len(os.listdir(folder))))  # the version this export chose

    with monkeypatch.context() as patched:
        patched.setattr(_archive_class(), "write_out", written_meanwhile)
        assert export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG) == str(
            folder / "2")

    taken = []

    def renamed_in_first(source, target):
        # Between the last look at the folder and the rename.
        if os.path.basename(source) == "model" and not taken:
            taken.append(target)
            another_export(os.path.basename(target))
        real_rename(source, target)

    with monkeypatch.context() as patched:
        patched.setattr(export.os, "rename", renamed_in_first)
        assert export.export_saved_model(model, str(folder), data_config=DATA_CONFIG,
                                         overwrite=True) == str(folder / "4")
    assert sorted(os.listdir(folder)) == ["1", "2", "3", "4"]
    for version in ("1", "3"):
        assert (folder / version / "saved_model.pb").read_text() == f"the other export's {version}"
    monkeypatch.setattr(_archive_class(), "write_out", written_meanwhile)
    with pytest.raises(export.VersionExistsError, match="The version folder exists"):
        export.export_saved_model(model, str(folder / "5"), data_config=DATA_CONFIG)
    assert (folder / "5" / "saved_model.pb").read_text() == "the other export's 5"


def test_a_named_version_another_export_writes_meanwhile_is_one_line(model, tmp_path,
                                                                      monkeypatch):
    """Written by another export between the last check and the rename, a
    version the user named was an OSError traceback (ENOTEMPTY)."""
    target = tmp_path / model.name / "6"
    real_rename = os.rename

    def written_first(source, destination):
        if os.path.basename(source) == "model":
            os.makedirs(destination)
            (target / "saved_model.pb").write_text("the other export's")
        real_rename(source, destination)

    monkeypatch.setattr(export.os, "rename", written_first)
    with pytest.raises(export.VersionExistsError, match="Another export wrote the version "
                       "folder while this one was written"):
        export.export_saved_model(model, str(target), data_config=DATA_CONFIG)
    assert os.listdir(target) == ["saved_model.pb"]


def test_a_version_an_overwrite_killed_midway_moved_aside_is_put_back(model, tmp_path):
    """Killed between moving the old version aside and renaming the new one in,
    an export left no version there, and the next export deleted the old one
    with the staging folder."""
    path = export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG)
    renames = []

    def killed_after_the_first(source, target):
        renames.append(target)
        os.replace(source, target)
        if len(renames) == 1:
            raise SystemExit("killed")  # the process ends here; its staging folder stays

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    # A kill: no `finally` removes the staging folder, whose process is gone.
    with mock.patch.object(export, "_staging_prefix", lambda: export._host_staging_prefix()
                           + f"{ended.pid}-"), mock.patch.object(export.os, "rename",
                                                                 killed_after_the_first), \
            mock.patch.object(export.shutil, "rmtree", lambda *args, **kwargs: None):
        with pytest.raises(SystemExit):
            export.export_saved_model(model, path, data_config=DATA_CONFIG, overwrite=True,
                                      class_names=[n.upper() for n in CLASS_NAMES])
    assert "1" not in os.listdir(os.path.dirname(path))
    again = export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG)
    assert sorted(os.listdir(os.path.dirname(path))) == ["1", "2"] and again.endswith("2")
    with open(os.path.join(path, "assets", export.CLASS_NAMES_ASSET)) as handle:
        assert handle.read().splitlines() == list(CLASS_NAMES)  # the old version, whole


def test_staging_that_killed_exports_left_on_this_host_is_removed(model, tmp_path):
    """A killed export leaves its staging folder (a SavedModel's size); the next export
    into that model's folder removes those whose process is gone, and only those."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    folder = tmp_path / model.name
    abandoned = export._staging_prefix().replace(f"-{os.getpid()}-", f"-{ended.pid}-") + "a1b2c3d4"
    kept = [export._staging_prefix() + "e5f6g7h8",  # this process's: an export under way
            f".export-another-host-{ended.pid}-i9j0k1l2", ".export-notours"]
    for name in [abandoned, *kept]:
        os.makedirs(folder / name / "model" / "variables")
    export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG)
    assert sorted(os.listdir(folder)) == sorted(["1", *kept])


@pytest.mark.parametrize("field, value", [("crop_size", CROP + 8), ("num_frames", NUM_FRAMES * 2)])
def test_config_must_match_the_model_input(model, tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"Received: data\.{field}={value}"):
        export.export_saved_model(model, str(tmp_path), data_config=dict(DATA_CONFIG, **{field: value}))
    assert not os.listdir(tmp_path)


def test_class_names_must_cover_every_class(model, tmp_path):
    with pytest.raises(ValueError, match="Received: class_names="):
        export.export_saved_model(model, str(tmp_path), class_names=CLASS_NAMES[:3])
    # One line of UTF-8 each: a carriage return was printed raw by predict, a
    # file name's undecodable byte was a UnicodeEncodeError traceback.
    for odd in ("a\rb", "t\udcf6p"):
        with pytest.raises(ValueError, match="one-line UTF-8 names.*Received: class_names="):
            export.export_saved_model(model, str(tmp_path),
                                      class_names=[odd, *CLASS_NAMES[1:]])
    assert not os.listdir(tmp_path)


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    config = {"model": {"name": "VideoResNet", "stage_blocks": [1, 1], "width": 4,
                        "nonlocal_blocks": {"res3": [0]}},
              "data": dict(DATA_CONFIG, num_classes=len(CLASS_NAMES), train_scale=[SCALE, SCALE])}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    trained = models.build_model(config["model"], dict(DATA_CONFIG, num_classes=5), False)
    sharpen(trained, seed=4)
    trained.save_weights(str(tmp_path / "final.weights.h5"))

    # Printed in a command to paste into a shell: `$(id)` ran there, `"` broke it.
    output = tmp_path / 'exported $(id) "x' / "nl_tiny" / "7"
    assert export.main(["--config", str(config_path), "--checkpoint",
                        str(tmp_path / "final.weights.h5"), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"SavedModel written to {output}" in printed
    command = printed.splitlines()[-1].split(": ", 1)[1]
    assert shlex.split(command) == ["nonlocal-serving-example", str(output)]
    path = str(output)
    with open(output / export.METADATA_FILE) as handle:
        assert json.load(handle)["eval_scale"] == SCALE
    clips = random_clips((2, NUM_FRAMES, FRAME_HEIGHT, FRAME_WIDTH, 3), seed=5)
    served = tf.saved_model.load(path).signatures["serving_default"](clips=tf.constant(clips))
    expected = trained.predict(normalize(centre_crop(clips, CROP)), verbose=0)
    assert np.abs(served["probabilities"].numpy() - expected).max() < 1e-5
    assert served["top_k_class_names"].numpy()[0, 0].decode() == CLASS_NAMES[expected[0].argmax()]


# --- Bounded frames in serving_default ------------------------------------------

def test_a_one_pixel_high_request_fails_fast_naming_the_limit(loaded):
    """The issue's 0.5 MiB request: resized, its shorter side would go 1 -> 36
    and the other 20000 -> 720000 (8 frames: 2.5 GB of float32)."""
    import resource
    import time

    clips = tf.zeros((1, NUM_FRAMES, 1, 20000, 3), tf.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        loaded.signatures["serving_default"](clips=clips)
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    message = str(error.value)
    assert (f"frames must be at most {export.DEFAULT_MAX_FRAME_SIDE} pixels on a side with an "
            f"aspect ratio of at most {export.DEFAULT_MAX_ASPECT_RATIO:g}:1") in message
    assert "max_frame_side=4096" in message and "max_aspect_ratio=4" in message
    assert "Received: clips.shape=" in message and f"[1 {NUM_FRAMES} 1 20000 3]" in message
    # Refused before the resize: no 2.5 GB allocation, no seconds of work.
    assert grown_mib < 500, grown_mib
    assert elapsed < 5, elapsed


@pytest.fixture(scope="module")
def tight(model, tmp_path_factory):
    path = export.export_saved_model(model, str(tmp_path_factory.mktemp("tight") / "t" / "1"),
                                     data_config=DATA_CONFIG, max_frame_side=100,
                                     max_aspect_ratio=2.0)
    return path, tf.saved_model.load(path).signatures["serving_default"]


@pytest.mark.parametrize("height, width, limit", [
    (36, 101, "max_frame_side=100"), (101, 60, "max_frame_side=100"),
    (36, 73, "max_aspect_ratio=2"), (80, 39, "max_aspect_ratio=2"), (0, 40, "max_aspect_ratio=2"),
])
def test_frames_beyond_the_recorded_bounds_are_refused(tight, height, width, limit):
    _, signature = tight
    with pytest.raises(tf.errors.InvalidArgumentError, match=limit) as error:
        signature(clips=tf.zeros((1, NUM_FRAMES, height, width, 3), tf.uint8))
    assert f"clips.shape=] [1 {NUM_FRAMES} {height} {width} 3]" in str(error.value)


def test_frames_within_the_bounds_are_served_like_the_keras_model(model, tight):
    path, signature = tight
    with open(os.path.join(path, export.METADATA_FILE)) as handle:
        metadata = json.load(handle)
    assert metadata["max_frame_side"] == 100 and metadata["max_aspect_ratio"] == 2.0
    # Exactly at both limits: 100 wide, 50 high is 2:1. The shorter side goes
    # 50 -> 36, which NumPy does not redo here; the centre crop of an input
    # whose shorter side already is SCALE (below) is checked exactly.
    served = signature(clips=tf.zeros((1, NUM_FRAMES, 50, 100, 3), tf.uint8))
    assert served["probabilities"].shape == (1, len(CLASS_NAMES))
    clips = random_clips((1, NUM_FRAMES, SCALE, 2 * SCALE, 3), seed=9)
    served = signature(clips=tf.constant(clips))["probabilities"].numpy()
    expected = model.predict(normalize(centre_crop(clips, CROP)), verbose=0)
    assert np.abs(served - expected).max() < 1e-5


@pytest.mark.parametrize("argument, value", [("max_frame_side", 0), ("max_frame_side", 2.5),
                                             ("max_aspect_ratio", 0.5), ("max_aspect_ratio", "4")])
def test_bounds_are_checked_at_export(model, tmp_path, argument, value):
    with pytest.raises(ValueError, match=rf"Received: {argument}={value!r}"):
        export.export_saved_model(model, str(tmp_path), data_config=DATA_CONFIG, **{argument: value})
    assert not os.listdir(tmp_path)


# --- Metadata: every evaluation setting, the model, the weights -------------------

def _run_folder(tmp_path, with_weights=("final",)):
    """A run folder as nonlocal-train leaves it: config.yaml and some weights."""
    config = {"model": {"name": "VideoResNet", "stage_blocks": [1, 1], "width": 4,
                        "nonlocal_blocks": {"res3": [0]}},
              "data": dict(DATA_CONFIG, num_classes=len(CLASS_NAMES), train_scale=[SCALE, SCALE],
                           mean=[110.0, 115.0, 120.0], std=[50.0, 55.0, 60.0])}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    trained = {}
    for seed, kind in enumerate(with_weights, start=10):
        model = models.build_model(config["model"], config["data"], False)
        sharpen(model, seed=seed)
        name = {"final": "final.weights.h5", "last": "checkpoints/last.weights.h5"}[kind]
        model.save_weights(str(run / name))
        trained[kind] = model
    return run, config, trained


def test_the_runs_training_csv_says_whether_it_is_multi_label(tmp_path, capsys):
    """Without --multi-label a Charades-style run was exported with softmax scores."""
    run, config, _ = _run_folder(tmp_path)
    csv_path = tmp_path / "train.csv"
    config["data"]["train_csv"] = str(csv_path)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    csv_path.write_text("path,labels\na.mp4,0 1\n")
    assert export.main(["--config", str(run / "config.yaml"), "--output", str(tmp_path / "m")]) == 0
    assert "Multi-label (sigmoid scores)" in capsys.readouterr().out
    [metadata] = (tmp_path / "m").glob(f"*/1/{export.METADATA_FILE}")
    assert json.loads(metadata.read_text())["multi_label"] is True
    csv_path.write_text("path,label\na.mp4,0\n")
    with pytest.raises(errors.ConfigError, match="--multi-label, but the run was trained "
                       "single-label"):
        export.main(["--config", str(run / "config.yaml"), "--output", str(tmp_path / "s"),
                     "--multi-label"])
    assert not (tmp_path / "s").exists()


def test_a_run_whose_training_csv_is_gone_is_told_by_its_training_metrics(tmp_path, capsys):
    """Its CSV moved, a Charades-style run was exported with softmax scores (exit 0)."""
    run, config, _ = _run_folder(tmp_path)
    config["data"]["train_csv"] = str(tmp_path / "moved.csv")
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    def export_to(name, *flags):
        assert export.main(["--config", str(run / "config.yaml"),
                            "--output", str(tmp_path / name), *flags]) == 0
        [metadata] = (tmp_path / name).glob(f"*/1/{export.METADATA_FILE}")
        return json.loads(metadata.read_text())["multi_label"], capsys.readouterr().out

    (run / "history.csv").write_text("epoch,loss,pr_auc,skipped_videos\n1,0.7,0.2,0\n")
    multi, out = export_to("m")
    assert multi is True and "Multi-label (sigmoid scores): the run trained with pr_auc" in out
    (run / "history.csv").write_text("epoch,loss,top1,top5,skipped_videos\n1,0.7,0.2,0.5,0\n")
    multi, out = export_to("s")
    assert multi is False and "label (s" not in out
    with pytest.raises(errors.ConfigError, match=r"single-label \(softmax\): it trained with top1"):
        export.main(["--config", str(run / "config.yaml"), "--output", str(tmp_path / "x"),
                     "--multi-label"])
    (run / "history.csv").unlink()  # no epoch finished: nothing tells; said, not silent
    multi, out = export_to("u")
    assert multi is False and "Single-label (softmax scores): the training CSV" in out
    # The weights a run writes record it.
    run_state.write_labels(str(run / "final.weights.h5"), {
        "class_names": config["data"]["class_names"], "num_classes": len(CLASS_NAMES),
        "multi_label": True})
    multi, out = export_to("w")
    assert multi is True and f"Multi-label (sigmoid scores): {run}/final.weights.h5 was" in out
    config["data"]["train_csv"] = None  # said "the training CSV None is not there to tell"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    import h5py

    with h5py.File(run / "final.weights.h5", "a") as handle:
        del handle.attrs[run_state.LABELS_ATTRIBUTE]
    multi, out = export_to("n")
    assert multi is False and "no training CSV (data.train_csv) tells" in out, out


def test_metadata_records_every_eval_setting_the_model_and_its_weights(tmp_path, capsys):
    run, config, _ = _run_folder(tmp_path)
    output = tmp_path / "exported" / "1"
    assert export.main(["--config", str(run / "config.yaml"), "--output", str(output),
                        "--multi-label", "--max-frame-side", "2000", "--max-aspect-ratio", "3"]) == 0
    with open(output / export.METADATA_FILE) as handle:
        metadata = json.load(handle)
    data = config["data"]
    for key in ("num_frames", "sampling_rate", "crop_size", "eval_scale", "num_clips", "num_crops",
                "mean", "std", "class_names"):
        assert metadata[key] == data[key], key
    assert metadata["num_classes"] == len(CLASS_NAMES)
    assert metadata["multi_label"] is True
    assert metadata["max_frame_side"] == 2000 and metadata["max_aspect_ratio"] == 3.0
    assert metadata["model"]["name"] == "VideoResNet"
    assert metadata["model"]["config"] == config["model"]
    assert metadata["model"]["nonlocal_blocks"] == [{"name": "res3_0_nonlocal",
                                                     "mode": "embedded_gaussian"}]
    assert metadata["weights"] == str(run / "final.weights.h5")


# --- Which weights an export without --checkpoint uses ----------------------------

@pytest.mark.parametrize("present, config_weights, expected", [
    (("final", "last"), "init.weights.h5", "final.weights.h5"),
    (("last",), "init.weights.h5", os.path.join("checkpoints", "last.weights.h5")),
    ((), "init.weights.h5", "init.weights.h5"),
])
def test_weights_default_to_the_runs_final_then_last_then_the_config(tmp_path, present,
                                                                      config_weights, expected):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    for kind in present:
        name = {"final": "final.weights.h5", "last": "checkpoints/last.weights.h5"}[kind]
        (run / name).write_bytes(b"h5")
    (tmp_path / config_weights).write_bytes(b"h5")
    config_weights = str(tmp_path / config_weights)
    weights, origin = export.find_weights(str(run / "config.yaml"), config_weights)
    assert weights == (config_weights if expected == "init.weights.h5" else str(run / expected))
    # A finished run whose final weights were removed was said "not finished".
    assert ("no final weights (not finished, or they were removed)" in origin) == (
        expected == "checkpoints/last.weights.h5")


def test_a_run_folder_as_checkpoint_means_its_best_weights(tmp_path):
    """`--checkpoint RUN` was "Checkpoint not found" (evaluate's --weights and
    model.weights take a run folder)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.weights.h5").write_bytes(b"h5")
    assert export.find_weights("any.yaml", None, str(run)) == (
        str(run / "checkpoints" / "last.weights.h5"), "--checkpoint")
    (run / "checkpoints" / "last.weights.h5").unlink()
    with pytest.raises(errors.MissingFileError, match=r"no weights .* Received: --checkpoint="):
        export.find_weights("any.yaml", None, str(run))


def test_a_config_that_is_not_a_runs_never_borrows_weights_from_its_folder(tmp_path):
    (tmp_path / "final.weights.h5").write_bytes(b"h5")
    (tmp_path / "experiment.yaml").write_text("{}")
    with pytest.raises(errors.MissingFileError, match="No weights to export"):
        export.find_weights(str(tmp_path / "experiment.yaml"), None)


def test_export_without_any_weights_stops_and_writes_nothing(tmp_path):
    run, _, _ = _run_folder(tmp_path, with_weights=())
    with pytest.raises(errors.MissingFileError, match="random weights") as error:
        export.main(["--config", str(run / "config.yaml"), "--output", str(tmp_path / "out")])
    assert "final.weights.h5" in str(error.value) and "last.weights.h5" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_export_without_checkpoint_serves_the_runs_last_weights(tmp_path, capsys):
    run, _, trained = _run_folder(tmp_path, with_weights=("last",))
    output = tmp_path / "exported" / "1"
    assert export.main(["--config", str(run / "config.yaml"), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"Exporting with weights {run / 'checkpoints' / 'last.weights.h5'}" in printed
    clips = random_clips((1, NUM_FRAMES, FRAME_HEIGHT, FRAME_WIDTH, 3), seed=6)
    served = tf.saved_model.load(str(output)).signatures["serving_default"](clips=tf.constant(clips))
    mean = np.array([110.0, 115.0, 120.0], np.float32)
    std = np.array([50.0, 55.0, 60.0], np.float32)
    views = (centre_crop(clips, CROP).astype(np.float32) - mean) / std
    expected = trained["last"].predict(views, verbose=0)
    assert np.abs(served["probabilities"].numpy() - expected).max() < 1e-5


def test_missing_checkpoint_and_existing_version_are_user_errors(model, exported, tmp_path):
    run, _, _ = _run_folder(tmp_path, with_weights=())
    with pytest.raises(errors.MissingFileError, match="Received: --checkpoint="):
        export.main(["--config", str(run / "config.yaml"), "--output", str(tmp_path / "o"),
                     "--checkpoint", str(tmp_path / "nope.weights.h5")])
    with pytest.raises(errors.MissingFileError, match="Received: model.weights="):
        export.find_weights(str(run / "config.yaml"), str(tmp_path / "gone.weights.h5"))
    with pytest.raises(errors.UserError, match=r"pass overwrite=True\. Received: export_dir="):
        export.export_saved_model(model, exported, data_config=DATA_CONFIG)
    with pytest.raises(errors.UserError, match=r"pass --overwrite\. Received: --output="):
        export.export_saved_model(model, exported, data_config=DATA_CONFIG, argument="--output")


def test_weights_of_another_model_are_a_config_error(tmp_path):
    run, config, _ = _run_folder(tmp_path)
    other = models.build_model(config["model"], dict(config["data"], num_classes=7), False)
    other.save_weights(str(tmp_path / "seven.weights.h5"))
    # Unwrapped: it said "Cannot build model.name='VideoResNet' with weights ...: " first.
    with pytest.raises(errors.ConfigError, match=r"^The weights of .*seven.* are not those of "
                       r"VideoResNet\(.*\), the network the config's model\.\* fields build "
                       r"\(another architecture, or another class count\?\): 2 weight\(s\) "
                       r"differ in shape: pred/kernel: \(32, 7\) in the file, \(32, 5\) in the model; "
                       r"pred/bias: .*"
                       r"Received: --checkpoint='.*seven"):
        export.main(["--config", str(run / "config.yaml"), "--output", str(tmp_path / "o"),
                     "--checkpoint", str(tmp_path / "seven.weights.h5")])
    assert not (tmp_path / "o").exists()
    # Another architecture: Keras warned about each layer (28 lines) above the error line.
    deeper = models.build_model(dict(config["model"], stage_blocks=[2, 1]), config["data"], False)
    deeper.save_weights(str(tmp_path / "deeper.weights.h5"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Named as given (it said model.weights).
        with pytest.raises(errors.ConfigError, match="The weights of .* are not those of .*"
                           r"Received: --checkpoint='.*deeper\.weights\.h5'$"):
            export.main(["--config", str(run / "config.yaml"), "--output", str(tmp_path / "o"),
                         "--checkpoint", str(tmp_path / "deeper.weights.h5")])
    assert not [str(w.message) for w in caught if "Skipping" in str(w.message)]


def test_weights_with_more_than_the_model_are_refused(tmp_path):
    """Found by a walk: a run's weights with a non-local block, exported (or
    evaluated) by a config without it, lost the block without a word, exit 0
    (Keras skips what the model has no place for); `nonlocal-train` refused them."""
    run, config, _ = _run_folder(tmp_path)
    plain = dict(config, model=dict(config["model"], nonlocal_blocks={}))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    with pytest.raises(errors.ConfigError, match=r"^The weights of .*final\.weights\.h5 are not "
                       r"those of VideoResNet\(stage_blocks=\[1, 1\], width=4\), .*: \d+ weight array\(s\) of the file have no place in the "
                       r"model: layers/non_local3d/.*Received: --checkpoint="):
        export.main(["--config", str(tmp_path / "plain.yaml"), "--output", str(tmp_path / "o"),
                     "--checkpoint", str(run / "final.weights.h5")])
    assert not (tmp_path / "o").exists()
    # The reverse, fewer: Keras' own error said "Example error message for object ...:"
    # and then nothing.
    plain_model = models.build_model(plain["model"], plain["data"], False)
    plain_model.save_weights(str(tmp_path / "plain.weights.h5"))
    with pytest.raises(errors.ConfigError, match=r"\d+ weight array\(s\) of the model are not "
                       r"in the file: .*Received: --weights="):
        models.build_model(dict(config["model"], weights=str(tmp_path / "plain.weights.h5")),
                           config["data"], False, argument="--weights")


def test_console_script_prints_one_error_line_and_exits_2(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "nonlocal-export")
    missing = str(tmp_path / "none.weights.h5")
    run = subprocess.run([script, "--config", "demo_digits_nl_c2d", "--output", str(tmp_path),
                          "--checkpoint", missing], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.splitlines() == [
        f"nonlocal-export: error: Checkpoint not found. Received: --checkpoint={missing!r}"]
    assert not os.listdir(tmp_path)


def _tiny_run_config(tmp_path):
    """`(config.yaml, weights)` of a tiny model, for the console script."""
    config = {"model": {"name": "VideoResNet", "stage_blocks": [1, 1], "width": 4,
                        "nonlocal_blocks": {"res3": [0]}},
              "data": dict(DATA_CONFIG, num_classes=len(CLASS_NAMES))}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    weights = str(tmp_path / "final.weights.h5")
    models.build_model(config["model"], config["data"], False).save_weights(weights)
    return str(config_path), weights


def test_a_file_size_limit_on_the_weights_check_is_one_line_and_exit_2(tmp_path):
    """The check of the weights file writes the model's own weights in the temporary
    folder: under `ulimit -f` h5py printed its finalisers' tracebacks ("Exception
    ignored in ... __dealloc__") above the one line, then crashed the process (a
    segmentation fault) where the failed file was let go."""
    import resource
    import signal

    config_path, weights = _tiny_run_config(tmp_path)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal's kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    script = os.path.join(os.path.dirname(sys.executable), "nonlocal-export")
    run = subprocess.run([script, "--config", config_path, "--checkpoint", weights, "--output",
                          str(tmp_path / "exported")], capture_output=True, text=True,
                         timeout=300, preexec_fn=limit_file_size)
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(run.stderr.splitlines()) == 1, run.stderr[-3000:]
    assert re.fullmatch(r"nonlocal-export: error: Cannot write a copy of the model's weights, "
                        r"which the check of the weights file compares with, in the temporary "
                        r"folder '.*' \(File too large: this process may write files of at most "
                        r"4\.1 KB \(ulimit -f\), about [\d.]+ KB needed\); free space there, or "
                        r"set TMPDIR to another folder\n", run.stderr), run.stderr
    assert not (tmp_path / "exported").exists()


def test_a_full_temporary_folder_on_the_weights_check_is_one_line(tmp_path):
    """Where the disk fills during that write, h5py's finalisers of the failed file
    fail again and print their tracebacks above or below the command's one line,
    here when the error was let go: they are kept quiet, and other errors are not."""
    config_path, weights = _tiny_run_config(tmp_path)
    full = ("Can't decrement id ref count (file write failed: time = Mon Dec  7 09:21:13 2026\n, "
            "filename = '/tmp/tmpl66rgu2x/own.weights.h5', file descriptor = 3, errno = 28, "
            "error message = 'No space left on device', buf = 0x55613cc76158, total write size "
            "= 256, bytes this sub-write = 256, offset = 212096)")
    code = textwrap.dedent(f"""
        import os
        import sys

        import keras

        from nonlocal_keras.training import cli

        class FailedFile:  # what h5py leaves of a file whose write failed
            def __init__(self, error):
                self.error = error

            def __del__(self):
                raise RuntimeError(self.error)

        def full(self, path, **kwargs):
            FailedFile({full!r})  # let go by Keras' own clean-up
            left_open = FailedFile({full!r})  # let go with the error
            if os.environ.get("BUG"):
                FailedFile("a bug")  # not the storage's: said
            raise RuntimeError({full!r})

        keras.Model.save_weights = full
        sys.exit(cli.run("nonlocal-export", "nonlocal_keras.training.export"))
        """)
    command = [sys.executable, "-c", code, "--config", config_path, "--checkpoint", weights,
               "--output", str(tmp_path / "exported")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert re.fullmatch(r"nonlocal-export: error: Cannot write a copy of the model's weights, "
                        r"which the check of the weights file compares with, in the temporary "
                        r"folder '.*' \(No space left on device\); free space there, or set "
                        r"TMPDIR to another folder\n", run.stderr), run.stderr
    run = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, BUG="1"))
    assert run.returncode == 2 and "RuntimeError: a bug" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / "exported").exists()


def test_the_resize_reads_uint8_frames_without_a_float32_copy():
    """A float32 copy of a 4K request is 4x its size (100 MB a frame); the
    bilinear kernel reads uint8 and interpolates in float32 itself."""
    from nonlocal_keras.training import preprocessing

    resize = tf.function(lambda clips: preprocessing.resize_shorter_side(clips, SCALE))
    graph = resize.get_concrete_function(
        tf.TensorSpec((None, NUM_FRAMES, None, None, 3), tf.uint8)).graph
    kernels = [op for op in graph.get_operations() if op.type.startswith("Resize")]
    assert kernels and all(op.inputs[0].dtype == tf.uint8 for op in kernels), kernels
    assert resize(tf.zeros((1, NUM_FRAMES, 40, 60, 3), tf.uint8)).dtype == tf.float32

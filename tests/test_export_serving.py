"""The TF Serving example (models.config, REST request body) is generated from
the exported signature, fits it, and is what the README shows."""

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training import errors, export, serving_example
from test_export_support import tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"
# The README documents the `make demo` model: its clip length and crop come from that config.
DEMO_DATA = config_lib.load_config("demo_digits_nl_c2d")["data"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    size = DEMO_DATA["crop_size"]
    model = tiny_model(input_shape=(DEMO_DATA["num_frames"], size, size, 3), name="demo")
    base = tmp_path_factory.mktemp("serving")
    return export.export_saved_model(model, str(base), data_config=DEMO_DATA)


def _as_tensor(instances, dtype):
    """What TF Serving does with a row-format body: stack the instances, refuse
    values the input dtype cannot hold."""
    array = np.asarray(instances)
    info = np.iinfo(dtype)
    assert array.dtype.kind == "i" and array.min() >= info.min and array.max() <= info.max
    return tf.constant(array.astype(dtype))


def test_request_body_fits_the_signature(exported):
    _, _, text, outputs = serving_example.describe_model(exported)
    body = json.loads(text)
    assert set(body) == {"signature_name", "instances"}
    signature = tf.saved_model.load(exported).signatures[body["signature_name"]]
    spec = signature.structured_input_signature[1]["clips"]
    clips = _as_tensor(body["instances"], spec.dtype.as_numpy_dtype)
    assert spec.is_compatible_with(clips)
    result = signature(clips=clips)
    assert set(result) == set(outputs) == {"probabilities", "top_k_classes", "top_k_probabilities"}
    assert result["probabilities"].shape == (1, 5)
    assert abs(float(tf.reduce_sum(result["probabilities"])) - 1.0) < 1e-5


def test_readme_shows_the_generated_request_body(exported):
    _, _, text, _ = serving_example.describe_model(exported)
    readme = README.read_text()
    assert text.strip() in readme, (
        "README.md's REST request body is not the one the exported signature needs; paste the "
        f"`# request.json` part of `nonlocal-serving-example <model>`:\n{text}")


def test_cli_writes_models_config_and_request(exported, tmp_path, capsys):
    assert serving_example.main([exported, "--write", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    config = (tmp_path / "models.config").read_text()
    assert re.search(r'config \{\s+name: "demo"\s+base_path: "/models/demo"\s+'
                     r'model_platform: "tensorflow"\s+\}', config)
    assert config in printed
    base = os.path.dirname(os.path.dirname(exported))
    assert f"-v {base}:/models tensorflow/serving" in printed  # a plain path unquoted, as before
    assert "http://localhost:8501/v1/models/demo:predict" in printed
    request = (tmp_path / "request.json").read_text()
    assert request in printed
    assert np.asarray(json.loads(request)["instances"]).shape == (
        1, DEMO_DATA["num_frames"], serving_example.EXAMPLE_PIXELS, serving_example.EXAMPLE_PIXELS, 3)


def test_printed_commands_give_a_shell_the_paths_as_they_are(exported, tmp_path, capsys):
    """`dl$(id)/demo/1` printed `-v "/…/dl$(id):/models"`: pasted, the shell ran `id`;
    a `"` in the path broke the command."""
    base = tmp_path / 'dl$(id) "x'
    shutil.copytree(os.path.dirname(exported), base / "demo")
    assert serving_example.main([str(base / "demo" / "1")]) == 0
    printed = capsys.readouterr().out
    docker = printed.split("docker run ", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    assert shlex.split(docker) == [
        "--rm", "-p", "8501:8501", "-v", f"{base}:/models", "tensorflow/serving",
        "--model_config_file=/models/models.config"]
    curl = next(line for line in printed.splitlines() if line.startswith("curl "))
    assert shlex.split(curl)[3] == "http://localhost:8501/v1/models/demo:predict"


def test_models_config_serves_every_model_of_the_base(exported, tmp_path):
    """`--write BASE` for a second model replaced the first one's models.config."""
    base = tmp_path / "base"
    shutil.copytree(os.path.dirname(os.path.dirname(exported)), base)
    shutil.copytree(base / "demo", base / "other")
    for model in ("demo", "other"):
        assert serving_example.main([str(base / model), "--write", str(base)]) == 0
        config = (base / "models.config").read_text()
        assert re.findall(r'name: "(\w+)"\s+base_path: "/models/(\w+)"', config) == [
            ("demo", "demo"), ("other", "other")]


def test_a_models_config_that_serves_other_models_is_not_written_over(exported, tmp_path):
    """`--write DIR` replaced a models.config of DIR that also served models kept
    elsewhere: the server stopped serving them at its next start."""
    base = tmp_path / "base"
    shutil.copytree(os.path.dirname(os.path.dirname(exported)), base)
    mine = 'model_config_list {\n  config {\n    name: "kept\\"elsewhere"\n' \
           '    base_path: "/data/kept"\n  }\n}\n'
    (base / "models.config").write_text(mine)
    with pytest.raises(errors.ConfigError, match=r"also serves models that are not in .* "
                       r"\(kept\"elsewhere\): .*Received: --write="):
        serving_example.main([str(base / "demo"), "--write", str(base)])
    assert (base / "models.config").read_text() == mine
    assert not (base / "request.json").exists()
    # One this command wrote (its models all in the base) is brought up to date.
    (base / "models.config").write_text(serving_example.models_config(["demo", "gone"]))
    assert serving_example.main([str(base / "demo"), "--write", str(base)]) == 0
    # Another base's, in its own folder: its models were dropped from its config.
    shutil.copytree(base / "demo", tmp_path / "elsewhere" / "shared")
    theirs = serving_example.models_config(["shared"])
    (tmp_path / "elsewhere" / "models.config").write_text(theirs)
    with pytest.raises(errors.ConfigError, match=r"also serves models that are not in .* "
                       r"\(shared\): "):
        serving_example.main([str(base / "demo"), "--write", str(tmp_path / "elsewhere")])
    assert (tmp_path / "elsewhere" / "models.config").read_text() == theirs


def test_a_hand_edited_config_or_a_file_of_the_users_is_not_written_over(exported, tmp_path):
    """Found by a walk: `--write` replaced a models.config serving the same models
    with a model_version_policy pinning version 1 (the server then served the
    newest), and any models.config or request.json of the user's, exit 0."""
    base = tmp_path / "base"
    shutil.copytree(os.path.dirname(os.path.dirname(exported)), base)
    pinned = serving_example.models_config(["demo"]).replace(
        '    model_platform: "tensorflow"\n',
        '    model_platform: "tensorflow"\n    model_version_policy { specific { versions: 1 } }\n')
    for name, text in (("models.config", pinned), ("request.json", "important\n")):
        (base / name).write_text(text)
        with pytest.raises(errors.ConfigError, match=rf"'.*{name}' is there and is not as this "
                           r"command writes it .*Received: --write="):
            serving_example.main([str(base / "demo"), "--write", str(base)])
        assert (base / name).read_text() == text
        (base / name).unlink()
    # Its own files are brought up to date.
    assert serving_example.main([str(base / "demo"), "--write", str(base)]) == 0
    assert serving_example.main([str(base / "demo"), "--write", str(base)]) == 0


def test_a_damaged_or_foreign_savedmodel_is_one_error(exported, tmp_path):
    """A cut saved_model.pb was a DecodeError or IndexError traceback; one without
    serving_default a KeyError."""
    copy = tmp_path / "demo" / "1"
    shutil.copytree(exported, copy)
    pb = copy / "saved_model.pb"
    whole = pb.read_bytes()
    for cut, message in ((whole[:101], "saved_model.pb cannot be read"),
                         (b"", "has no 'serving_default' signature")):
        pb.write_bytes(cut)
        with pytest.raises(errors.ConfigError, match=f"{message}.*Received: model="):
            serving_example.main([str(copy)])


def test_the_model_folder_means_its_highest_version_and_other_folders_are_refused(
        exported, tmp_path):
    assert (serving_example.describe_model(os.path.dirname(exported))
            == serving_example.describe_model(exported))
    with pytest.raises(ValueError, match="Received: model="):
        serving_example.describe_model(str(tmp_path))


def test_models_config_escapes_what_protobufs_text_format_must_read_escaped():
    """A folder named `my"model` gave `name: "my"model"`, which TF Serving cannot parse."""
    from google.protobuf import text_encoding

    config = serving_example.models_config(['my"model', "back\\slash"])
    assert '    name: "my\\"model"\n' in config and '    name: "back\\\\slash"\n' in config
    quoted = re.findall(r'base_path: "((?:[^"\\]|\\.)*)"', config)
    assert [text_encoding.CUnescape(q).decode() for q in quoted] == [
        '/models/my"model', "/models/back\\slash"]

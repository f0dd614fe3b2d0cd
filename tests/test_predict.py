"""nonlocal-predict: multi-clip x multi-crop scores of video files through the
SavedModel equal the Keras model's, with every setting read from the export;
unreadable or truncated files are reported one by one; user errors are one line."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nonlocal_keras.training import errors, export, predict, video_io
from test_export_support import (CLASS_NAMES, CROP, DATA_CONFIG, NUM_FRAMES, SCALE, random_clips,
                                 tiny_model)

# Landscape frames whose shorter side is already SCALE (the resize is the
# identity), so the three crops are slices at left 0, centre and right.
HEIGHT, WIDTH = SCALE, SCALE + 12
VIDEO_FRAMES = 12
# Not the package defaults: predict must take them from the export's metadata.
MEAN, STD = np.array([100.0, 120.0, 140.0]), np.array([40.0, 60.0, 80.0])
EXPORTED = dict(DATA_CONFIG, mean=MEAN.tolist(), std=STD.tolist())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    model = tiny_model()
    saved = export.export_saved_model(model, str(folder / "models"), data_config=EXPORTED)
    videos = []
    for seed in (1, 2):
        path = str(folder / f"video{seed}.mp4")
        video_io.write_video(path, random_clips((VIDEO_FRAMES, HEIGHT, WIDTH, 3), seed=seed))
        videos.append(path)
    broken = folder / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 50)
    return model, saved, videos, str(broken), str(folder / "missing.mp4")


def expected_scores(model, path):
    """Mean softmax over 2 clips x 3 crops, the crops cut by slicing."""
    clips = video_io.decode_frames(path, lambda total: video_io.eval_clip_indices(
        total, NUM_FRAMES, DATA_CONFIG["sampling_rate"], DATA_CONFIG["num_clips"]))
    top = (HEIGHT - CROP) // 2
    views = [clips[:, :, top:top + CROP, left:left + CROP] for left in (0, (WIDTH - CROP) // 2, WIDTH - CROP)]
    views = np.concatenate(views)  # (3 crops * 2 clips, T, CROP, CROP, 3)
    return model.predict(((views - MEAN) / STD).astype(np.float32), verbose=0).mean(axis=0)


def parse_top_k(stdout):
    """{video: [(name, probability), ...]} from nonlocal-predict's output."""
    result, current = {}, None
    for line in stdout.splitlines():
        match = re.fullmatch(r"  (\d+)\. (\S+)  ([0-9.]+)", line)
        if match:
            result[current].append((match.group(2), float(match.group(3))))
        elif line.strip():
            current = line
            result[current] = []
    return result


def test_top5_of_each_video_matches_the_keras_model(setup, capsys):
    model, saved, videos, _, _ = setup
    assert predict.main([*videos, "--model", saved]) == 0
    out, err = capsys.readouterr()
    printed = parse_top_k(out)
    # Progress on stderr, not a terminal here: a line after the first video (with the
    # time left) and one at the end.
    assert re.fullmatch(r"1/2 videos, \d+ s, about \d+ s left\n"
                        r"2/2 videos in \d+ s, \d+ ms a video\n", err), err
    assert list(printed) == videos
    for video in videos:
        scores = expected_scores(model, video)
        names = [name for name, _ in printed[video]]
        probabilities = np.array([p for _, p in printed[video]])
        assert len(names) == 5 and sorted(names) == sorted(CLASS_NAMES)
        np.testing.assert_allclose(probabilities, -np.sort(-scores), atol=2e-4)
        np.testing.assert_allclose([scores[CLASS_NAMES.index(n)] for n in names], probabilities,
                                   atol=2e-4)
    # Different videos, different scores: the output is not one fixed answer.
    assert printed[videos[0]] != printed[videos[1]]


def test_unreadable_files_are_reported_and_fail_the_run(setup, capsys):
    _, saved, videos, broken, missing = setup
    code = predict.main([videos[0], broken, "--model", saved, "--top-k", "2", "--num-clips", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    printed = parse_top_k(out)
    assert list(printed) == [videos[0]] and len(printed[videos[0]]) == 2
    assert f"{broken}: cannot read video" in err
    assert "1 of 2 video(s) failed" in err
    assert predict.main([videos[0], broken, broken, "--model", saved, "--num-clips", "1"]) == 1
    assert "2 of 3 video(s) failed" in capsys.readouterr().err  # was 1: counted by name


def test_a_path_without_a_file_is_a_mistake_in_the_command(setup, capsys):
    # A glob that matched nothing reaches the command as `*.mp4`: one line,
    # exit 2, before any video is predicted (it was a "cannot read video"
    # line among the predictions, exit 1).
    _, saved, videos, _, missing = setup
    folder = os.path.dirname(missing)
    for paths, first, what in (([videos[0], missing], missing, "does not exist"),
                               ([folder, videos[1]], folder, "is a folder")):
        with pytest.raises(errors.MissingFileError, match=f"{what}: give video files. Received: "
                           f"VIDEO={re.escape(repr(first))}"):
            predict.main([*paths, "--model", saved, "--no-progress"])
    assert capsys.readouterr().out == ""


def test_a_damaged_savedmodel_is_one_error_not_a_traceback(setup, tmp_path, caplog):
    """A copy cut short: an OpError or "Cannot parse file" traceback, exit 1."""
    import shutil

    _, saved, videos, _, _ = setup
    for damage in ("variables", "saved_model.pb", "variables cut short"):
        copy = tmp_path / damage / "1"
        shutil.copytree(saved, copy)
        if damage == "variables":
            for part in (copy / "variables").glob("variables.data-*"):
                part.unlink()
        elif damage == "saved_model.pb":
            (copy / damage).write_bytes((copy / damage).read_bytes()[:100])
        else:  # an IndexError traceback ("Read less bytes than requested")
            for part in (copy / "variables").glob("variables.data-*"):
                part.write_bytes(part.read_bytes()[:1000])
        with pytest.raises(errors.ConfigError, match=r"The SavedModel cannot be loaded \(.+\); "
                           "export it again. Received: model="):
            predict.main([videos[0], "--model", str(copy)])
    # The highest version without saved_model.pb: the one below it was used without a
    # word (as TF Serving does, keeping it served).
    model = tmp_path / "model"
    shutil.copytree(saved, model / "1")
    shutil.copytree(saved, model / "2")
    (model / "2" / "saved_model.pb").unlink()
    with caplog.at_level("WARNING"):
        assert predict.main([videos[0], "--model", str(model), "--no-progress"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == export.logger.name] == [
        f"Version 2 of {str(model)!r} holds no saved_model.pb (an export in progress, a copy cut "
        "short or a file removed); using version 1, which TF Serving keeps serving until a newer "
        "one loads."]


def test_a_file_name_that_is_not_utf8_is_predicted_and_printed(setup, tmp_path):
    """`bad\\xffname.mp4` could not become a string tensor: a traceback, and no video
    was predicted; printed under a strict UTF-8 stdout, a UnicodeEncodeError."""
    model, saved, videos, _, _ = setup
    weird = os.path.join(os.fsencode(str(tmp_path)), b"bad\xffname.mp4")
    shutil.copyfile(videos[0], weird)
    script = os.path.join(os.path.dirname(sys.executable), "nonlocal-predict")
    run = subprocess.run([script, os.fsdecode(weird), videos[1], "--model", saved, "--top-k", "1",
                          "--no-progress"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert run.returncode == 0, run.stderr[-3000:]
    printed = parse_top_k(run.stdout)
    assert list(printed) == [os.path.join(str(tmp_path), "bad\\udcffname.mp4"), videos[1]]
    [(name, probability)] = printed[list(printed)[0]]  # the copy of videos[0]
    scores = expected_scores(model, videos[0])
    assert name == CLASS_NAMES[int(np.argmax(scores))]
    assert probability == pytest.approx(scores.max(), abs=2e-4)


def test_predictions_nobody_reads_are_no_success(setup):
    """A reader that left (`| head -1`, a closed pipe) got none of the predictions:
    exit 0 said they were delivered. Now the status of a Unix tool that SIGPIPE
    stops (141), which `set -o pipefail` sees, and no traceback."""
    _, saved, videos, _, _ = setup
    reader, writer = os.pipe()
    os.close(reader)
    script = os.path.join(os.path.dirname(sys.executable), "nonlocal-predict")
    try:
        run = subprocess.run([script, *videos[:2], "--model", saved, "--no-progress"],
                             stdout=writer, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(writer)
    assert run.returncode == 141, run.stderr[-3000:]
    assert "Traceback" not in run.stderr


def test_a_truncated_video_is_reported_like_an_unreadable_one(setup, tmp_path, capsys):
    _, saved, videos, _, _ = setup
    import av

    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for image in random_clips((32, HEIGHT, WIDTH, 3), seed=4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    truncated = str(tmp_path / "truncated.mp4")
    data = whole.read_bytes()
    with open(truncated, "wb") as handle:
        handle.write(data[: len(data) // 2])
    assert predict.main([videos[0], truncated, "--model", saved, "--num-clips", "2"]) == 1
    out, err = capsys.readouterr()
    assert list(parse_top_k(out)) == [videos[0]]
    assert re.search(rf"{re.escape(truncated)}: cannot read video \(truncated: decoded \d+ of "
                     rf"{2 * NUM_FRAMES} needed frames", err), err
    assert "1 of 2 video(s) failed" in err


def test_model_folder_without_export_settings_is_refused(tmp_path):
    with pytest.raises(errors.MissingFileError, match="Received: model="):
        predict.main([__file__, "--model", str(tmp_path)])
    with pytest.raises(errors.MissingFileError, match="No such SavedModel folder"):
        predict.main([__file__, "--model", str(tmp_path / "missing")])


def test_a_model_folder_means_its_highest_version_as_tf_serving_serves(setup, tmp_path, capsys):
    _, saved, videos, _, _ = setup
    model_dir = os.path.dirname(saved)
    assert predict.main([videos[0], "--model", saved, "--no-progress"]) == 0
    by_version = capsys.readouterr()
    for folder in (model_dir, os.path.dirname(model_dir)):  # export's --output holds one model
        assert predict.main([videos[0], "--model", folder, "--no-progress"]) == 0
        out, err = capsys.readouterr()
        assert out == by_version.out and err == f"Using the SavedModel {saved}\n"

    for version in (1, 2, 10):  # numbers, not names: 10 is the highest
        (tmp_path / "base" / "a" / str(version)).mkdir(parents=True)
        (tmp_path / "base" / "a" / str(version) / "saved_model.pb").write_bytes(b"")
    (tmp_path / "base" / "a" / "11").mkdir()  # not a SavedModel (an export in progress)
    assert export.version_folder(str(tmp_path / "base" / "a")) == str(tmp_path / "base" / "a" / "10")
    (tmp_path / "base" / "b" / "3").mkdir(parents=True)
    (tmp_path / "base" / "b" / "3" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(errors.ConfigError, match=r"several exported models \(a, b\)"):
        predict.main([videos[0], "--model", str(tmp_path / "base")])


def test_predict_needs_no_defaults_table():
    assert not hasattr(predict, "config_lib") and not hasattr(predict, "_data_config")


@pytest.mark.parametrize("arguments, message", [
    (["--model", "no/such/folder"], "No such SavedModel folder. Received: model='no/such/folder'"),
])
def test_console_script_prints_one_error_line_and_exits_2(setup, arguments, message):
    _, saved, videos, _, _ = setup
    script = os.path.join(os.path.dirname(sys.executable), "nonlocal-predict")
    run = subprocess.run([script, videos[0], "--model", saved, *arguments], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.splitlines() == [f"nonlocal-predict: error: {message}"]


def test_a_name_with_a_line_break_is_printed_as_one_quoted_name():
    """A video named `a\\nb.mp4` printed as two lines: its second looked like
    another video's name above the ranks."""
    scores = np.array([0.25, 0.75], "float32")
    assert predict.format_top_k("a\nb.mp4", scores, ["run", "jump"], 1).splitlines() == [
        "'a\\nb.mp4'", "  1. jump  0.7500"]
    assert predict.format_top_k("dir/c d é.mp4", scores, None, 2).splitlines() == [
        "dir/c d é.mp4", "  1. 1  0.7500", "  2. 0  0.2500"]


@pytest.mark.parametrize("multi_label", [True, False])
def test_a_multi_label_models_scores_are_said_to_be_its_classes_own(
        setup, monkeypatch, capsys, multi_label):
    """Its sigmoid scores were printed as a softmax's are (14 of them summed to 6.9)."""
    _, saved, videos, _, _ = setup
    scores = np.array([[0.9, 0.8, 0.1]] * len(videos))
    monkeypatch.setattr(predict, "predict_files", lambda *args, **kwargs: (
        scores, {}, {"multi_label": multi_label, "class_names": ["a", "b", "c"]}))
    assert predict.main([*videos, "--model", saved]) == 0
    out, err = capsys.readouterr()
    assert parse_top_k(out)[videos[0]] == [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    said = "Multi-label model: each score is its class's own sigmoid (they do not sum to 1).\n"
    assert (said in err) == multi_label, err


def test_the_exports_top_k_is_predicts_default_and_a_file_is_no_savedmodel(
        setup, monkeypatch, capsys, tmp_path):
    """An export with --top-k 3 was predicted with 5 classes; a run's model.keras
    as --model was "No such SavedModel folder" of a file that is there."""
    _, saved, videos, _, _ = setup
    scores = np.array([[0.4, 0.3, 0.2, 0.1]] * len(videos))
    monkeypatch.setattr(predict, "predict_files", lambda *args, **kwargs: (
        scores, {}, {"top_k": 2, "class_names": ["a", "b", "c", "d"]}))
    for given, shown in (([], 2), (["--top-k", "3"], 3)):
        assert predict.main([*videos, "--model", saved, *given]) == 0
        assert len(parse_top_k(capsys.readouterr().out)[videos[0]]) == shown
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"x")
    with pytest.raises(errors.MissingFileError, match=r"is a file, not a SavedModel folder \(a "
                       r"run's model or weights\? nonlocal-export"):
        export.read_metadata(str(keras_file))

"""nonlocal-predict: multi-clip x multi-crop scores of video files through the
SavedModel equal the Keras model's; unreadable files are reported one by one."""

import re

import numpy as np
import pytest

from nonlocal_keras.training import export, predict, video_io
from test_export_support import (CLASS_NAMES, CROP, DATA_CONFIG, NUM_FRAMES, SCALE, normalize,
                                 random_clips, tiny_model)

# Landscape frames whose shorter side is already SCALE (the resize is the
# identity), so the three crops are slices at left 0, centre and right.
HEIGHT, WIDTH = SCALE, SCALE + 12
VIDEO_FRAMES = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict")
    model = tiny_model()
    saved = export.export_saved_model(model, str(folder / "models"), data_config=DATA_CONFIG)
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
    return model.predict(normalize(views), verbose=0).mean(axis=0)


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
    printed = parse_top_k(capsys.readouterr().out)
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
    code = predict.main([videos[0], broken, missing, "--model", saved, "--top-k", "2",
                         "--num-clips", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    printed = parse_top_k(out)
    assert list(printed) == [videos[0]] and len(printed[videos[0]]) == 2
    assert f"{broken}: cannot read video" in err
    assert f"{missing}: cannot read video" in err
    assert "2 of 3 video(s) failed" in err


def test_model_folder_without_export_settings_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="Received: model="):
        predict.main(["any.mp4", "--model", str(tmp_path)])

"""The tf.data pipeline on real MP4 files, including an unreadable one."""

import logging
import os

import numpy as np
import pytest

from nonlocal_keras.training import data, errors, preprocessing, video_io


@pytest.fixture
def dataset_dir(tmp_path):
    rows, clips = [], []
    for i in range(5):
        # Each frame is constant and encodes (video, frame) so that sampled
        # indices can be read back from the pixels.
        frames = np.zeros((6, 16, 16, 3), np.uint8)
        for t in range(6):
            frames[t] = 20 * i + 3 * t + 10
        video_io.write_video(tmp_path / f"v{i}.mp4", frames)
        rows.append(f"v{i}.mp4,{i % 3}")
        clips.append(frames)
    (tmp_path / "v2.mp4").write_bytes(b"corrupted" * 50)
    (tmp_path / "index.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return tmp_path, clips


def _records(folder):
    return data.read_csv_records(str(folder / "index.csv"), 3)[0]


def test_bad_video_is_skipped_logged_once_and_counted(dataset_dir, caplog):
    folder, clips = dataset_dir
    skipped = data.SkippedVideos()
    dataset = data.train_dataset(_records(folder), 3, False, 1, num_frames=2, sampling_rate=2,
                                 crop_size=16, min_scale=16, max_scale=16, flip=False,
                                 mean=(0, 0, 0), std=(1, 1, 1), shuffle=False, skipped=skipped)
    with caplog.at_level(logging.WARNING, logger="nonlocal_keras.training.data"):
        for _ in range(2):  # two epochs
            batches = list(dataset)
    assert len(batches) == 4
    labels = sorted(int(y[0]) for _, y in batches)
    assert labels == sorted([0, 1, 0, 1])  # videos 0, 1, 3, 4
    for clip, label in batches:
        values = clip.numpy()[0, :, 0, 0, 0]
        video = int(round((values[0] - 10) // 20))
        # Consecutive sampled frames are 2 apart: pixel step 6 (+-3 codec rounding).
        assert abs(values[1] - values[0] - 6) <= 3
        assert video != 2
    warnings = [r for r in caplog.records if "v2.mp4" in r.getMessage()]
    assert len(warnings) == 1
    assert skipped.total == 1  # a video, met in each epoch
    assert skipped.pop_epoch() == (1, [str(folder / "v2.mp4")])


def test_summary_callback_puts_the_count_in_the_epoch_logs():
    skipped = data.SkippedVideos()
    skipped.record("/x/a.mp4", "bad")
    callback = data.SkippedVideoSummary(skipped)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs["skipped_videos"] == 1
    callback.on_epoch_end(1, logs)
    assert logs["skipped_videos"] == 0


def test_eval_dataset_gives_all_views_with_video_indices(dataset_dir):
    folder, clips = dataset_dir
    dataset = data.eval_dataset(_records(folder), 3, False, 2, num_frames=2, sampling_rate=1,
                                num_clips=3, num_crops=3, crop_size=8, scale=16)
    indices, shapes = [], set()
    for views, labels, index in dataset:
        indices += index.numpy().tolist()
        shapes.add(tuple(views.shape[1:]))
    assert indices == [0, 1, 3, 4]
    assert shapes == {(9, 2, 8, 8, 3)}
    # Clip starts 0, 2, 4 (evenly spaced over 6 frames); video 0, clip 2, frame 0 = frame 4.
    first = next(iter(dataset))[0].numpy()[0]
    expected = preprocessing.normalize(np.full((8, 8, 3), 10 + 3 * 4, np.uint8)).numpy()
    np.testing.assert_allclose(first[6, 0], expected, atol=3 / 57.375 + 1e-6)


def test_an_eval_batch_size_above_the_number_of_videos_is_one_batch_of_them(dataset_dir):
    """tf.data allocated a whole batch up front: `train.eval_batch_size=100000` or
    `nonlocal-predict --batch-size 100000` on a few videos was a ResourceExhaustedError
    traceback (after a whole training run, in its final evaluation)."""
    folder, _ = dataset_dir
    records = _records(folder)
    dataset = data.eval_dataset(records, 3, False, 10**7, num_frames=2, sampling_rate=1,
                                num_clips=3, num_crops=3, crop_size=8, scale=16)
    batches = [index.numpy().tolist() for _, _, index in dataset]
    assert batches == [[0, 1, 3, 4]]  # every decodable video of the five, in one batch


def test_views_that_cannot_fit_in_memory_are_refused_before_decoding(dataset_dir, monkeypatch):
    """`nonlocal-predict --num-clips 100000` grew to 13 GB of decoded frames
    before it ran out of memory."""
    from nonlocal_keras.training import runtime

    limit = runtime.memory_limit()
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert limit is not None and 0 < limit <= machine
    folder, _ = dataset_dir
    options = dict(num_frames=2, sampling_rate=1, num_clips=3, num_crops=3, crop_size=8,
                   scale=16)
    # 2 videos x 3 x 3 views of 2 x 8 x 8 x 3 float32: 27,648 bytes.
    monkeypatch.setattr(runtime, "memory_limit", lambda: 27_647)
    decoded = []
    monkeypatch.setattr(video_io, "decode_frames", lambda *args, **kwargs: decoded.append(1))
    with pytest.raises(errors.ConfigError, match=r"needs 0.0 GiB \(2 video\(s\) x 3 clips x 3 "
                       r"crops of 2x8x8, float32\).*Received: num_clips=3, num_crops=3, "
                       r"batch_size=2"):
        data.eval_dataset(_records(folder), 3, False, 2, **options)
    assert not decoded
    monkeypatch.setattr(runtime, "memory_limit", lambda: 27_648)
    data.check_view_memory(2, **options)
    monkeypatch.setattr(runtime, "memory_limit", lambda: None)  # unknown: not checked
    data.check_view_memory(10**9, **options)


def test_an_unexpected_decoder_error_is_skipped_too(dataset_dir, monkeypatch):
    folder, _ = dataset_dir
    real = video_io.decode_frames

    def flaky(path, sampler, threads=None):
        if str(path).endswith("v1.mp4"):
            raise MemoryError("frame too large")
        return real(path, sampler, threads)

    monkeypatch.setattr(video_io, "decode_frames", flaky)
    skipped = data.SkippedVideos()
    dataset = data.train_dataset(_records(folder), 3, False, 1, num_frames=2, sampling_rate=1,
                                 crop_size=16, min_scale=16, max_scale=16, flip=False,
                                 shuffle=False, skipped=skipped)
    assert len(list(dataset)) == 3  # v1 and the corrupt v2 skipped
    assert sorted(p.split("/")[-1] for p in skipped.pop_epoch()[1]) == ["v1.mp4", "v2.mp4"]


def test_the_pipelines_run_unconverted_and_give_the_converted_code_s_clips(dataset_dir,
                                                                           monkeypatch):
    """AutoGraph's conversion of the pipelines' functions was about 1.8 s of every
    command's start: they run unconverted, seeded they give the converted code's
    clips bit for bit, and so do the views' scores of `evaluate.predict_videos`."""
    import inspect

    import tensorflow as tf

    from nonlocal_keras.training import evaluate

    folder, _ = dataset_dir
    converted_calls = []

    def record():  # whether AutoGraph's generated code is on the stack
        converted_calls.append(any("__autograph_generated_file" in frame.filename
                                   for frame in inspect.stack(0)))

    def probed(function):
        def call(*args, **kwargs):
            record()
            return function(*args, **kwargs)
        return call

    for name in ("train_transform", "eval_transform"):
        monkeypatch.setattr(preprocessing, name, probed(getattr(preprocessing, name)))

    def model(clips, training):
        record()
        return tf.reduce_mean(clips, axis=[1, 2, 3])

    def outputs():
        tf.random.set_seed(3)  # with it, the random ops' own seeds
        train = data.train_dataset(_records(folder), 3, False, 2, num_frames=2, sampling_rate=2,
                                   crop_size=8, min_scale=12, max_scale=20, seed=5,
                                   num_parallel_calls=1)
        views = data.eval_dataset(_records(folder), 3, False, 2, num_frames=2, sampling_rate=1,
                                  num_clips=2, num_crops=3, crop_size=8, scale=12,
                                  num_parallel_calls=1)
        scores, _ = evaluate.predict_videos(model, views, 5, 3)
        return [x.numpy() for batch in (*train, *views) for x in batch] + [scores]

    unconverted = outputs()
    assert converted_calls == [False] * 3  # the two transforms and the model
    converted_calls.clear()
    monkeypatch.setattr(data, "_graph_code", lambda function: function)
    real_function = tf.function

    def converting_function(function=None, autograph=True, **kwargs):
        if function is None:
            return lambda function: real_function(function, **kwargs)
        return real_function(function, **kwargs)

    monkeypatch.setattr(tf, "function", converting_function)
    converted = outputs()
    assert converted_calls == [True] * 3
    assert len(converted) == len(unconverted)
    for got, expected in zip(unconverted, converted):
        np.testing.assert_array_equal(got, expected)

"""PyAV decoding and the clip samplers."""

import numpy as np
import pytest

from nonlocal_keras.training import video_io


def test_write_then_decode_round_trip(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 24, 3)).astype(np.uint8)
    path = tmp_path / "clip.mp4"
    video_io.write_video(path, frames)
    decoded = video_io.decode_frames(path, lambda total: np.arange(total))
    assert decoded.shape == frames.shape
    # crf 0 in 4:4:4: only RGB <-> YUV rounding separates the two.
    assert np.abs(decoded.astype(int) - frames).max() <= 3
    picked = video_io.decode_frames(path, lambda total: np.array([[4, 1], [0, 0]]))
    np.testing.assert_array_equal(picked[0, 0], decoded[4])
    np.testing.assert_array_equal(picked[1, 1], decoded[0])


@pytest.mark.parametrize("content", [None, b"not a video at all" * 20, b""])
def test_unreadable_files_raise_decode_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(video_io.VideoDecodeError, match="broken.mp4"):
        video_io.decode_frames(path, lambda total: np.arange(2))


def test_train_indices_keep_stride_from_a_random_start():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        indices = video_io.train_clip_indices(100, 4, 8, rng)
        assert np.all(np.diff(indices) == 8)
        assert 0 <= indices[0] and indices[-1] <= 99
        starts.add(int(indices[0]))
    # Starts cover the whole legal range 0..75.
    assert min(starts) <= 3 and max(starts) >= 72


def test_short_video_repeats_its_last_frame():
    np.testing.assert_array_equal(video_io.train_clip_indices(5, 4, 2), [0, 2, 4, 4])


def test_eval_indices_are_evenly_spaced_from_first_to_last_start():
    indices = video_io.eval_clip_indices(100, 4, 2, 3)
    # span 7: starts at 0, 46.5 -> 46 (round half to even), 93.
    np.testing.assert_array_equal(indices[:, 0], [0, 46, 93])
    np.testing.assert_array_equal(indices[2], [93, 95, 97, 99])
    np.testing.assert_array_equal(video_io.eval_clip_indices(20, 4, 2, 1)[0], [6, 8, 10, 12])

"""PyAV decoding and the clip samplers."""

import os
import re
import threading

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


# The display matrices an MP4 track header holds (a, b, c, d of ISO 14496-12's
# 3x3 matrix, 16.16 fixed point; u, v, x, y stay 0, w = 1.0 in 2.30) and what
# the FFmpeg command (autorotate, its default) shows, as a function of the
# stored frames `(T, H, W, 3)`: seen against its rawvideo output, pixel for
# pixel (9.0, files written with `-display_rotation 90 / -90 / 180`, for the
# turns; 9.0.2, these matrices written into a file's header, for all).
DISPLAY_MATRICES = {
    "counter-clockwise": ((0, -1, 1, 0), lambda v: np.rot90(v, 1, axes=(1, 2))),
    "clockwise": ((0, 1, -1, 0), lambda v: np.rot90(v, -1, axes=(1, 2))),
    "half turn": ((-1, 0, 0, -1), lambda v: v[:, ::-1, ::-1]),
    # Mirrored: the rotation alone (90, 180 or 0 degrees) does not tell them.
    "mirrored left-right": ((-1, 0, 0, 1), lambda v: v[:, :, ::-1]),
    "upside down": ((1, 0, 0, -1), lambda v: v[:, ::-1]),
    "transposed": ((0, 1, 1, 0), lambda v: v.transpose(0, 2, 1, 3)),
    "anti-transposed": ((0, -1, -1, 0), lambda v: v[:, ::-1, ::-1].transpose(0, 2, 1, 3)),
}


def _set_display_matrix(path, a, b, c, d):
    import struct

    data = bytearray(path.read_bytes())
    box = data.index(b"tkhd") - 4
    assert data[box + 8] == 0  # a version 0 header: the matrix is 48 bytes in
    one = 1 << 16
    data[box + 48:box + 84] = struct.pack(">9i", a * one, b * one, 0, c * one, d * one, 0,
                                          0, 0, 1 << 30)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", sorted(DISPLAY_MATRICES))
def test_a_video_is_shown_as_its_display_matrix_says(tmp_path, name):
    """A phone's portrait video: landscape pictures and a display matrix (the
    mirrored ones were turned by their angle alone: a left-right mirror came out
    upside down, an upside-down one as stored)."""
    matrix, shown_by_ffmpeg = DISPLAY_MATRICES[name]
    frames = np.random.default_rng(len(name)).integers(0, 256, (5, 16, 24, 3)).astype(np.uint8)
    path = tmp_path / "portrait.mp4"
    video_io.write_video(path, frames)
    stored = video_io.decode_frames(path, lambda total: np.arange(total))
    _set_display_matrix(path, *matrix)
    shown = video_io.decode_frames(path, lambda total: np.array([[3, 1], [0, 4]]))
    np.testing.assert_array_equal(shown, shown_by_ffmpeg(stored)[[[3, 1], [0, 4]]])


def test_angles_other_than_quarter_turns_leave_the_frame_as_stored():
    """(The FFmpeg command turns such a picture inside its frame.) So do a
    degenerate matrix, whose rotation is NaN, and no matrix."""
    matrix = np.array([0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30], np.int32)  # clockwise
    assert [video_io.orientation(r, matrix) for r in (45, -30, 135.5, -88.9, float("nan"))] == [
        (0, False)] * 5
    assert [video_io.orientation(r, matrix) for r in (-90, -90.4, -89.6)] == [(3, False)] * 3
    assert video_io.orientation(90, None) == (0, False)


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


# --- Decoding only the frames a clip needs -----------------------------------

# (file name, codec, encoder options): the containers users bring. MP4, AVI and
# MOV state their frame count; WebM and MKV do not (the decoder counts packets).
# A keyframe every 30 frames (x264 also uses B-frames), so that seeking lands
# before the first needed frame and must find out where.
CONTAINERS = [
    ("h264.mp4", "libx264", {"g": "30", "crf": "23"}),
    ("mpeg4.avi", "mpeg4", {"g": "30"}),
    ("vp9.webm", "libvpx-vp9", {"g": "30", "deadline": "realtime", "cpu-used": "8"}),
    ("mjpeg.mov", "mjpeg", {}),
    ("h264.mkv", "libx264", {"g": "30", "crf": "23"}),
]
LONG = 150


def distinct_frames(count, height=32, width=48, seed=0):
    """Frames that stay distinct after lossy coding: a bar that moves and a ramp."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, (count, height, width, 3)).astype(np.uint8)
    for t in range(count):
        frames[t, :, (3 * t) % width, :] = 255
        frames[t, ..., 1] += np.uint8(t % 200)
    return frames


def full_decode(path):
    """Every frame, in order, with PyAV and nothing else: the reference."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    import av

    folder = tmp_path_factory.mktemp("containers")
    frames = distinct_frames(LONG)
    paths = {}
    for name, codec, options in CONTAINERS:
        if codec not in av.codecs_available:
            continue
        video_io.write_video(folder / name, frames, fps=25, codec=codec, options=options)
        paths[name] = folder / name
    return paths


SAMPLERS = {
    "late_clip": lambda total: np.arange(100, 116, 2),
    "centre_clip": lambda total: video_io.eval_clip_indices(total, 8, 4, 1),
    "ten_clips": lambda total: video_io.eval_clip_indices(total, 4, 8, 10),
    "past_the_end": lambda total: np.array([[total - 3, total - 1], [total + 5, 2]]),
    "keyframe_exactly": lambda total: np.array([60, 61, 90]),
}


@pytest.mark.parametrize("name", [c[0] for c in CONTAINERS])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_frames_equal_a_full_decode_indexed(videos, name, sampler):
    if name not in videos:
        pytest.skip(f"{name}: encoder not in this FFmpeg build")
    reference = full_decode(videos[name])
    assert len(reference) == LONG
    indices = np.minimum(SAMPLERS[sampler](LONG), LONG - 1)
    decoded = video_io.decode_frames(videos[name], SAMPLERS[sampler])
    assert decoded.shape == indices.shape + reference[0].shape
    np.testing.assert_array_equal(decoded, np.stack(reference)[indices])


def test_stated_and_unstated_frame_counts_are_both_covered(videos):
    import av

    stated = {}
    for name, path in videos.items():
        with av.open(str(path)) as container:
            stated[name] = container.streams.video[0].frames
    assert stated["h264.mp4"] == stated["mpeg4.avi"] == stated["mjpeg.mov"] == LONG
    assert stated["h264.mkv"] == 0


def _counting_conversions(monkeypatch):
    converted = []
    real = video_io._to_rgb

    def counting(frame, *args):
        converted.append(frame.pts)
        return real(frame, *args)

    monkeypatch.setattr(video_io, "_to_rgb", counting)
    return converted


@pytest.mark.parametrize("name", ["h264.mp4", "h264.mkv"])
def test_only_the_needed_frames_are_converted_and_decoding_stops(videos, name, monkeypatch):
    converted = _counting_conversions(monkeypatch)
    passes = []
    real_decode = video_io._decode_wanted

    def tracking(path, clips, timeline, threads):
        reached, error = real_decode(path, clips, timeline, threads)
        passes.append((timeline is not None, reached))
        return reached, error

    monkeypatch.setattr(video_io, "_decode_wanted", tracking)
    clip = video_io.decode_frames(videos[name], lambda total: np.arange(100, 116, 2))
    assert clip.shape[0] == 8
    assert len(converted) == 8
    # One pass, which seeked (the first needed frame is 100) and stopped at
    # the last needed frame (index 114), not at the end (149).
    assert passes == [(True, 115)]


def test_memory_follows_the_clip_not_the_video(tmp_path, monkeypatch):
    import tracemalloc

    frames = distinct_frames(600, height=64, width=96)
    path = tmp_path / "long.mp4"
    video_io.write_video(path, frames, fps=25, codec="libx264", options={"g": "50", "crf": "30"})
    converted = _counting_conversions(monkeypatch)
    frame_bytes = frames[0].nbytes
    tracemalloc.start()
    try:
        for sampler in (lambda total: video_io.eval_clip_indices(total, 8, 8, 1)[0],
                        lambda total: np.arange(560, 576, 2)):
            assert video_io.decode_frames(path, sampler).shape == (8, 64, 96, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(converted) == 16
    # The clip (8 frames) and some slack; the whole video is 600 frames.
    assert peak < 12 * frame_bytes, (peak, frame_bytes)


def test_truncated_faststart_mp4_is_an_error_naming_the_shortfall(tmp_path):
    import av

    path = tmp_path / "whole.mp4"
    frames = distinct_frames(32)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    with av.open(str(truncated)) as container:
        assert container.streams.video[0].frames == 32  # the index still says 32
    with pytest.raises(video_io.VideoDecodeError,
                       match=r"truncated\.mp4.*truncated: decoded \d+ of 16 needed frames") as error:
        video_io.decode_frames(truncated, lambda total: np.arange(0, 32, 2))
    assert error.value.reason.startswith("truncated: decoded")
    # The frames before the cut are still there for a clip that needs only them.
    early = video_io.decode_frames(truncated, lambda total: np.arange(4))
    np.testing.assert_array_equal(early, np.stack(full_decode(path)[:4]))


@pytest.mark.parametrize("threads", [None, 4])
def test_a_fragmented_mp4_cut_inside_a_fragment_decodes_with_any_threads(tmp_path, threads):
    """A fragmented MP4 (a live recording, a download) cut inside its last
    fragment: with 3 frame threads or more the decoder dropped the cut packet's
    frame and two decoded beside it without an error, so `nonlocal-predict`
    (FFmpeg's thread count) said 'truncated: decoded 5 of 8 needed frames' of a
    video that training and evaluation (1 thread) decoded, as the FFmpeg
    command does: the frames up to the cut, the lost last one filled with the
    frame before it."""
    import av

    data = _write_stream(tmp_path / "fragmented.mp4", "libx264", {"g": "8"}, count=64,
                         container_options={"movflags": "frag_keyframe+empty_moov"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with av.open(str(cut)) as container:
        packets = sum(1 for packet in container.demux(video=0) if packet.size)
        container.seek(0)
        container.streams.video[0].thread_count = 1
        shown = []  # every frame the decoder gives, past the rejected last packet
        for packet in container.demux(video=0):
            try:
                shown += [frame.to_ndarray(format="rgb24") for frame in packet.decode()]
            except av.error.InvalidDataError:
                pass
    assert len(shown) == packets - 1  # the cut packet's frame is lost
    indices = np.arange(packets - 8, packets)  # the last 8 frames
    got = video_io.decode_frames(cut, lambda total: indices, threads=threads)
    np.testing.assert_array_equal(got, np.stack(shown + shown[-1:])[indices])


def _write_h264(path, count=300):
    """`distinct_frames` in H.264, a keyframe every 30 (closed GOPs, as
    x264's default), the index first (so that a cut copy still opens)."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "30", "crf": "23"}
        for image in distinct_frames(count, height=48, width=64):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def _damaged_copy(path, start=None, stop=None, seed=1):
    """A copy of `path` with random bytes from byte `start` to `stop` (by
    default a 4 KiB block in the middle)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if start is None else start
    stop = start + 4096 if stop is None else stop
    data[start:stop] = np.random.default_rng(seed).bytes(stop - start)
    damaged = path.with_name("damaged_" + path.name)
    damaged.write_bytes(bytes(data))
    return damaged, (start, stop)


def _packets(path):
    """(pts, keyframe, first byte, end byte) of each packet, in decoding order."""
    import av

    with av.open(str(path)) as container:
        return [(p.pts, p.is_keyframe, p.pos, p.pos + p.size)
                for p in container.demux(video=0) if p.size]


def _damaged_frames(path, block):
    """Indices of the frames of `path` (display order) whose GOP holds a
    packet that overlaps the byte range `block`: all the others decode as before."""
    packets = _packets(path)
    times = sorted(pts for pts, *_ in packets)
    damaged, gop = set(), []
    for pts, keyframe, start, end in packets + [(None, True, 0, 0)]:
        if keyframe:
            if any(start < block[1] and end > block[0] for _, start, end in gop):
                damaged.update(times.index(pts) for pts, *_ in gop)
            gop = []
        gop.append((pts, start, end))
    return damaged


@pytest.mark.parametrize("threads", [None, 1])
def test_a_video_damaged_inside_decodes_past_the_damage(tmp_path, threads):
    """A bad 4 KiB block in the middle of an MP4 stopped the decoder: the
    video was lost, 'damaged: decoded 144 of 300 needed frames'. The FFmpeg
    command decodes past it: so does this, the frames lost in it (whose
    packets the decoder rejects) filled with the frame before."""
    import av

    clean = _write_h264(tmp_path / "h264.mp4")
    damaged, block = _damaged_copy(clean)
    reference = np.stack(full_decode(clean))
    # What decodes of the damaged file, packet by packet, by frame time.
    times = sorted(pts for pts, *_ in _packets(clean))
    shown, rejected = {}, 0
    with av.open(str(damaged)) as container:
        for packet in container.demux(video=0):
            try:
                shown.update((times.index(f.pts), f.to_ndarray(format="rgb24"))
                             for f in packet.decode())
            except av.error.InvalidDataError:
                rejected += 1
    lost = sorted(set(range(300)) - set(shown))
    assert rejected and 0 < len(lost) < 30, (rejected, lost)

    decoded = video_io.decode_frames(damaged, lambda total: np.arange(total), threads=threads)
    assert decoded.shape == reference.shape
    unharmed = sorted(set(range(300)) - _damaged_frames(clean, block))
    assert len(unharmed) >= 240
    np.testing.assert_array_equal(decoded[unharmed], reference[unharmed])
    # The others of their GOP the decoder shows concealed (how depends on its
    # threads); a lost one is the frame shown before it.
    for index in lost:
        np.testing.assert_array_equal(decoded[index], decoded[max(set(shown) & set(range(index)))])
    # A clip that seeks and skips unwanted pictures gives the same frames (with
    # FFmpeg's frame threads, the concealed ones differ from decode to decode).
    for indices in (np.arange(100, 200, 2), video_io.eval_clip_indices(300, 8, 8, 3)):
        clip = video_io.decode_frames(damaged, lambda total: indices, threads=threads)
        same = np.isin(indices, unharmed) | (threads == 1)
        assert same.mean() > 0.5
        np.testing.assert_array_equal(clip[same], decoded[indices][same])


def test_a_timed_pass_in_doubt_still_gets_past_the_damage(tmp_path, monkeypatch):
    """FFmpeg's frame threads, meeting a rejected packet, may show a frame out of
    order (as their timing has it): the timed pass fell back to counting frames,
    which stopped at the rejected packet: 'damaged: decoded 172 of 300', twice
    in fresh clones' test runs under load, never alone. Here the doubt is made:
    the first pass shows its first frame twice."""
    clean = _write_h264(tmp_path / "h264.mp4")
    damaged, _ = _damaged_copy(clean)
    expected = video_io.decode_frames(damaged, lambda total: np.arange(total), threads=1)
    frames_from, calls = video_io._frames_from, []

    def in_doubt_once(container, stream, wanted_times=None, past_rejected=False):
        calls.append(past_rejected)
        frames = frames_from(container, stream, wanted_times, past_rejected)
        if len(calls) == 1:
            first = next(frames)
            yield first
            yield first
        yield from frames

    monkeypatch.setattr(video_io, "_frames_from", in_doubt_once)
    decoded = video_io.decode_frames(damaged, lambda total: np.arange(total), threads=1)
    assert calls == [False, False, True]  # timed, counting, careful (timed)
    np.testing.assert_array_equal(decoded, expected)


def test_a_video_whose_first_frames_are_lost_starts_with_the_first_shown(tmp_path):
    """The first keyframe's picture rejected, the decoder shows nothing before
    the next keyframe: the lost frames are the first one it shows."""
    clean = _write_h264(tmp_path / "h264.mp4", count=150)
    _, _, offset, end = _packets(clean)[0]
    data = clean.read_bytes()
    while data[offset + 4] & 0x1F != 5:  # past the NAL units before the picture (x264's SEI)
        offset += 4 + int.from_bytes(data[offset:offset + 4], "big")
    # From its slice header on: still a keyframe (by its NAL unit's type), undecodable.
    damaged, block = _damaged_copy(clean, offset + 5, end)
    decoded = video_io.decode_frames(damaged, lambda total: np.arange(total))
    assert decoded.shape[0] == 150
    shown = next(i for i in range(150) if not np.array_equal(decoded[i], decoded[0])) - 1
    assert 0 < shown <= 30
    unharmed = sorted(set(range(150)) - _damaged_frames(clean, block))
    assert len(unharmed) >= 120
    np.testing.assert_array_equal(decoded[unharmed], np.stack(full_decode(clean))[unharmed])


def test_a_damaged_and_cut_video_is_truncated_and_a_much_damaged_one_an_error(tmp_path):
    clean = _write_h264(tmp_path / "h264.mp4")
    damaged, _ = _damaged_copy(clean)
    data = damaged.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) * 3 // 4])
    with pytest.raises(video_io.VideoDecodeError, match=r"truncated: decoded \d+ of 100 needed"):
        video_io.decode_frames(cut, lambda total: np.arange(0, total, 3))
    # A clip whose frames are mostly lost is refused (the limit is a quarter
    # of its frames); one away from the damage is not.
    ruined, _ = _damaged_copy(clean, clean.stat().st_size * 3 // 10,
                               clean.stat().st_size * 7 // 10)
    with pytest.raises(video_io.VideoDecodeError, match=r"damaged: decoded \d+ of 100 needed "
                                                        r"frames \(InvalidDataError"):
        video_io.decode_frames(ruined, lambda total: np.arange(0, total, 3))
    np.testing.assert_array_equal(video_io.decode_frames(ruined, lambda total: np.arange(40)),
                                  np.stack(full_decode(clean))[:40])


def test_an_avi_damaged_inside_is_its_readable_frames(tmp_path):
    """FFmpeg's AVI demuxer skips the chunks a bad block spoils and counts on:
    the frames after them come earlier (as the FFmpeg command shows them), so
    the file has fewer frames than it states and was 'truncated'. Its index,
    written last, lists them all: it is whole, damaged inside."""
    clean = tmp_path / "mpeg4.avi"
    video_io.write_video(clean, distinct_frames(300, height=48, width=64), fps=25,
                         codec="mpeg4", options={"g": "30", "b": "2M"})
    damaged, block = _damaged_copy(clean)
    reference = np.stack(full_decode(clean))
    decoded = video_io.decode_frames(damaged, lambda total: np.arange(total))
    skipped = 300 - len(decoded)
    assert 0 < skipped < 10
    packets = _packets(clean)
    hit = [i for i, (_, _, start, end) in enumerate(packets) if start < block[1] and end > block[0]]
    before = max(i for i, packet in enumerate(packets) if packet[1] and i <= hit[0])
    after = min(i for i, packet in enumerate(packets) if packet[1] and i > hit[-1])
    np.testing.assert_array_equal(decoded[:before], reference[:before])
    np.testing.assert_array_equal(decoded[after - skipped:], reference[after:])
    indices = video_io.eval_clip_indices(300 - skipped, 8, 8, 3)
    clip = video_io.decode_frames(damaged, lambda total: video_io.eval_clip_indices(total, 8, 8, 3))
    # Not the frames between, concealed (with frame threads, differently each time).
    same = (indices < before) | (indices >= after - skipped)
    np.testing.assert_array_equal(clip[same], decoded[indices][same])
    # Cut short, the index is gone: truncated; much damaged: an error.
    data = damaged.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:len(data) * 3 // 4])
    with pytest.raises(video_io.VideoDecodeError, match=r"truncated: decoded"):
        video_io.decode_frames(tmp_path / "cut.avi", lambda total: np.arange(0, total, 4))
    ruined, _ = _damaged_copy(clean, clean.stat().st_size * 3 // 10,
                               clean.stat().st_size * 7 // 10)
    with pytest.raises(video_io.VideoDecodeError, match=r"damaged: \d+ of the 300 frames its "
                                                        r"index lists could be read"):
        video_io.decode_frames(ruined, lambda total: np.arange(0, total, 4))


@pytest.mark.parametrize("overstated_by", [1, 2])
def test_a_slightly_overstated_length_is_resampled_like_a_full_decode(videos, monkeypatch,
                                                                       overstated_by):
    # Some muxers state a frame or two more than the decoder delivers.
    monkeypatch.setattr(video_io, "_stated_frames", lambda stream: LONG + overstated_by)
    sampler = lambda total: video_io.eval_clip_indices(total, 4, 8, 3)  # noqa: E731
    reference = np.stack(full_decode(videos["h264.mp4"]))
    decoded = video_io.decode_frames(videos["h264.mp4"], sampler)
    np.testing.assert_array_equal(decoded, reference[sampler(LONG)])


def test_a_length_far_beyond_the_frames_is_a_truncation(videos, monkeypatch):
    monkeypatch.setattr(video_io, "_stated_frames", lambda stream: LONG + 50)
    with pytest.raises(video_io.VideoDecodeError, match=r"truncated: decoded \d+ of 12 needed"):
        video_io.decode_frames(videos["h264.mp4"],
                               lambda total: video_io.eval_clip_indices(total, 4, 8, 3))


def _write_b_frame_video(path, count=LONG):
    """H.264 with B-frames, as most real H.264 is: x264 picks them for smooth
    motion (not for `distinct_frames`' noise). Each frame stays identifiable:
    a bar one column further and a blue level two steps higher per frame."""
    import av

    y, x = np.mgrid[0:64, 0:96].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"g": "30", "crf": "23"}
        for t in range(count):
            image = np.zeros((64, 96, 3), np.uint8)
            image[..., 0] = 127 + 120 * np.sin((x + 3 * t) / 17.0)
            image[..., 1] = 127 + 120 * np.sin((y - 2 * t) / 11.0)
            image[..., 2] = (2 * t) % 256
            image[:, t % 96] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        types = [int(frame.pict_type) for frame in container.decode(video=0)]
    assert types.count(int(av.video.frame.PictureType.B)) > count // 4, types
    return path


@pytest.fixture(scope="module")
def b_frame_video(tmp_path_factory):
    return _write_b_frame_video(tmp_path_factory.mktemp("bframes") / "b.mp4")


@pytest.mark.parametrize("threads", [None, 1])  # FFmpeg's threads; one (the pipelines')
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_b_frame_video_equals_a_full_decode_indexed(b_frame_video, sampler, threads):
    reference = np.stack(full_decode(b_frame_video))
    indices = np.minimum(SAMPLERS[sampler](LONG), LONG - 1)
    decoded = video_io.decode_frames(b_frame_video, SAMPLERS[sampler], threads=threads)
    np.testing.assert_array_equal(decoded, reference[indices])


@pytest.fixture(scope="module")
def cut_without_reencoding(b_frame_video, tmp_path_factory):
    """`b_frame_video` cut 40 frames in as `ffmpeg -ss ... -c copy` cuts: the
    packets from the keyframe before the cut stay (a B-frame stream needs them)
    with times before 0, which the MP4 muxer hides with an edit list."""
    import av

    path = tmp_path_factory.mktemp("cut") / "cut.mp4"
    with av.open(str(b_frame_video)) as source, av.open(str(path), "w") as target:
        stream = source.streams.video[0]
        copy = target.add_stream_from_template(stream)
        packets = [packet for packet in source.demux(stream) if packet.size]
        shift = 40 * int(round(1 / (stream.average_rate * stream.time_base)))
        for packet in packets:
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = copy
            target.mux(packet)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == LONG  # the hidden frames counted
    return path


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_video_cut_without_reencoding_equals_a_full_decode_indexed(cut_without_reencoding,
                                                                      sampler):
    """It read every frame 40 frames early (the hidden ones counted), and a clip
    near the end was 'truncated: decoded 8 of 16 needed frames'."""
    reference = np.stack(full_decode(cut_without_reencoding))
    assert len(reference) == LONG - 40
    indices = np.minimum(SAMPLERS[sampler](len(reference)), len(reference) - 1)
    decoded = video_io.decode_frames(cut_without_reencoding, SAMPLERS[sampler])
    np.testing.assert_array_equal(decoded, reference[np.maximum(indices, 0)])


def test_unwanted_non_reference_pictures_are_not_decoded(b_frame_video):
    # After a seek to the keyframe before 100, with frames 110, 118, ... wanted:
    # of the unwanted pictures only the references are decoded (x264's
    # B-frames mostly are not); every wanted frame is decoded, as in a full decode.
    import av

    path = b_frame_video
    _, _, timeline, _ = video_io._read_timeline(path)
    reference = full_decode(path)
    wanted = list(range(110, LONG, 8))
    outputs = {}
    for times in (None, {timeline[i] for i in wanted}):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            container.seek(timeline[100], stream=stream, backward=True, any_frame=False)
            frames = video_io._frames_from(container, stream, times)
            outputs[times is not None] = {timeline.index(f.pts): f.to_ndarray(format="rgb24")
                                          for f in frames}
    landing = min(outputs[False])
    assert 60 < landing <= 100 and set(outputs[False]) == set(range(landing, LONG))
    assert set(wanted) <= set(outputs[True])
    assert len(outputs[True]) < (LONG - landing) * 0.8
    for index in wanted:
        np.testing.assert_array_equal(outputs[True][index], reference[index])


def _write_stream(path, codec, options, start=0, count=LONG, container_options=None):
    """`distinct_frames` encoded by `codec`, the first at time `start` (frames);
    64x48, which x265 takes (it crashed the process on 48x32)."""
    import av

    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = options
        for t, image in enumerate(distinct_frames(count, height=48, width=64)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = start + t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path.read_bytes()


def _from(data, fraction):
    return data[len(data) * fraction // 100 // 188 * 188:]  # at a TS packet boundary


@pytest.fixture(scope="module")
def transport_streams(tmp_path_factory):
    """What recordings in MPEG-TS become: two joined with `cat` (the times of
    each start at the same value; the second's earlier than the first's) and
    ones cut between keyframes (a recording joined mid-stream) 45% in: H.264
    with B-frames; MPEG-2's open GOPs, whose first keyframe's leading
    pictures the decoder drops; HEVC's RADL pictures, which it shows."""
    folder = tmp_path_factory.mktemp("ts")
    data = _write_b_frame_video(folder / "whole.ts").read_bytes()
    (folder / "joined.ts").write_bytes(data + data)
    (folder / "mid_gop.ts").write_bytes(_from(data, 45))
    late = _write_stream(folder / "late.ts", "libx264", {"g": "30"}, start=500)
    early = _write_stream(folder / "early.ts", "libx264", {"g": "30"})
    (folder / "joined_backwards.ts").write_bytes(late + early)
    mpeg2 = _write_stream(folder / "mpeg2.ts", "mpeg2video", {"g": "12", "bf": "2"})
    (folder / "mpeg2_mid_gop.ts").write_bytes(_from(mpeg2, 45))
    hevc = _write_stream(folder / "hevc.ts", "libx265", {"x265-params": (
        "keyint=50:min-keyint=50:bframes=3:open-gop=0:radl=2:log-level=error")})
    (folder / "hevc_mid_gop.ts").write_bytes(_from(hevc, 45))
    return folder


@pytest.mark.parametrize("name", ["joined.ts", "mid_gop.ts", "joined_backwards.ts",
                                  "mpeg2_mid_gop.ts", "hevc_mid_gop.ts"])
@pytest.mark.parametrize("sampler", list(SAMPLERS) + ["even_from_the_start"])
def test_transport_streams_equal_a_full_decode_indexed(transport_streams, name, sampler):
    """Joined: a clip of even frames from the start got frames 0, 1, 2, ... (the
    times, each there twice, mapped frame k to 2k), without a word. Cut
    between keyframes: 'truncated' (the packets before the first keyframe,
    which the decoder drops, were counted as frames). The others: regressions
    of a first attempt (frames lost, or the leading pictures' count wrong)."""
    path = transport_streams / name
    reference = np.stack(full_decode(path))
    assert len(reference) > 32
    choose = SAMPLERS.get(sampler, lambda total: np.arange(0, 16, 2))
    indices = np.minimum(choose(len(reference)), len(reference) - 1)
    np.testing.assert_array_equal(video_io.decode_frames(path, choose), reference[indices])


def _cover_picture(container, image):
    """A still picture stream flagged as attached (an album cover), and its
    packets, to mux once every stream is added."""
    import av

    stream = container.add_stream("mjpeg")
    stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuvj420p"
    stream.disposition = av.stream.Disposition.attached_pic
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
    packets = [*stream.encode(frame), *stream.encode()]
    for packet in packets:
        packet.pts = packet.dts = 0
    return packets


@pytest.mark.parametrize("muxer, codec, pixels", [("mjpeg", "mjpeg", "yuvj420p"),
                                                   ("image2", "png", "rgb24")])
def test_a_still_image_named_as_a_video_is_not_one(tmp_path, muxer, codec, pixels):
    """A JPEG or PNG named `.mp4` (a thumbnail in a video folder) was predicted on
    and trained on as a one-frame video, as an audio file's cover picture was."""
    import av

    path = tmp_path / "thumbnail.mp4"
    image = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 120, np.uint8), format="rgb24")
    with av.open(str(path), "w", format=muxer, options={"update": "1"}) as container:
        stream = container.add_stream(codec)
        stream.width, stream.height, stream.pix_fmt = 48, 32, pixels
        container.mux([*stream.encode(image.reformat(format=pixels)), *stream.encode()])
    with pytest.raises(video_io.VideoDecodeError, match=r"a still image \(\w+_pipe\), not a video"):
        video_io.decode_frames(path, lambda total: np.arange(total))


def test_a_cover_picture_is_not_the_video(tmp_path):
    """An audio file with its cover (as iTunes or yt-dlp write it) was a
    "video" of one still frame, scored with exit status 0; a video whose cover
    stream came first was read as that still."""
    import av

    cover = np.full((32, 48, 3), 200, np.uint8)
    song = tmp_path / "song.mp4"
    with av.open(str(song), "w") as container:
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "mono"
        container.mux(_cover_picture(container, cover))
        for i in range(20):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                                 layout="mono")
            samples.sample_rate, samples.pts = 44100, i * 1024
            container.mux(audio.encode(samples))
        container.mux(audio.encode())
    with pytest.raises(video_io.VideoDecodeError, match=r"no video stream \(only a cover picture\)"):
        video_io.decode_frames(song, lambda total: np.arange(total))

    frames = distinct_frames(12)
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as container:
        cover_packets = _cover_picture(container, cover)
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv444p"
        stream.options = {"crf": "0"}
        container.mux(cover_packets)
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    decoded = video_io.decode_frames(clip, lambda total: np.arange(total))
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).max() <= 3


@pytest.mark.parametrize("name, codec", [("cut.mkv", "libx264"), ("cut.webm", "libvpx-vp9")])
def test_a_half_copied_mkv_or_webm_is_truncated_not_shorter(tmp_path, name, codec):
    """These state no frame count, only the video's duration (in the header):
    cut at 40%, the file was read as a video 40% as long, without a word, its
    evaluation clips all from that part."""
    import av

    if codec not in av.codecs_available:
        pytest.skip(f"{codec}: encoder not in this FFmpeg build")
    whole = tmp_path / ("whole" + name[3:])
    video_io.write_video(whole, distinct_frames(75), fps=25, codec=codec,
                         options={"g": "25", "deadline": "realtime", "cpu-used": "8"}
                         if codec == "libvpx-vp9" else {"g": "25"})
    assert len(video_io.decode_frames(whole, lambda total: np.arange(total))) == 75
    data = whole.read_bytes()
    (tmp_path / name).write_bytes(data[:len(data) * 4 // 10])
    with pytest.raises(video_io.VideoDecodeError, match=r"truncated: its frames end at "
                                                        r"\d\.\d\d s of the 3\.00 s its header"):
        video_io.decode_frames(tmp_path / name, lambda total: np.arange(total))


def test_a_half_copied_mkv_starting_late_is_truncated(tmp_path):
    """The header states the end time (100 s late with 6 s of frames: 106 s),
    whose 5% (5.3 s) had been allowed missing: cut at 40%, the file was read
    as a shorter video without a word (found by a walk)."""
    path = tmp_path / "late.mkv"
    data = _write_stream(path, "libx264", {"g": "25"}, start=2500)  # 100 s at 25 fps
    (tmp_path / "cut.mkv").write_bytes(data[:len(data) * 4 // 10])
    with pytest.raises(video_io.VideoDecodeError, match=r"truncated: its frames end at "
                                                        r"\d+\.\d\d s of the 106\.00 s its header"):
        video_io.decode_frames(tmp_path / "cut.mkv", lambda total: np.arange(total))
    assert len(video_io.decode_frames(path, lambda total: np.arange(total))) == LONG


def test_mpeg1_in_a_program_stream_is_decoded_from_the_start(tmp_path):
    """After a seek in an MPEG program stream (.mpg), FFmpeg gave MPEG-1
    pictures the time of the frame after theirs: a clip needing frames from
    48 on came back a frame early, without a word (found by a walk)."""
    import av

    rng = np.random.default_rng(9)
    frames = rng.integers(0, 60, (64, 32, 48, 3)).astype(np.uint8)
    frames[:, :, :24] += 180
    path = tmp_path / "program.mpg"
    with av.open(str(path), "w", format="mpeg") as container:
        stream = container.add_stream("mpeg1video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    reference = full_decode(path)
    wanted = [48, 50, 59, 60]
    decoded = video_io.decode_frames(path, lambda total: np.array(wanted))
    for image, index in zip(decoded, wanted):
        np.testing.assert_array_equal(image, reference[index])


@pytest.mark.parametrize("name, text, what", [
    ("list.mp4", "ffconcat version 1.0\nfile segment.ts\n", "an FFmpeg concat list"),
    ("list.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nsegment.ts\n"
                  "#EXT-X-ENDLIST\n", "an HLS playlist"),
])
def test_a_list_of_other_files_is_no_video(tmp_path, name, text, what):
    """FFmpeg plays a text file starting "ffconcat version" (whatever its name),
    or an HLS playlist named .m3u8, as the files it lists: one listing a FIFO
    blocked the opening for good (a training hung in its second epoch; found
    by a walk, the playlist by a re-walk)."""
    os.mkfifo(tmp_path / "segment.ts")
    listed = tmp_path / name
    listed.write_text(text)
    raised = []

    def decode():  # in a thread of its own: before the fix it never returned
        try:
            video_io.decode_frames(listed, lambda total: np.arange(total))
        except video_io.VideoDecodeError as error:
            raised.append(str(error))

    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "decoding the list blocked"
    assert len(raised) == 1 and re.search(rf"{re.escape(name)}.*{what} of other files, "
                                          r"not a video", raised[0])


def test_a_video_starting_late_is_not_truncated(tmp_path):
    """FFmpeg's Matroska muxer states the video's end time: 2 s late with 6 s
    of frames, 8 s, which a first attempt compared with the frames' 6 s."""
    path = tmp_path / "late.mkv"
    _write_stream(path, "libx264", {"g": "25"}, start=50)
    reference = np.stack(full_decode(path))
    assert len(reference) == LONG
    np.testing.assert_array_equal(video_io.decode_frames(path, lambda total: np.arange(total)),
                                  reference)


@pytest.mark.parametrize("codec, pix_fmt", [("mpeg4", "yuv420p"), ("mjpeg", "yuvj420p")])
def test_an_avi_with_time_gaps_is_its_frames_not_truncated(tmp_path, codec, pix_fmt, monkeypatch):
    """FFmpeg's AVI muxer writes a gap in the times (a variable-rate video) as
    empty "dropped frame" chunks, which the header counts: 100 frames with a
    gap of 3 after every 5th were stated as 160 and refused as truncated."""
    import av

    path = tmp_path / "gaps.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, pix_fmt
        for t, image in enumerate(distinct_frames(100)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = t + 3 * (t // 5)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames > 150
    reference = np.stack(full_decode(path))
    assert len(reference) == 100
    passes = []
    real_decode = video_io._decode_wanted

    def tracking(path, clips, timeline, threads, **later_pass):
        passes.append(timeline is not None)
        return real_decode(path, clips, timeline, threads, **later_pass)

    monkeypatch.setattr(video_io, "_decode_wanted", tracking)
    for choose in (lambda total: video_io.eval_clip_indices(total, 8, 4, 3),
                   lambda total: np.array([60, 61, 84, 99, total + 5])):
        indices = np.minimum(choose(100), 99)
        np.testing.assert_array_equal(video_io.decode_frames(path, choose), reference[indices])
    # Both by the frames' times (no fallback), the second after a seek (to
    # the keyframe before frame 60, as SEEK_AFTER_FRAMES allows).
    assert passes == [True, True]
    # Cut short, its packets span fewer frame times than it states: truncated.
    data = path.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:len(data) // 2])
    with pytest.raises(video_io.VideoDecodeError, match=r"truncated: decoded"):
        video_io.decode_frames(tmp_path / "cut.avi", lambda total: np.arange(0, total, 4))


def test_frames_of_another_size_are_scaled_to_the_first_frames_size(tmp_path):
    """Two MPEG-TS recordings of 64x48 and 96x72 joined byte for byte (as
    `cat` does): a clip from both parts failed with NumPy's "shape mismatch".
    The FFmpeg command scales the later frames to the first frame's size."""
    import av
    import tensorflow as tf

    # Smooth pictures, each a level apart, so that any scaler agrees on them
    # and tells the frames apart.
    ramp = np.linspace(0, 120, 96)[None, :, None] + np.linspace(0, 60, 72)[:, None, None]
    second = np.stack([np.broadcast_to(ramp + 3 * t, (72, 96, 3)) for t in range(30)])
    parts = []
    for name, frames in (("first.ts", distinct_frames(30, height=48, width=64)),
                         ("second.ts", second.astype(np.uint8))):
        with av.open(str(tmp_path / name), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt, stream.options = "yuv444p", {"crf": "0", "g": "10"}
            for image in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        parts.append((tmp_path / name).read_bytes())
    path = tmp_path / "joined.ts"
    path.write_bytes(parts[0] + parts[1])
    reference = full_decode(path)
    assert [frame.shape for frame in reference] == [(48, 64, 3)] * 30 + [(72, 96, 3)] * 30

    indices = np.array([0, 7, 29, 30, 41, 59])
    decoded = video_io.decode_frames(path, lambda total: indices)
    assert decoded.shape == (6, 48, 64, 3)
    np.testing.assert_array_equal(decoded[:3], np.stack(reference[:30])[indices[:3]])
    scaled = tf.image.resize(np.stack(reference[30:]), (48, 64), antialias=True).numpy()
    for got, index in zip(decoded[3:].astype(float), indices[3:] - 30):
        errors = np.abs(got - scaled).mean(axis=(1, 2, 3))
        assert errors[index] < 1.0 and np.argmin(errors) == index, errors

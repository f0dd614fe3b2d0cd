"""PyAV video decoding and the paper's temporal clip sampling (NumPy side).

`decode_frames(path, sampler)` asks `sampler(total_frames)` for the frame
indices it needs and decodes just those frames, as uint8 RGB: memory follows
the clip, not the length of the video. Frames are turned upright as the
container's display matrix says, as the FFmpeg command shows them (`orientation`).
The two samplers of the paper:

- `train_clip_indices`: `num_frames` frames every `sampling_rate` frames from
  a random start (the "32 x 2" clip: 64 consecutive frames, every other kept).
- `eval_clip_indices`: `num_clips` such clips with starts evenly spaced from
  the first to the last possible start (one clip: the centred one).

Videos shorter than a clip repeat their last frame (indices are clamped),
so every clip has exactly `num_frames` frames.
"""

import bisect
import math

import numpy as np

import av
from av.video.reformatter import VideoReformatter

# Seek (to the keyframe before the first needed frame) only when that skips
# at least this many frames: below it, decoding from the start costs less
# than the extra pass over the packets that finding the landing frame needs.
SEEK_AFTER_FRAMES = 48
# A container may state a frame or two more than its decoder delivers; a
# larger shortfall is a truncated file.
_STATED_SLACK = 2
# A video damaged inside is decoded past the packets its decoder rejects (or,
# in an AVI, its demuxer loses), as the FFmpeg command does, the frames lost
# in them filled with a neighbour. Beyond a quarter of the clip's needed
# frames (of an AVI's frames) lost, it is an error: such a clip shows more
# frozen frames than motion, and the pipeline skips the video instead.
_LOST_LIMIT = 1 / 4


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded."""

    def __init__(self, path, reason):
        super().__init__(f"Cannot decode video {path!r}: {reason}")
        self.path = path
        self.reason = reason


def clip_span(num_frames, sampling_rate):
    """Frames covered by one clip, first to last sampled frame inclusive."""
    return (num_frames - 1) * sampling_rate + 1


def _clip_indices(start, total_frames, num_frames, sampling_rate):
    indices = start + np.arange(num_frames) * sampling_rate
    return np.minimum(indices, total_frames - 1)


def train_clip_indices(total_frames, num_frames, sampling_rate, rng=None):
    """Frame indices of one training clip at a uniformly random start."""
    rng = np.random.default_rng() if rng is None else rng
    last_start = max(total_frames - clip_span(num_frames, sampling_rate), 0)
    start = int(rng.integers(0, last_start + 1))
    return _clip_indices(start, total_frames, num_frames, sampling_rate)


def eval_clip_indices(total_frames, num_frames, sampling_rate, num_clips):
    """Indices `(num_clips, num_frames)` of clips with evenly spaced starts."""
    last_start = max(total_frames - clip_span(num_frames, sampling_rate), 0)
    if num_clips == 1:
        starts = [last_start // 2]
    else:
        starts = np.round(np.linspace(0, last_start, num_clips)).astype(int)
    return np.stack(
        [_clip_indices(s, total_frames, num_frames, sampling_rate) for s in starts]
    )


def decode_frames(path, sampler, threads=None):
    """Decode the frames `sampler(total_frames)` asks for, as uint8 RGB.

    Only those frames are converted and kept: decoding stops after the last
    needed one and, when the first needed frame lies far into the video,
    starts at the keyframe before it. Memory follows the clip, not the video.
    Every video's packets are read first, without decoding them: their
    times identify the frames (a seek tells by them where it landed), and
    they count the frames where the container states no count (WebM, MKV)
    or one that an edit list or gaps in the times (AVI) make wrong. A frame
    of another size than the video's first is scaled to that size.

    Args:
        path: video file readable by FFmpeg.
        sampler: callable mapping the video's frame count to an integer array
            of frame indices (any shape, repeats allowed; clamped to the video).
            It may be called twice, with the corrected count, when the decoder
            delivers a frame or two fewer than the container stated.
        threads: decoding threads; None lets FFmpeg choose (frame and slice
            threads, one per core: the fastest for one video at a time). When
            as many videos are decoded in parallel as there are cores (the
            training and evaluation pipelines), 1 is faster: FFmpeg's threads
            then only add their synchronisation (27% more CPU a 32-frame clip,
            `benchmarks/loader.py --decode-scaling`).

    Returns:
        `(*indices.shape, height, width, 3)` uint8 array, equal to decoding
        every frame and indexing the list.

    Raises:
        VideoDecodeError: the file cannot be opened, has no video stream, no
            decodable frame, or ends or fails before a needed frame
            (reason "truncated: decoded 5 of 16 needed frames"). A needed
            frame lost to damage inside the file (a packet the decoder
            rejects) is the nearest earlier frame shown, or the nearest later
            one when none is; more than a quarter of them lost is an error
            (reason "damaged: decoded 10 of 16 needed frames").
    """
    try:
        return _decode(path, sampler, threads)
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:
        raise VideoDecodeError(path, f"{type(error).__name__}: {error}") from error


def _stated_frames(stream):
    """The frame count the container states for `stream` (0: none)."""
    return max(int(stream.frames), 0)


def _decode(path, sampler, threads=None):
    # The packet times identify each frame, so that unwanted ones can be skipped.
    stated, count, timeline, hidden = _read_timeline(path)
    # A file cut without re-encoding (`ffmpeg -ss ... -c copy`) keeps the frames
    # from the keyframe before the cut, hidden by an edit list: the container
    # counts them (and others, before that keyframe, that FFmpeg's demuxer
    # drops), the decoder never shows them. Then the shown packets are the count.
    total = count if hidden or not stated else stated
    if not total:
        raise VideoDecodeError(path, "no decodable frame")
    clips = _Clips(sampler, total)
    reached, error = _decode_wanted(path, clips, timeline, threads)
    if clips.missing() and error is None and reached and total - reached <= _STATED_SLACK:
        # The container overstated its length by a frame or two (or counted
        # packets that hold no picture): sample again with the true length,
        # as a full decode would have.
        clips = _Clips(sampler, reached)
        reached, error = _decode_wanted(path, clips, None, threads)
    if clips.missing():
        cause = f" ({type(error).__name__}: {error})" if error is not None else ""
        if not reached:
            raise VideoDecodeError(path, f"no decodable frame{cause}")
        # Every packet there but the decoder stopped: damaged inside, not cut short.
        damaged = error is not None and count >= stated
        raise VideoDecodeError(path, f"{'damaged' if damaged else 'truncated'}: decoded "
                                     f"{len(clips.filled)} of {len(clips.wanted)} needed "
                                     f"frames{cause}")
    if len(clips.lost) > len(clips.wanted) * _LOST_LIMIT:
        raise VideoDecodeError(path, f"damaged: decoded {len(clips.filled) - len(clips.lost)} of "
                                     f"{len(clips.wanted)} needed frames ({type(error).__name__}: "
                                     f"{error})")
    return clips.array


class _Clips:
    """The output, filled in place as the needed frames arrive.

    Each needed frame is converted once and written straight to every place
    the indices hold it: no list or dict of frames beside the output.
    """

    def __init__(self, sampler, total):
        self.indices = np.clip(np.asarray(sampler(total)).astype(np.int64), 0, total - 1)
        self.wanted = np.unique(self.indices)
        self.places = {}
        for place, index in enumerate(self.indices.ravel().tolist()):
            self.places.setdefault(index, []).append(place)
        self.array = None
        self.filled = set()
        self.lost = set()  # filled with a neighbour: no packet delivered them

    def put(self, index, rgb):
        if self.array is None:
            self.array = np.empty(self.indices.shape + rgb.shape, np.uint8)
        flat = self.array.reshape((-1,) + self.array.shape[self.indices.ndim:])
        flat[self.places[index]] = rgb
        self.filled.add(index)

    def fill(self, after, before, rgb):
        """Puts `rgb` (a callable giving it) in place of the wanted frames
        between `after` and `before` (exclusive), which no frame arrived for."""
        lost = self.wanted[(self.wanted > after) & (self.wanted < before)].tolist()
        if lost:
            image = rgb()
            for index in lost:
                self.put(index, image)
            self.lost.update(lost)

    def missing(self):
        return len(self.filled) < len(self.wanted)


def _read_timeline(path):
    """(frames the container states, frame count, sorted presentation times or
    None, hidden frames) from the packets alone, or VideoDecodeError.

    Demuxing reads the file but decodes nothing. The sorted packet times
    are the frames' times in display order, which lets a seek tell which
    frame it landed on; None when they cannot tell (then no seeking): a
    packet without a time, two with the same one (recordings joined with
    `cat`, each starting at 0), decoding times that do not increase (a join
    where the times start again). Packets an edit list hides (FFmpeg flags
    them to be decoded, as references, and discarded) are no frames of the
    video: they are counted apart. So are, in a file that starts between
    keyframes (a recording joined mid-stream, a cut transport stream), the
    packets before its first keyframe, which refer to pictures the file
    lacks: the decoder drops them. The first keyframe's leading pictures
    (decoded after it, shown before it) it drops or shows depending on what
    they refer to (HEVC's RASL and RADL, open GOPs): those few are decoded to
    see (`_shown_before`).

    An AVI whose times have gaps states a count of frame times, its packets
    span as many: then its packets are the stated count (see below).

    A container that states no frame count but the video's duration (MKV and
    WebM, whose muxers write it in the header) and whose packets end well
    before it is a file cut short (a half-copied download): VideoDecodeError.
    """
    times, before_keyframe, hidden, leading = [], [], 0, 0
    keyframes, keyframe_time, first, last, last_dts = 0, None, None, None, None
    dts_known, dts_increase = True, True
    with _open(path) as container:
        stream = _video_stream(container, path)
        stated = _stated_frames(stream)
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                pts, dts = packet.pts, packet.dts
                hidden += packet.is_discard
                if pts is not None:
                    end = pts + (packet.duration or 0)
                    first = pts if first is None else min(first, pts)
                    last = end if last is None else max(last, end)
                keyframes += packet.is_keyframe
                if not keyframes:
                    before_keyframe.append((pts, packet.is_discard))
                    continue
                if keyframes == 1 and packet.is_keyframe:
                    keyframe_time = pts
                if dts is None:
                    dts_known = False
                elif last_dts is not None and dts <= last_dts:
                    dts_increase = False
                last_dts = dts if dts is not None else last_dts
                if packet.is_discard:
                    continue
                leading += (keyframes == 1 and None not in (pts, keyframe_time)
                            and pts < keyframe_time)
                times.append(pts)
        except av.FFmpegError:
            pass  # a damaged tail: count what can be read, the decode reports the rest
        if not stated and last is not None:
            _check_duration(path, stream, first, last)
        slots = _time_slots(stream, last)
        # An AVI's index comes last in the file: a whole file's lists every frame
        # (`index_entries`: PyAV 16 and on; without it, such a file is truncated).
        indexed = (sum(1 for entry in getattr(stream, "index_entries", ()) if entry.size)
                   if container.format.name == "avi" and len(times) < stated else 0)
    if not keyframes:  # no packet says which are keyframes: all are frames
        times = [pts for pts, discard in before_keyframe if not discard]
    count = len(times)
    if leading:
        shown = _shown_before(path, keyframe_time)
        count -= leading - shown  # the leading pictures the decoder drops
        if not shown:
            times = [t for t in times if t is None or t >= keyframe_time]
        elif shown < leading:
            times = None  # which ones it drops is not known: the decode counts frames
    if count < stated and slots is not None and abs(slots - stated) <= 1:
        # AVI stores a chunk per frame time and FFmpeg writes each gap of a
        # variable-rate video as empty chunks ("dropped frames"): the header
        # counts them, the demuxer skips them, the decoder shows nothing for
        # them. A file cut short has fewer time slots than it states.
        stated = count
    if count < indexed:
        # A chunk FFmpeg's AVI demuxer cannot read (damage inside) it skips
        # and counts on: the frames after it come that much earlier, as the
        # FFmpeg command shows them. The index, written last, says the file
        # is whole, not cut short (whose index holds only what was read).
        if indexed - count > indexed * _LOST_LIMIT:
            raise VideoDecodeError(path, f"damaged: {count} of the {indexed} frames its index "
                                         f"lists could be read")
        stated = count
    if times is None or None in times or len(set(times)) < len(times) or (
            dts_known and not dts_increase):
        return stated, count, None, hidden
    return stated, count, sorted(times), hidden


def _time_slots(stream, last):
    """Frame times at the stream's nominal rate up to `last` (the end of its
    last packet, in its time base), or None when it cannot tell."""
    rate = stream.average_rate or stream.guessed_rate
    if last is None or not rate or stream.time_base is None:
        return None
    return round((last - (stream.start_time or 0)) * stream.time_base * rate)


def _shown_before(path, keyframe_time):
    """How many pictures the decoder shows before the first keyframe (at
    `keyframe_time`): it decodes from the start to the keyframe's picture."""
    shown = 0
    with _open(path) as container:
        try:
            for frame in container.decode(_video_stream(container, path)):
                if frame.pts is not None and frame.pts >= keyframe_time:
                    break
                shown += 1
        except av.FFmpegError:
            pass
    return shown


def _check_duration(path, stream, first, last):
    """VideoDecodeError when the packets (from time `first` to `last`, in the
    stream's time base) end well before the duration the header states for
    the video stream (its own, not the container's, which an audio track may
    make longer): more than half a second and 5% short. FFmpeg's Matroska
    muxer states the video's end time (a video starting at 3 s with 4 s of
    frames: 7 s); a length is taken as well, and the file is cut short only
    where it is so read either way (5% of the length: with the end time of a
    video starting at 100 s, 5% of it was more than the whole video)."""
    stated = _stated_seconds(stream)
    if not stated or stream.time_base is None:
        return
    start, end = float(first * stream.time_base), float(last * stream.time_base)
    readings = ((stated - end, stated - start), (stated - (end - start), stated))
    if all(missing > max(0.5, 0.05 * length) for missing, length in readings):
        reached = max(end, end - start)
        raise VideoDecodeError(path, f"truncated: its frames end at {reached:.2f} s of the "
                                     f"{stated:.2f} s its header states")


def _stated_seconds(stream):
    """The video stream's duration in seconds as the container states it, or None."""
    if stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = next((v for k, v in stream.metadata.items() if k.lower() == "duration"), None)
    try:
        hours, minutes, seconds = tag.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except (AttributeError, ValueError):
        return None


# FFmpeg takes a text file that starts so for a list of other files to play
# one after another (its concat demuxer), whatever the file's name: a video
# named in it that is a FIFO blocked the opening for good (a training hung in
# its second epoch), and any other is not the file the dataset names.
# So does an HLS playlist named .m3u8 or .m3u (its segments).
_LISTS = {b"ffconcat version": "an FFmpeg concat list", b"#EXTM3U": "an HLS playlist"}


def _open(path):
    """`av.open(path)` for reading, refusing a list of other files."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(32)
    except OSError:
        head = b""  # FFmpeg says why
    for start, what in _LISTS.items():
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(start):
            raise VideoDecodeError(path, f"{what} of other files, not a video")
    return av.open(str(path))


def _video_stream(container, path):
    """The container's first video stream that is not a still picture (an
    audio file's cover art is a one-picture "video" stream), as FFmpeg's
    choice passes them over; a still image's file has none."""
    # A JPEG or PNG named .mp4 (a thumbnail listed by mistake) is FFmpeg's image
    # demuxer's one-frame "video"; animated GIFs (`gif`) are videos.
    demuxer = container.format.name
    if demuxer in ("image2", "image2pipe") or (demuxer.endswith("_pipe") and demuxer != "gif_pipe"):
        raise VideoDecodeError(path, f"a still image ({demuxer}), not a video")
    stills = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails
    for stream in container.streams.video:
        if not stream.disposition & stills:
            return stream
    raise VideoDecodeError(path, "no video stream" + (
        " (only a cover picture)" if container.streams.video else ""))


def _to_rgb(frame, reformatter, size=(None, None)):
    # One reformatter per decode: `frame.to_ndarray` builds a new swscale
    # context for every frame, which cost 2-5x the conversion itself here.
    # Same pixels (the same swscale call). A frame of another size than
    # `size`, the video's (a resolution change mid-stream, recordings of two
    # sizes joined with `cat`), is scaled to it, as the FFmpeg command's
    # scale filter does: the frames of a clip make one array.
    width, height = size
    rgb = reformatter.reformat(frame, format="rgb24", width=width, height=height).to_ndarray()
    side_data = frame.side_data.get(_DISPLAY_MATRIX)
    matrix = None if side_data is None else np.frombuffer(bytes(side_data), np.int32)
    turns, mirror = orientation(frame.rotation, matrix)
    if mirror:
        rgb = rgb[:, ::-1]
    return np.rot90(rgb, turns) if turns else rgb


_DISPLAY_MATRIX = av.sidedata.sidedata.Type.DISPLAYMATRIX


def orientation(rotation, matrix):
    """`(turns, mirror)` that show a frame as the FFmpeg command does
    (`-autorotate`, its default): mirror left-right first when `mirror`, then
    turn `turns` quarter turns counter-clockwise.

    `rotation` is PyAV's `frame.rotation` (FFmpeg's `av_display_rotation_get`
    of the display matrix, degrees) and `matrix` the display matrix's nine
    numbers (None without one). A phone stores a portrait video as landscape
    pictures with a rotation of 90 or -90 degrees; a matrix can also mirror
    them, which the rotation alone does not tell: FFmpeg then reads the signs
    of the matrix's entries, and so does this. Angles other than multiples of
    90 are left as stored (the FFmpeg command turns the picture by them
    inside the same frame, black in the corners).
    """
    if matrix is None or rotation != rotation:  # NaN: a degenerate matrix
        return 0, False
    theta = -round(rotation)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)  # in [0, 360), as FFmpeg
    m = matrix
    if abs(theta - 90) < 1:
        return (1, True) if m[3] > 0 else (3, False)  # transposed, or turned clockwise
    if abs(theta - 180) < 1:
        return {(True, True): (2, False), (True, False): (0, True),
                (False, True): (2, True), (False, False): (0, False)}[(m[0] < 0, m[4] < 0)]
    if abs(theta - 270) < 1:
        return (3, True) if m[3] < 0 else (1, False)
    if abs(theta) < 1 and m[4] < 0:
        return 2, True  # upside down: mirrored and turned twice
    return 0, False


def _decode_wanted(path, clips, timeline, threads=None, rejection=None, fallen_back_from=None,
                   frame_threads=True):
    """Fill `clips` with its wanted frames; returns (frames reached, error or None).

    With a `timeline`, seeks to the keyframe before the first wanted frame
    when that skips at least `SEEK_AFTER_FRAMES`, identifies every frame by
    its time and decodes no unwanted picture that nothing refers to; any
    doubt (no time, a time off the timeline, landing past the first wanted
    frame, a wanted frame missing) falls back to decoding everything from the
    start, where the index is just the count of frames so far.

    A packet the decoder rejects (damage inside the file) stops that pass;
    with a `timeline`, a careful one follows (given the `rejection`): from
    the start, every picture decoded (a lost frame's nearest earlier one may
    be an unwanted B-frame, or lie before the keyframe a seek lands on), past
    such packets, each wanted frame that none arrives for filled with its
    neighbour. Counting frames cannot tell which frame a rejected packet
    held: a pass that counts because the timed one had a doubt
    (`fallen_back_from`, its timeline) makes the careful one with that
    timeline, which checks every time again; without a timeline the error
    stands.

    Frame threads can lose a rejected packet's error, and the frames decoded
    beside it (a fragmented MP4 cut inside a fragment, 3 threads or more): a
    pass that ends before a wanted frame without an error is made again
    without them (`frame_threads=False`), where the rejection shows.
    """
    first, last = int(clips.wanted[0]), int(clips.wanted[-1])
    if timeline is not None and last >= len(timeline):
        timeline = None  # fewer packets than the container states: count frames
    careful = rejection is not None
    seek = timeline is not None and first >= SEEK_AFTER_FRAMES and not careful
    wanted_times = (None if timeline is None or careful
                    else {timeline[i] for i in clips.wanted.tolist()})
    index, error, shown = -1, rejection, None
    reformatter = VideoReformatter()  # not shared: decodes run in parallel threads
    with _open(path) as container:
        stream = _video_stream(container, path)
        # The size FFmpeg found probing the first frames, before decoding changes it.
        size = (stream.width or None, stream.height or None)
        # Frame threads report a rejected packet on a later one, as their timing
        # has it: the careful pass (damaged videos only) decodes each packet in
        # turn, slice threads at most, so that what it passes over is the same
        # on a busy machine as on an idle one.
        stream.thread_type = "AUTO" if frame_threads and not careful else "SLICE"
        if threads:
            stream.thread_count = threads
        # After a seek in an MPEG program stream, FFmpeg gives MPEG-1 pictures
        # the time of the next frame (a clip came back one frame early): those
        # are decoded from the start (MPEG-2 and H.264 there keep their times).
        seek = seek and not (container.format.name == "mpeg"
                             and stream.codec_context.name == "mpeg1video")
        if seek:
            container.seek(timeline[first], stream=stream, backward=True, any_frame=False)
        try:
            for frame in _frames_from(container, stream, wanted_times, careful):
                if timeline is not None:
                    previous = index
                    index = bisect.bisect_left(timeline, frame.pts) if frame.pts is not None else -1
                    # From the start, the first frame shown is the first of the
                    # timeline (when no packet before it was rejected); after a
                    # seek, one at or before the first wanted.
                    if (index <= previous or index >= len(timeline)
                            or timeline[index] != frame.pts
                            or (previous < 0 and not careful
                                and index > (first if seek else 0))):
                        if careful:  # the frames' times are no help: the error stands
                            index = previous
                            break
                        # Frame threads, meeting a rejected packet, may show a
                        # frame out of order, as their timing has it.
                        return _decode_wanted(path, clips, None, threads,
                                              fallen_back_from=timeline,
                                              frame_threads=frame_threads)
                    if careful:
                        clips.fill(previous, index, lambda: _to_rgb(
                            shown if shown is not None else frame, reformatter, size))
                else:
                    index += 1
                if index in clips.places:
                    clips.put(index, _to_rgb(frame, reformatter, size))
                shown = frame if careful else None  # what fills a lost frame
                if index >= last:
                    break
            else:
                if careful and shown is not None:  # the last packets rejected
                    clips.fill(index, last + 1, lambda: _to_rgb(shown, reformatter, size))
        except av.FFmpegError as failure:
            error = failure
    if careful:
        return index + 1, error
    if frame_threads and error is None and clips.missing():
        return _decode_wanted(path, clips, timeline, threads, fallen_back_from=fallen_back_from,
                              frame_threads=False)
    timed = timeline if timeline is not None else fallen_back_from
    if timed is not None and isinstance(error, av.error.InvalidDataError):
        return _decode_wanted(path, clips, timed, threads, error)
    if timeline is not None and error is None and clips.missing():
        return _decode_wanted(path, clips, None, threads, frame_threads=False)
    return index + 1, error


def _frames_from(container, stream, wanted_times=None, past_rejected=False):
    """The decoded frames of `stream`. With `wanted_times`, a picture that
    nothing refers to (most B-frames) is decoded only when its time is wanted:
    a clip of 8 frames every 8 needs 1 picture in 8, and the pictures before
    the first wanted one (after a seek) are only needed as references. With
    `past_rejected`, a packet the decoder rejects (damaged) is passed over,
    as the FFmpeg command does, instead of ending the decode."""
    context = stream.codec_context
    skipping = False
    for packet in container.demux(stream):
        if wanted_times is not None:
            skip = packet.pts is not None and packet.pts not in wanted_times
            if skip != skipping:
                context.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            if not past_rejected:
                raise
            continue
        yield from frames


def write_video(path, frames, fps=8, codec="libx264", lossless=True, options=None):
    """Write uint8 RGB frames `(T, H, W, 3)` as a video (the demo data, the tests).

    The container follows the file extension. With the default codec,
    `lossless=True` uses libx264 with `crf=0` in yuv444p, so decoded pixels
    differ from the source by at most a couple of levels (colour conversion);
    other codecs are written in yuv420p (MJPEG: yuvj420p), with the encoder
    `options` given (strings, as FFmpeg takes them). H and W must be even for
    4:2:0.
    """
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"`frames` must be (time, height, width, 3) uint8. Received: frames.shape={frames.shape}"
        )
    if codec == "libx264":
        pix_fmt = "yuv444p" if lossless else "yuv420p"
        options = dict({"crf": "0" if lossless else "18"}, **(options or {}))
    else:
        pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options or {})
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

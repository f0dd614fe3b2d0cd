"""PyAV video decoding and the paper's temporal clip sampling (NumPy side).

`decode_frames(path, sampler)` opens a file once, asks `sampler(total_frames)`
for the frame indices it needs and returns just those frames as uint8 RGB.
The two samplers of the paper:

- `train_clip_indices`: `num_frames` frames every `sampling_rate` frames from
  a random start (the "32 x 2" clip: 64 consecutive frames, every other kept).
- `eval_clip_indices`: `num_clips` such clips with starts evenly spaced from
  the first to the last possible start (one clip: the centred one).

Videos shorter than a clip repeat their last frame (indices are clamped),
so every clip has exactly `num_frames` frames.
"""

import numpy as np

import av


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


def decode_frames(path, sampler):
    """Decode the frames `sampler(total_frames)` asks for, as uint8 RGB.

    Args:
        path: video file readable by FFmpeg.
        sampler: callable mapping the video's frame count to an integer array
            of frame indices (any shape, repeats allowed).

    Returns:
        `(*indices.shape, height, width, 3)` uint8 array.

    Raises:
        VideoDecodeError: the file cannot be opened, has no video stream, no
            decodable frame, or fails mid-stream.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            total = stream.frames
            if total > 0:
                # The container states its length: sample first and stop
                # decoding after the last needed frame.
                indices = np.asarray(sampler(total))
                frames = _decode_up_to(container, int(indices.max()))
                total = len(frames)
                indices = np.minimum(indices, total - 1)
            else:
                frames = _decode_up_to(container, None)
                total = len(frames)
                if total == 0:
                    raise VideoDecodeError(path, "no decodable frame")
                indices = np.asarray(sampler(total))
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:
        raise VideoDecodeError(path, f"{type(error).__name__}: {error}") from error
    if total == 0:
        raise VideoDecodeError(path, "no decodable frame")
    return np.stack(frames)[indices]


def _decode_up_to(container, last_index):
    frames = []
    for frame in container.decode(video=0):
        frames.append(frame.to_ndarray(format="rgb24"))
        if last_index is not None and len(frames) > last_index:
            break
    return frames


def write_video(path, frames, fps=8, codec="libx264", lossless=True):
    """Write uint8 RGB frames `(T, H, W, 3)` as an H.264 MP4 (used by the demo data).

    `lossless=True` uses libx264 with `crf=0` in yuv444p, so decoded pixels
    differ from the source by at most a couple of levels (colour conversion).
    H and W must be even for yuv420p players; 4:4:4 has no such constraint.
    """
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"`frames` must be (time, height, width, 3) uint8. Received: frames.shape={frames.shape}"
        )
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
        stream.options = {"crf": "0"} if lossless else {"crf": "18"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

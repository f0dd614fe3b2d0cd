"""Pure-TensorFlow clip preprocessing, shared by `tf.data` and exported graphs.

Every function takes a clip of frames `(..., height, width, channels)` (for
example `(time, H, W, 3)` from the decoder, or `(batch, time, H, W, 3)` inside a
SavedModel signature) and uses TensorFlow ops only, so the same code runs in
the training pipeline and in a serving graph.

Conventions (official video-nonlocal-net, `lib/core/config.py`): pixels stay on
the 0..255 scale until normalisation, which subtracts `MEAN` and divides by
`STD` per channel: the statistics of `nonlocal_keras.applications.preprocess_input`,
imported from there. Spatial crops of the evaluation protocol sit at the start,
centre and end of the longer side, as PySlowFast's `uniform_crop`.
"""

import tensorflow as tf

from nonlocal_keras.applications.video_resnet_preprocessing import MEAN, STD

# Evaluation resizes a frame whole (fast) up to this many crops' area, and
# only its crops beyond (memory follows the crops, not the aspect ratio).
WHOLE_FRAME_CROPS = 4


def normalize(clip, mean=MEAN, std=STD):
    """`(clip - mean) / std` per channel (last axis); casts uint8 to float32.

    Computed as `clip * (1 / std) - mean / std` on rows of `width * channels`
    values, with the per-channel factors tiled along a row: broadcasting a
    3-vector along the innermost axis is a slow pattern for TensorFlow's CPU
    kernels.
    Equal to the formula up to float32 rounding (a few 1e-7 relative).
    """
    clip = tf.cast(clip, tf.float32)
    shape = tf.shape(clip)
    scale = 1.0 / tf.constant(std, tf.float32)
    offset = -tf.constant(mean, tf.float32) * scale
    rows = tf.reshape(clip, tf.stack([-1, shape[-2] * shape[-1]]))
    normalized = rows * tf.tile(scale, shape[-2:-1]) + tf.tile(offset, shape[-2:-1])
    normalized = tf.reshape(normalized, shape)
    normalized.set_shape(clip.shape)
    return normalized


def shorter_side_shape(height, width, size):
    """(new_height, new_width) whose shorter side is `size`, aspect kept (int32)."""
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    size = tf.cast(size, tf.float32)
    scale = size / tf.minimum(height, width)
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), 1)
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), 1)
    return new_height, new_width


def _resize_frames(clip, new_height, new_width):
    # tf.image.resize takes (batch, H, W, C): fold every leading axis into it.
    shape = tf.shape(clip)
    frames = tf.reshape(clip, tf.concat([[-1], shape[-3:]], axis=0))
    frames = tf.image.resize(frames, tf.stack([new_height, new_width]), method="bilinear")
    out_shape = tf.concat([shape[:-3], [new_height, new_width, shape[-1]]], axis=0)
    return tf.reshape(frames, out_shape)


def resize_shorter_side(clip, size):
    """Bilinear resize so that the shorter spatial side equals `size` (float32 out).

    uint8 frames enter the resize as they are (the kernel interpolates in
    float32, with the same result): only the resized clip is float32, never a
    float copy of the input, which for 4K frames is 100 MB a frame.
    """
    shape = tf.shape(clip)
    new_height, new_width = shorter_side_shape(shape[-3], shape[-2], size)
    resized = tf.cast(_resize_frames(clip, new_height, new_width), tf.float32)
    # Static channels survive the reshape, which Keras layers need downstream.
    resized.set_shape(clip.shape[:-3].concatenate([None, None]).concatenate(clip.shape[-1:]))
    return resized


def random_resize_shorter_side(clip, min_size, max_size, seed=None):
    """Scale jitter: shorter side drawn uniformly from the integers [min_size, max_size]."""
    size = tf.random.uniform([], min_size, max_size + 1, dtype=tf.int32, seed=seed)
    return resize_shorter_side(clip, size)


def _crop(clip, top, left, size):
    cropped = clip[..., top : top + size, left : left + size, :]
    return tf.ensure_shape(cropped, clip.shape[:-3].concatenate([size, size]).concatenate(clip.shape[-1:]))


def random_crop(clip, size, seed=None):
    """A `size` x `size` crop at a random position, the same for every frame."""
    shape = tf.shape(clip)
    top = tf.random.uniform([], 0, shape[-3] - size + 1, dtype=tf.int32, seed=seed)
    left = tf.random.uniform([], 0, shape[-2] - size + 1, dtype=tf.int32, seed=seed)
    return _crop(clip, top, left, size)


def spatial_crop(clip, size, index, num_crops):
    """Crop `index` of `num_crops` evenly spaced along the longer side.

    One crop is the centre crop; three crops are start / centre / end of the
    longer side (left / centre / right for landscape video), as in the
    evaluation protocol of the official code and PySlowFast. The shorter side
    is centred.
    """
    shape = tf.shape(clip)
    top, left = _crop_corner(shape[-3], shape[-2], size, index, num_crops)
    return _crop(clip, top, left, size)


def _crop_corner(height, width, size, index, num_crops):
    """(top, left) of `spatial_crop`'s crop `index` in a `height` x `width` frame."""
    spare_h, spare_w = height - size, width - size
    if num_crops == 1:
        fraction = tf.constant(0.5)
    else:
        fraction = tf.constant(index / (num_crops - 1), tf.float32)
    along_h = tf.cast(tf.round(tf.cast(spare_h, tf.float32) * fraction), tf.int32)
    along_w = tf.cast(tf.round(tf.cast(spare_w, tf.float32) * fraction), tf.int32)
    portrait = height > width
    return tf.where(portrait, along_h, spare_h // 2), tf.where(portrait, spare_w // 2, along_w)


def center_crop(clip, size):
    """The central `size` x `size` crop."""
    return spatial_crop(clip, size, 0, 1)


def multi_crop(clip, size, num_crops):
    """Stack of `num_crops` spatial crops: `(num_crops, ..., size, size, C)`."""
    return tf.stack([spatial_crop(clip, size, i, num_crops) for i in range(num_crops)])


def _sample_span(offset, size, in_size, out_size):
    """First and last input coordinate that output pixels [offset, offset + size)
    of a resize from `in_size` to `out_size` sample (half-pixel centres, as
    `tf.image.resize`; float32 as its kernel computes them)."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    offset = tf.cast(offset, tf.float32)
    return (offset + 0.5) * scale - 0.5, (offset + size - 0.5) * scale - 0.5


def _sample_box(frames, count, top, left, bottom, right, size, flip):
    # crop_and_resize samples evenly from corner to corner of a box given as
    # fractions of (height - 1, width - 1); a box whose left edge lies right
    # of its right edge samples the columns right to left: the mirrored crop,
    # without a pass of its own. A static `count` (the frames) keeps grappler's
    # cost model from logging "Error in PredictCost()" for an unknown box count.
    shape = tf.shape(frames)
    height = tf.cast(shape[1] - 1, tf.float32)
    width = tf.cast(shape[2] - 1, tf.float32)
    left, right = tf.where(flip, right, left), tf.where(flip, left, right)
    box = tf.stack([top / height, left / width, bottom / height, right / width])
    return tf.image.crop_and_resize(frames, tf.tile(box[None], [count, 1]),
                                    tf.range(count), [size, size], method="bilinear")


def resized_crop(clip, new_height, new_width, top, left, size, flip=False):
    """The `size` square at (`top`, `left`) of `clip` resized to
    (`new_height`, `new_width`), float32, computing only that square, mirrored
    left to right when `flip` (a boolean, possibly a tensor).

    `tf.image.crop_and_resize` samples the input at the resize's own
    coordinates (bilinear, half-pixel centres): equal to resizing the whole
    frame up to float rounding of those coordinates (the test bounds the
    difference at 0.05 on the 0..255 scale). A crop at the border of an
    upscaled frame samples up to half a pixel outside the input, where the
    resize repeats the edge: that case (a few crops in a hundred) samples a
    copy of the frames with their edges repeated once.
    """
    shape = tf.shape(clip)
    leading = clip.shape[:-3]
    count = leading.num_elements() if leading.is_fully_defined() else tf.reduce_prod(shape[:-3])
    frames = tf.reshape(clip, tf.concat([[count], shape[-3:]], axis=0))
    height, width = shape[-3], shape[-2]
    y_first, y_last = _sample_span(top, size, height, new_height)
    x_first, x_last = _sample_span(left, size, width, new_width)
    inside = ((y_first >= 0) & (x_first >= 0) & (y_last <= tf.cast(height - 1, tf.float32))
              & (x_last <= tf.cast(width - 1, tf.float32)))

    def direct():
        return _sample_box(frames, count, y_first, x_first, y_last, x_last, size, flip)

    def edges_repeated():
        rows = tf.clip_by_value(tf.range(-1, height + 1), 0, height - 1)
        columns = tf.clip_by_value(tf.range(-1, width + 1), 0, width - 1)
        padded = tf.gather(tf.gather(frames, rows, axis=1), columns, axis=2)
        return _sample_box(padded, count, y_first + 1, x_first + 1, y_last + 1, x_last + 1, size,
                           flip)

    crops = tf.cond(inside, direct, edges_repeated)
    crops = tf.reshape(crops, tf.concat([shape[:-3], [size, size, shape[-1]]], axis=0))
    return tf.ensure_shape(crops, clip.shape[:-3].concatenate([size, size]).concatenate(clip.shape[-1:]))


def random_resized_crop(clip, min_size, max_size, crop_size, seed=None, flip=False):
    """`random_crop(random_resize_shorter_side(clip, min_size, max_size), crop_size)`
    (the same draws: shorter side uniform in the integers [min_size, max_size],
    crop position uniform), float32, resizing only the crop (`resized_crop`).
    With `flip`, mirrored left to right with probability 1/2, by the sampling
    itself."""
    size = tf.random.uniform([], min_size, max_size + 1, dtype=tf.int32, seed=seed)
    shape = tf.shape(clip)
    new_height, new_width = shorter_side_shape(shape[-3], shape[-2], size)
    top = tf.random.uniform([], 0, new_height - crop_size + 1, dtype=tf.int32, seed=seed)
    left = tf.random.uniform([], 0, new_width - crop_size + 1, dtype=tf.int32, seed=seed)
    mirror = tf.random.uniform([], seed=seed) < 0.5 if flip else False
    return resized_crop(clip, new_height, new_width, top, left, crop_size, mirror)


def train_transform(clip, crop_size, min_scale, max_scale, flip=True, mean=MEAN, std=STD):
    """Paper training augmentation of one decoded uint8 clip `(T, H, W, 3)`.

    Shorter side scaled to a random size in [min_scale, max_scale], random
    `crop_size` square crop, optional horizontal flip, per-channel normalisation.
    """
    clip = random_resized_crop(clip, min_scale, max_scale, crop_size, flip=flip)
    return normalize(clip, mean, std)


def _taps(offset, size, in_size, out_size):
    """Input neighbours and weights of output pixels [offset, offset + size) of
    a bilinear resize from `in_size` to `out_size`, computed as TensorFlow's
    resize kernel computes them (float32, half-pixel centres, clamped)."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    coordinate = (tf.cast(tf.range(offset, offset + size), tf.float32) + 0.5) * scale - 0.5
    below = tf.floor(coordinate)
    lower = tf.maximum(tf.cast(below, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(coordinate), tf.int32), in_size - 1)
    return lower, upper, coordinate - below


def _resized_region(frames, new_height, new_width, top, left, size):
    """The `size` square at (`top`, `left`) of `frames` `(N, H, W, C)` resized
    to (`new_height`, `new_width`) by `tf.image.resize` (bilinear), computing
    only that square, with the kernel's own arithmetic: the same float32
    numbers (`crop_and_resize`, which training uses, differs by up to 0.05)."""
    shape = tf.shape(frames)
    height, width = shape[1], shape[2]
    y_low, y_high, y_weight = _taps(top, size, height, new_height)
    x_low, x_high, x_weight = _taps(left, size, width, new_width)
    pixels = tf.reshape(frames, tf.stack([shape[0], height * width, shape[3]]))

    def at(rows, columns):
        return tf.cast(tf.gather(pixels, rows[:, None] * width + columns[None], axis=1),
                       tf.float32)

    x_weight = x_weight[:, None]
    upper = at(y_low, x_low) + (at(y_low, x_high) - at(y_low, x_low)) * x_weight
    lower = at(y_high, x_low) + (at(y_high, x_high) - at(y_high, x_low)) * x_weight
    return upper + (lower - upper) * y_weight[:, None, None]


def eval_transform(clips, crop_size, scale, num_crops, mean=MEAN, std=STD):
    """Evaluation views of uint8 clips `(num_clips, T, H, W, 3)`.

    Shorter side resized to `scale`, `num_crops` crops per clip, normalised.
    Returns `(num_clips * num_crops, T, crop_size, crop_size, 3)` float32, the
    crops of clip 0 first.

    A frame whose resized size exceeds `WHOLE_FRAME_CROPS` crops has only its
    crops resized: resizing it whole made memory follow its aspect ratio (a
    1 x 8000 frame at shorter side 256 is 6 GB in float32). Ordinary frames
    are resized whole, 3-4x faster than the crops alone; both give the same
    numbers.
    """
    shape = tf.shape(clips)
    frames = tf.reshape(clips, tf.concat([[-1], shape[-3:]], axis=0))
    new_height, new_width = shorter_side_shape(shape[-3], shape[-2], scale)
    corners = [_crop_corner(new_height, new_width, crop_size, index, num_crops)
               for index in range(num_crops)]

    def whole_frames():
        resized = tf.cast(_resize_frames(frames, new_height, new_width), tf.float32)
        return tf.stack([resized[:, top:top + crop_size, left:left + crop_size]
                         for top, left in corners], axis=1)

    def crops_only():
        return tf.stack([_resized_region(frames, new_height, new_width, top, left, crop_size)
                         for top, left in corners], axis=1)

    # In float: the area of a thin frame's resize overflows int32.
    area = tf.cast(new_height, tf.float32) * tf.cast(new_width, tf.float32)
    ordinary = area <= WHOLE_FRAME_CROPS * crop_size * crop_size
    views = tf.cond(ordinary, whole_frames, crops_only)  # (clips x T, crops, s, s, C)
    views = tf.reshape(views, tf.concat([shape[:2], [num_crops, crop_size, crop_size, -1]], 0))
    views = tf.reshape(tf.transpose(views, [0, 2, 1, 3, 4, 5]),
                       tf.concat([[-1, shape[1], crop_size, crop_size], shape[-1:]], 0))
    views.set_shape([None, clips.shape[1], crop_size, crop_size, clips.shape[-1]])
    return normalize(views, mean, std)

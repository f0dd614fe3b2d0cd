"""Clip preprocessing against NumPy slicing and arithmetic."""

import numpy as np
import pytest
import tensorflow as tf

from nonlocal_keras.training import preprocessing


def _clip(time=2, height=6, width=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (time, height, width, 3)).astype(np.uint8)


def test_normalize_matches_per_channel_formula():
    clip = _clip()
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    expected = (clip.astype(np.float64) - np.array(mean)) / np.array(std)
    result = preprocessing.normalize(tf.constant(clip), mean, std).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)
    assert result.dtype == np.float32


def test_normalize_keeps_any_leading_axes_and_the_static_shape():
    # The per-channel factors are tiled along rows of width x channels values:
    # a batch of clips, a single frame and a one-pixel-wide clip alike.
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    for shape in ((2, 3, 4, 5, 3), (4, 5, 3), (2, 3, 1, 3)):
        clip = np.random.default_rng(len(shape)).integers(0, 256, shape).astype(np.uint8)
        result = preprocessing.normalize(tf.constant(clip), mean, std)
        assert result.shape == shape
        expected = (clip.astype(np.float64) - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6, atol=1e-6)
    traced = tf.function(lambda c: preprocessing.normalize(c, mean, std)).get_concrete_function(
        tf.TensorSpec((None, 8, None, None, 3), tf.uint8))
    assert traced.structured_outputs.shape.as_list() == [None, 8, None, None, 3]


@pytest.mark.parametrize("height,width,size,expected", [
    (6, 10, 3, (3, 5)), (10, 6, 3, (5, 3)), (240, 320, 256, (256, 341)),
])
def test_resize_shorter_side_shape(height, width, size, expected):
    clip = tf.zeros((2, height, width, 3), tf.uint8)
    assert preprocessing.resize_shorter_side(clip, size).shape[1:3] == expected


def test_resize_to_own_size_is_identity_and_batched_input_works():
    clip = _clip()
    batch = np.stack([clip, clip[::-1]])
    result = preprocessing.resize_shorter_side(tf.constant(batch), 6).numpy()
    np.testing.assert_allclose(result, batch.astype(np.float32), atol=1e-4)


def test_three_crops_are_start_centre_end_of_longer_side():
    clip = _clip(height=6, width=10)
    views = preprocessing.multi_crop(tf.constant(clip), 4, 3).numpy()
    # Landscape: shorter side centred (rows 1..4), columns 0, 3, 6.
    for view, left in zip(views, (0, 3, 6)):
        np.testing.assert_array_equal(view, clip[:, 1:5, left:left + 4])
    portrait = np.transpose(clip, (0, 2, 1, 3))  # 10 x 6
    views = preprocessing.multi_crop(tf.constant(portrait), 4, 3).numpy()
    for view, top in zip(views, (0, 3, 6)):
        np.testing.assert_array_equal(view, portrait[:, top:top + 4, 1:5])
    np.testing.assert_array_equal(
        preprocessing.center_crop(tf.constant(clip), 4).numpy(), clip[:, 1:5, 3:7])


def test_random_crop_is_a_window_of_the_input():
    clip = _clip(height=8, width=8)
    crop = preprocessing.random_crop(tf.constant(clip), 5).numpy()
    windows = [clip[:, t:t + 5, l:l + 5] for t in range(4) for l in range(4)]
    assert any(np.array_equal(crop, w) for w in windows)


def test_train_transform_flip_mirrors_every_frame_or_none():
    # Scale and crop at the clip's own size: only the flip changes anything.
    clip = _clip(height=8, width=8)
    tf.random.set_seed(1)
    results = [preprocessing.train_transform(tf.constant(clip), 8, 8, 8, mean=(0, 0, 0),
                                             std=(1, 1, 1)).numpy() for _ in range(12)]
    mirrored = clip[:, :, ::-1]

    def same(a, b):
        return np.allclose(a, b, rtol=0, atol=1e-3)

    assert all(same(r, clip) or same(r, mirrored) for r in results)
    assert not any(same(r, mirrored) for r in [
        preprocessing.train_transform(tf.constant(clip), 8, 8, 8, flip=False, mean=(0, 0, 0),
                                      std=(1, 1, 1)).numpy() for _ in range(4)])
    assert any(same(r, mirrored) for r in results)
    assert any(same(r, clip) for r in results)


def test_eval_transform_orders_views_clip_major():
    clips = np.stack([_clip(seed=0), _clip(seed=1)])  # (2 clips, T, 6, 10, 3)
    views = preprocessing.eval_transform(tf.constant(clips), 4, 6, 3, mean=(0, 0, 0),
                                         std=(1, 1, 1)).numpy()
    assert views.shape == (6, 2, 4, 4, 3)
    for clip_index in range(2):
        for crop_index, left in enumerate((0, 3, 6)):
            np.testing.assert_allclose(views[clip_index * 3 + crop_index],
                                       clips[clip_index][:, 1:5, left:left + 4], atol=1e-4)


@pytest.mark.parametrize("height,width,scale,crop,num_crops", [
    (24, 32, 20, 16, 3),   # downscaled, landscape
    (34, 24, 40, 32, 3),   # upscaled, portrait
    (24, 34, 24, 20, 1),   # the same size, centre crop
    (2, 300, 16, 12, 3),   # 1:150, far beyond the crops' area
])
def test_eval_views_equal_resizing_whole_frames_then_cropping(height, width, scale, crop,
                                                              num_crops, monkeypatch):
    # Either way (the whole frame resized, or only its crops) against the
    # float64 definition, and to the bit against each other.
    clips = np.stack([_clip(time=2, height=height, width=width, seed=s) for s in range(2)])
    new_height, new_width = (int(v) for v in preprocessing.shorter_side_shape(height, width,
                                                                               scale))
    resized = _bilinear_half_pixel(clips, new_height, new_width)
    spare_h, spare_w = new_height - crop, new_width - crop
    expected = []
    for clip in resized:
        for index in range(num_crops):
            along = 0.5 if num_crops == 1 else index / (num_crops - 1)
            top, left = ((round(spare_h * along), spare_w // 2) if height > width
                         else (spare_h // 2, round(spare_w * along)))
            expected.append(clip[:, top:top + crop, left:left + crop])
    views = {}
    for whole in (0, float("inf")):
        monkeypatch.setattr(preprocessing, "WHOLE_FRAME_CROPS", whole)
        views[whole] = preprocessing.eval_transform(tf.constant(clips), crop, scale, num_crops,
                                                    mean=(0, 0, 0), std=(1, 1, 1)).numpy()
        np.testing.assert_allclose(views[whole], np.stack(expected), rtol=0, atol=0.01)
    np.testing.assert_array_equal(views[0], views[float("inf")])


def test_eval_memory_follows_the_crops_not_the_aspect_ratio():
    """Every frame was resized whole, whatever its crops need: a 1 x 1000
    one at shorter side 128 is 197 MB in float32 (a 1 x 8000 one at 256,
    6 GB), its crop of 112 x 112, 0.15 MB."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource
        import numpy as np
        import tensorflow as tf
        from nonlocal_keras.training import preprocessing

        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        thin = np.random.default_rng(0).integers(0, 256, (2, 4, 1, 1000, 3)).astype(np.uint8)
        preprocessing.eval_transform(tf.constant(thin[:, :, :, :200]), 112, 128, 1)
        before = peak_mb()
        views = preprocessing.eval_transform(tf.constant(thin), 112, 128, 1)
        print(tuple(views.shape), round(peak_mb() - before))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shape, grown = out.stdout.split(") ")
    assert shape + ")" == "(2, 4, 112, 112, 3)"
    assert int(grown) < 100, out.stdout


def test_train_transform_output_shape_and_scale_range():
    clip = tf.constant(_clip(height=12, width=16))
    out = preprocessing.train_transform(clip, 8, 10, 12)
    assert out.shape == (2, 8, 8, 3)
    assert out.dtype == tf.float32


def _bilinear_half_pixel(image, new_height, new_width):
    """float64 NumPy resize with half-pixel centres, clamped at the edges (the
    definition tf.image.resize's bilinear follows)."""

    def axis_weights(in_size, out_size):
        coordinate = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        below = np.floor(coordinate)
        frac = coordinate - below
        low = np.clip(below, 0, in_size - 1).astype(int)
        high = np.clip(below + 1, 0, in_size - 1).astype(int)
        return low, high, frac

    image = image.astype(np.float64)
    y0, y1, fy = axis_weights(image.shape[-3], new_height)
    x0, x1, fx = axis_weights(image.shape[-2], new_width)
    rows = (image[..., y0, :, :] * (1 - fy)[:, None, None]
            + image[..., y1, :, :] * fy[:, None, None])
    return rows[..., x0, :] * (1 - fx)[:, None] + rows[..., x1, :] * fx[:, None]


@pytest.mark.parametrize("height,width,size,crop", [
    (24, 34, 32, 28),   # upscaled, like 256 -> [256, 320] of Kinetics
    (24, 34, 24, 20),   # the same size
    (34, 24, 20, 16),   # downscaled, portrait
])
@pytest.mark.parametrize("flip", [False, True])
def test_resized_crop_matches_resizing_the_whole_frame(height, width, size, crop, flip):
    # Only the crop is resized (training's random_resized_crop): the same
    # pixels as resizing every frame and cropping, up to float32 rounding of
    # the sample coordinates: within 0.05 on the 0..255 scale, on noise
    # (the steepest possible image). Corners and the centre, so that the
    # crops at the border (edge repeated) are covered.
    clip = _clip(time=3, height=height, width=width, seed=size)
    new_height, new_width = (int(v) for v in preprocessing.shorter_side_shape(height, width, size))
    reference = _bilinear_half_pixel(clip, new_height, new_width)
    for top in (0, (new_height - crop) // 2, new_height - crop):
        for left in (0, (new_width - crop) // 3, new_width - crop):
            result = preprocessing.resized_crop(tf.constant(clip), new_height, new_width,
                                                top, left, crop, tf.constant(flip)).numpy()
            expected = reference[:, top:top + crop, left:left + crop]
            if flip:  # then mirrored left to right
                expected = expected[:, :, ::-1]
            assert result.dtype == np.float32 and result.shape == expected.shape
            np.testing.assert_allclose(result, expected, rtol=0, atol=0.05)


def test_training_crops_log_no_cost_model_error():
    """Each training run printed two long "Error in PredictCost()" lines from
    grappler (an unknown crop_and_resize box count; TensorFlow issue 56904)
    that TF_CPP_MIN_LOG_LEVEL does not silence: the frame count is static."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import numpy as np
        import tensorflow as tf
        from nonlocal_keras.training import preprocessing

        def clips():
            for height, width in [(40, 48), (36, 30), (50, 50), (33, 60)]:
                yield np.zeros((8, height, width, 3), np.uint8)

        ds = tf.data.Dataset.from_generator(
            clips, output_signature=tf.TensorSpec((8, None, None, 3), tf.uint8))
        ds = ds.map(lambda c: preprocessing.train_transform(c, 32, 32, 40),
                    num_parallel_calls=2).batch(2).prefetch(1)
        print([tuple(batch.shape) for batch in ds])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[(2, 8, 32, 32, 3), (2, 8, 32, 32, 3)]"
    assert "PredictCost" not in out.stderr

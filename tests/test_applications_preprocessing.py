"""`nonlocal_keras.applications.preprocess_input`: the official statistics, one source."""

import keras
import numpy as np
import pytest

from nonlocal_keras.applications import MEAN, STD, preprocess_input

# lib/core/config.py of video-nonlocal-net (PAPER.md): the same for R, G and B.
OFFICIAL_MEAN, OFFICIAL_STD = 114.75, 57.375


def test_numpy_clip():
    clip = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 5, 3)).astype("uint8")
    out = preprocess_input(clip)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    expected = (clip.astype("float64") - OFFICIAL_MEAN) / OFFICIAL_STD
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert preprocess_input(np.full((1, 3), 255, "uint8")).max() == pytest.approx(
        (255 - OFFICIAL_MEAN) / OFFICIAL_STD)


def test_tensor_clip():
    clip = np.random.default_rng(1).integers(0, 256, (1, 2, 3, 3, 3)).astype("float32")
    out = preprocess_input(keras.ops.convert_to_tensor(clip))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out),
                               (clip - OFFICIAL_MEAN) / OFFICIAL_STD, rtol=1e-6, atol=1e-6)


def test_training_uses_the_same_statistics():
    from nonlocal_keras.training import preprocessing

    assert preprocessing.MEAN is MEAN and preprocessing.STD is STD
    assert not hasattr(preprocessing, "to_float")


def test_rgb_only():
    with pytest.raises(ValueError, match=r"Received: x.shape=\(2, 4\)"):
        preprocess_input(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"Received: x.shape=\(\)"):
        preprocess_input(7)


def test_nested_lists_are_read_as_numpy_reads_them():
    """A list of frames was an AttributeError ('list' object has no attribute 'shape')."""
    frames = [[[[0, 128, 255]]]]
    np.testing.assert_allclose(preprocess_input(frames), (np.float64(frames) - MEAN) / STD,
                               rtol=1e-6)


def test_data_format_as_keras_applications():
    """keras.applications' `preprocess_input(x, data_format=None)`: the argument
    was a TypeError. None is channels last, the video ResNets' layout."""
    clip = np.random.default_rng(2).integers(0, 256, (2, 4, 5, 6, 3)).astype("uint8")
    expected = (clip.astype("float64") - OFFICIAL_MEAN) / OFFICIAL_STD
    for data_format in (None, "channels_last"):
        np.testing.assert_allclose(preprocess_input(clip, data_format=data_format), expected,
                                   rtol=1e-6, atol=1e-6)
    first = np.moveaxis(clip, -1, 1)  # (batch, channels, frames, height, width)
    for x in (first, keras.ops.convert_to_tensor(first)):
        out = keras.ops.convert_to_numpy(preprocess_input(x, data_format="channels_first"))
        np.testing.assert_allclose(out, np.moveaxis(expected, -1, 1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"channels first .*Received: x.shape=\(2, 4, 5, 6, 3\)"):
        preprocess_input(clip, data_format="channels_first")
    with pytest.raises(ValueError, match=r"Received: data_format='NTHWC'"):
        preprocess_input(clip, data_format="NTHWC")

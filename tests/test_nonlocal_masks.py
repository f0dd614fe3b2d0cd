"""Masks: padded positions are no keys and pass through unchanged as queries.

Every case is checked against the float64 reference (`nonlocal_reference`,
which applies the masks by explicit loops over windows and pairs), on the
plain, chunked and reassociated paths: the block on `[x, padding]` with its
mask must give, on x's positions, the block on x alone.
"""

import keras
import numpy as np
import pytest
from keras import ops

import nonlocal_reference as ref
from nonlocal_keras import nonlocal_math
from nonlocal_keras.layers import NonLocal1D, NonLocal2D, NonLocal3D
from test_nonlocal_layers import RTOL, _randomise

MODES = nonlocal_math.MODES
LAYERS = {1: NonLocal1D, 2: NonLocal2D, 3: NonLocal3D}
DEFAULT_POOL = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}
# (valid input, padded input): padding on the last position axis for 1D and
# 2D, on time for 3D; the valid sizes are multiples of the pool window.
PADDED = {1: ((2, 6, 6), (2, 10, 6)), 2: ((2, 4, 4, 6), (2, 4, 8, 6)),
          3: ((2, 2, 4, 4, 6), (2, 4, 4, 4, 6))}
# plain: one affinity; chunked: slices of 3 queries (ragged last slice);
# reassociated: theta's and w_z's kernels moved across the products.
PATHS = ("plain", "chunked", "reassociated")


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    forced = request.param == "reassociated"
    monkeypatch.setattr(nonlocal_math, "reassociates", lambda *sizes: forced)
    return request.param


def _layer(rank, mode, path, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    layer = LAYERS[rank](mode=mode, chunk_size=3 if path == "chunked" else None, **kwargs)
    layer.build(PADDED[rank][1])
    weights, bn = _randomise(layer, rng)
    return layer, weights, bn, rng


def _padded(rank, rng, lengths=None):
    """Random x, its padding (random values, not zeros) and the mask."""
    (valid_shape, padded_shape) = PADDED[rank]
    padded = rng.normal(0, 1, padded_shape).astype("float32")
    axis = 1 if rank == 3 else rank
    lengths = lengths or (valid_shape[axis],) * padded_shape[0]
    mask = np.zeros(padded_shape[:-1], bool)
    for b, n in enumerate(lengths):
        index = [b] + [slice(None)] * rank
        index[axis] = slice(0, n)
        mask[tuple(index)] = True
    return padded, mask, axis, lengths


def _close(out, expected, x):
    out = np.asarray(out, np.float64)
    error = np.linalg.norm(out - expected) / max(np.linalg.norm(expected - x), 1e-12)
    assert error < RTOL, error


@pytest.mark.parametrize("rank", (1, 2, 3))
@pytest.mark.parametrize("mode", MODES)
def test_padded_with_mask_equals_unpadded(path, rank, mode):
    # Example 0 is padded by the full amount, example 1 is cut shorter: the
    # batch of variable-length inputs the mask is for.
    layer, weights, bn, rng = _layer(rank, mode, path)
    padded, mask, axis, _ = _padded(rank, rng)
    pool = DEFAULT_POOL[rank]
    valid_length = PADDED[rank][0][axis]
    lengths = (valid_length, valid_length - pool[axis - 1] if rank != 3 else valid_length - 1)
    padded, mask, axis, lengths = _padded(rank, rng, lengths)
    out = ops.convert_to_numpy(layer(padded, mask=mask, training=False))
    for b, n in enumerate(lengths):
        index = [slice(None)] * rank
        index[axis - 1] = slice(0, n)
        x = padded[b][tuple(index)][None]
        expected = ref.nonlocal_block(x, weights, mode, pool, bn=bn)
        _close(out[b][tuple(index)][None], expected, x)
        # The padding comes out as it went in, bit for bit.
        rest = np.asarray(~mask[b])
        np.testing.assert_array_equal(out[b][rest], padded[b][rest])


@pytest.mark.parametrize("rank", (1, 2, 3))
@pytest.mark.parametrize("mode", MODES)
def test_scattered_mask_matches_reference(path, rank, mode):
    # Holes anywhere, windows partly and wholly masked: a window is a key in
    # the reference only when all its positions are valid.
    layer, weights, bn, rng = _layer(rank, mode, path, seed=1)
    padded = rng.normal(0, 1, PADDED[rank][1]).astype("float32")
    mask = rng.random(padded.shape[:-1]) < 0.6
    out = ops.convert_to_numpy(layer(padded, mask=mask, training=False))
    expected = ref.nonlocal_block(padded, weights, mode, DEFAULT_POOL[rank], bn=bn, mask=mask)
    _close(out, expected, padded)


# The grouped affinities; frames_per_group=2: two groups of the 4 frames.
GROUPINGS = ({"affinity": "space"}, {"affinity": "time"}, {"frames_per_group": 2})


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("mode", MODES)
def test_grouped_affinity_with_mask(path, grouping, mode):
    layer, weights, bn, rng = _layer(3, mode, path, **grouping)
    x = rng.normal(0, 1, PADDED[3][1]).astype("float32")
    mask = rng.random(x.shape[:-1]) < 0.6
    out = ops.convert_to_numpy(layer(x, mask=mask, training=False))
    expected = ref.nonlocal_block(x, weights, mode, (1, 2, 2), bn=bn, mask=mask, **grouping)
    _close(out, expected, x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("with_mask", (False, True))
def test_attention_mask_matches_reference(path, mode, with_mask):
    layer, weights, bn, rng = _layer(2, mode, path)
    x = rng.normal(0, 1, PADDED[2][1]).astype("float32")
    _, n_q, n_k = layer.attention_scores_shape(x.shape)
    pairs = rng.random((x.shape[0], n_q, n_k)) < 0.5
    pairs[0, 0] = False  # a query with no key at all: y = 0 there
    mask = rng.random(x.shape[:-1]) < 0.7 if with_mask else None
    out = ops.convert_to_numpy(layer(x, mask=mask, attention_mask=pairs, training=False))
    expected = ref.nonlocal_block(x, weights, mode, (2, 2), bn=bn, mask=mask,
                                  attention_mask=pairs)
    _close(out, expected, x)


def _grouped_to_pairs(grouped, sizes, pool, affinity="spacetime", frames_per_group=None):
    """The layer's (B, G, N_q, N_k) attention mask as the reference's (B, N_q, N_k)."""
    frames, height, width = sizes
    pt, ph, pw = pool
    pooled = (frames // pt, height // ph, width // pw)
    pairs = np.zeros((grouped.shape[0], frames * height * width, int(np.prod(pooled))), bool)
    for t, h, w in np.ndindex(frames, height, width):
        query = (t * height + h) * width + w
        if frames_per_group:  # group: frames_per_group frames; within: (frame, h, w) rows
            group, local = t // frames_per_group, ((t % frames_per_group) * height + h) * width + w
            per_group = frames_per_group // pt
            keys = [(kt * pooled[1] + kh) * pooled[2] + kw
                    for kt in range(group * per_group, (group + 1) * per_group)
                    for kh in range(pooled[1]) for kw in range(pooled[2])]
        elif affinity == "space":  # group: pooled frame; within: (frame, h, w) rows
            group, local = t // pt, ((t % pt) * height + h) * width + w
            keys = [(group * pooled[1] + kh) * pooled[2] + kw
                    for kh in range(pooled[1]) for kw in range(pooled[2])]
        else:  # group: spatial cell; within: (frame, h in cell, w in cell)
            group = (h // ph) * pooled[2] + w // pw
            local = (t * ph + h % ph) * pw + w % pw
            keys = [(kt * pooled[1] + h // ph) * pooled[2] + w // pw for kt in range(pooled[0])]
        pairs[:, query, keys] = grouped[:, group, local, :]
    return pairs


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("mode", ("embedded_gaussian", "dot_product"))
def test_grouped_attention_mask_matches_reference(path, grouping, mode):
    layer, weights, bn, rng = _layer(3, mode, path, **grouping)
    x = rng.normal(0, 1, PADDED[3][1]).astype("float32")
    grouped = rng.random(layer.attention_scores_shape(x.shape)) < 0.5
    out, scores = layer(x, attention_mask=grouped, training=False, return_attention_scores=True)
    assert tuple(scores.shape) == grouped.shape
    pairs = _grouped_to_pairs(grouped, x.shape[1:-1], (1, 2, 2), **grouping)
    expected = ref.nonlocal_block(x, weights, mode, (1, 2, 2), bn=bn, attention_mask=pairs,
                                  **grouping)
    _close(ops.convert_to_numpy(out), expected, x)


# Odd valid sizes, float32: the padded and unpadded runs differ only by the
# masked keys, whose weights are exactly 0, so by float rounding.
ODD_TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _trained_like(block, seed):
    # gamma = 0 (initialisation) makes the block the identity whatever its
    # keys: a trained-like BN makes the comparison see them.
    _randomise(block, np.random.default_rng(seed))
    assert np.abs(ops.convert_to_numpy(block.bn.gamma)).min() > 0


# Length 3 alone pools to a single key: Keras warns about a softmax over one
# element, which is what that length means.
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")
@pytest.mark.parametrize("length", (3, 5, 7))
def test_odd_length_embedding_padding_equals_unpadded(length):
    # Length 5 padded to 8 with pool 2: the window {4, 5} holds one valid
    # position and padding. The unpadded input's pooling drops position 4 as
    # a key (floor, as the official code); so must the mask.
    embedding = keras.layers.Embedding(10, 8, mask_zero=True)
    block = NonLocal1D(kernel_initializer="he_normal")
    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, block(embedding(inputs)))
    _trained_like(block, 3)
    tokens = np.random.default_rng(length).integers(1, 10, (1, length))
    padded = np.concatenate([tokens, np.zeros((1, 8 - length), int)], axis=1)
    batch = np.concatenate([padded, np.arange(1, 9)[None]])  # a second, full example
    alone = ops.convert_to_numpy(model(tokens))
    out = ops.convert_to_numpy(model(batch))
    np.testing.assert_allclose(out[:1, :length], alone, **ODD_TOLERANCE)


@pytest.mark.parametrize("rank, valid, padded", [
    (2, (3, 5), (4, 8)),
    (3, (3, 3, 5), (4, 4, 6)),
])
def test_odd_valid_region_equals_unpadded(rank, valid, padded):
    # A valid corner whose sizes are not multiples of the (2, 2) / (1, 2, 2)
    # window, padded with random values on every position axis.
    rng = np.random.default_rng(rank)
    block = LAYERS[rank](chunk_size=None)
    block.build((2, *padded, 6))
    _trained_like(block, 4)
    x = rng.normal(0, 1, (2, *padded, 6)).astype("float32")
    corner = (slice(None),) + tuple(slice(0, n) for n in valid)
    mask = np.zeros(x.shape[:-1], bool)
    mask[corner] = True
    alone = ops.convert_to_numpy(block(x[corner], training=False))
    out = ops.convert_to_numpy(block(x, mask=mask, training=False))
    np.testing.assert_allclose(out[corner], alone, **ODD_TOLERANCE)


def test_embedding_mask_reaches_the_block():
    # The probe: Embedding(mask_zero=True) -> NonLocal1D. Appending
    # padding must not move the real positions' outputs.
    embedding = keras.layers.Embedding(10, 8, mask_zero=True)
    block = NonLocal1D(sub_sample=False, chunk_size=None)
    tokens = np.array([[3, 1, 4, 1, 5, 9]])
    padded = np.concatenate([tokens, np.zeros((1, 4), int)], axis=1)
    block(embedding(padded))
    _randomise(block, np.random.default_rng(2))
    assert block.supports_masking
    short = ops.convert_to_numpy(block(embedding(tokens), training=False))
    long = ops.convert_to_numpy(block(embedding(padded), training=False))
    np.testing.assert_allclose(long[:, :6], short, rtol=1e-5, atol=1e-6)
    inputs = keras.Input((None,), dtype="int32")
    outputs = block(embedding(inputs))
    assert outputs._keras_mask is not None  # the mask flows on to the next layer


@pytest.mark.parametrize("mode", ("embedded_gaussian", "concatenation"))
def test_training_statistics_ignore_padding(mode):
    # Training mode normalises with the batch statistics: Keras' masked
    # moments take the valid positions only, as on the unpadded batch.
    layer, _, _, rng = _layer(1, mode, "plain")
    padded, mask, _, _ = _padded(1, rng)
    x = padded[:, :6]
    short = ops.convert_to_numpy(layer(x, training=True))
    long = ops.convert_to_numpy(layer(padded, mask=mask, training=True))
    np.testing.assert_allclose(long[:, :6], short, rtol=1e-4, atol=1e-5)


def test_all_masked_example_passes_through():
    layer, _, _, rng = _layer(2, "embedded_gaussian", "plain")
    x = rng.normal(0, 1, PADDED[2][1]).astype("float32")
    mask = np.ones(x.shape[:-1], bool)
    mask[1] = False
    out = ops.convert_to_numpy(layer(x, mask=mask, training=False))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[1], x[1])


@pytest.mark.parametrize("mask_shape", ((2, 4), (2, 4, 8, 1)))
def test_bad_mask_shape(mask_shape):
    layer = NonLocal2D()
    with pytest.raises(ValueError, match=r"Received: mask.shape=\(2, 4"):
        layer(np.zeros((2, 4, 8, 6), "float32"), mask=np.ones(mask_shape, bool))


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="run from TensorFlow")
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_masks_on_other_backends(backend):
    import os
    import subprocess
    import sys

    pytest.importorskip(backend)
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_bad_attention_mask_shape():
    layer = NonLocal2D()
    with pytest.raises(ValueError, match=r"scores' shape \(2, 32, 8\).*"
                                         r"Received: attention_mask.shape=\(2, 32, 32\)"):
        layer(np.zeros((2, 4, 8, 6), "float32"), attention_mask=np.ones((2, 32, 32), bool))

"""The chunked (memory-efficient) path equals the plain path, forward and backward.

Tiny shapes with a chunk size that does not divide the number of queries, so
the last slice is ragged. Speed and memory are measured in benchmarks/, not
here. Runs on the TensorFlow and the PyTorch backends (gradients through each
backend's own autodiff).
"""

import keras
import numpy as np
import pytest
from keras import ops

import nonlocal_reference as ref
from nonlocal_keras import nonlocal_math
from nonlocal_keras.layers import NonLocal1D, NonLocal2D, NonLocal3D

MODES = nonlocal_math.MODES
SHAPES = {1: (2, 10, 6), 2: (2, 4, 6, 6), 3: (2, 4, 4, 4, 6)}
LAYERS = {1: NonLocal1D, 2: NonLocal2D, 3: NonLocal3D}
# Chunking reorders nothing inside a row of the affinity; only the matmul
# blocking changes, so float32 results agree to a few ulps.
TOL = 1e-5

needs_autodiff = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "torch"), reason="gradient helper"
)


def _pair(rank, mode, affinity="spacetime", chunk_size=3, seed=0, **kwargs):
    """A plain and a chunked layer with the same random weights, and an input."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, SHAPES[rank]).astype("float32")
    layers = [
        LAYERS[rank](mode=mode, affinity=affinity, chunk_size=c, **kwargs)
        for c in (None, chunk_size)
    ]
    for layer in layers:
        layer.build(x.shape)
    weights = []
    for variable in layers[0].weights:
        value = rng.normal(0, 0.5, variable.shape)
        if "moving_variance" in variable.path:
            value = np.abs(value) + 0.5
        weights.append(value)
    for layer in layers:
        layer.set_weights(weights)
    return layers, x


def _gradients(layer, x, cotangent):
    """d(sum(layer(x) * cotangent)) / d(x, every trainable weight), as NumPy."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=False) * cotangent)
        grads = tape.gradient(loss, [x] + [w.value for w in layer.trainable_weights])
        return [g.numpy() for g in grads]
    import torch

    x = torch.tensor(x, requires_grad=True)
    loss = (layer(x, training=False) * torch.tensor(cotangent)).sum()
    params = [w.value for w in layer.trainable_weights]
    grads = torch.autograd.grad(loss, [x] + params)
    return [g.detach().cpu().numpy() for g in grads]


def _close(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(), 1.0)
    assert np.abs(actual - expected).max() <= TOL * scale


def _cases():
    for mode in MODES:
        for affinity in nonlocal_math.AFFINITIES:
            yield 3, mode, affinity
    for rank in (1, 2):
        for mode in MODES:
            yield rank, mode, "spacetime"


@pytest.mark.parametrize("rank,mode,affinity", list(_cases()))
def test_chunked_forward_equals_plain(rank, mode, affinity):
    (plain, chunked), x = _pair(rank, mode, affinity)
    _close(ops.convert_to_numpy(chunked(x, training=False)),
           ops.convert_to_numpy(plain(x, training=False)))


@needs_autodiff
@pytest.mark.parametrize("rank,mode,affinity", list(_cases()))
def test_chunked_gradients_equal_plain(rank, mode, affinity):
    (plain, chunked), x = _pair(rank, mode, affinity)
    cotangent = np.random.default_rng(1).normal(0, 1, x.shape).astype("float32")
    expected = _gradients(plain, x, cotangent)
    actual = _gradients(chunked, x, cotangent)
    assert len(actual) == len(expected) == 1 + len(plain.trainable_weights)
    for a, e in zip(actual, expected):
        assert np.abs(e).max() > 0  # the check would be empty otherwise
        _close(a, e)


@pytest.mark.parametrize("chunk_size", (1, 7, 64, 1000))
def test_chunk_sizes_including_one_and_larger_than_queries(chunk_size):
    (plain, chunked), x = _pair(3, "embedded_gaussian", chunk_size=chunk_size)
    _close(ops.convert_to_numpy(chunked(x, training=False)),
           ops.convert_to_numpy(plain(x, training=False)))


def test_chunked_matches_float64_reference_without_subsampling():
    (_, chunked), x = _pair(3, "dot_product", sub_sample=False, use_bn=False)
    weights = {
        name: tuple(w.numpy() if hasattr(w, "numpy") else ops.convert_to_numpy(w)
                    for w in getattr(chunked, name).weights)
        for name in ("theta", "phi", "g", "w_z")
    }
    expected = ref.nonlocal_block(x, weights, "dot_product", (1, 1, 1))
    out = ops.convert_to_numpy(chunked(x, training=False)).astype("float64")
    branch, expected_branch = out - x, expected - x
    assert np.linalg.norm(branch - expected_branch) < 1e-4 * np.linalg.norm(expected_branch)


def test_chunked_float16_logits_do_not_overflow():
    # As tests/test_nonlocal_layers.py::test_float16_logits_do_not_overflow,
    # through the chunked path: x_i . x_j ~ 180000 > float16's 65504.
    rng = np.random.default_rng(5)
    x = (rng.integers(200, 300, (1, 2, 4, 4, 8)) / 2).astype("float32")
    layer = NonLocal3D(mode="gaussian", use_scale=False, dtype="mixed_float16",
                       chunk_size=5)
    layer.build(x.shape)
    weights = {}
    for name in ("g", "w_z"):
        sub = getattr(layer, name)
        kernel, bias = rng.normal(0, 0.01, sub.kernel.shape), rng.normal(0, 0.1, sub.bias.shape)
        sub.set_weights([kernel, bias])
        weights[name] = (kernel, bias)
    gamma, beta = rng.normal(1, 0.2, 8), rng.normal(0, 0.2, 8)
    mean, var = rng.normal(0, 0.2, 8), rng.uniform(0.5, 1.5, 8)
    layer.bn.set_weights([gamma, beta, mean, var])
    out = ops.convert_to_numpy(layer(x, training=False)).astype("float64")
    expected = ref.nonlocal_block(x, weights, "gaussian", (1, 2, 2), use_scale=False,
                                  bn=(gamma, beta, mean, var, layer.bn_epsilon))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, expected, rtol=2e-3)  # float16 output rounding


def test_attention_scores_take_the_plain_path():
    (plain, chunked), x = _pair(3, "embedded_gaussian")
    out, scores = chunked(x, training=False, return_attention_scores=True)
    plain_out, plain_scores = plain(x, training=False, return_attention_scores=True)
    assert tuple(scores.shape) == (2, 64, 16)
    np.testing.assert_array_equal(ops.convert_to_numpy(scores),
                                  ops.convert_to_numpy(plain_scores))
    _close(ops.convert_to_numpy(out), ops.convert_to_numpy(plain_out))


def test_auto_chunks_only_above_the_threshold(monkeypatch):
    calls = []
    original = nonlocal_math._chunked

    def spy(q, k, v, chunk, *args):
        calls.append(chunk)
        return original(q, k, v, chunk, *args)

    monkeypatch.setattr(nonlocal_math, "_chunked", spy)
    (plain, auto), x = _pair(3, "embedded_gaussian", chunk_size="auto")
    expected = ops.convert_to_numpy(plain(x, training=False))
    auto(x, training=False)
    assert calls == []  # 64 x 16 affinity: plain
    monkeypatch.setattr(nonlocal_math, "AUTO_MAX_AFFINITY", 64 * 16 - 1)
    monkeypatch.setattr(nonlocal_math, "AUTO_CHUNK_ELEMENTS", 16 * 10)
    _close(ops.convert_to_numpy(auto(x, training=False)), expected)
    assert calls == [10]


@pytest.mark.parametrize(
    "chunk_size,queries,keys,expected",
    [(None, 10**6, 10**5, None), ("auto", 1568, 392, None), ("auto", 100352, 25088, 668),
     (8, 64, 16, 8), (64, 64, 16, None), ("auto", None, 16, None)],
)
def test_resolve_chunk_size(chunk_size, queries, keys, expected):
    assert nonlocal_math.resolve_chunk_size(chunk_size, queries, keys) == expected


@pytest.mark.parametrize("value", (0, -4, 2.5, True, "fast", "8"))
def test_bad_chunk_size(value):
    with pytest.raises(ValueError, match=f"Received: chunk_size={value!r}"):
        NonLocal2D(chunk_size=value)


def test_chunk_size_in_config():
    layer = NonLocal3D(chunk_size=128)
    assert layer.get_config()["chunk_size"] == 128
    assert NonLocal3D.from_config(layer.get_config()).chunk_size == 128
    assert NonLocal1D().get_config()["chunk_size"] == "auto"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="XLA via tf.function")
def test_chunked_under_xla_equals_plain_eager():
    import tensorflow as tf

    (plain, chunked), x = _pair(3, "concatenation", affinity="space")
    cotangent = np.random.default_rng(2).normal(0, 1, x.shape).astype("float32")

    def loss_and_grads(layer, t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = tf.reduce_sum(layer(t, training=False) * cotangent)
        return [loss] + tape.gradient(loss, [t] + [w.value for w in layer.trainable_weights])

    compiled = tf.function(lambda t: loss_and_grads(chunked, t), jit_compile=True)
    for a, e in zip(compiled(tf.constant(x)), loss_and_grads(plain, tf.constant(x))):
        _close(a.numpy(), e.numpy())

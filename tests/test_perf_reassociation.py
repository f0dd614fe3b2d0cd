"""The reassociated order (see `nonlocal_math.reassociates`) and the pooling op.

Both orders are forced in turn and checked against the float64 NumPy
reference: outputs directly, gradients by central differences of the
reference along random directions. Speed is measured in benchmarks/.
"""

import keras
import numpy as np
import pytest
from keras import ops

import nonlocal_reference as ref
from nonlocal_keras import nonlocal_math
from nonlocal_keras.layers import NonLocal2D, NonLocal3D
from test_nonlocal_layers import RTOL, _case, _randomise, _residual_error
from test_perf_chunked import _close, _gradients, _pair, needs_autodiff

MODES = nonlocal_math.MODES


@pytest.fixture(params=(False, True), ids=("plain_order", "reassociated"))
def order(request, monkeypatch):
    forced = request.param
    monkeypatch.setattr(nonlocal_math, "reassociates", lambda *sizes: forced)
    return forced


def _cases():
    for mode in MODES:
        for rank in (1, 2, 3):
            yield rank, mode, "spacetime"
        for affinity in ("space", "time"):
            yield 3, mode, affinity


@pytest.mark.parametrize("rank,mode,affinity", list(_cases()))
def test_both_orders_match_float64_reference(order, rank, mode, affinity):
    layer, x, expected = _case(rank, mode, True, True, affinity=affinity)
    out = ops.convert_to_numpy(layer(x, training=False))
    assert _residual_error(out, expected, x) < RTOL


@pytest.mark.parametrize("mode", MODES)
def test_reassociated_and_chunked(monkeypatch, mode):
    monkeypatch.setattr(nonlocal_math, "reassociates", lambda *sizes: True)
    (_, chunked), x = _pair(3, mode, affinity="time", chunk_size=3)
    monkeypatch.setattr(nonlocal_math, "reassociates", lambda *sizes: False)
    (plain, _), _ = _pair(3, mode, affinity="time", chunk_size=3)
    expected = ops.convert_to_numpy(plain(x, training=False))
    monkeypatch.setattr(nonlocal_math, "reassociates", lambda *sizes: True)
    _close(ops.convert_to_numpy(chunked(x, training=False)), expected)


@needs_autodiff
@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_float64_central_differences(order, mode):
    # d/de L(w + e d) of the reference, L = sum(block(x) * cotangent), against
    # <dL/dw, d> from the layer, for x and every kernel and bias.
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (1, 4, 4, 6)).astype("float32")
    layer = NonLocal2D(mode=mode)
    layer.build(x.shape)
    weights, bn = _randomise(layer, rng)
    cotangent = rng.normal(0, 1, x.shape)
    grads = _gradients(layer, x, cotangent.astype("float32"))
    grad_x, grads = grads[0], dict(zip((w.path for w in layer.trainable_weights), grads[1:]))

    def loss(x, weights):
        return np.sum(ref.nonlocal_block(x, weights, mode, (2, 2), bn=bn) * cotangent)

    def directional(perturb, eps=1e-4):
        return (loss(*perturb(eps)) - loss(*perturb(-eps))) / (2 * eps)

    d = rng.normal(0, 1, x.shape)
    expected = directional(lambda e: (x + e * d, weights))
    np.testing.assert_allclose(np.sum(grad_x * d), expected, rtol=1e-3, atol=1e-4)
    for name, (kernel, bias) in ((n, w) for n, w in weights.items() if n != "w_f"):
        for index, tensor in enumerate((kernel, bias)):
            d = rng.normal(0, 1, tensor.shape)

            def perturb(e, name=name, index=index, d=d):
                pair = list(weights[name])
                pair[index] = pair[index] + e * d
                return x, {**weights, name: tuple(pair)}

            path = getattr(layer, name).weights[index].path
            np.testing.assert_allclose(np.sum(grads[path] * d), directional(perturb),
                                       rtol=1e-3, atol=1e-4, err_msg=path)


def test_auto_picks_the_cheaper_order(monkeypatch):
    # res4 of the paper (1568 queries, 392 keys, 1024 -> 512 channels): the
    # plain order does 1568*1024*512 + 1568*392*512 = 1,136,787,456
    # multiply-adds per end, the reassociated 392*512*1024 + 1568*392*1024 =
    # 834,928,640. res3 (6272 queries, 1568 keys, 512 -> 256): 2,881,486,848
    # plain against 5,240,782,848 reassociated.
    assert nonlocal_math.reassociates(1024, 512, 1568, 392, 1568 * 392)
    assert not nonlocal_math.reassociates(512, 256, 6272, 1568, 6272 * 1568)
    # res3 with the "space" affinity (8 groups): 1,229,312 entries, reassociated.
    assert nonlocal_math.reassociates(512, 256, 6272, 1568, 6272 * 1568 // 8)
    assert not nonlocal_math.reassociates(1024, 512, None, 392, None)

    seen = []
    original = nonlocal_math.reassociates
    monkeypatch.setattr(nonlocal_math, "reassociates",
                        lambda *sizes: seen.append(original(*sizes)) or seen[-1])
    # 16 channels, 4x4 positions pooled to 2x2: 16*16*8 + 64*8 = 2560 plain,
    # 4*8*16 + 64*16 = 1536 reassociated.
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, (2, 4, 4, 16)).astype("float32")
    layer = NonLocal2D()
    layer.build(x.shape)
    weights, bn = _randomise(layer, rng)
    out = ops.convert_to_numpy(layer(x, training=False))
    assert seen == [True]
    expected = ref.nonlocal_block(x, weights, "embedded_gaussian", (2, 2), bn=bn)
    assert _residual_error(out, expected, x) < RTOL


@pytest.mark.parametrize("policy,tolerance", [("mixed_float16", 2e-2), ("mixed_bfloat16", 5e-2)])
def test_reassociated_mixed_precision(monkeypatch, policy, tolerance):
    monkeypatch.setattr(nonlocal_math, "reassociates", lambda *sizes: True)
    layer, x, expected = _case(3, "embedded_gaussian", True, True)
    mixed = NonLocal3D(dtype=policy)
    mixed.build(x.shape)
    mixed.set_weights(layer.get_weights())
    out = mixed(x, training=False)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    assert _residual_error(ops.convert_to_numpy(out).astype("float64"), expected, x) < tolerance


@pytest.mark.parametrize("dtype", ("float32", "float16", "bfloat16"))
@pytest.mark.parametrize("pool", ((2,), (2, 2), (1, 2, 2), (2, 2, 2), (2, 1, 1), (3, 1, 2)))
def test_max_pool_every_dtype(dtype, pool):
    # Odd sizes: 'valid' pooling drops what does not fill a window.
    sizes = {1: (7,), 2: (5, 7), 3: (5, 5, 7)}[len(pool)]
    x = np.random.default_rng(9).normal(0, 4, (2, *sizes, 3)).astype("float32")
    # Values exact in bfloat16 (8 bits of mantissa) and float16, so the
    # reference pools the same numbers.
    x = np.round(x * 8) / 8
    out = nonlocal_math.max_pool(ops.cast(x, dtype), pool)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    np.testing.assert_array_equal(ops.convert_to_numpy(ops.cast(out, "float32")),
                                  ref.max_pool(x.astype("float64"), pool))


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "fma"}, True),                     # AVX2 only: Eigen's bfloat16 pooling
    ({"avx2", "avx512f", "avx512bw"}, False),    # oneDNN takes bfloat16
    ({"avx2", "avx_ne_convert"}, False),
])
def test_bfloat16_pools_in_float32_only_without_onednn_bfloat16(flags, expected):
    on_tf = keras.backend.backend() == "tensorflow"
    assert nonlocal_math.pools_in_float32("bfloat16", flags) is (expected and on_tf)
    assert nonlocal_math.pools_in_float32("float32", flags) is False
    assert nonlocal_math.pools_in_float32("float16", flags) is False


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the route is TensorFlow's")
@pytest.mark.parametrize("through_float32", (False, True))
@pytest.mark.parametrize("pool", ((1, 2, 2), (2, 2, 2), (2, 1, 1)))
def test_bfloat16_max_pool_gradient_either_route(monkeypatch, through_float32, pool):
    import tensorflow as tf

    monkeypatch.setattr(nonlocal_math, "pools_in_float32", lambda dtype, flags=None: (
        through_float32 and dtype == "bfloat16"))
    shape = (2, 4, 4, 6, 3)
    # Distinct values exact in bfloat16 (8 significant bits): one maximum per window.
    k = np.random.default_rng(3).permutation(np.prod(shape)).reshape(shape)
    x = np.where(k % 3, 1.0, -1.0) * (128.0 + k % 128) * 2.0 ** (k // 128 - 3)
    upstream = np.random.default_rng(4).integers(1, 5, (2, *[s // p for s, p in zip(
        shape[1:4], pool)], 3)).astype("float32")
    xb = tf.constant(x, tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(xb)
        out = nonlocal_math.max_pool(xb, pool)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
    grad = tape.gradient(loss, xb)
    assert out.dtype == tf.bfloat16 and grad.dtype == tf.bfloat16
    # Reference: each window's upstream value goes to its maximum.
    pt, ph, pw = pool
    windows = x.reshape(2, 4 // pt, pt, 4 // ph, ph, 6 // pw, pw, 3)
    peak = windows.max(axis=(2, 4, 6), keepdims=True)
    expected = (windows == peak) * upstream[:, :, None, :, None, :, None, :]
    np.testing.assert_array_equal(out.numpy().astype("float64"), peak.reshape(upstream.shape))
    np.testing.assert_array_equal(grad.numpy().astype("float64"), expected.reshape(shape))

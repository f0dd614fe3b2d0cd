"""The paths that cut the block's time outside its matrix products (issue 15).

`nonlocal_math.softmax_aggregate` (on TensorFlow, a custom gradient that
takes the softmax's row sums from the output when the values have fewer
channels than there are keys) is checked against the float64 NumPy gradient
of softmax-then-aggregate, written out with the textbook softmax Jacobian,
and so are `bfloat16_attention` (its bfloat16 backward) and `dense` (the
projections, whose bfloat16 bias gradient is summed in float32).
The bias of W_z riding on the values (reassociated order) and the transposed
products are covered by tests/test_perf_reassociation.py and
tests/test_nonlocal_masks.py, which force both orders against the float64
reference. Speed is measured in benchmarks/.
"""

import keras
import numpy as np
import pytest

from nonlocal_keras import nonlocal_math

needs_tensorflow = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                      reason="TensorFlow's custom gradient")


def _reference(logits, values, cotangent):
    """y = softmax(L) V and the gradients of sum(y * cotangent), float64."""
    logits, values, cotangent = (np.asarray(a, np.float64) for a in (logits, values, cotangent))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    a = e / e.sum(-1, keepdims=True)
    y = a @ values
    d_a = cotangent @ np.swapaxes(values, -1, -2)
    # Jacobian of the softmax: dL_ij = a_ij (dA_ij - sum_k a_ik dA_ik).
    d_logits = a * (d_a - np.sum(a * d_a, -1, keepdims=True))
    d_values = np.swapaxes(a, -1, -2) @ cotangent
    return y, d_logits, d_values


@needs_tensorflow
@pytest.mark.parametrize("amx", (False, True), ids=("", "amx"))
@pytest.mark.parametrize("channels", (3, 11), ids=("fewer_channels_than_keys", "more"))
@pytest.mark.parametrize("dtype,tolerance",
                         [("float32", 1e-5), ("bfloat16", 2e-2), ("float64", 1e-12)])
def test_softmax_aggregate_matches_float64_gradient(monkeypatch, amx, channels, dtype,
                                                    tolerance):
    """Also as on a CPU with AMX, where bfloat16's product that forms the
    affinity's gradient gets zero columns up to a multiple of 32."""
    import tensorflow as tf

    monkeypatch.setattr(nonlocal_math, "_amx", lambda: amx)

    rng = np.random.default_rng(3)
    # float64 logits under float64 (the block's affinity dtype there), else float32.
    logits = rng.normal(0, 2, (2, 13, 8)).astype(nonlocal_math.affinity_dtype(dtype))
    # The reference sees the values and cotangent as rounded to the dtype.
    values = tf.cast(rng.normal(0, 1, (2, 8, channels)), dtype)
    cotangent = tf.cast(rng.normal(0, 1, (2, 13, channels)), dtype)
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch([logits_t, values])
        y = nonlocal_math.softmax_aggregate(logits_t, values)
        loss = tf.reduce_sum(tf.cast(y * cotangent, logits.dtype))
    d_logits, d_values = tape.gradient(loss, [logits_t, values])
    assert y.dtype == values.dtype and d_values.dtype == values.dtype
    expected = _reference(logits, tf.cast(values, "float64").numpy(),
                          tf.cast(cotangent, "float64").numpy())
    for actual, want in zip((y, d_logits, d_values), expected):
        actual = tf.cast(actual, "float64").numpy()
        scale = max(np.abs(want).max(), 1.0)
        assert np.abs(actual - want).max() <= tolerance * scale


@needs_tensorflow
@pytest.mark.parametrize("amx", (False, True), ids=("", "amx"))
@pytest.mark.parametrize("channels", (3, 11), ids=("fewer_channels_than_keys", "more"))
def test_bfloat16_attention_matches_float64_gradient(monkeypatch, amx, channels):
    """`nonlocal_math.bfloat16_attention`: float32 logits of bfloat16 queries and
    float32 keys (not exact in bfloat16, as scaled keys are), the logits'
    gradient and its products in bfloat16."""
    import tensorflow as tf

    monkeypatch.setattr(nonlocal_math, "_amx", lambda: amx)
    rng = np.random.default_rng(6)
    queries = tf.cast(rng.normal(0, 1, (2, 13, 5)), "bfloat16")
    keys = tf.constant(rng.normal(0, 0.7, (2, 8, 5)), "float32")
    values = tf.cast(rng.normal(0, 1, (2, 8, channels)), "bfloat16")
    cotangent = tf.cast(rng.normal(0, 1, (2, 13, channels)), "bfloat16")
    with tf.GradientTape() as tape:
        tape.watch([queries, keys, values])
        y = nonlocal_math.bfloat16_attention(queries, keys, values)
        loss = tf.reduce_sum(tf.cast(y, "float32") * tf.cast(cotangent, "float32"))
    grads = tape.gradient(loss, [queries, keys, values])
    assert [g.dtype for g in grads] == [tf.bfloat16, tf.float32, tf.bfloat16]
    q64, k64, v64, c64 = (tf.cast(t, "float64").numpy()
                          for t in (queries, keys, values, cotangent))
    want_y, d_logits, d_values = _reference(q64 @ np.swapaxes(k64, -1, -2), v64, c64)
    expected = (want_y, d_logits @ k64, np.swapaxes(d_logits, -1, -2) @ q64, d_values)
    for actual, want in zip([y] + grads, expected):
        actual = tf.cast(actual, "float64").numpy()
        assert np.abs(actual - want).max() <= 2e-2 * max(np.abs(want).max(), 1.0)


@needs_tensorflow
@pytest.mark.parametrize("amx", (False, True), ids=("", "amx"))
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_dense_matches_float64_with_bias_gradient_over_many_rows(monkeypatch, amx, dtype,
                                                                 tolerance):
    """`nonlocal_math.dense` (the block's projections on TensorFlow), forward
    and gradients, against float64 on the same rounded numbers. 6272 rows (res3's
    queries): TensorFlow's bfloat16 `BiasAddGrad` sums them in bfloat16 and
    missed this bias gradient by far more than its size. Also as on a CPU with
    AMX (a batched product there)."""
    import tensorflow as tf

    monkeypatch.setattr(nonlocal_math, "_amx", lambda: amx)
    rng = np.random.default_rng(9)
    x, kernel, bias = (tf.cast(rng.normal(0, 1, shape), dtype)
                       for shape in ((2, 3136, 16), (16, 8), (8,)))
    # Mostly positive: the sums grow to thousands, where bfloat16's steps are 8-32.
    cotangent = tf.cast(rng.normal(1, 1, (2, 3136, 8)), dtype)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel, bias])
        out = nonlocal_math.dense(x, kernel, bias)
        loss = tf.reduce_sum(tf.cast(out, "float32") * tf.cast(cotangent, "float32"))
    grads = tape.gradient(loss, [x, kernel, bias])
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    x64, k64, b64, c64 = (tf.cast(t, "float64").numpy() for t in (x, kernel, bias, cotangent))
    rows, c_rows = x64.reshape(-1, 16), c64.reshape(-1, 8)
    expected = (x64 @ k64 + b64, c64 @ k64.T, rows.T @ c_rows, c_rows.sum(0))
    for actual, want in zip([out] + grads, expected):
        actual = tf.cast(actual, "float64").numpy()
        assert np.abs(actual - want).max() <= tolerance * np.abs(want).max()


@needs_tensorflow
def test_softmax_aggregate_float16_keeps_small_gradient_entries():
    """Under float16 the affinity's gradient is formed in float32: a weight of
    1e-6 times a gradient of 1e-2 is below float16's smallest subnormal and
    would be lost in a float16 product (bfloat16, with float32's range, takes
    that product and loses precision only)."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    # One dominant key per row: the other weights lie between ~1e-7 and 1e-3.
    logits = rng.uniform(-8, -2, (1, 6, 16)).astype("float32")
    logits[..., 0] = 6.0
    values = tf.cast(rng.normal(0, 1, (1, 16, 4)), "float16")
    cotangent = tf.cast(rng.normal(0, 1e-2, (1, 6, 4)), "float16")
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits_t)
        y = nonlocal_math.softmax_aggregate(logits_t, values)
        loss = tf.reduce_sum(tf.cast(y * cotangent, "float32"))
    d_logits = tape.gradient(loss, logits_t).numpy().astype("float64")
    v64, c64 = (tf.cast(t, "float64").numpy() for t in (values, cotangent))
    _, want, _ = _reference(logits, v64, c64)
    # Error allowed: float16 rounding (2**-11) of both terms of dA_ij - s_i,
    # a few times over, scaled by the float32 weight.
    e = np.exp(logits - logits.max(-1, keepdims=True))
    a = e / e.sum(-1, keepdims=True)
    d_a = c64 @ np.swapaxes(v64, -1, -2)
    s = np.sum(a * d_a, -1, keepdims=True)
    bound = 4 * 2.0**-11 * a * (np.abs(d_a) + np.abs(s))
    assert np.all(np.abs(d_logits - want) <= bound + 1e-12)


def test_softmax_aggregate_forward_on_every_backend():
    from keras import ops

    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (1, 9, 6)).astype("float32")
    values = rng.normal(0, 1, (1, 6, 2)).astype("float32")
    y = ops.convert_to_numpy(nonlocal_math.softmax_aggregate(
        ops.convert_to_tensor(logits), ops.convert_to_tensor(values)))
    want = _reference(logits, values, np.zeros((1, 9, 2)))[0]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)

"""The paths that cut the block's time outside its matrix products (issue 15).

`nonlocal_math.softmax_aggregate` (on TensorFlow, a custom gradient that
takes the softmax's row sums from the output when the values have fewer
channels than there are keys) is checked against the float64 NumPy gradient
of softmax-then-aggregate, written out with the textbook softmax Jacobian.
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
@pytest.mark.parametrize("channels", (3, 11), ids=("fewer_channels_than_keys", "more"))
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_softmax_aggregate_matches_float64_gradient(channels, dtype, tolerance):
    import tensorflow as tf

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (2, 13, 8)).astype("float32")
    # The reference sees the values and cotangent as rounded to the dtype.
    values = tf.cast(rng.normal(0, 1, (2, 8, channels)), dtype)
    cotangent = tf.cast(rng.normal(0, 1, (2, 13, channels)), dtype)
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch([logits_t, values])
        y = nonlocal_math.softmax_aggregate(logits_t, values)
        loss = tf.reduce_sum(tf.cast(y * cotangent, "float32"))
    d_logits, d_values = tape.gradient(loss, [logits_t, values])
    assert y.dtype == values.dtype and d_values.dtype == values.dtype
    expected = _reference(logits, tf.cast(values, "float64").numpy(),
                          tf.cast(cotangent, "float64").numpy())
    for actual, want in zip((y, d_logits, d_values), expected):
        actual = tf.cast(actual, "float64").numpy()
        scale = max(np.abs(want).max(), 1.0)
        assert np.abs(actual - want).max() <= tolerance * scale


def test_softmax_aggregate_forward_on_every_backend():
    from keras import ops

    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (1, 9, 6)).astype("float32")
    values = rng.normal(0, 1, (1, 6, 2)).astype("float32")
    y = ops.convert_to_numpy(nonlocal_math.softmax_aggregate(
        ops.convert_to_tensor(logits), ops.convert_to_tensor(values)))
    want = _reference(logits, values, np.zeros((1, 9, 2)))[0]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)

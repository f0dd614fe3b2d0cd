"""benchmarks/worker.py's `matmuls_only` reference: what issue 15's block overhead is judged against."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import worker  # noqa: E402


@pytest.mark.parametrize("precision,tolerance", [("float32", 1e-4), ("mixed_bfloat16", 3e-2)])
@pytest.mark.parametrize("shape", ["res4", "res3"])  # reassociated ends / plain order
def test_matmuls_step_computes_the_forward_and_every_gradient(shape, precision, tolerance):
    """The reference must do every product the block does: its loss (the sum of
    the forward's output, which grappler would drop if nothing used it) and its
    gradients against float64 NumPy in the plain order (under mixed_bfloat16
    within bfloat16's rounding: the logits' gradient has products of its own)."""
    import tensorflow as tf

    train, inputs = worker.matmuls_step({"shape": shape, "precision": precision})
    loss, grads = train(*inputs)
    x, pooled, w_theta, w_phi, w_g, w_z = (tf.cast(t, "float64").numpy() for t in inputs)
    keys, values = pooled @ w_phi, pooled @ w_g
    logits = (x @ w_theta) @ keys.T
    out = logits @ values @ w_z
    scale = np.sqrt(np.sum(out**2))  # the size of a sum of out's rounding errors
    np.testing.assert_allclose(float(loss), out.sum(), atol=tolerance * scale)
    d_out = np.ones_like(out)
    d_logits = d_out @ (values @ w_z).T
    expected = {"x": d_logits @ (w_theta @ keys.T).T,
                "w_z": (logits @ values).T @ d_out,
                "w_theta": x.T @ (d_logits @ keys)}
    for name, index in (("x", 0), ("w_theta", 2), ("w_z", 5)):
        got = tf.cast(grads[index], "float64").numpy()
        np.testing.assert_allclose(got, expected[name],
                                   atol=tolerance * np.abs(expected[name]).max(), err_msg=name)

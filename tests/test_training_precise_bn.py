"""The official COMPUTE_PRECISE_BN: BatchNorm statistics recomputed over training batches."""

import json
import subprocess
import sys

import numpy as np
import pytest

import nonlocal_reference
from test_training_train import _env

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
replicas = int(sys.argv[1])
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
import keras
from nonlocal_keras.layers import NonLocal2D
from nonlocal_keras.layers.fused_batch_normalization import FusedBatchNormalization
from nonlocal_keras.training import precise_bn

strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
rng = np.random.default_rng(0)
# Three batches of four 4x4x6 maps, each batch off by its own amount: the
# variance of the batch means is part of the variance sought.
x = np.concatenate([rng.normal(size=(4, 4, 4, 6)) + 1.5 * b for b in range(3)]).astype("float32")
with strategy.scope():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4, 4, 6))
    bn = FusedBatchNormalization(beta_initializer="random_normal",
                                 gamma_initializer="random_uniform")
    block = NonLocal2D(inter_channels=4, bias_initializer="random_normal")
    model = keras.Model(inputs, block(bn(inputs)))
averaged = precise_bn.recompute_statistics(
    model, tf.data.Dataset.from_tensor_slices((x, np.zeros(12))).batch(4), 3, strategy)
print(json.dumps({
    "averaged": averaged, "x": x.tolist(),
    "gamma": bn.gamma.numpy().tolist(), "beta": bn.beta.numpy().tolist(),
    "weights": {name: [w.numpy().tolist() for w in getattr(block, name).weights]
                for name in ("theta", "phi", "g", "w_z")},
    "stats": [[v.numpy().tolist() for v in (layer.moving_mean, layer.moving_variance)]
              for layer in (bn, block.bn)]}))
"""


def _expected(report, replicas):
    """The statistics of each BatchNorm's input over the replicas' batches, in
    float64: a batch goes through the first BatchNorm normalised with its own
    statistics (training), then through the block (the float64 reference)."""
    x = np.asarray(report["x"])
    gamma, beta = np.asarray(report["gamma"]), np.asarray(report["beta"])
    weights = {name: [np.asarray(w) for w in value] for name, value in report["weights"].items()}
    moments = ([], [])
    for batch in np.split(x, 3 * replicas):
        mean, variance = batch.mean(axis=(0, 1, 2)), batch.var(axis=(0, 1, 2))
        normalised = gamma * (batch - mean) / np.sqrt(variance + 1e-3) + beta
        z = nonlocal_reference.nonlocal_block(normalised, weights, "embedded_gaussian", (2, 2))
        z -= normalised  # the block's W_z y, before its BatchNorm
        for found, values in zip(moments, (batch, z)):
            found.append((values.mean(axis=(0, 1, 2)), values.var(axis=(0, 1, 2))))
    expected = []
    for found in moments:
        means, variances = (np.stack(v) for v in zip(*found))
        # E[x**2] - E[x]**2 over the batches: their variances and their means' spread.
        expected.append((means.mean(axis=0), variances.mean(axis=0) + means.var(axis=0)))
    return expected


@pytest.mark.parametrize("replicas", [1, 2])
def test_statistics_are_those_of_the_batches_as_training_sees_them(replicas):
    """Each BatchNorm (the non-local block's own included) gets the mean of its
    input's batch means and the variance E[x**2] - E[x]**2 over the batches,
    each batch normalised upstream with its own statistics, as in training;
    on two replicas each replica's half batch is one batch, as each GPU's was."""
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(replicas)], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["averaged"] == 3 * replicas
    for (mean, variance), (expected_mean, expected_variance) in zip(
            report["stats"], _expected(report, replicas)):
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(variance, expected_variance, rtol=1e-4, atol=1e-5)
    # Not the average of the batch variances alone: the batches' offsets count.
    x = np.asarray(report["x"])
    np.testing.assert_allclose(report["stats"][0][1], x.var(axis=(0, 1, 2)), rtol=1e-4)


def test_nothing_to_do_without_steps_or_batch_norms():
    import keras
    import tensorflow as tf

    from nonlocal_keras.training import precise_bn

    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    batches = tf.data.Dataset.from_tensor_slices((np.ones((4, 3), "float32"), np.zeros(4))).batch(2)
    assert precise_bn.recompute_statistics(dense, batches, 2) == 0
    normed = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    assert precise_bn.recompute_statistics(normed, batches, 0) == 0
    np.testing.assert_array_equal(normed.layers[0].moving_variance.numpy(), 1.0)
    # After a pass the layer calls its class's own `call` again (not the recording one).
    assert precise_bn.recompute_statistics(normed, batches, 1) == 1
    assert "call" not in vars(normed.layers[0])
    np.testing.assert_array_equal(normed.layers[0].moving_variance.numpy(), 0.0)

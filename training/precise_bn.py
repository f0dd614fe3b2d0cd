"""BatchNorm statistics recomputed over training batches once training ends.

The official code's `COMPUTE_PRECISE_BN` (`lib/utils/bn_helper.py`, on in its
Kinetics configs, `ITER_COMPUTE_PRECISE_BN: 200`): before the model is saved
and tested, `ITER_COMPUTE_PRECISE_BN` training batches go forward on every
GPU as in training (BatchNorm normalising with each batch's statistics, no
update of the weights); each BatchNorm's moving mean becomes the average of
the batch means, and its moving variance `E[x**2] - E[x]**2` over the same
batches (the average of the batch variances plus the variance of the batch
means), in place of the exponential moving averages of training.
"""

import contextlib
import logging

import keras
import numpy as np
import tensorflow as tf

from nonlocal_keras.training import runtime

logger = logging.getLogger(__name__)


def recompute_statistics(model, dataset, steps, strategy=None):
    """Sets the moving mean and variance of every trainable BatchNorm of `model`
    (but those with `frozen_statistics`: fixed affine maps, `affine_bn`) from
    `steps` batches of `dataset` (`(clips, labels)` batches of the training
    input: global batches, split over the replicas as `fit` splits them, or a
    distributed dataset); each replica's batch counts as one batch, as each
    GPU's did in the official code. Every worker of a cluster calls it (the sums
    are all-reduced). Returns the number of batches averaged (0: none to set)."""
    strategy = strategy or tf.distribute.get_strategy()
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
              and not getattr(layer, "frozen_statistics", False)]
    if not layers or not steps:
        return 0
    if isinstance(dataset, tf.data.Dataset):
        dataset = strategy.experimental_distribute_dataset(dataset)
    batches = iter(dataset)
    channels = [int(layer.moving_mean.shape[0]) for layer in layers]
    # Per layer, float64: batches, sums of the means, the squared means, the variances.
    sums = [np.zeros(1 + 3 * c) for c in channels]
    with _recording(layers) as recorded:

        def replica_moments(clips):
            model(clips, training=True)
            return recorded.pop(id(tf.distribute.get_replica_context()))

        @tf.function(autograph=False)  # graph code: AutoGraph's conversion only costs time
        def step(clips):
            return strategy.run(replica_moments, args=(clips,))

        for _ in range(steps):
            clips, _ = next(batches)
            for replica in strategy.experimental_local_results(step(clips)):
                for index, (mean, variance) in replica.items():
                    mean, variance = (np.asarray(v, np.float64) for v in (mean, variance))
                    sums[index] += np.concatenate([[1.0], mean, mean**2, variance])
    sums = np.split(runtime.sum_over_workers(strategy, np.concatenate(sums)),
                    np.cumsum([len(s) for s in sums])[:-1])
    for layer, (count, *moments) in zip(layers, sums):
        if not count:
            continue  # not called by the model's forward pass
        mean, square, variance = np.split(np.asarray(moments) / count, 3)
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        spread = np.maximum(square - mean**2, 0.0)  # the variance of the batch means
        layer.moving_variance.assign((variance + spread).astype(layer.moving_variance.dtype))
    return int(max(s[0] for s in sums))


@contextlib.contextmanager
def _recording(layers):
    """While it is open, each call of a layer of `layers` (traced in a
    replica's context) records its input's batch moments:
    `recorded[id(replica context)][i]` is `(mean, variance)` of `layers[i]`
    (a layer called twice keeps its last call)."""
    recorded = {}

    def recording(index, layer, call):
        def recording_call(inputs, training=None, mask=None):
            moments = recorded.setdefault(id(tf.distribute.get_replica_context()), {})
            moments[index] = _moments(inputs, layer.axis, mask)
            return call(inputs, training=training, mask=mask)
        return recording_call

    for index, layer in enumerate(layers):
        layer.call = recording(index, layer, layer.call)
    try:
        yield recorded
    finally:
        for layer in layers:
            del layer.call  # the class's own again


def _moments(inputs, axis, mask):
    """Mean and biased variance of `inputs` over every axis but `axis`, in
    float32, over the positions `mask` keeps (as the layer's own statistics)."""
    x = tf.cast(inputs, tf.float32)
    axis = axis % len(x.shape)
    axes = [a for a in range(len(x.shape)) if a != axis]
    if mask is None:
        return tf.nn.moments(x, axes)
    weights = tf.expand_dims(tf.cast(mask, tf.float32), axis)
    return tf.nn.weighted_moments(x, axes, weights)

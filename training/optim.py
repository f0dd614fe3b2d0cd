"""The paper's optimiser: SGD + momentum with L2 on weights, and a step schedule.

Caffe2's weight decay (the official code) adds `weight_decay * w` to the
gradient of every parameter before the momentum update: an L2 penalty, not the
decoupled decay of `keras.optimizers.SGD(weight_decay=...)`. The official
`add_parameter_update_ops` decays every parameter but the BatchNorm ones (names
with `_bn`, `WEIGHT_DECAY_BN: 0`): kernels and biases (those of the non-local
blocks' projections and of the classifier). Here: every variable but the
normalisation layers' `gamma` and `beta`. Until 2026-12-05 biases were left out.
"""

import keras
import tensorflow as tf
from keras import ops


NOT_DECAYED = ("gamma", "beta")  # the variables of Keras' normalisation layers


def is_decayed(variable):
    """Kernels and biases get L2; BatchNorm's gamma and beta do not."""
    return variable.name not in NOT_DECAYED


@keras.saving.register_keras_serializable(package="nonlocal_keras")
class SGDWithL2(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose gradients get `l2 * w` added (`is_decayed`).

    With momentum on TensorFlow, each variable's update is one fused kernel
    (`ResourceApplyKerasMomentum`) computing Keras' rule.

    Args:
        l2: the coefficient (paper: 1e-4); the penalty is `l2 / 2 * ||w||^2`.
        scale_momentum: the official `SOLVER.SCALE_MOMENTUM`: where a learning
            rate schedule changes the rate, the momentum (which holds past
            `rate * gradient` sums) is multiplied by new / old rate first, so
            that the history follows the new rate instead of decaying at the old one.
        **kwargs: passed to `keras.optimizers.SGD` (`learning_rate`,
            `momentum`, `nesterov`, ...).
    """

    def __init__(self, l2=1e-4, scale_momentum=False, **kwargs):
        if l2 < 0:
            raise ValueError(f"`l2` must be >= 0. Received: l2={l2}")
        super().__init__(**kwargs)
        self.l2 = l2
        self.scale_momentum = bool(scale_momentum)
        self._rate_change = None  # set each step by _backend_update_step

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Once a step, not in each variable's update_step: the schedule twice for
        # every variable doubled the optimizer's time (160 variables, 0.9 -> 2 ms).
        self._rate_change = self._rate_change_at(learning_rate)
        return super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _rate_change_at(self, learning_rate):
        """new / old learning rate at this step (`learning_rate` its rate), or None
        where nothing is scaled."""
        schedule = self._learning_rate
        if not (self.scale_momentum and self.momentum
                and isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)):
            return None
        before = schedule(ops.maximum(self.iterations - 1, 0))
        return ops.where(before > 0, learning_rate / before, ops.ones_like(before))

    def _follow_rate(self, velocity):
        change = self._rate_change
        if change is None:
            return
        if keras.backend.backend() != "tensorflow":
            self.assign(velocity, velocity * ops.cast(change, velocity.dtype))
            return
        handle = velocity.value

        def scaled():
            handle.assign(handle * tf.cast(change, handle.dtype))
            return tf.constant(True)

        # Most steps keep the rate: no pass over the variable then.
        tf.cond(tf.not_equal(change, 1.0), scaled, lambda: tf.constant(False))

    def apply(self, grads, trainable_variables=None):
        variables = trainable_variables if trainable_variables is not None else self._trainable_variables
        if self.l2:
            # Under a tf.distribute strategy the per-replica gradients are
            # summed; the data loss is already divided by the replica count,
            # so the penalty must be too, or it would count once per replica.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            coefficient = self.l2 / replicas
            grads = [
                g + ops.cast(coefficient, g.dtype) * ops.cast(v, g.dtype)
                if g is not None and is_decayed(v) else g
                for g, v in zip(grads, variables)
            ]
        return super().apply(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        # Keras' update is five elementwise passes over each variable; on
        # TensorFlow one fused kernel computes the same rule (`m = momentum * m
        # - lr * g`, `w += m`, or Nesterov's `w += momentum * m - lr * g`).
        if self.momentum:
            self._follow_rate(self.momentums[self._get_variable_index(variable)])
        if (keras.backend.backend() != "tensorflow" or not self.momentum
                or isinstance(gradient, tf.IndexedSlices)):
            return super().update_step(gradient, variable, learning_rate)
        velocity = self.momentums[self._get_variable_index(variable)]
        variable = variable.value if isinstance(variable, keras.Variable) else variable
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=velocity.value.handle,
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2, scale_momentum=self.scale_momentum)
        return config


@keras.saving.register_keras_serializable(package="nonlocal_keras")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant learning rate with an optional linear warm-up.

    The rate is `learning_rate * decay ** k` after the k-th boundary, the
    boundaries being fractions of `total_steps` (paper: /10 at 150k and 300k
    of 400k iterations, i.e. 0.375 and 0.75), so the same schedule fits any
    run length. During the first `warmup_steps` it rises linearly from
    `learning_rate / warmup_steps` to `learning_rate`.
    """

    def __init__(self, learning_rate, total_steps, boundaries=(0.375, 0.75), decay=0.1,
                 warmup_steps=0):
        if total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1. Received: total_steps={total_steps}")
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.boundaries = [float(b) for b in boundaries]
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)

    def boundary_steps(self):
        return [int(round(b * self.total_steps)) for b in self.boundaries]

    def __call__(self, step):
        step = ops.cast(step, "float32")
        passed = sum(ops.cast(step >= s, "float32") for s in self.boundary_steps())
        rate = self.learning_rate * ops.power(self.decay, passed)
        if self.warmup_steps > 0:
            rate = rate * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "boundaries": self.boundaries,
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
        }

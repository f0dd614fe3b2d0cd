"""SGD with L2 on all but BatchNorm parameters, and the step schedule, against hand-written updates."""

import keras
import numpy as np
import pytest

from nonlocal_keras.training import optim


def test_l2_is_added_to_every_gradient_but_batchnorms():
    """As the official add_parameter_update_ops: every parameter but the `_bn`
    ones (WEIGHT_DECAY_BN 0), biases included."""
    kernel = keras.Variable(np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), name="kernel")
    bias = keras.Variable(np.array([4.0, -1.0], np.float32), name="bias")
    bn = keras.layers.BatchNormalization()
    bn.build((None, 2))
    gamma, beta = bn.gamma, bn.beta
    gamma.assign([2.0, 3.0])
    beta.assign([1.0, -1.0])
    grads = [np.array([[0.1, 0.2], [0.3, 0.4]], np.float32), np.array([0.5, 0.5], np.float32),
             np.array([0.2, 0.1], np.float32), np.array([0.3, 0.6], np.float32)]
    optimizer = optim.SGDWithL2(l2=0.1, learning_rate=0.5, momentum=0.9)
    k0, b0, g0, beta0 = (v.numpy().copy() for v in (kernel, bias, gamma, beta))
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], [kernel, bias, gamma, beta])
    # momentum buffers start at 0: first step is -lr * (g + l2 * w), BN's without l2.
    np.testing.assert_allclose(kernel.numpy(), k0 - 0.5 * (grads[0] + 0.1 * k0), rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), b0 - 0.5 * (grads[1] + 0.1 * b0), rtol=1e-6)
    np.testing.assert_allclose(gamma.numpy(), g0 - 0.5 * grads[2], rtol=1e-6)
    np.testing.assert_allclose(beta.numpy(), beta0 - 0.5 * grads[3], rtol=1e-6)
    # Second step: velocity v = 0.9 v - lr * g_total.
    k1 = kernel.numpy().copy()
    v1 = -0.5 * (grads[0] + 0.1 * k0)
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], [kernel, bias, gamma, beta])
    v2 = 0.9 * v1 - 0.5 * (grads[0] + 0.1 * k1)
    np.testing.assert_allclose(kernel.numpy(), k1 + v2, rtol=1e-5)


def test_optimizer_round_trips_through_config():
    optimizer = optim.SGDWithL2(l2=3e-4, learning_rate=0.2, momentum=0.9)
    clone = optim.SGDWithL2.from_config(optimizer.get_config())
    assert clone.l2 == 3e-4 and float(clone.momentum) == 0.9
    with pytest.raises(ValueError, match="l2=-1"):
        optim.SGDWithL2(l2=-1)


def test_step_schedule_scales_the_paper_boundaries_to_the_run():
    schedule = optim.StepDecay(0.01, total_steps=400, boundaries=(0.375, 0.75), decay=0.1)
    values = {s: float(schedule(s)) for s in (0, 149, 150, 299, 300, 399)}
    expected = {0: 0.01, 149: 0.01, 150: 0.001, 299: 0.001, 300: 0.0001, 399: 0.0001}
    for step, value in expected.items():
        assert values[step] == pytest.approx(value, rel=1e-5)


def test_linear_warmup():
    schedule = optim.StepDecay(0.1, total_steps=100, boundaries=(0.5,), warmup_steps=10)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(4)) == pytest.approx(0.05)
    assert float(schedule(9)) == pytest.approx(0.1)
    assert float(schedule(60)) == pytest.approx(0.01)
    assert optim.StepDecay.from_config(schedule.get_config()).boundary_steps() == [50]


def _float64_sgd(w, grads, learning_rate, momentum, nesterov, l2=0.0):
    """The SGD rule Keras and the paper use, step by step in float64."""
    w, velocity = w.astype(np.float64), np.zeros(w.shape)
    for g in grads:
        g = g + l2 * w
        velocity = momentum * velocity - learning_rate * g
        w = w + (momentum * velocity - learning_rate * g if nesterov else velocity)
    return w


@pytest.mark.parametrize("momentum, nesterov, l2", [(0.9, False, 0.0), (0.9, True, 0.0),
                                                     (0.9, False, 1e-2), (0.0, False, 0.0)])
def test_traced_update_follows_the_rule_in_float64(momentum, nesterov, l2):
    import tensorflow as tf

    rng = np.random.default_rng(7)
    w0 = rng.normal(size=(3, 5)).astype(np.float32)
    grads = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(4)]
    variable = keras.Variable(w0)
    optimizer = optim.SGDWithL2(l2=l2, learning_rate=0.1, momentum=momentum, nesterov=nesterov)
    optimizer.build([variable])
    step = tf.function(lambda g: optimizer.apply([g], [variable]))  # as model.fit runs it
    for g in grads:
        step(tf.constant(g))
    expected = _float64_sgd(w0, grads, 0.1, momentum, nesterov, l2)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_momentum_update_is_one_fused_kernel_per_variable():
    """Keras' SGD is five elementwise ops per variable (2.2% of a C2D R50 step)."""
    import tensorflow as tf

    variables = [keras.Variable(np.ones((4, 3), np.float32)),
                 keras.Variable(np.ones((3,), np.float32))]
    optimizer = optim.SGDWithL2(l2=1e-4, learning_rate=0.1, momentum=0.9)
    optimizer.build(variables)
    grads = [tf.ones((4, 3)), tf.ones((3,))]
    graph = tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function().graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("ResourceApplyKerasMomentum") == 2, types
    assert "AssignAddVariableOp" not in types, types


@pytest.mark.parametrize("nesterov", [False, True])
def test_scale_momentum_follows_the_rate_changes_in_float64(nesterov):
    """The official SCALE_MOMENTUM: where the rate changes (warm-up, the drops),
    the momentum is multiplied by new / old rate before the step."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(12)]
    schedule = optim.StepDecay(0.1, total_steps=12, boundaries=(0.5, 0.75), decay=0.1,
                               warmup_steps=3)
    rates = [float(schedule(step)) for step in range(12)]
    assert len(set(rates)) == 5  # 3 warm-up rates, then two drops
    variable = keras.Variable(w0)
    optimizer = optim.SGDWithL2(l2=0.0, learning_rate=schedule, momentum=0.9, nesterov=nesterov,
                                scale_momentum=True)
    optimizer.build([variable])
    step = tf.function(lambda g: optimizer.apply([g], [variable]))
    for g in grads:
        step(tf.constant(g))
    w, velocity = w0.astype(np.float64), np.zeros(w0.shape)
    for t, g in enumerate(grads):
        if t:
            velocity *= rates[t] / rates[t - 1]
        velocity = 0.9 * velocity - rates[t] * g
        w = w + (0.9 * velocity - rates[t] * g if nesterov else velocity)
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5, atol=1e-6)
    unscaled = keras.Variable(w0)
    plain = optim.SGDWithL2(l2=0.0, learning_rate=schedule, momentum=0.9, nesterov=nesterov)
    plain.build([unscaled])
    for g in grads:
        tf.function(lambda g: plain.apply([g], [unscaled]))(tf.constant(g))
    assert not np.allclose(unscaled.numpy(), variable.numpy(), rtol=1e-4)
    assert optim.SGDWithL2.from_config(optimizer.get_config()).scale_momentum

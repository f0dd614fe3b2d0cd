"""Small tools: counting a model's multiply-adds, argument and size checks, telling
a storage refusal (a full disk) from a bug."""

import errno
import math
import numbers
import os
import re

import numpy as np

# Convolutions and matrix products: their multiply-adds are the product of the
# output's size and the length of the contracted axis (or kernel window).
# Elementwise ops (BN, ReLU, additions), pooling and softmax are left out, as
# fvcore and the paper's tables do.
_CONVOLUTIONS = ("Conv2D", "Conv3D")
_MATRIX_PRODUCTS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


# The storage refused the write: the user's disk, quota or permissions, not a bug.
REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def refused_errno(error):
    """The errno of `error` (or of an error it was raised while handling) when
    it is one of `REFUSED`, else None. Not every writer raises an `OSError`:
    h5py turns a failed write that HDF5 had buffered until the file's close into
    a `RuntimeError` whose message holds the errno ("... errno = 28, error
    message = 'No space left on device' ..."), TensorFlow's savers raise a
    `ResourceExhaustedError` ending "; No space left on device"."""
    while error is not None:
        code = getattr(error, "errno", None)
        if code is None:
            found = re.search(r"\berrno = (\d+)", str(error))
            code = int(found.group(1)) if found else None
        if code is None:
            code = next((c for c in REFUSED if os.strerror(c) in str(error)), None)
        if code in REFUSED:
            return code
        error = error.__context__
    return None


def is_positive_int(value):
    """True for an integer >= 1 (NumPy's too); False for bools, floats, None."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and value >= 1)


def is_real(value):
    """True for a real number (NumPy's too); False for bools, strings, None."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_decimal(text):
    """Whether `text` is ASCII digits only, which `int` reads (`str.isdigit` also
    takes '²', which `int` refuses)."""
    return text.isascii() and text.isdigit()


def checked_choice(name, value, choices):
    """`value`, or a ValueError naming `name` and listing `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}. "
                         f"Received: {name}={value!r}")
    return value


def checked_bool(name, value):
    """`value` as a bool, or a ValueError naming `name`: `bool("False")` is True,
    so a string (or None) where a flag goes is a mistake, not a truth value."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def checked_momentum(name, value):
    """`value`, a BatchNorm momentum in [0, 1), or a ValueError naming `name`."""
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")
    return float(value)


def checked_epsilon(name, value):
    """`value`, a BatchNorm epsilon, or a ValueError naming `name`: the
    normalisation divides by sqrt(variance + epsilon), NaN for a negative one."""
    if not is_real(value) or not 0 < value < math.inf:
        raise ValueError(f"`{name}` must be a finite number > 0 (the output is NaN for a "
                         f"negative one). Received: {name}={value!r}")
    return float(value)


def checked_get(module, name, value, default=None):
    """`module.get(value)`, `value` None meaning `default`, or a ValueError naming
    `name`. `module` is Keras' or tf_keras' `initializers` or `regularizers`:
    Keras' own error names no argument, and tf_keras keeps an unknown
    regularizer's name as it is (a string where an object goes)."""
    given = default if value is None else value
    try:
        got = module.get(given)
    except (ValueError, TypeError):
        got = None
    if given is not None and (got is None or isinstance(got, str)):
        library, kind = module.__name__.split(".")[0], module.__name__.rsplit(".", 1)[-1][:-1]
        raise ValueError(f"`{name}` must be a {library} {kind}, its name or config, a function, "
                         f"or None. Received: {name}={value!r}")
    return got


def checked_sizes(x, rules, input_shape):
    """`x` after checking the sizes of some of its axes; ValueError or assertion.

    `rules` holds `(axis, requirement, value, message)`: the size of `x` on
    `axis` must be at least `value` (`"at_least"`) or a multiple of it
    (`"multiple"`); `message` must not name the size, so that the static and
    the run-time checks say the same words. A size known when tracing (eager,
    JAX, PyTorch, and TensorFlow graphs of known shape) fails with
    `ValueError(message + " Received: input_shape=...")`. A size known only
    when a TensorFlow graph runs gets an assertion with the same words, which
    the returned `x` depends on, so that it fires before the ops that would
    crash (oneDNN pooling refuses a window larger than the map). XLA drops
    assertions: a jit-compiled graph traced with unknown sizes is unchecked.
    """
    def fails(size, requirement, value):
        return size < value if requirement == "at_least" else size % value != 0

    dynamic = []
    for axis, requirement, value, message in rules:
        size = x.shape[axis]
        if size is None:
            dynamic.append((axis, requirement, value, message))
        elif fails(size, requirement, value):
            raise ValueError(f"{message} Received: input_shape={tuple(input_shape)}")
    import keras

    if not dynamic or keras.backend.backend() != "tensorflow" or isinstance(x, keras.KerasTensor):
        return x
    import tensorflow as tf

    shape = tf.shape(x)
    # `summarize`: the whole shape (TensorFlow prints 3 numbers, then "...").
    checks = [tf.debugging.Assert(tf.logical_not(fails(shape[axis], requirement, value)),
                                  [message, "Received: input_shape=", shape], summarize=len(x.shape))
              for axis, requirement, value, message in dynamic]
    with tf.control_dependencies(checks):
        return tf.identity(x)


def count_flops(model, input_shape=None, batch_size=1):
    """Multiply-adds of one inference pass of a Keras model (TensorFlow backend).

    The model is traced into a TensorFlow graph at a fixed input shape and
    every convolution and matrix product in it (including the ones inside
    non-local blocks and Dense layers) is counted from its static shapes.
    The unit is the multiply-add, the paper's and fvcore's ("GFLOPs" there
    means G multiply-adds); TensorFlow's profiler reports twice as many
    "FLOPs" for the same ops.

    Args:
        model: a `keras.Model` with one input.
        input_shape: the input shape without the batch axis; default the
            model's own, which must then be fully known.
        batch_size: clips per pass.

    Returns:
        The number of multiply-adds, an int.
    """
    import tensorflow as tf

    shape = tuple(input_shape) if input_shape is not None else tuple(model.input_shape[1:])
    if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError("`input_shape` must be fully known (pass it when the model's input "
                         f"has None axes). Received: input_shape={shape!r}")
    if not is_positive_int(batch_size):
        raise ValueError("`batch_size` must be a positive integer. "
                         f"Received: batch_size={batch_size!r}")

    @tf.autograph.experimental.do_not_convert
    def forward(x):
        return model(x, training=False)

    graph = tf.function(forward).get_concrete_function(
        tf.TensorSpec((batch_size,) + shape, model.inputs[0].dtype)).graph
    return sum(_multiply_adds(op) for op in graph.get_operations())


def _multiply_adds(op):
    if op.type in _CONVOLUTIONS:
        window = op.inputs[1].shape.as_list()[:-1]  # (*kernel, C_in) of (*kernel, C_in, C_out)
        return _size(op.outputs[0]) * math.prod(window)
    if op.type in _MATRIX_PRODUCTS:
        left = op.inputs[0].shape.as_list()
        transposed = any(op.get_attr(attr) for attr in ("transpose_a", "adj_x")
                         if attr in op.node_def.attr)
        return _size(op.outputs[0]) * (left[-2] if transposed else left[-1])
    if op.type == "Einsum":
        return _size(op.outputs[0]) * _einsum_contracted_size(op)
    return 0


def _einsum_contracted_size(op):
    """Product of the sizes of the indices summed over (in an input, not the output)."""
    inputs, output = op.get_attr("equation").decode().split("->")
    sizes = {}
    for spec, tensor in zip(inputs.split(","), op.inputs):
        dims = tensor.shape.as_list()
        head, _, tail = spec.partition("...")
        sizes.update(zip(head, dims[:len(head)]))
        sizes.update(zip(tail, dims[len(dims) - len(tail):]))
    return math.prod(sizes[letter] for letter in sizes if letter not in output)


def _size(tensor):
    dims = tensor.shape.as_list()
    if None in dims:
        raise ValueError(f"Cannot count the cost of {tensor.op.name}: its shape {dims} is not "
                         "static. Pass a fully known `input_shape`.")
    return math.prod(dims)

"""Small tools around models: counting FLOPs."""

# The op types whose cost is multiply-adds; TensorFlow's profiler reports
# 2 FLOPs per multiply-add for them. Elementwise ops (BN, ReLU, additions),
# pooling and softmax are left out, as fvcore and the paper's tables do.
MULTIPLY_ADD_OPS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul",
                    "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


def count_flops(model, input_shape=None, batch_size=1):
    """Multiply-adds of one inference pass of a Keras model (TensorFlow backend).

    The model is traced into a TensorFlow graph at a fixed input shape and
    TensorFlow's profiler counts every convolution and matrix product in it
    (including the ones inside non-local blocks); the count is the profiler's
    FLOPs divided by 2, i.e. multiply-adds, the unit of the paper and of
    fvcore ("GFLOPs" there means G multiply-adds).

    Args:
        model: a built `keras.Model` with one input.
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
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    forward = tf.function(lambda x: model(x, training=False))
    graph = forward.get_concrete_function(
        tf.TensorSpec((batch_size,) + shape, model.inputs[0].dtype)).graph
    profiler = tf.compat.v1.profiler
    options = (profiler.ProfileOptionBuilder(profiler.ProfileOptionBuilder.float_operation())
               .with_empty_output().build())
    per_op_type = profiler.profile(graph, cmd="op", options=options)
    flops = sum(node.total_float_ops for node in per_op_type.children
                if node.name in MULTIPLY_ADD_OPS)
    return flops // 2

from keras.saving import register_keras_serializable

from nonlocal_keras.layers.base_nonlocal import BaseNonLocal


@register_keras_serializable(package="nonlocal_keras")
class NonLocal2D(BaseNonLocal):
    """2D non-local block on inputs `(batch, height, width, channels)`.

    The default pool window is (2, 2). See `BaseNonLocal` for the arguments;
    `affinity` other than "spacetime" applies to video only.

    Example:

    >>> x = keras.random.normal((2, 8, 8, 16))
    >>> NonLocal2D()(x).shape
    (2, 8, 8, 16)
    """

    def __init__(
        self,
        mode="embedded_gaussian",
        inter_channels=None,
        sub_sample=True,
        pool_size=None,
        use_bn=True,
        use_scale=True,
        affinity="spacetime",
        data_format=None,
        kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        chunk_size="auto",
        **kwargs,
    ):
        super().__init__(
            rank=2,
            mode=mode,
            inter_channels=inter_channels,
            sub_sample=sub_sample,
            pool_size=pool_size,
            use_bn=use_bn,
            use_scale=use_scale,
            affinity=affinity,
            data_format=data_format,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            chunk_size=chunk_size,
            **kwargs,
        )

from keras.saving import register_keras_serializable

from nonlocal_keras.layers.base_nonlocal import BaseNonLocal


@register_keras_serializable(package="nonlocal_keras")
class NonLocal3D(BaseNonLocal):
    """3D non-local block on inputs `(batch, time, height, width, channels)`.

    The default pool window is (1, 2, 2), space only, as in the official video
    models. See `BaseNonLocal` for the arguments.

    Example:

    >>> x = keras.random.normal((2, 4, 8, 8, 16))
    >>> NonLocal3D()(x).shape
    (2, 4, 8, 8, 16)
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
        frames_per_group=None,
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
            rank=3,
            mode=mode,
            inter_channels=inter_channels,
            sub_sample=sub_sample,
            pool_size=pool_size,
            use_bn=use_bn,
            use_scale=use_scale,
            affinity=affinity,
            frames_per_group=frames_per_group,
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

"""The video ResNets' convolution: Conv3D, with 1x1x1 kernels run as a matrix product
and 1xkxk kernels as a 2D convolution of every frame."""

from keras import layers, ops
from keras.saving import register_keras_serializable


@register_keras_serializable(package="nonlocal_keras")
class VideoConv3D(layers.Conv3D):
    """`keras.layers.Conv3D` that runs pointwise and per-frame kernels as cheaper ops.

    A 1x1x1 kernel (two of the three convolutions of every bottleneck, and
    the strided shortcuts) maps each position's channels by the same matrix:
    it is the product of the `(positions, C_in)` input and the `(C_in,
    C_out)` kernel, which is what this layer computes then, on every
    `strides`-th position (a 1x1x1 window needs no padding, so "same" and
    "valid" take the same positions). Why: on a CPU, TensorFlow's oneDNN
    Conv3D kernels compute the kernel gradient of these convolutions several
    times slower than the matrix product does under bfloat16 (profile in
    benchmarks/README.md).

    A 1xkxk kernel with no stride over time (C2D's spatial convolutions,
    I3D's non-inflated ones) sees one frame at a time: the layer folds the
    frames into the batch and runs a 2D convolution. Why: on an AVX2 CPU
    (no AVX-512) oneDNN's Conv3D gradients of these layers ran at a third of
    the forward's rate, its Conv2D ones did not (C2D R50 float32 step 7-14%
    shorter, `benchmarks/ab_step.py`). The values are the convolution's up
    to float rounding; every other kernel or setting is Keras' own code.
    Same arguments, weights and config as `keras.layers.Conv3D`.
    """

    def _pointwise(self):
        return (tuple(self.kernel_size) == (1, 1, 1) and self.groups == 1
                and self.data_format == "channels_last")

    def _per_frame(self):
        return (self.kernel_size[0] == 1 and self.strides[0] == 1 and self.groups == 1
                and self.data_format == "channels_last" and min(self.kernel_size[1:]) > 1)

    def convolution_op(self, inputs, kernel):
        if self._per_frame():
            shape = ops.shape(inputs)
            outputs = ops.conv(ops.reshape(inputs, (-1, *shape[2:])), kernel[0],
                               strides=self.strides[1:], padding=self.padding,
                               dilation_rate=self.dilation_rate[1:])
            return ops.reshape(outputs, (shape[0], shape[1], *ops.shape(outputs)[1:]))
        if not self._pointwise():
            return super().convolution_op(inputs, kernel)
        if any(stride > 1 for stride in self.strides):
            st, sh, sw = self.strides
            inputs = inputs[:, ::st, ::sh, ::sw, :]
        channels = inputs.shape[-1]
        shape = ops.shape(inputs)
        outputs = ops.matmul(ops.reshape(inputs, (-1, channels)),
                             ops.reshape(kernel, (channels, self.filters)))
        return ops.reshape(outputs, (*shape[:-1], self.filters))
